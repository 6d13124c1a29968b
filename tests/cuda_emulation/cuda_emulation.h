// Host stand-ins for the CUDA features that the multi-scale deformable attention kernels use,
// so that ms_deform_attn_kernels.cuh compiles with g++ and its kernels run on the CPU:
//   - a launch runs the blocks, and the warps of a block, one after another; the 32 lanes
//     of a warp are fibers (ucontext) on the calling thread, switched round-robin at every
//     shuffle, so a run is deterministic and costs one CPU core;
//   - atomicAdd is a plain addition (one fiber runs at a time);
//   - __shfl_xor_sync is a rendezvous of the lanes named in its mask: each lane deposits its
//     value and yields until the others have. A lane outside the mask, a partner outside it,
//     or a lane that never arrives (divergent shuffles: it finished, or every lane is
//     waiting) is an error: emulation state().error names it, and the lanes go on with
//     zeros so that the launch ends.
// The kernels need nothing else (no shared memory, no __syncthreads). Tests only.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(threads)

using cudaStream_t = void*;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline dim3 threadIdx;
inline dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

using std::floor;

namespace cuda_emulation {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;

struct Warp {
  double slot[kWarp][2] = {};
  uint64_t rounds[kWarp] = {};
  bool finished[kWarp] = {};
};

struct State {
  bool failed = false;
  std::string error;
  int64_t shuffles = 0;  // shuffle calls, over all lanes
  int64_t vector_atomics = 0;  // float4 atomicAdd calls (MASK2FORMER_EMULATE_SM90)
  int64_t progress = 0;  // deposits, reads and finished lanes: a pass without any is a deadlock
  ucontext_t scheduler;
  ucontext_t* lane_context = nullptr;
  Warp* warp = nullptr;
  int lane = 0;
  void (*body)(void*) = nullptr;
  void* body_argument = nullptr;
};

inline State& state() {
  static State instance;
  return instance;
}

// Clears the error and the counters before a launch.
inline void reset() {
  State& s = state();
  s.failed = false;
  s.error.clear();
  s.shuffles = 0;
  s.vector_atomics = 0;
  s.progress = 0;
}

inline void fail(const std::string& message) {
  State& s = state();
  if (!s.failed) {
    s.failed = true;
    s.error = message;
  }
}

inline std::string where() {
  std::ostringstream out;
  out << "block " << blockIdx.x << " thread " << threadIdx.x;
  return out.str();
}

inline void yield_to_scheduler() {
  State& s = state();
  swapcontext(s.lane_context, &s.scheduler);
}

inline void lane_entry() {
  State& s = state();
  s.body(s.body_argument);
  s.warp->finished[s.lane] = true;
  ++s.progress;
  // returning resumes the scheduler (uc_link)
}

}  // namespace cuda_emulation

inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

inline double atomicAdd(double* address, double value) {
  const double old = *address;
  *address = old + value;
  return old;
}

#ifdef MASK2FORMER_EMULATE_SM90
// The float4 atomic of compute capability 9.x (global memory, 16-byte aligned).
struct alignas(16) float4 {
  float x, y, z, w;
};

inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline void check_vector_alignment(const void* address, int bytes) {
  if (reinterpret_cast<uintptr_t>(address) % bytes != 0) {
    cuda_emulation::fail(
        cuda_emulation::where() + ": vector atomicAdd on a misaligned address");
  }
}

inline float4 atomicAdd(float4* address, float4 value) {
  check_vector_alignment(address, 16);
  ++cuda_emulation::state().vector_atomics;
  const float4 old = *address;
  *address = {old.x + value.x, old.y + value.y, old.z + value.z, old.w + value.w};
  return old;
}
#endif

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  using namespace cuda_emulation;
  State& s = state();
  const int lane = s.lane;
  const int source = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  if (!((mask >> lane) & 1u) || !((mask >> source) & 1u)) {
    std::ostringstream out;
    out << where() << ": __shfl_xor_sync with mask " << std::hex << mask << std::dec
        << " from lane " << lane << " reading lane " << source << ", outside the mask";
    fail(out.str());
    return T(0);
  }
  ++s.shuffles;
  Warp& warp = *s.warp;
  const uint64_t round = warp.rounds[lane];
  warp.slot[lane][round % 2] = static_cast<double>(value);
  warp.rounds[lane] = round + 1;
  ++s.progress;
  for (;;) {
    if (s.failed) {
      return T(0);
    }
    int missing = -1;
    for (int other = 0; other < kWarp && missing < 0; ++other) {
      if (((mask >> other) & 1u) && warp.rounds[other] < round + 1) {
        missing = other;
      }
    }
    if (missing < 0) {
      break;
    }
    if (warp.finished[missing]) {
      std::ostringstream out;
      out << where() << ": __shfl_xor_sync number " << round + 1 << " with mask " << std::hex
          << mask << std::dec << ": lane " << missing
          << " never reached it (divergent shuffle)";
      fail(out.str());
      return T(0);
    }
    yield_to_scheduler();
  }
  ++s.progress;
  // Double buffering is safe: a lane writes round + 2's slot only after every lane of the
  // mask has deposited round + 1, i.e. after they all read this round.
  return static_cast<T>(warp.slot[source][round % 2]);
}

namespace cuda_emulation {

template <typename Call>
void call_body(void* call) {
  (*static_cast<Call*>(call))();
}

}  // namespace cuda_emulation

// Runs kernel(args...) on a grid of `blocks` blocks of `threads` threads.
template <typename... Params, typename... Args>
void emulate_launch(void (*kernel)(Params...), unsigned blocks, int threads, Args... args) {
  using namespace cuda_emulation;
  State& s = state();
  gridDim = dim3{blocks, 1, 1};
  blockDim = dim3{static_cast<unsigned>(threads), 1, 1};
  auto call = [&] { kernel(args...); };
  s.body = &call_body<decltype(call)>;
  s.body_argument = &call;
  std::vector<ucontext_t> contexts(kWarp);
  std::vector<std::vector<char>> stacks(kWarp, std::vector<char>(kStackBytes));
  for (unsigned block = 0; block < blocks && !s.failed; ++block) {
    for (int first = 0; first < threads && !s.failed; first += kWarp) {
      const int lanes = threads - first < kWarp ? threads - first : kWarp;
      Warp warp;
      for (int lane = lanes; lane < kWarp; ++lane) {
        warp.finished[lane] = true;  // a partial warp's missing lanes
      }
      for (int lane = 0; lane < lanes; ++lane) {
        getcontext(&contexts[lane]);
        contexts[lane].uc_stack.ss_sp = stacks[lane].data();
        contexts[lane].uc_stack.ss_size = kStackBytes;
        contexts[lane].uc_link = &s.scheduler;
        makecontext(&contexts[lane], lane_entry, 0);
      }
      s.warp = &warp;
      int finished = 0;
      while (finished < lanes) {
        const int64_t progress_before = s.progress;
        finished = 0;
        for (int lane = 0; lane < lanes; ++lane) {
          if (warp.finished[lane]) {
            ++finished;
            continue;
          }
          blockIdx = dim3{block, 1, 1};
          threadIdx = dim3{static_cast<unsigned>(first + lane), 1, 1};
          s.lane = lane;
          s.lane_context = &contexts[lane];
          swapcontext(&s.scheduler, &contexts[lane]);
        }
        if (finished < lanes && s.progress == progress_before) {
          std::ostringstream out;
          out << "block " << block << " warp " << first / kWarp
              << ": every unfinished lane waits at a shuffle (divergent shuffles)";
          fail(out.str());
          break;  // the waiting lanes are abandoned
        }
      }
    }
  }
}
