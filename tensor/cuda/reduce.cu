// Reductions on the GPU: sum, mean, prod, max / min (with the index of the first extreme),
// all / any, norm1, norm2, logsumexp and var over any set of dims, writing a keepdim-shaped
// contiguous output. Like the CPU kernels, f32 inputs accumulate in double (int64 sum / max /
// min too, which is exact up to 2^53; float16 / bfloat16 too, each result rounded once).
//
// Every op is described by one accumulator type with identity / add / combine / finish, so the
// four launch shapes below share it:
//  - one thread per output: few reduced elements, or many outputs whose reads are coalesced
//    across threads (reducing an outer dim);
//  - columns: fewer such outputs, 32 neighbours to a block, its warps (and blocks) sharing each
//    output's elements;
//  - one block per output: enough outputs to fill the GPU, each over many elements;
//  - split: few outputs over very many elements; blocks reduce slices into partial
//    accumulators that a second kernel combines in a fixed order (deterministic results).
#include <cmath>
#include <limits>

#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

// One accumulator for every op, plain so it can live in shared memory. Meaning per op:
//   sum, mean, norm1, norm2: v0 = running sum        prod: v0 = running product
//   max, min: v0 = best value, i = its index (-1: none yet)
//   all, any: v0 = 1 or 0                            logsumexp: v0 = running max, v1 = sum exp(x - v0)
//   var: i = count, v0 = mean, v1 = sum of squared deviations (Chan / Welford)
struct Acc {
  double v0, v1;
  int64_t i;
};

__device__ __forceinline__ bool is_nan(double v) { return v != v; }

template <ReduceOp OP>
struct Reducer {
  static __device__ Acc identity() {
    constexpr double inf = std::numeric_limits<double>::infinity();
    if constexpr (OP == ReduceOp::prod || OP == ReduceOp::all) return {1.0, 0.0, 0};
    else if constexpr (OP == ReduceOp::max || OP == ReduceOp::min) return {0.0, 0.0, -1};
    else if constexpr (OP == ReduceOp::logsumexp) return {-inf, 0.0, 0};
    else return {0.0, 0.0, 0};
  }

  // Whether b's extreme replaces a's: NaN counts as the extreme, ties keep the first index.
  static __device__ bool extreme_prefers(const Acc& a, const Acc& b) {
    if (b.i < 0) return false;
    if (a.i < 0) return true;
    bool a_nan = is_nan(a.v0), b_nan = is_nan(b.v0);
    if (a_nan || b_nan) return a_nan && b_nan ? b.i < a.i : b_nan;
    if (a.v0 == b.v0) return b.i < a.i;
    return OP == ReduceOp::max ? b.v0 > a.v0 : b.v0 < a.v0;
  }

  static __device__ Acc combine(const Acc& a, const Acc& b) {
    if constexpr (OP == ReduceOp::prod) {
      return {a.v0 * b.v0, 0.0, 0};
    } else if constexpr (OP == ReduceOp::max || OP == ReduceOp::min) {
      return extreme_prefers(a, b) ? b : a;
    } else if constexpr (OP == ReduceOp::all) {
      return {(a.v0 != 0.0 && b.v0 != 0.0) ? 1.0 : 0.0, 0.0, 0};
    } else if constexpr (OP == ReduceOp::any) {
      return {(a.v0 != 0.0 || b.v0 != 0.0) ? 1.0 : 0.0, 0.0, 0};
    } else if constexpr (OP == ReduceOp::logsumexp) {
      if (is_nan(a.v0) || is_nan(b.v0)) return {a.v0 + b.v0, 1.0, 0};
      double m = a.v0 > b.v0 ? a.v0 : b.v0;
      if (m == -std::numeric_limits<double>::infinity()) return {m, 0.0, 0};
      // Terms at the max are taken as they are: exp(inf - inf) would be NaN.
      double s = (a.v0 == m ? a.v1 : a.v1 * ::exp(a.v0 - m)) +
                 (b.v0 == m ? b.v1 : b.v1 * ::exp(b.v0 - m));
      return {m, s, 0};
    } else if constexpr (OP == ReduceOp::var) {
      if (a.i == 0) return b;
      if (b.i == 0) return a;
      int64_t n = a.i + b.i;
      double delta = b.v0 - a.v0;
      double mean = a.v0 + delta * double(b.i) / double(n);
      double m2 = a.v1 + b.v1 + delta * delta * double(a.i) * double(b.i) / double(n);
      return {mean, m2, n};
    } else {  // sum, mean, norm1, norm2
      return {a.v0 + b.v0, 0.0, 0};
    }
  }

  static __device__ Acc add(const Acc& a, double v, int64_t index) {
    if constexpr (OP == ReduceOp::norm1) return {a.v0 + ::fabs(v), 0.0, 0};
    else if constexpr (OP == ReduceOp::norm2) return {a.v0 + v * v, 0.0, 0};
    else if constexpr (OP == ReduceOp::var) {
      int64_t n = a.i + 1;
      double delta = v - a.v0;
      double mean = a.v0 + delta / double(n);
      return {mean, a.v1 + delta * (v - mean), n};
    } else if constexpr (OP == ReduceOp::logsumexp) {
      return combine(a, Acc{v, 1.0, 0});
    } else if constexpr (OP == ReduceOp::all || OP == ReduceOp::any) {
      return combine(a, Acc{v != 0.0 ? 1.0 : 0.0, 0.0, 0});
    } else if constexpr (OP == ReduceOp::max || OP == ReduceOp::min) {
      return combine(a, Acc{v, 0.0, index});
    } else if constexpr (OP == ReduceOp::prod) {
      return {a.v0 * v, 0.0, 0};
    } else {
      return {a.v0 + v, 0.0, 0};
    }
  }

  // The output value for `count` reduced elements.
  static __device__ double finish(const Acc& a, int64_t count, double correction) {
    if constexpr (OP == ReduceOp::mean) return a.v0 / double(count);
    else if constexpr (OP == ReduceOp::norm2) return ::sqrt(a.v0);
    else if constexpr (OP == ReduceOp::logsumexp) {
      if (is_nan(a.v0) || ::isinf(a.v0)) return a.v0;
      return a.v0 + ::log(a.v1);
    } else if constexpr (OP == ReduceOp::var) {
      double dof = double(count) - correction;
      return a.v1 / (dof > 0.0 ? dof : 0.0);
    } else return a.v0;
  }
};

// Everything a reduce kernel needs besides the pointers.
struct ReduceArgs {
  Geometry<1> kept;     // x strides over the kept dims, in output order
  Geometry<1> reduced;  // x strides over the reduced dims, row-major flat index order
  int64_t outputs = 0, count = 0;
  double correction = 0;
};

__device__ __forceinline__ int64_t geometry_offset(const Geometry<1>& g, int64_t linear) {
  if (g.ndim <= 1) return linear * g.strides[0][0];
  int64_t off[1];
  g.offsets(linear, off);
  return off[0];
}

template <class T>
__device__ __forceinline__ double load_as_double(const T* p) {
  return convert_value<double>(*p);  // float16 / bfloat16 through float
}

template <ReduceOp OP, class T, class Out>
__device__ __forceinline__ void write_output(const Acc& acc, const ReduceArgs& args, Out* out,
                                             int64_t* indices, int64_t m) {
  out[m] = convert_value<Out>(Reducer<OP>::finish(acc, args.count, args.correction));  // 16-bit: rounded once
  if constexpr (OP == ReduceOp::max || OP == ReduceOp::min) {
    if (indices != nullptr) indices[m] = acc.i;
  }
}

template <ReduceOp OP, class T>
__device__ Acc reduce_range(const T* x, const ReduceArgs& args, int64_t base, int64_t begin,
                            int64_t end, int64_t step) {
  Acc acc = Reducer<OP>::identity();
  for (int64_t r = begin; r < end; r += step)
    acc = Reducer<OP>::add(acc, load_as_double(x + base + geometry_offset(args.reduced, r)), r);
  return acc;
}

// Tree-combines one accumulator per thread; thread 0 returns the block's result.
template <ReduceOp OP, int THREADS>
__device__ Acc block_combine(Acc acc) {
  __shared__ Acc shared[THREADS];
  shared[threadIdx.x] = acc;
  __syncthreads();
#pragma unroll
  for (int half = THREADS / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half)
      shared[threadIdx.x] = Reducer<OP>::combine(shared[threadIdx.x], shared[threadIdx.x + half]);
    __syncthreads();
  }
  Acc result = shared[0];
  __syncthreads();  // the array is reused by the next output of a grid-stride loop
  return result;
}

template <ReduceOp OP, class T, class Out>
__global__ void reduce_thread_per_output(const T* x, Out* out, int64_t* indices, ReduceArgs args) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; m < args.outputs; m += step) {
    Acc acc = reduce_range<OP>(x, args, geometry_offset(args.kept, m), 0, args.count, 1);
    write_output<OP, T>(acc, args, out, indices, m);
  }
}

template <ReduceOp OP, class T, class Out, int THREADS>
__global__ void __launch_bounds__(THREADS)
    reduce_block_per_output(const T* x, Out* out, int64_t* indices, ReduceArgs args) {
  for (int64_t m = blockIdx.x; m < args.outputs; m += gridDim.x) {
    Acc acc = reduce_range<OP>(x, args, geometry_offset(args.kept, m), threadIdx.x, args.count,
                               THREADS);
    acc = block_combine<OP, THREADS>(acc);
    if (threadIdx.x == 0) write_output<OP, T>(acc, args, out, indices, m);
  }
}

// Block (m, s) reduces slice s of output m into partials[m * gridDim.y + s].
template <ReduceOp OP, class T, int THREADS>
__global__ void __launch_bounds__(THREADS)
    reduce_split_partials(const T* x, Acc* partials, ReduceArgs args, int64_t slice) {
  const int64_t begin = int64_t(blockIdx.y) * slice;
  const int64_t end = begin + slice < args.count ? begin + slice : args.count;
  for (int64_t m = blockIdx.x; m < args.outputs; m += gridDim.x) {
    Acc acc = reduce_range<OP>(x, args, geometry_offset(args.kept, m), begin + threadIdx.x, end,
                               THREADS);
    acc = block_combine<OP, THREADS>(acc);
    if (threadIdx.x == 0) partials[m * gridDim.y + blockIdx.y] = acc;
  }
}

// Reducing outer dims into a few thousand outputs (a bias's gradient: [rows, channels] summed
// over rows) as one block per output reads a column: each lane of a warp a different row, a
// 32-byte sector fetched for 4 useful bytes. Here a block's 32 lanes take 32 neighbouring outputs,
// so each warp's load is one coalesced run, and its 8 warps take every 8th element of the block's
// slice of the reduced range (blockIdx.y; one slice: the result, else partials[m * gridDim.y +
// slice] for reduce_split_finish). The warps' results combine in a fixed order.
constexpr int kColumnLanes = 32, kColumnWarps = 8;

template <ReduceOp OP, class T, class Out>
__global__ void __launch_bounds__(kColumnLanes * kColumnWarps)
    reduce_columns(const T* x, Out* out, int64_t* indices, Acc* partials, ReduceArgs args,
                   int64_t slice) {
  __shared__ Acc shared[kColumnWarps][kColumnLanes];
  const int64_t m = int64_t(blockIdx.x) * kColumnLanes + threadIdx.x;
  const int64_t begin = int64_t(blockIdx.y) * slice;
  const int64_t end = begin + slice < args.count ? begin + slice : args.count;
  Acc acc = Reducer<OP>::identity();
  if (m < args.outputs)
    acc = reduce_range<OP>(x, args, geometry_offset(args.kept, m), begin + threadIdx.y, end,
                           kColumnWarps);
  shared[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || m >= args.outputs) return;
  for (int w = 1; w < kColumnWarps; ++w) acc = Reducer<OP>::combine(acc, shared[w][threadIdx.x]);
  if (gridDim.y == 1) write_output<OP, T>(acc, args, out, indices, m);
  else partials[m * gridDim.y + blockIdx.y] = acc;
}

template <ReduceOp OP, class T, class Out>
__global__ void reduce_split_finish(const Acc* partials, int splits, Out* out, int64_t* indices,
                                    ReduceArgs args) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; m < args.outputs; m += step) {
    Acc acc = Reducer<OP>::identity();
    for (int s = 0; s < splits; ++s) acc = Reducer<OP>::combine(acc, partials[m * splits + s]);
    write_output<OP, T>(acc, args, out, indices, m);
  }
}

template <class F>
void with_reduce_op(ReduceOp op, F&& f) {
  switch (op) {
    case ReduceOp::sum: return f.template operator()<ReduceOp::sum>();
    case ReduceOp::mean: return f.template operator()<ReduceOp::mean>();
    case ReduceOp::prod: return f.template operator()<ReduceOp::prod>();
    case ReduceOp::max: return f.template operator()<ReduceOp::max>();
    case ReduceOp::min: return f.template operator()<ReduceOp::min>();
    case ReduceOp::all: return f.template operator()<ReduceOp::all>();
    case ReduceOp::any: return f.template operator()<ReduceOp::any>();
    case ReduceOp::norm1: return f.template operator()<ReduceOp::norm1>();
    case ReduceOp::norm2: return f.template operator()<ReduceOp::norm2>();
    case ReduceOp::logsumexp: return f.template operator()<ReduceOp::logsumexp>();
    case ReduceOp::var: return f.template operator()<ReduceOp::var>();
  }
  fail("cuda reduce: unknown op ", int(op));
}

constexpr int kReduceThreads = 256;

// Queues the kernels for one op and element type on `stream`.
template <ReduceOp OP, class T, class Out>
void launch_reduce(const T* x, Out* out, int64_t* indices, const ReduceArgs& args, int device,
                   cudaStream_t stream) {
  const int64_t sms = multiprocessor_count(device);
  // Reading an outer dim: neighbouring outputs are neighbours in memory, so one thread per
  // output reads coalesced; worth it once there are enough outputs to fill the GPU.
  const bool coalesced_outputs = args.kept.ndim >= 1 && args.kept.strides[0][args.kept.ndim - 1] == 1;
  if (args.count < 64 || (coalesced_outputs && args.outputs >= sms * 256)) {
    reduce_thread_per_output<OP, T, Out><<<blocks_for(args.outputs), kThreads, 0, stream>>>(
        x, out, indices, args);
    BCOS_CUDA_CHECK_LAUNCH();
    return;
  }
  if (coalesced_outputs) {  // fewer than sms * 256 outputs: tiles of 32, slices for 4 blocks an SM
    const int64_t tiles = (args.outputs + kColumnLanes - 1) / kColumnLanes;
    const int64_t per_block = int64_t(kColumnWarps) * 16;  // a slice's least elements
    int64_t splits = std::min<int64_t>((args.count + per_block - 1) / per_block,
                                       std::max<int64_t>(1, 4 * sms / tiles));
    splits = std::min<int64_t>(splits, 65535);  // gridDim.y limit
    const int64_t slice = (args.count + splits - 1) / splits;
    splits = (args.count + slice - 1) / slice;  // no empty slice
    std::shared_ptr<void> workspace;  // as below: safe to return right after the launches
    if (splits > 1) workspace = allocate(size_t(args.outputs * splits) * sizeof(Acc), device);
    Acc* partials = static_cast<Acc*>(workspace.get());
    const dim3 grid{unsigned(tiles), unsigned(splits)}, block{kColumnLanes, kColumnWarps};
    reduce_columns<OP, T, Out><<<grid, block, 0, stream>>>(x, out, indices, partials, args, slice);
    BCOS_CUDA_CHECK_LAUNCH();
    if (splits > 1) {
      reduce_split_finish<OP, T, Out><<<blocks_for(args.outputs), kThreads, 0, stream>>>(
          partials, int(splits), out, indices, args);
      BCOS_CUDA_CHECK_LAUNCH();
    }
    return;
  }
  // Few outputs over many elements: spread each output over several blocks.
  int64_t splits = 1;
  if (args.outputs < 2 * sms) {
    const int64_t per_block = int64_t(kReduceThreads) * 16;  // elements worth one block
    splits = std::min<int64_t>((args.count + per_block - 1) / per_block,
                               std::max<int64_t>(1, 4 * sms / args.outputs));
    splits = std::min<int64_t>(splits, 65535);  // gridDim.y limit
  }
  const unsigned output_blocks = unsigned(std::min<int64_t>(args.outputs, kMaxBlocks));
  if (splits <= 1) {
    reduce_block_per_output<OP, T, Out, kReduceThreads>
        <<<output_blocks, kReduceThreads, 0, stream>>>(x, out, indices, args);
    BCOS_CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t slice = (args.count + splits - 1) / splits;
  // From the caching allocator on this stream: returned right after the launches below, it
  // can only be handed out again to work queued after them.
  std::shared_ptr<void> workspace =
      allocate(size_t(args.outputs * splits) * sizeof(Acc), device);
  Acc* partials = static_cast<Acc*>(workspace.get());
  dim3 grid(output_blocks, unsigned(splits));
  reduce_split_partials<OP, T, kReduceThreads><<<grid, kReduceThreads, 0, stream>>>(
      x, partials, args, slice);
  BCOS_CUDA_CHECK_LAUNCH();
  reduce_split_finish<OP, T, Out><<<blocks_for(args.outputs), kThreads, 0, stream>>>(
      partials, int(splits), out, indices, args);
  BCOS_CUDA_CHECK_LAUNCH();
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, const std::vector<bool>& reduce, const Tensor& out,
            const Tensor& indices, int64_t correction) {
  const char* name = op_name(op);
  BCOS_CHECK(x.defined() && out.defined() && x.is_cuda() && out.device() == x.device(),
             "cuda reduce ", name, ": input and output must be on one CUDA device");
  BCOS_CHECK(int(reduce.size()) == x.dim(), "cuda reduce ", name, ": ", reduce.size(),
             " reduce flags for a tensor with ", x.dim(), " dims");
  const bool logical = op == ReduceOp::all || op == ReduceOp::any;
  const bool extreme = op == ReduceOp::max || op == ReduceOp::min;
  if (logical) {
    BCOS_CHECK(x.dtype() == DType::boolean && out.dtype() == DType::boolean, "cuda reduce ",
               name, ": takes and writes bool, got ", dtype_name(x.dtype()), " -> ",
               dtype_name(out.dtype()));
  } else {
    // int64 as on the CPU: sum, max and min (accumulated in double, exact below 2^53).
    const bool integer_ok = op == ReduceOp::sum || extreme;
    BCOS_CHECK(is_floating(x.dtype()) || (integer_ok && x.dtype() == DType::i64),
               "cuda reduce ", name, ": expected a floating-point tensor",
               integer_ok ? " (or int64)" : "", ", got ", dtype_name(x.dtype()));
    BCOS_CHECK(out.dtype() == x.dtype(), "cuda reduce ", name, ": output is ",
               dtype_name(out.dtype()), ", input is ", dtype_name(x.dtype()));
  }

  // Split the dims: kept ones index the output (reduced dims have size 1 there), the reduced
  // ones are walked for each output.
  Shape kept_shape, reduced_shape;
  Strides kept_strides, reduced_strides;
  for (int d = 0; d < x.dim(); ++d) {
    bool r = reduce[size_t(d)];
    (r ? reduced_shape : kept_shape).push_back(x.shape()[d]);
    (r ? reduced_strides : kept_strides).push_back(x.strides()[d]);
  }
  ReduceArgs args;
  args.kept = make_geometry<1>(kept_shape, {&kept_strides});
  args.reduced = make_geometry<1>(reduced_shape, {&reduced_strides});
  args.outputs = kept_shape.numel();
  args.count = reduced_shape.numel();
  args.correction = double(correction);

  BCOS_CHECK(out.numel() == args.outputs && out.is_contiguous(), "cuda reduce ", name,
             ": output must be contiguous with ", args.outputs, " elements, got shape ",
             out.shape());
  int64_t* index_ptr = nullptr;
  if (indices.defined()) {
    BCOS_CHECK(extreme, "cuda reduce ", name, ": only max and min return indices");
    BCOS_CHECK(indices.device() == x.device() && indices.dtype() == DType::i64 &&
                   indices.is_contiguous() && indices.numel() == args.outputs,
               "cuda reduce ", name, ": indices must be a contiguous int64 tensor with ",
               args.outputs, " elements on ", x.device());
    index_ptr = static_cast<int64_t*>(indices.raw_data());
  }
  if (args.outputs == 0) return;
  BCOS_CHECK(!(extreme && args.count == 0), "cuda reduce ", name,
             ": cannot take the ", name, " over zero elements (input shape ", x.shape(), ")");

  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  with_reduce_op(op, [&]<ReduceOp OP>() {
    if constexpr (OP == ReduceOp::all || OP == ReduceOp::any) {
      launch_reduce<OP, bool, bool>(static_cast<const bool*>(x.raw_data()),
                                    static_cast<bool*>(out.raw_data()), nullptr, args, device,
                                    stream);
    } else if (is_half_float(x.dtype())) {
      dispatch_half(x.dtype(), [&]<class S>() {
        launch_reduce<OP, S, S>(static_cast<const S*>(x.raw_data()), static_cast<S*>(out.raw_data()), index_ptr, args,
                                device, stream);
      });
    } else {
      dispatch_arith(x.dtype(), "cuda reduce", [&]<class T>() {
        if constexpr (std::is_same_v<T, int64_t> &&
                      !(OP == ReduceOp::sum || OP == ReduceOp::max || OP == ReduceOp::min)) {
          fail("cuda reduce ", name, ": int64 is not supported");  // checked above already
        } else {
          launch_reduce<OP, T, T>(static_cast<const T*>(x.raw_data()),
                                  static_cast<T*>(out.raw_data()), index_ptr, args, device,
                                  stream);
        }
      });
    }
  });
}

}  // namespace bcos::cuda
