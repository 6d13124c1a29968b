// C entry point of the emulated CUDA kernels, loaded with ctypes by
// tests/test_ms_deform_attn_emulated.py. Built there with
//   g++ -std=c++20 -O2 -shared -fPIC -pthread -DMASK2FORMER_CUDA_EMULATION
//       [-DMASK2FORMER_EMULATE_SM90] -I<torch include> -I<ops/csrc/cuda> -I<this folder>
// (with MASK2FORMER_EMULATE_SM90 the kernels take their compute capability 9.x path: float4
// atomics).
// Half types use c10::Half / c10::BFloat16 (header-only), as the real kernels do.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdio>

#include "cuda_emulation.h"
#include "ms_deform_attn_kernels.cuh"

namespace {

using mask2former::kernels::LaunchPlan;
using mask2former::kernels::Sizes;

template <typename scalar_t, typename acc_t>
void run(
    int backward, const void* value, const int64_t* shapes, const int64_t* starts,
    const void* locations, const void* weights, const void* grad_output, void* output,
    void* grad_locations, void* grad_weights, const Sizes<int64_t>& sizes, LaunchPlan& plan,
    int64_t max_blocks, int force_index64) {
  namespace k = mask2former::kernels;
  const auto* v = static_cast<const scalar_t*>(value);
  const auto* loc = static_cast<const acc_t*>(locations);
  const auto* attn = static_cast<const acc_t*>(weights);
  if (!backward) {
    const void* vectors[] = {value, output};
    plan = k::plan_launch(sizes, sizeof(scalar_t), vectors, 2, max_blocks);
    plan.index32 = plan.index32 && !force_index64;
    k::launch_forward<scalar_t, acc_t>(
        plan, nullptr, v, shapes, starts, loc, attn, static_cast<scalar_t*>(output), sizes);
  } else {
    const void* vectors[] = {value, grad_output, output};
    plan = k::plan_launch(sizes, sizeof(scalar_t), vectors, 3, max_blocks);
    plan.index32 = plan.index32 && !force_index64;
    k::launch_backward<scalar_t, acc_t>(
        plan, nullptr, v, shapes, starts, loc, attn, static_cast<const scalar_t*>(grad_output),
        static_cast<acc_t*>(output), static_cast<acc_t*>(grad_locations),
        static_cast<acc_t*>(grad_weights), sizes);
  }
}

// Odd lanes skip a shuffle that names all 32 lanes: undefined on a GPU, reported here.
__global__ void divergent_shuffle_kernel(float* out) {
  float x = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 2 == 0) {
    x = __shfl_xor_sync(0xffffffffu, x, 1, 32);
  }
  out[threadIdx.x] = x;
}

}  // namespace

// The launch plan for these sizes (value / output pointers 16-byte aligned or not), without
// launching: the first four entries of m2f_emulate's plan_out.
extern "C" void m2f_plan(
    const int64_t* sizes_in, int element_bytes, int aligned, int64_t* plan_out) {
  const Sizes<int64_t> sizes{sizes_in[0], sizes_in[1], sizes_in[2], sizes_in[3],
                             sizes_in[4], sizes_in[5], sizes_in[6]};
  const void* pointer = reinterpret_cast<const void*>(aligned ? 4096 : 4098);
  const void* vectors[] = {pointer};
  const LaunchPlan plan = mask2former::kernels::plan_launch(sizes, element_bytes, vectors, 1);
  plan_out[0] = plan.vectorized;
  plan_out[1] = plan.index32;
  plan_out[2] = plan.group_shift;
  plan_out[3] = plan.blocks;
}

// Runs divergent_shuffle_kernel; returns 1 with the error text when the emulation reports it.
extern "C" int m2f_emulation_self_test(char* error, int error_size) {
  cuda_emulation::reset();
  float out[32];
  emulate_launch(divergent_shuffle_kernel, 1, 32, out);
  auto& s = cuda_emulation::state();
  std::snprintf(error, error_size, "%s", s.error.c_str());
  return s.failed ? 1 : 0;
}

// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16 (value's type; locations, weights and
// the backward's gradients other than grad_output are float64 for float64, else float32).
// sizes: batch, num_values, heads, channels, queries, levels, points.
// forward: output (N, Q, M*D) of value's type. backward: output is grad_value (N, S, M, D)
// in the accumulation type, zero-filled by the caller.
// plan_out: vectorized, index32, group_shift, blocks, shuffle calls, vector atomic calls.
// Returns 0, or 1 with the error text.
extern "C" int m2f_emulate(
    int backward, int dtype, const void* value, const int64_t* shapes, const int64_t* starts,
    const void* locations, const void* weights, const void* grad_output, void* output,
    void* grad_locations, void* grad_weights, const int64_t* sizes_in, int64_t max_blocks,
    int force_index64, int64_t* plan_out, char* error, int error_size) {
  cuda_emulation::reset();
  auto& s = cuda_emulation::state();
  Sizes<int64_t> sizes{sizes_in[0], sizes_in[1], sizes_in[2], sizes_in[3],
                       sizes_in[4], sizes_in[5], sizes_in[6]};
  LaunchPlan plan{};
  switch (dtype) {
    case 0:
      run<float, float>(backward, value, shapes, starts, locations, weights, grad_output,
                        output, grad_locations, grad_weights, sizes, plan, max_blocks,
                        force_index64);
      break;
    case 1:
      run<double, double>(backward, value, shapes, starts, locations, weights, grad_output,
                          output, grad_locations, grad_weights, sizes, plan, max_blocks,
                          force_index64);
      break;
    case 2:
      run<c10::Half, float>(backward, value, shapes, starts, locations, weights, grad_output,
                            output, grad_locations, grad_weights, sizes, plan, max_blocks,
                            force_index64);
      break;
    case 3:
      run<c10::BFloat16, float>(backward, value, shapes, starts, locations, weights,
                                grad_output, output, grad_locations, grad_weights, sizes, plan,
                                max_blocks, force_index64);
      break;
    default:
      std::snprintf(error, error_size, "unknown dtype code %d", dtype);
      return 1;
  }
  plan_out[0] = plan.vectorized;
  plan_out[1] = plan.index32;
  plan_out[2] = plan.group_shift;
  plan_out[3] = plan.blocks;
  plan_out[4] = s.shuffles;
  plan_out[5] = s.vector_atomics;
  if (s.failed) {
    std::snprintf(error, error_size, "%s", s.error.c_str());
    return 1;
  }
  return 0;
}
