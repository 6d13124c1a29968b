// Registers the multi-scale deformable attention ops with the PyTorch dispatcher:
//   torch.ops.mask2former.ms_deform_attn_forward
//   torch.ops.mask2former.ms_deform_attn_backward
// The CPU and CUDA implementations register themselves in cpu/ and cuda/. The Python side
// (functional.py) adds the fake (meta) implementations and the autograd formula.
#include <torch/extension.h>

#include "ms_deform_attn.h"

namespace mask2former {

void check_ms_deform_attn_inputs(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(
      sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
      "ms_deform_attn: sampling_locations must be (N, Q, M, L, P, 2), got ",
      sampling_locations.sizes());
  TORCH_CHECK(
      attention_weights.dim() == 5,
      "ms_deform_attn: attention_weights must be (N, Q, M, L, P), got ",
      attention_weights.sizes());
  const int64_t num_levels = sampling_locations.size(3);
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(0) == num_levels &&
          spatial_shapes.size(1) == 2,
      "ms_deform_attn: spatial_shapes must be (L, 2) with L = ", num_levels, ", got ",
      spatial_shapes.sizes());
  TORCH_CHECK(
      level_start_index.dim() == 1 && level_start_index.size(0) == num_levels,
      "ms_deform_attn: level_start_index must be (L,) with L = ", num_levels, ", got ",
      level_start_index.sizes());
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
      "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(
      sampling_locations.size(0) == value.size(0) && sampling_locations.size(2) == value.size(2),
      "ms_deform_attn: batch or heads of sampling_locations ", sampling_locations.sizes(),
      " do not match value ", value.sizes());
  for (int64_t dim = 0; dim < 5; ++dim) {
    TORCH_CHECK(
        attention_weights.size(dim) == sampling_locations.size(dim),
        "ms_deform_attn: attention_weights ", attention_weights.sizes(),
        " do not match sampling_locations ", sampling_locations.sizes());
  }
  const auto value_type = value.scalar_type();
  const bool half_value = value_type == at::kHalf || value_type == at::kBFloat16;
  const auto location_type = half_value ? at::kFloat : value_type;
  TORCH_CHECK(
      value_type == at::kFloat || value_type == at::kDouble || half_value,
      "ms_deform_attn: value must be float32, float64, float16 or bfloat16, got ", value_type);
  TORCH_CHECK(
      sampling_locations.scalar_type() == location_type &&
          attention_weights.scalar_type() == location_type,
      "ms_deform_attn: sampling_locations and attention_weights must be ", location_type,
      " for a ", value_type, " value");
  const auto device = value.device();
  TORCH_CHECK(
      spatial_shapes.device() == device && level_start_index.device() == device &&
          sampling_locations.device() == device && attention_weights.device() == device,
      "ms_deform_attn: all inputs must be on value's device ", device);
}

}  // namespace mask2former

TORCH_LIBRARY(mask2former, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "Multi-scale deformable attention kernels, registered in torch.ops.mask2former";
  module.def(
      "cuda_built",
      []() {
#ifdef WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether the CUDA kernels were compiled into this extension.");
}
