// The CUDA emulator's device side: what a kernel in tensor/cuda/*.cu sees when g++ compiles it
// for the CPU (meson -Dcuda_emulation=true; translate.py rewrites each launch into a call of
// `launch` below). It exists because GPUs are rare where this project is built: the emulator runs
// the backend's own kernels -- indexing, grid-stride loops, shared memory, __syncthreads, warp
// shuffles, atomics, wmma's tensor-core products (wmma.h) -- on the CPU, so tests/cuda checks their logic on every machine. It does not
// model timing or the memory model (blocks run one after another, a block's threads as
// fibers that switch only at barriers and warp operations), so it cannot find a race inside the
// stretch between two barriers; it does find wrong indices, missing barriers (a read that the
// launch's drawn thread order puts before the write it needs, scheduler.cpp), divergent ones
// (reported as a deadlock), shuffles with exited lanes, launches the hardware would refuse,
// sums that depend on the order of atomics (the block order is drawn too), and -- since a launch
// runs only when its stream's queue is run (runtime.cpp) -- work on another stream that reads
// the kernel's output without waiting for it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>

// CUDA's headers define these as nothing for a host compiler; in the emulator __shared__ memory
// is a static, shared by the block's threads (blocks run one at a time, under a lock).
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

namespace bcos::emu {

// One emulated GPU thread.
struct ThreadState {
  uint3 thread_idx;
  int lane = 0;      // linear index within the block, mod 32
  int warp = 0;      // linear index within the block, / 32
};
extern thread_local ThreadState* current_thread;  // the fiber running now (on this host thread)
extern thread_local uint3 block_index;
extern thread_local dim3 block_dim, grid_dim;

// The order in which a launch's blocks run and its threads take turns between barriers and warp
// operations (BCOS_CUDA_EMULATOR_ORDER, default shuffle: drawn per launch from
// BCOS_CUDA_EMULATOR_SEED). set_order switches it and reseeds the draws (tests).
enum class Order { forward, reverse, shuffle };
void set_order(Order order, uint64_t seed = 0);
Order current_order();

void sync_block();  // __syncthreads
// Fails the running launch with `what` once its thread yields (a fault the hardware would raise,
// or a rule of CUDA's the kernel broke); the thread goes on meanwhile.
void device_fault(const std::string& what);
// Counts a 16-byte pack access (tensor/cuda/internal.h: pack_at) for the running kernel.
void count_pack_access();
// Every lane of the warp hands in `bits`; each gets back the bits of lane `source(lane)`.
uint64_t warp_exchange(uint64_t bits, int source_lane, unsigned mask, const char* op);
unsigned warp_ballot(bool predicate, unsigned mask, const char* op);

// Checks the launch configuration now (one the hardware refuses sets the error cudaGetLastError
// returns, and nothing runs) and queues the grid on `stream`; when it runs, block after block, a
// deadlock or a shuffle that lanes left raises, naming `kernel`, from the call that ran it.
void run_grid(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
              std::function<void()> call);

template <class Kernel>
struct Launch {
  const char* name;
  Kernel kernel;
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
  // The arguments are evaluated once, here, and copied, as a launch copies them; every thread
  // gets copies of those.
  template <class... Args>
  void operator()(Args&&... args) {
    run_grid(name, grid, block, shared_bytes, stream,
             [kernel = kernel, ... a = std::decay_t<Args>(std::forward<Args>(args))] { kernel(a...); });
  }
};

template <class Kernel>
Launch<Kernel> launch(const char* name, Kernel kernel, dim3 grid, dim3 block, size_t shared_bytes = 0,
                      cudaStream_t stream = nullptr) {
  return {name, kernel, grid, block, shared_bytes, stream};
}

template <class T>
T shuffle(T v, int source_lane, unsigned mask, const char* op) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(bits, source_lane, mask, op);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace bcos::emu

#define threadIdx (::bcos::emu::current_thread->thread_idx)
#define blockIdx (::bcos::emu::block_index)
#define blockDim (::bcos::emu::block_dim)
#define gridDim (::bcos::emu::grid_dim)
#define warpSize 32

inline void __syncthreads() { ::bcos::emu::sync_block(); }
// A rendezvous of the warp's lanes (the emulator runs warp operations with every lane only).
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::bcos::emu::warp_ballot(true, mask, "__syncwarp"); }
inline void __threadfence() {}
inline void __threadfence_system() {}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::bcos::emu::current_thread->lane;
  const int source = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  return ::bcos::emu::shuffle(v, source, mask, "__shfl_xor_sync");
}
template <class T>
T __shfl_sync(unsigned mask, T v, int source_lane, int width = 32) {
  const int lane = ::bcos::emu::current_thread->lane;
  return ::bcos::emu::shuffle(v, (lane & ~(width - 1)) | (source_lane & (width - 1)), mask, "__shfl_sync");
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::bcos::emu::current_thread->lane, base = lane & ~(width - 1);
  const int source = (lane - base) + int(delta) < width ? lane + int(delta) : lane;
  return ::bcos::emu::shuffle(v, source, mask, "__shfl_down_sync");
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::bcos::emu::warp_ballot(predicate != 0, mask, "__ballot_sync");
}
inline int __any_sync(unsigned mask, int predicate) {
  return ::bcos::emu::warp_ballot(predicate != 0, mask, "__any_sync") != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
  // No lane votes "false" (lanes a partial warp lacks cast no vote either way).
  return ::bcos::emu::warp_ballot(predicate == 0, mask, "__all_sync") == 0;
}

// Atomics: one host thread runs the whole grid, so a read-modify-write is atomic as written.
#define BCOS_EMU_ATOMIC_ADD(T) \
  inline T atomicAdd(T* p, T v) { T old = *p; *p = static_cast<T>(old + v); return old; }
BCOS_EMU_ATOMIC_ADD(int)
BCOS_EMU_ATOMIC_ADD(unsigned)
BCOS_EMU_ATOMIC_ADD(unsigned long long)
BCOS_EMU_ATOMIC_ADD(float)
BCOS_EMU_ATOMIC_ADD(double)
BCOS_EMU_ATOMIC_ADD(__half)
BCOS_EMU_ATOMIC_ADD(__nv_bfloat16)
#undef BCOS_EMU_ATOMIC_ADD
#define BCOS_EMU_ATOMIC_MINMAX(T) \
  inline T atomicMin(T* p, T v) { T old = *p; if (v < old) *p = v; return old; } \
  inline T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
BCOS_EMU_ATOMIC_MINMAX(int)
BCOS_EMU_ATOMIC_MINMAX(unsigned)
BCOS_EMU_ATOMIC_MINMAX(unsigned long long)
BCOS_EMU_ATOMIC_MINMAX(long long)
#undef BCOS_EMU_ATOMIC_MINMAX
template <class T>
T atomicCAS(T* p, T compare, T v) { T old = *p; if (old == compare) *p = v; return old; }
template <class T>
T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <class T>
T __ldg(const T* p) { return *p; }

// CUDA's device-side min / max over mixed arithmetic types (the common type, as its overloads).
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}

#include "tensor/cuda/emulator/wmma.h"
