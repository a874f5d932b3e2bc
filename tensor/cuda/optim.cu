// Optimizer steps on the GPU: the update of tensor/optim_math.h, so a step reads and writes each
// parameter and its state once (PyTorch's foreach path runs one pass per operation), and a
// launch per group of up to kTableSize parameters (as PyTorch's multi-tensor apply), not one per
// parameter: a ResNet-50's 161 parameters take 6 launches, where each of 161 would cost a few
// microseconds of an otherwise idle GPU for a 64-element bias. The tensors are contiguous
// (autograd/optim.cpp sees to it).
#include <cstdint>

#include "tensor/cuda/internal.h"
#include "tensor/optim_math.h"

namespace bcos::cuda {

namespace {

// A launch's parameters, passed by value as the kernel's argument (~1.9 KB of the 4 KB a launch
// may take). Each block updates one chunk of one parameter: block b belongs to parameter t where
// first_block[t] <= b < first_block[t + 1].
constexpr int kTableSize = 32;
constexpr int64_t kChunk = 8 * kThreads;  // elements per block

template <class T>
struct StepTable {
  T* w[kTableSize];
  const T* g[kTableSize];
  T* s0[kTableSize];  // SGD: momentum (nullptr without); Adam: exp_avg
  T* s1[kTableSize];  // Adam: exp_avg_sq
  T* s2[kTableSize];  // Adam: max_exp_avg_sq (nullptr without AMSGrad)
  int64_t numel[kTableSize];
  int64_t first_block[kTableSize + 1];
  int count;
};

// The parameter of block b (a scan of at most kTableSize entries, the same in every thread).
template <class T>
__device__ __forceinline__ int table_entry(const StepTable<T>& table, int64_t b) {
  int t = 0;
  while (t + 1 < table.count && table.first_block[t + 1] <= b) ++t;
  return t;
}

template <class T>
__global__ void sgd_kernel(StepTable<T> table, SgdStepParams p) {
  const int t = table_entry(table, blockIdx.x);
  const int64_t begin = (int64_t(blockIdx.x) - table.first_block[t]) * kChunk;
  const int64_t end = begin + kChunk < table.numel[t] ? begin + kChunk : table.numel[t];
  T* w = table.w[t];
  const T* g = table.g[t];
  T* m = table.s0[t];
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    T unused = 0;
    math::sgd_update(w[i], g[i], m ? m[i] : unused, p);
  }
}

template <class T>
__global__ void adam_kernel(StepTable<T> table, AdamStepParams p) {
  const int t = table_entry(table, blockIdx.x);
  const int64_t begin = (int64_t(blockIdx.x) - table.first_block[t]) * kChunk;
  const int64_t end = begin + kChunk < table.numel[t] ? begin + kChunk : table.numel[t];
  T* w = table.w[t];
  const T* g = table.g[t];
  T *m = table.s0[t], *v = table.s1[t], *vmax = table.s2[t];
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    T unused = 0;
    math::adam_update(w[i], g[i], m[i], v[i], vmax ? vmax[i] : unused, p);
  }
}

// Fills tables of up to kTableSize non-empty parameters and launches `launch(table, blocks)` for
// each. state(t, k) gives state tensor k of parameter t, or nullptr.
template <class T, class State, class Launch>
void launch_in_tables(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, State&& state,
                      Launch&& launch) {
  StepTable<T> table{};
  auto flush = [&] {
    if (table.count > 0) launch(table, table.first_block[table.count]);
    table = StepTable<T>{};
  };
  for (size_t t = 0; t < params.size(); ++t) {
    const int64_t n = params[t].numel();
    if (n == 0) continue;
    const int64_t blocks = (n + kChunk - 1) / kChunk;
    // A grid holds at most 2^31 − 1 blocks: a new table before the sum would pass it.
    if (table.count == kTableSize || table.first_block[table.count] + blocks > int64_t(INT32_MAX)) flush();
    const int k = table.count++;
    table.w[k] = params[t].data<T>();
    table.g[k] = grads[t].data<T>();
    table.s0[k] = state(t, 0);
    table.s1[k] = state(t, 1);
    table.s2[k] = state(t, 2);
    table.numel[k] = n;
    table.first_block[k + 1] = table.first_block[k] + blocks;
  }
  flush();
}

}  // namespace

void sgd_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& momenta,
              const SgdStepParams& p) {
  const int device = params.front().device().index;
  DeviceGuard guard(device);
  dispatch_float(params.front().dtype(), "sgd_step", [&]<class T>() {
    auto state = [&](size_t t, int k) -> T* { return k == 0 && p.momentum != 0 ? momenta[t].data<T>() : nullptr; };
    launch_in_tables<T>(params, grads, state, [&](const StepTable<T>& table, int64_t blocks) {
      sgd_kernel<T><<<unsigned(blocks), kThreads, 0, stream_of(device)>>>(table, p);
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
               const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
               const std::vector<Tensor>& max_exp_avg_sqs, const AdamStepParams& p) {
  const int device = params.front().device().index;
  DeviceGuard guard(device);
  dispatch_float(params.front().dtype(), "adam_step", [&]<class T>() {
    auto state = [&](size_t t, int k) -> T* {
      if (k == 0) return exp_avgs[t].data<T>();
      if (k == 1) return exp_avg_sqs[t].data<T>();
      return p.amsgrad ? max_exp_avg_sqs[t].data<T>() : nullptr;
    };
    launch_in_tables<T>(params, grads, state, [&](const StepTable<T>& table, int64_t blocks) {
      adam_kernel<T><<<unsigned(blocks), kThreads, 0, stream_of(device)>>>(table, p);
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace bcos::cuda
