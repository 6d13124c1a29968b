// CUDA kernels of multi-scale deformable attention: float32, float64, float16 and bfloat16
// values; sampling locations and attention weights in at::opmath_type of the value dtype
// (float for half types), accumulation in that type too.
//
// Forward: one thread per output element (n, q, m, d); the D threads of one (n, q, m) read
// neighbouring channels of the same pixels, so value loads are coalesced.
// Backward: one warp per (n, q, m), lanes over channels. Each lane scatters its channels'
// value gradients with atomicAdd (into a float32 buffer for half types) and the warp
// reduces the location / weight gradients with shuffles. Any batch size, no im2col_step;
// all index arithmetic is 64-bit and the grids are grid-stride loops, so inputs larger than
// 2^31 elements work.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "ms_deform_attn.h"

namespace mask2former {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int64_t kMaxBlocks = 65535LL * 32;

int64_t num_blocks(int64_t num_threads) {
  const int64_t needed = (num_threads + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(needed, kMaxBlocks));
}

// Bilinear corners of one sampling point on one level (align_corners=False, zero padding).
template <typename acc_t>
struct Corners {
  int64_t offset[4];  // pixel index within the level (h * W + w), or -1 when outside
  acc_t weight[4];    // bilinear weights of top-left, top-right, bottom-left, bottom-right
  acc_t low_h, low_w, high_h, high_w;
  bool any;
};

template <typename acc_t>
__device__ __forceinline__ Corners<acc_t> corners_at(
    int64_t height, int64_t width, acc_t x, acc_t y) {
  Corners<acc_t> c;
  const acc_t h_im = y * static_cast<acc_t>(height) - acc_t(0.5);
  const acc_t w_im = x * static_cast<acc_t>(width) - acc_t(0.5);
  c.any = h_im > acc_t(-1) && w_im > acc_t(-1) && h_im < static_cast<acc_t>(height) &&
      w_im < static_cast<acc_t>(width);
  if (!c.any) {
    return c;
  }
  const acc_t h_floor = floor(h_im);
  const acc_t w_floor = floor(w_im);
  const int64_t h0 = static_cast<int64_t>(h_floor);
  const int64_t w0 = static_cast<int64_t>(w_floor);
  c.high_h = h_im - h_floor;
  c.high_w = w_im - w_floor;
  c.low_h = acc_t(1) - c.high_h;
  c.low_w = acc_t(1) - c.high_w;
  const bool top = h0 >= 0, bottom = h0 + 1 < height;
  const bool left = w0 >= 0, right = w0 + 1 < width;
  c.weight[0] = c.low_h * c.low_w;
  c.weight[1] = c.low_h * c.high_w;
  c.weight[2] = c.high_h * c.low_w;
  c.weight[3] = c.high_h * c.high_w;
  c.offset[0] = top && left ? h0 * width + w0 : -1;
  c.offset[1] = top && right ? h0 * width + w0 + 1 : -1;
  c.offset[2] = bottom && left ? (h0 + 1) * width + w0 : -1;
  c.offset[3] = bottom && right ? (h0 + 1) * width + w0 + 1 : -1;
  return c;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const acc_t* __restrict__ sampling_locations,
    const acc_t* __restrict__ attention_weights,
    scalar_t* __restrict__ output,
    int64_t batch,
    int64_t num_values,
    int64_t heads,
    int64_t channels,
    int64_t queries,
    int64_t num_levels,
    int64_t points) {
  const int64_t total = batch * queries * heads * channels;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t row_stride = heads * channels;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total;
       index += stride) {
    const int64_t d = index % channels;
    const int64_t nqm = index / channels;  // (n * Q + q) * M + m
    const int64_t m = nqm % heads;
    const int64_t n = nqm / (heads * queries);
    const acc_t* loc = sampling_locations + nqm * num_levels * points * 2;
    const acc_t* attn = attention_weights + nqm * num_levels * points;
    acc_t acc = 0;
    for (int64_t l = 0; l < num_levels; ++l) {
      const int64_t height = spatial_shapes[2 * l];
      const int64_t width = spatial_shapes[2 * l + 1];
      const scalar_t* level_value =
          value + (n * num_values + level_start_index[l]) * row_stride + m * channels + d;
      for (int64_t p = 0; p < points; ++p, loc += 2, ++attn) {
        const Corners<acc_t> c = corners_at<acc_t>(height, width, loc[0], loc[1]);
        if (!c.any) {
          continue;
        }
        acc_t sample = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.offset[k] >= 0) {
            sample += c.weight[k] * static_cast<acc_t>(level_value[c.offset[k] * row_stride]);
          }
        }
        acc += *attn * sample;
      }
    }
    output[index] = static_cast<scalar_t>(acc);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    x += __shfl_down_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const acc_t* __restrict__ sampling_locations,
    const acc_t* __restrict__ attention_weights,
    const scalar_t* __restrict__ grad_output,
    acc_t* __restrict__ grad_value,
    acc_t* __restrict__ grad_locations,
    acc_t* __restrict__ grad_weights,
    int64_t batch,
    int64_t num_values,
    int64_t heads,
    int64_t channels,
    int64_t queries,
    int64_t num_levels,
    int64_t points) {
  const int64_t total_warps = batch * queries * heads;
  const int64_t warps_in_grid = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t row_stride = heads * channels;
  // nqm is the same for all lanes of a warp, so every lane runs the same number of
  // iterations and reaches every shuffle (blockDim.x is a multiple of 32).
  for (int64_t nqm = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
       nqm < total_warps; nqm += warps_in_grid) {
    const int64_t m = nqm % heads;
    const int64_t n = nqm / (heads * queries);
    const acc_t* loc = sampling_locations + nqm * num_levels * points * 2;
    const acc_t* attn = attention_weights + nqm * num_levels * points;
    acc_t* grad_loc = grad_locations + nqm * num_levels * points * 2;
    acc_t* grad_attn = grad_weights + nqm * num_levels * points;
    const scalar_t* grad_out = grad_output + nqm * channels;
    for (int64_t l = 0; l < num_levels; ++l) {
      const int64_t height = spatial_shapes[2 * l];
      const int64_t width = spatial_shapes[2 * l + 1];
      const int64_t level_offset =
          (n * num_values + level_start_index[l]) * row_stride + m * channels;
      for (int64_t p = 0; p < points; ++p, loc += 2, ++attn, grad_loc += 2, ++grad_attn) {
        const Corners<acc_t> c = corners_at<acc_t>(height, width, loc[0], loc[1]);
        if (!c.any) {
          // uniform across the warp: the point reads zeros, its gradients are zero
          if (lane == 0) {
            grad_loc[0] = acc_t(0);
            grad_loc[1] = acc_t(0);
            *grad_attn = acc_t(0);
          }
          continue;
        }
        const acc_t a = *attn;
        // d(sample)/d(h_im) and d(sample)/d(w_im) per corner
        const acc_t dh[4] = {-c.low_w, -c.high_w, c.low_w, c.high_w};
        const acc_t dw[4] = {-c.low_h, c.low_h, -c.high_h, c.high_h};
        acc_t sum_sample = 0, sum_h = 0, sum_w = 0;
        for (int64_t d = lane; d < channels; d += kWarp) {
          const acc_t g = static_cast<acc_t>(grad_out[d]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (c.offset[k] >= 0) {
              const int64_t element = level_offset + c.offset[k] * row_stride + d;
              const acc_t v = static_cast<acc_t>(value[element]);
              sum_sample += g * c.weight[k] * v;
              sum_h += g * dh[k] * v;
              sum_w += g * dw[k] * v;
              atomicAdd(grad_value + element, a * c.weight[k] * g);
            }
          }
        }
        sum_sample = warp_sum(sum_sample);
        sum_h = warp_sum(sum_h);
        sum_w = warp_sum(sum_w);
        if (lane == 0) {
          *grad_attn = sum_sample;
          grad_loc[0] = a * sum_w * static_cast<acc_t>(width);
          grad_loc[1] = a * sum_h * static_cast<acc_t>(height);
        }
      }
    }
  }
}

void check_cuda_inputs(const at::Tensor& value) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn CUDA kernel: value must be a CUDA tensor");
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
  const int64_t batch = value.size(0), num_values = value.size(1);
  const int64_t heads = value.size(2), channels = value.size(3);
  const int64_t queries = sampling_locations.size(1);
  const int64_t num_levels = sampling_locations.size(3), points = sampling_locations.size(4);
  auto output = at::empty({batch, queries, heads * channels}, value.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_kernel<scalar_t, acc_t><<<num_blocks(total), kThreads, 0, stream>>>(
            value_c.const_data_ptr<scalar_t>(),
            shapes_c.const_data_ptr<int64_t>(),
            starts_c.const_data_ptr<int64_t>(),
            loc_c.const_data_ptr<acc_t>(),
            attn_c.const_data_ptr<acc_t>(),
            output.mutable_data_ptr<scalar_t>(),
            batch, num_values, heads, channels, queries, num_levels, points);
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
  const int64_t batch = value.size(0), num_values = value.size(1);
  const int64_t heads = value.size(2), channels = value.size(3);
  const int64_t queries = sampling_locations.size(1);
  const int64_t num_levels = sampling_locations.size(3), points = sampling_locations.size(4);
  TORCH_CHECK(
      grad_output.numel() == batch * queries * heads * channels &&
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
  const int64_t total_threads = batch * queries * heads * kWarp;
  if (total_threads > 0 && channels > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t><<<num_blocks(total_threads), kThreads, 0, stream>>>(
              value_c.const_data_ptr<scalar_t>(),
              shapes_c.const_data_ptr<int64_t>(),
              starts_c.const_data_ptr<int64_t>(),
              loc_c.const_data_ptr<acc_t>(),
              attn_c.const_data_ptr<acc_t>(),
              grad_out_c.const_data_ptr<scalar_t>(),
              grad_value_acc.mutable_data_ptr<acc_t>(),
              grad_locations.mutable_data_ptr<acc_t>(),
              grad_weights.mutable_data_ptr<acc_t>(),
              batch, num_values, heads, channels, queries, num_levels, points);
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
