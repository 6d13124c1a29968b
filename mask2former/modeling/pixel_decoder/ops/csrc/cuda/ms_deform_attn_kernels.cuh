// CUDA kernels of multi-scale deformable attention and how they are launched, without ATen,
// so that tests/cuda_emulation can compile this file for the host and run the kernels on the
// CPU (thread by thread, with the warp shuffles and atomics emulated) where there is no GPU.
//
// Work split: a *group* of G threads (G a power of two, at most a warp) handles one
// (batch n, query q, head m). Each thread owns chunks of V consecutive channels (V = 16 bytes
// of value's dtype when the channels and pointers allow it, else 1), loaded and stored as one
// 16-byte vector. The G threads of a group share a point's corners and bilinear weights (each
// computes them from the same two coordinates: no sharing cost, and G is D / V, not D).
//   forward:  each thread accumulates its V channels over all levels and points.
//   backward: each thread adds its channels' value gradients with (vector) atomics and
//             partial sums of the location / weight gradients, reduced over the group
//             with shuffles; the group's first thread writes them.
// Index arithmetic is 32-bit when every offset fits, 64-bit otherwise (index_t); the
// grids are grid-stride loops, so any size works.
#pragma once

#include <cstdint>

#ifdef MASK2FORMER_CUDA_EMULATION
#include "cuda_emulation.h"
#else
#include <cuda_runtime.h>
#endif

namespace mask2former {
namespace kernels {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int64_t kMaxBlocks = 65535LL * 32;
constexpr int kVectorBytes = 16;

// V values of type T loaded or stored as one access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename index_t>
struct Sizes {
  index_t batch, num_values, heads, channels, queries, levels, points;
};

// What thread t of the grid works on: (n, q, m) and its place in its group.
template <typename index_t>
struct GroupThread {
  index_t nqm;          // (n * Q + q) * M + m
  index_t lane;         // 0 .. G - 1 within the group
  index_t n, m;
  index_t first_point;  // index of (n, q, m, level 0, point 0) in the locations / weights
};

template <typename index_t>
__device__ __forceinline__ GroupThread<index_t> group_thread(
    index_t t, int group_shift, const Sizes<index_t>& s) {
  GroupThread<index_t> task;
  task.nqm = t >> group_shift;
  task.lane = t & ((index_t(1) << group_shift) - 1);
  task.m = task.nqm % s.heads;
  task.n = task.nqm / (s.heads * s.queries);
  task.first_point = task.nqm * s.levels * s.points;
  return task;
}

// One level as a thread sees it: its size, and the offset in value of its first pixel at the
// thread's head and first channel.
template <typename index_t>
struct Level {
  index_t height, width, offset;
};

template <typename index_t>
__device__ __forceinline__ Level<index_t> level_at(
    index_t l,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const GroupThread<index_t>& task,
    index_t channel,
    const Sizes<index_t>& s) {
  const index_t row_stride = s.heads * s.channels;
  const index_t first_row = task.n * s.num_values + static_cast<index_t>(level_start_index[l]);
  Level<index_t> level;
  level.height = static_cast<index_t>(spatial_shapes[2 * l]);
  level.width = static_cast<index_t>(spatial_shapes[2 * l + 1]);
  level.offset = first_row * row_stride + task.m * s.channels + channel;
  return level;
}

// Bilinear corners of one sampling point on one level (align_corners=False, zero padding).
template <typename acc_t, typename index_t>
struct Corners {
  index_t offset[4];  // pixel index within the level (h * W + w), or -1 when outside
  acc_t weight[4];    // bilinear weights of top-left, top-right, bottom-left, bottom-right
  acc_t low_h, low_w, high_h, high_w;
  bool any;
};

template <typename acc_t, typename index_t>
__device__ __forceinline__ Corners<acc_t, index_t> corners_at(
    index_t height, index_t width, acc_t x, acc_t y) {
  Corners<acc_t, index_t> c;
  const acc_t h_im = y * static_cast<acc_t>(height) - acc_t(0.5);
  const acc_t w_im = x * static_cast<acc_t>(width) - acc_t(0.5);
  c.any = h_im > acc_t(-1) && w_im > acc_t(-1) && h_im < static_cast<acc_t>(height) &&
      w_im < static_cast<acc_t>(width);
  if (!c.any) {
    return c;
  }
  const acc_t h_floor = floor(h_im);
  const acc_t w_floor = floor(w_im);
  const index_t h0 = static_cast<index_t>(h_floor);
  const index_t w0 = static_cast<index_t>(w_floor);
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

// Sum over the G threads of a group; every thread of the group gets the total. Only the
// group's lanes take part (mask), so groups of one warp may branch differently.
template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t x, int group, unsigned mask) {
  for (int offset = group / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(mask, x, offset, group);
  }
  return x;
}

__device__ __forceinline__ unsigned group_mask(int group) {
  if (group == kWarp) {
    return 0xffffffffu;
  }
  const int first_lane = static_cast<int>(threadIdx.x % kWarp) & ~(group - 1);
  return ((1u << group) - 1u) << first_lane;
}

// grad[i] += add[i] for V consecutive accumulators. On compute capability 9.x, float
// accumulators in whole vectors (V = 4 for float32 values, 8 for half types) take one float4
// atomic per 4 values (the emulation builds this path with MASK2FORMER_EMULATE_SM90).
template <typename acc_t, int V>
__device__ __forceinline__ void atomic_add_each(acc_t* grad, const acc_t (&add)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) {
    atomicAdd(grad + i, add[i]);
  }
}

template <typename acc_t, int V>
__device__ __forceinline__ void atomic_add_pack(acc_t* grad, const acc_t (&add)[V]) {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(MASK2FORMER_EMULATE_SM90)
  if constexpr (sizeof(acc_t) == 4 && V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      atomicAdd(
          reinterpret_cast<float4*>(grad + i),
          make_float4(add[i], add[i + 1], add[i + 2], add[i + 3]));
    }
  } else {
    atomic_add_each<acc_t, V>(grad, add);
  }
#else
  atomic_add_each<acc_t, V>(grad, add);
#endif
}

template <typename scalar_t, typename acc_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads) forward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const acc_t* __restrict__ sampling_locations,
    const acc_t* __restrict__ attention_weights,
    scalar_t* __restrict__ output,
    Sizes<index_t> s,
    int group_shift) {
  using ValuePack = Pack<scalar_t, V>;
  const int group = 1 << group_shift;
  const index_t chunks = s.channels / V;
  const index_t row_stride = s.heads * s.channels;
  const index_t total = (s.batch * s.queries * s.heads) << group_shift;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += stride) {
    const GroupThread<index_t> task = group_thread(t, group_shift, s);
    for (index_t chunk = task.lane; chunk < chunks; chunk += group) {
      const index_t channel = chunk * V;
      acc_t acc[V];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        acc[i] = acc_t(0);
      }
      index_t point = task.first_point;
      for (index_t l = 0; l < s.levels; ++l) {
        const Level<index_t> level =
            level_at(l, spatial_shapes, level_start_index, task, channel, s);
        const scalar_t* level_value = value + level.offset;
        for (index_t p = 0; p < s.points; ++p, ++point) {
          const Corners<acc_t, index_t> c = corners_at<acc_t, index_t>(
              level.height, level.width, sampling_locations[2 * point],
              sampling_locations[2 * point + 1]);
          if (!c.any) {
            continue;
          }
          acc_t sample[V];
#pragma unroll
          for (int i = 0; i < V; ++i) {
            sample[i] = acc_t(0);
          }
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (c.offset[k] >= 0) {
              const ValuePack v =
                  *reinterpret_cast<const ValuePack*>(level_value + c.offset[k] * row_stride);
#pragma unroll
              for (int i = 0; i < V; ++i) {
                sample[i] += c.weight[k] * static_cast<acc_t>(v.v[i]);
              }
            }
          }
          const acc_t a = attention_weights[point];
#pragma unroll
          for (int i = 0; i < V; ++i) {
            acc[i] += a * sample[i];
          }
        }
      }
      ValuePack out;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        out.v[i] = static_cast<scalar_t>(acc[i]);
      }
      *reinterpret_cast<ValuePack*>(output + task.nqm * s.channels + channel) = out;
    }
  }
}

template <typename scalar_t, typename acc_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const scalar_t* __restrict__ value,
    const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index,
    const acc_t* __restrict__ sampling_locations,
    const acc_t* __restrict__ attention_weights,
    const scalar_t* __restrict__ grad_output,
    acc_t* __restrict__ grad_value,
    acc_t* __restrict__ grad_locations,
    acc_t* __restrict__ grad_weights,
    Sizes<index_t> s,
    int group_shift) {
  using ValuePack = Pack<scalar_t, V>;
  const int group = 1 << group_shift;
  const unsigned mask = group_mask(group);
  const index_t chunks = s.channels / V;
  // every thread of a group makes the same number of passes (and so of shuffles)
  const index_t passes = (chunks + group - 1) / group;
  const index_t row_stride = s.heads * s.channels;
  const index_t total = (s.batch * s.queries * s.heads) << group_shift;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  // The grid's stride is a multiple of the group size, so the threads of a group stay
  // together through the loop.
  for (index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += stride) {
    const GroupThread<index_t> task = group_thread(t, group_shift, s);
    for (index_t pass = 0; pass < passes; ++pass) {
      const index_t channel = (pass * group + task.lane) * V;
      const bool active = channel < s.channels;
      acc_t g[V];
      if (active) {
        const ValuePack go =
            *reinterpret_cast<const ValuePack*>(grad_output + task.nqm * s.channels + channel);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          g[i] = static_cast<acc_t>(go.v[i]);
        }
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          g[i] = acc_t(0);
        }
      }
      index_t point = task.first_point;
      for (index_t l = 0; l < s.levels; ++l) {
        const Level<index_t> level =
            level_at(l, spatial_shapes, level_start_index, task, channel, s);
        for (index_t p = 0; p < s.points; ++p, ++point) {
          const Corners<acc_t, index_t> c = corners_at<acc_t, index_t>(
              level.height, level.width, sampling_locations[2 * point],
              sampling_locations[2 * point + 1]);
          if (!c.any) {
            // the same for the whole group: the point reads zeros, its gradients are zero
            if (task.lane == 0 && pass == 0) {
              grad_locations[2 * point] = acc_t(0);
              grad_locations[2 * point + 1] = acc_t(0);
              grad_weights[point] = acc_t(0);
            }
            continue;
          }
          const acc_t a = attention_weights[point];
          // d(sample)/d(h_im) and d(sample)/d(w_im) per corner
          const acc_t dh[4] = {-c.low_w, -c.high_w, c.low_w, c.high_w};
          const acc_t dw[4] = {-c.low_h, c.low_h, -c.high_h, c.high_h};
          acc_t sum_sample = 0, sum_h = 0, sum_w = 0;
          if (active) {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              if (c.offset[k] >= 0) {
                const index_t element = level.offset + c.offset[k] * row_stride;
                const ValuePack v = *reinterpret_cast<const ValuePack*>(value + element);
                acc_t add[V];
#pragma unroll
                for (int i = 0; i < V; ++i) {
                  const acc_t vi = static_cast<acc_t>(v.v[i]);
                  sum_sample += g[i] * c.weight[k] * vi;
                  sum_h += g[i] * dh[k] * vi;
                  sum_w += g[i] * dw[k] * vi;
                  add[i] = a * c.weight[k] * g[i];
                }
                atomic_add_pack<acc_t, V>(grad_value + element, add);
              }
            }
          }
          sum_sample = group_sum(sum_sample, group, mask);
          sum_h = group_sum(sum_h, group, mask);
          sum_w = group_sum(sum_w, group, mask);
          if (task.lane == 0) {
            const acc_t d_x = a * sum_w * static_cast<acc_t>(level.width);
            const acc_t d_y = a * sum_h * static_cast<acc_t>(level.height);
            if (pass == 0) {
              grad_weights[point] = sum_sample;
              grad_locations[2 * point] = d_x;
              grad_locations[2 * point + 1] = d_y;
            } else {
              grad_weights[point] += sum_sample;
              grad_locations[2 * point] += d_x;
              grad_locations[2 * point + 1] += d_y;
            }
          }
        }
      }
    }
  }
}

// How a call is launched: chosen on the host from the sizes and the pointers' alignment.
struct LaunchPlan {
  bool vectorized;  // V = kVectorBytes / sizeof(scalar_t), else V = 1
  bool index32;     // 32-bit index arithmetic
  int group_shift;  // G = 1 << group_shift threads per (n, q, m)
  int64_t blocks;
};

inline bool aligned_to(const void* pointer, int bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

// pointers: the scalar_t arrays read or written in vectors (value, output, grad_output).
// max_blocks caps the grid (the emulation uses small grids to exercise the stride loops).
inline LaunchPlan plan_launch(
    const Sizes<int64_t>& s,
    int element_bytes,
    const void* const* pointers,
    int num_pointers,
    int64_t max_blocks = kMaxBlocks) {
  LaunchPlan plan;
  const int vector = kVectorBytes / element_bytes;
  plan.vectorized = vector > 1 && s.channels % vector == 0;
  for (int i = 0; i < num_pointers && plan.vectorized; ++i) {
    plan.vectorized = aligned_to(pointers[i], kVectorBytes);
  }
  const int64_t chunks = plan.vectorized ? s.channels / vector : s.channels;
  plan.group_shift = 0;
  while ((1 << plan.group_shift) < chunks && (1 << plan.group_shift) < kWarp) {
    ++plan.group_shift;
  }
  const int64_t threads = (s.batch * s.queries * s.heads) << plan.group_shift;
  const int64_t needed = (threads + kThreads - 1) / kThreads;
  plan.blocks = needed < 1 ? 1 : (needed < max_blocks ? needed : max_blocks);
  // Largest offsets: value and location elements, and the thread counter's last step.
  const int64_t limit = (int64_t(1) << 31) - 1;
  const int64_t values = s.batch * s.num_values * s.heads * s.channels;
  const int64_t locations = s.batch * s.queries * s.heads * s.levels * s.points * 2;
  plan.index32 = values < limit && locations < limit && threads + plan.blocks * kThreads < limit;
  return plan;
}

template <typename index_t>
Sizes<index_t> cast_sizes(const Sizes<int64_t>& s) {
  return {static_cast<index_t>(s.batch),    static_cast<index_t>(s.num_values),
          static_cast<index_t>(s.heads),    static_cast<index_t>(s.channels),
          static_cast<index_t>(s.queries),  static_cast<index_t>(s.levels),
          static_cast<index_t>(s.points)};
}

#ifdef MASK2FORMER_CUDA_EMULATION
#define MASK2FORMER_LAUNCH(kernel, blocks, stream, ...) \
  emulate_launch(kernel, blocks, kThreads, __VA_ARGS__)
#else
#define MASK2FORMER_LAUNCH(kernel, blocks, stream, ...) \
  kernel<<<blocks, kThreads, 0, stream>>>(__VA_ARGS__)
#endif

template <typename scalar_t, typename acc_t, typename index_t, int V>
void launch_forward_as(
    const LaunchPlan& plan, cudaStream_t stream, const scalar_t* value, const int64_t* shapes,
    const int64_t* starts, const acc_t* locations, const acc_t* weights, scalar_t* output,
    const Sizes<int64_t>& s) {
  MASK2FORMER_LAUNCH(
      (forward_kernel<scalar_t, acc_t, index_t, V>), static_cast<unsigned>(plan.blocks), stream,
      value, shapes, starts, locations, weights, output, cast_sizes<index_t>(s),
      plan.group_shift);
}

template <typename scalar_t, typename acc_t>
void launch_forward(
    const LaunchPlan& plan, cudaStream_t stream, const scalar_t* value, const int64_t* shapes,
    const int64_t* starts, const acc_t* locations, const acc_t* weights, scalar_t* output,
    const Sizes<int64_t>& s) {
  constexpr int kVector = kVectorBytes / sizeof(scalar_t);
  if (plan.index32) {
    if (plan.vectorized) {
      launch_forward_as<scalar_t, acc_t, int32_t, kVector>(
          plan, stream, value, shapes, starts, locations, weights, output, s);
    } else {
      launch_forward_as<scalar_t, acc_t, int32_t, 1>(
          plan, stream, value, shapes, starts, locations, weights, output, s);
    }
  } else if (plan.vectorized) {
    launch_forward_as<scalar_t, acc_t, int64_t, kVector>(
        plan, stream, value, shapes, starts, locations, weights, output, s);
  } else {
    launch_forward_as<scalar_t, acc_t, int64_t, 1>(
        plan, stream, value, shapes, starts, locations, weights, output, s);
  }
}

template <typename scalar_t, typename acc_t, typename index_t, int V>
void launch_backward_as(
    const LaunchPlan& plan, cudaStream_t stream, const scalar_t* value, const int64_t* shapes,
    const int64_t* starts, const acc_t* locations, const acc_t* weights,
    const scalar_t* grad_output, acc_t* grad_value, acc_t* grad_locations, acc_t* grad_weights,
    const Sizes<int64_t>& s) {
  MASK2FORMER_LAUNCH(
      (backward_kernel<scalar_t, acc_t, index_t, V>), static_cast<unsigned>(plan.blocks), stream,
      value, shapes, starts, locations, weights, grad_output, grad_value, grad_locations,
      grad_weights, cast_sizes<index_t>(s), plan.group_shift);
}

template <typename scalar_t, typename acc_t>
void launch_backward(
    const LaunchPlan& plan, cudaStream_t stream, const scalar_t* value, const int64_t* shapes,
    const int64_t* starts, const acc_t* locations, const acc_t* weights,
    const scalar_t* grad_output, acc_t* grad_value, acc_t* grad_locations, acc_t* grad_weights,
    const Sizes<int64_t>& s) {
  constexpr int kVector = kVectorBytes / sizeof(scalar_t);
  if (plan.index32) {
    if (plan.vectorized) {
      launch_backward_as<scalar_t, acc_t, int32_t, kVector>(
          plan, stream, value, shapes, starts, locations, weights, grad_output, grad_value,
          grad_locations, grad_weights, s);
    } else {
      launch_backward_as<scalar_t, acc_t, int32_t, 1>(
          plan, stream, value, shapes, starts, locations, weights, grad_output, grad_value,
          grad_locations, grad_weights, s);
    }
  } else if (plan.vectorized) {
    launch_backward_as<scalar_t, acc_t, int64_t, kVector>(
        plan, stream, value, shapes, starts, locations, weights, grad_output, grad_value,
        grad_locations, grad_weights, s);
  } else {
    launch_backward_as<scalar_t, acc_t, int64_t, 1>(
        plan, stream, value, shapes, starts, locations, weights, grad_output, grad_value,
        grad_locations, grad_weights, s);
  }
}

}  // namespace kernels
}  // namespace mask2former
