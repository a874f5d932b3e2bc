// Optimizer steps and adaptive gradient clipping on the GPU: the update of tensor/optim_math.h,
// so a step reads and writes each parameter and its state once (PyTorch's foreach path runs one
// pass per operation), and a launch per group of up to kTableSize parameters (as PyTorch's
// multi-tensor apply), not one per parameter: a ResNet-50's 161 parameters take 6 launches, where
// each of 161 would cost a few microseconds of an otherwise idle GPU for a 64-element bias. The
// clipping, a dozen composed ops per parameter (two norms, clamps, a comparison, a quotient, a
// product), is likewise one block per unit. The tensors are contiguous (autograd/optim.cpp sees
// to it).
#include <cstdint>

#include "tensor/cuda/internal.h"
#include "tensor/optim_math.h"

namespace bcos::cuda {

namespace {

// A launch's parameters travel by value as the kernel's argument (at most ~1.9 KB of the 4 KB a
// launch may take). Block b belongs to table entry t where first_block[t] <= b < first_block[t + 1].
constexpr int kTableSize = 32;

struct BlockRanges {
  int64_t first_block[kTableSize + 1];
  int count;

  // (A scan of at most kTableSize entries, the same in every thread of the block.)
  __device__ __forceinline__ int entry(int64_t b) const {
    int t = 0;
    while (t + 1 < count && first_block[t + 1] <= b) ++t;
    return t;
  }
};

// Fills tables of up to kTableSize entries, one per tensor t < count with blocks_of(t) > 0 blocks
// (fill(table, k, t) writes entry k), and runs launch(table, blocks) for each.
template <class Table, class BlocksOf, class Fill, class Launch>
void launch_in_tables(size_t count, BlocksOf&& blocks_of, Fill&& fill, Launch&& launch) {
  Table table{};
  auto flush = [&] {
    if (table.ranges.count > 0) launch(table, table.ranges.first_block[table.ranges.count]);
    table = Table{};
  };
  for (size_t t = 0; t < count; ++t) {
    const int64_t blocks = blocks_of(t);
    if (blocks == 0) continue;
    BCOS_CHECK(blocks <= int64_t(INT32_MAX), "cuda optimizer step / clipping: tensor ", t, " needs ", blocks,
               " blocks, more than a grid holds");
    // A grid holds at most 2^31 − 1 blocks: a new table before the sum would pass it.
    BlockRanges& r = table.ranges;
    if (r.count == kTableSize || r.first_block[r.count] + blocks > int64_t(INT32_MAX)) flush();
    const int k = table.ranges.count++;
    fill(table, k, t);
    table.ranges.first_block[k + 1] = table.ranges.first_block[k] + blocks;
  }
  flush();
}

// ---- optimizer steps: each block updates kChunk elements of one parameter ----------------------
constexpr int64_t kChunk = 8 * kThreads;

template <class T>
struct StepTable {
  T* w[kTableSize];
  const T* g[kTableSize];
  T* s0[kTableSize];  // SGD: momentum (nullptr without); Adam: exp_avg
  T* s1[kTableSize];  // Adam: exp_avg_sq
  T* s2[kTableSize];  // Adam: max_exp_avg_sq (nullptr without AMSGrad)
  int64_t numel[kTableSize];
  BlockRanges ranges;
};

// The elements [begin, end) of parameter t that this block updates.
struct Chunk {
  int t;
  int64_t begin, end;
};
template <class T>
__device__ __forceinline__ Chunk chunk_of(const StepTable<T>& table) {
  const int t = table.ranges.entry(blockIdx.x);
  const int64_t begin = (int64_t(blockIdx.x) - table.ranges.first_block[t]) * kChunk;
  return {t, begin, begin + kChunk < table.numel[t] ? begin + kChunk : table.numel[t]};
}

// (With p.on_device, the scalars of the moment: a replayed step's, written before the replay.)
template <class T>
__global__ void sgd_kernel(StepTable<T> table, SgdStepParams launched) {
  const SgdStepParams p = launched.on_device ? *launched.on_device : launched;
  const Chunk c = chunk_of(table);
  T* w = table.w[c.t];
  const T* g = table.g[c.t];
  T* m = table.s0[c.t];
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) {
    T unused = 0;
    math::sgd_update(w[i], g[i], m ? m[i] : unused, p);
  }
}

template <class T>
__global__ void adam_kernel(StepTable<T> table, AdamStepParams launched) {
  const AdamStepParams p = launched.on_device ? *launched.on_device : launched;
  const Chunk c = chunk_of(table);
  T* w = table.w[c.t];
  const T* g = table.g[c.t];
  T *m = table.s0[c.t], *v = table.s1[c.t], *vmax = table.s2[c.t];
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) {
    T unused = 0;
    math::adam_update(w[i], g[i], m[i], v[i], vmax ? vmax[i] : unused, p);
  }
}

// state(t, k): state tensor k of parameter t, or nullptr.
template <class T, class State, class Launch>
void step_in_tables(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, State&& state,
                    Launch&& launch) {
  launch_in_tables<StepTable<T>>(
      params.size(), [&](size_t t) { return (params[t].numel() + kChunk - 1) / kChunk; },
      [&](StepTable<T>& table, int k, size_t t) {
        table.w[k] = params[t].data<T>();
        table.g[k] = grads[t].data<T>();
        table.s0[k] = state(t, 0);
        table.s1[k] = state(t, 1);
        table.s2[k] = state(t, 2);
        table.numel[k] = params[t].numel();
      },
      launch);
}

// ---- adaptive gradient clipping: a block per unit ------------------------------------------------
template <class T>
struct ClipTable {
  const T* p[kTableSize];
  T* g[kTableSize];
  int64_t length[kTableSize];  // elements per unit
  BlockRanges ranges;
};

// The unit's two sums of squares in double, each thread's strided share, then the warps' sums,
// then the warps' partials added in warp order by one thread (the same result on every run).
template <class T>
__global__ void adaptive_clip_kernel(ClipTable<T> table, double clip, double eps) {
  __shared__ double partial[2][kThreads / 32];
  __shared__ T factor;
  const int t = table.ranges.entry(blockIdx.x);
  const int64_t length = table.length[t], unit = int64_t(blockIdx.x) - table.ranges.first_block[t];
  const T* p = table.p[t] + unit * length;
  T* g = table.g[t] + unit * length;
  double param_sumsq = 0, grad_sumsq = 0;
  for (int64_t i = threadIdx.x; i < length; i += blockDim.x) {
    const double a = double(p[i]), b = double(g[i]);
    param_sumsq += a * a;
    grad_sumsq += b * b;
  }
  param_sumsq = warp_sum(param_sumsq);
  grad_sumsq = warp_sum(grad_sumsq);
  const int warp = int(threadIdx.x) / 32;
  if (threadIdx.x % 32 == 0) partial[0][warp] = param_sumsq, partial[1][warp] = grad_sumsq;
  __syncthreads();
  if (threadIdx.x == 0) {
    double ps = 0, gs = 0;
    for (int w = 0; w < int(blockDim.x) / 32; ++w) ps += partial[0][w], gs += partial[1][w];
    factor = math::adaptive_clip_factor<T>(ps, gs, clip, eps);
  }
  __syncthreads();
  const T f = factor;
  for (int64_t i = threadIdx.x; i < length; i += blockDim.x) g[i] = g[i] * f;
}

}  // namespace

// A step captured with its scalars as the launch's arguments would repeat them at every replay
// (the learning rate of the capture, its step count's bias corrections): inside a capture the
// kernels read them from device memory that the replays rewrite (nn/optim.cpp).
void refuse_scalars_by_value(const char* op, size_t tensors, bool on_device) {
  BCOS_CHECK(!capturing() || on_device, op, " over ", tensors, " tensors inside a CUDA graph capture: its scalars "
             "must be read from device memory (on_device), or each replay would repeat the captured learning rate "
             "and step count; nn::SGD / nn::Adam do this, or step after each replay");
}

void sgd_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& momenta,
              const SgdStepParams& p) {
  const int device = params.front().device().index;
  refuse_scalars_by_value("sgd_step", params.size(), p.on_device != nullptr);
  DeviceGuard guard(device);
  dispatch_float(params.front().dtype(), "sgd_step", [&]<class T>() {
    auto state = [&](size_t t, int k) -> T* { return k == 0 && p.momentum != 0 ? momenta[t].data<T>() : nullptr; };
    step_in_tables<T>(params, grads, state, [&](const StepTable<T>& table, int64_t blocks) {
      sgd_kernel<T><<<unsigned(blocks), kThreads, 0, stream_of(device)>>>(table, p);
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void adam_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
               const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
               const std::vector<Tensor>& max_exp_avg_sqs, const AdamStepParams& p) {
  const int device = params.front().device().index;
  refuse_scalars_by_value("adam_step", params.size(), p.on_device != nullptr);
  DeviceGuard guard(device);
  dispatch_float(params.front().dtype(), "adam_step", [&]<class T>() {
    auto state = [&](size_t t, int k) -> T* {
      if (k == 0) return exp_avgs[t].data<T>();
      if (k == 1) return exp_avg_sqs[t].data<T>();
      return p.amsgrad ? max_exp_avg_sqs[t].data<T>() : nullptr;
    };
    step_in_tables<T>(params, grads, state, [&](const StepTable<T>& table, int64_t blocks) {
      adam_kernel<T><<<unsigned(blocks), kThreads, 0, stream_of(device)>>>(table, p);
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void adaptive_clip(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                   const std::vector<int64_t>& units, double clip, double eps) {
  const int device = params.front().device().index;
  DeviceGuard guard(device);
  dispatch_float(params.front().dtype(), "adaptive_clip", [&]<class T>() {
    launch_in_tables<ClipTable<T>>(
        params.size(), [&](size_t t) { return params[t].numel() == 0 ? int64_t(0) : units[t]; },
        [&](ClipTable<T>& table, int k, size_t t) {
          table.p[k] = params[t].data<T>();
          table.g[k] = grads[t].data<T>();
          table.length[k] = params[t].numel() / units[t];
        },
        [&](const ClipTable<T>& table, int64_t blocks) {
          adaptive_clip_kernel<T><<<unsigned(blocks), kThreads, 0, stream_of(device)>>>(table, clip, eps);
          BCOS_CUDA_CHECK_LAUNCH();
        });
  });
}

}  // namespace bcos::cuda
