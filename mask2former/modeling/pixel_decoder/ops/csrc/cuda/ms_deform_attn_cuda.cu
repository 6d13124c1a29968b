// CUDA entry points of multi-scale deformable attention: float32, float64, float16 and
// bfloat16 values; sampling locations and attention weights in at::opmath_type of the value
// dtype (float for half types), accumulation in that type too. The kernels and their launch
// plan are in ms_deform_attn_kernels.cuh (ATen-free, so the tests can emulate them on a CPU).
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ms_deform_attn.h"
#include "ms_deform_attn_kernels.cuh"

namespace mask2former {
namespace {

void check_cuda_inputs(const at::Tensor& value) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn CUDA kernel: value must be a CUDA tensor");
}

kernels::Sizes<int64_t> sizes_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  kernels::Sizes<int64_t> sizes;
  sizes.batch = value.size(0);
  sizes.num_values = value.size(1);
  sizes.heads = value.size(2);
  sizes.channels = value.size(3);
  sizes.queries = sampling_locations.size(1);
  sizes.levels = sampling_locations.size(3);
  sizes.points = sampling_locations.size(4);
  return sizes;
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_cuda_inputs(value);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto loc_c = sampling_locations.contiguous();
  const auto attn_c = attention_weights.contiguous();
  const auto sizes = sizes_of(value, sampling_locations);
  auto output =
      at::empty({sizes.batch, sizes.queries, sizes.heads * sizes.channels}, value.options());
  if (output.numel() == 0) {
    return output;
  }
  const void* vectors[] = {value_c.const_data_ptr(), output.const_data_ptr()};
  const auto plan = kernels::plan_launch(sizes, value.element_size(), vectors, 2);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        kernels::launch_forward<scalar_t, acc_t>(
            plan,
            stream,
            value_c.const_data_ptr<scalar_t>(),
            shapes_c.const_data_ptr<int64_t>(),
            starts_c.const_data_ptr<int64_t>(),
            loc_c.const_data_ptr<acc_t>(),
            attn_c.const_data_ptr<acc_t>(),
            output.mutable_data_ptr<scalar_t>(),
            sizes);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  check_ms_deform_attn_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_cuda_inputs(value);
  const auto sizes = sizes_of(value, sampling_locations);
  TORCH_CHECK(
      grad_output.numel() == sizes.batch * sizes.queries * sizes.heads * sizes.channels &&
          grad_output.scalar_type() == value.scalar_type() &&
          grad_output.device() == value.device(),
      "ms_deform_attn_backward: grad_output must be (N, Q, M * D) of value's dtype and "
      "device, got ", grad_output.sizes(), " ", grad_output.scalar_type());
  const c10::cuda::CUDAGuard device_guard(value.device());
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto loc_c = sampling_locations.contiguous();
  const auto attn_c = attention_weights.contiguous();
  const auto grad_out_c = grad_output.contiguous();
  // Value gradients are accumulated with atomics in the accumulation type (float32 for
  // half types) and cast to value's dtype at the end.
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(loc_c.scalar_type()));
  auto grad_locations = at::empty_like(loc_c);
  auto grad_weights = at::empty_like(attn_c);
  if (grad_weights.numel() > 0 && sizes.channels > 0) {
    const void* vectors[] = {
        value_c.const_data_ptr(), grad_out_c.const_data_ptr(), grad_value_acc.const_data_ptr()};
    const auto plan = kernels::plan_launch(sizes, value.element_size(), vectors, 3);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          kernels::launch_backward<scalar_t, acc_t>(
              plan,
              stream,
              value_c.const_data_ptr<scalar_t>(),
              shapes_c.const_data_ptr<int64_t>(),
              starts_c.const_data_ptr<int64_t>(),
              loc_c.const_data_ptr<acc_t>(),
              attn_c.const_data_ptr<acc_t>(),
              grad_out_c.const_data_ptr<scalar_t>(),
              grad_value_acc.mutable_data_ptr<acc_t>(),
              grad_locations.mutable_data_ptr<acc_t>(),
              grad_weights.mutable_data_ptr<acc_t>(),
              sizes);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  } else {
    grad_locations.zero_();
    grad_weights.zero_();
  }
  auto grad_value = grad_value_acc.scalar_type() == value.scalar_type()
      ? grad_value_acc
      : grad_value_acc.to(value.scalar_type());
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace mask2former

TORCH_LIBRARY_IMPL(mask2former, CUDA, m) {
  m.impl("ms_deform_attn_forward", &mask2former::ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &mask2former::ms_deform_attn_backward_cuda);
}
