// 2-D convolution on the GPU through cuDNN: forward, backward-data and backward-filter with
// groups, stride, padding and dilation. The algorithm is cuDNN's heuristic choice
// (cudnnGet*Algorithm_v7, fastest first -- deterministic ones only under
// deterministic_algorithms()), run with the math type cuDNN rated it with; the first that runs
// is cached per shape, and one whose workspace does not fit or that cuDNN refuses gives way to
// the next (with cudnn_benchmark() on: every one that runs is timed, and the fastest cached). The workspace comes from the caching allocator. f32 convolutions may use TF32
// tensor cores when allow_tf32() is on (as matmul, and as PyTorch's cuDNN default); f64 never. Under autocast the operands are copied to
// bf16 (or f16), cuDNN convolves those summing in float32 (its "pseudo" bf16 / half
// configuration) into a bf16 result, which is widened into the float32 output. cuDNN 9 marks this descriptor API
// deprecated in favour of its graph API; it is still shipped, and is the smallest readable way.
// Under cudnn_graph_api() each direction goes to the graph API first (conv_graph.cu: the engines
// PyTorch's convolutions reach), and here only where that declines.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "tensor/copy.h"
#include "tensor/cuda/cudnn_common.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#pragma nv_diag_suppress 1444  // "declared deprecated" (nvcc's front end)

namespace bcos::cuda {

namespace {

using cudnn::gives_way;
using cudnn::TimedRun;

// The tensors one convolution call reads and writes, in the type cuDNN gets: as they are, or
// under autocast (p.operands) 16-bit copies and a 16-bit result that finish() widens into the
// caller's float32 output.
struct ConvOperands {
  Tensor first, second, result;
  DType type;
  ConvOperands(const Tensor& a, const Tensor& b, const Tensor& out, const Conv2dParams& p) {
    const bool autocast = p.operands != DType::f32 && a.dtype() == DType::f32;
    type = autocast ? p.operands : a.dtype();
    first = autocast ? narrowed(a) : raw_contiguous(a);
    second = autocast ? narrowed(b) : raw_contiguous(b);
    result = autocast ? empty(out.shape(), {type, out.device()}) : out;
  }
  Tensor narrowed(const Tensor& t) const {
    Tensor r = empty(t.shape(), {type, t.device()});
    copy(r, t);
    return r;
  }
  void finish(const Tensor& out) const {
    if (result.raw_data() != out.raw_data()) copy(out, result);
  }
};

// The descriptors of one convolution, destroyed with it.
struct ConvDescriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
             int64_t, int64_t, int64_t, int, bool, bool>
      key;  // every size and parameter: the algorithm cache's key
  bool deterministic = false;
  bool fma_only = false;  // float32 with TF32 off
  const Shape *xs_, *ws_, *ys_;  // the caller's, alive for the call: formatted only for a message
  DType dt_;

  ConvDescriptors(const Shape& xs, const Shape& ws, const Shape& ys, const Conv2dParams& p, DType dt, const char* op)
      : xs_(&xs), ws_(&ws), ys_(&ys), dt_(dt) {
    const cudnnDataType_t type = cudnn::data_type(dt, op);
    // The descriptors take int sizes and cuDNN's kernels index in 32 bits (PyTorch splits such
    // batches; here it is an error, not a silently truncated size).
    for (const Shape* sh : {&xs, &ws, &ys})
      BCOS_CHECK(sh->numel() <= INT_MAX, op, " ", shapes(), ": a tensor of more than 2^31 - 1 elements, "
                 "beyond cuDNN's 32-bit sizes; split the batch");
    BCOS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    BCOS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    BCOS_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    BCOS_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    BCOS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, type, int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3])));
    BCOS_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, type, int(ys[0]), int(ys[1]), int(ys[2]), int(ys[3])));
    BCOS_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, type, CUDNN_TENSOR_NCHW, int(ws[0]), int(ws[1]), int(ws[2]), int(ws[3])));
    BCOS_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, int(p.padding[0]), int(p.padding[1]), int(p.stride[0]),
                                                     int(p.stride[1]), int(p.dilation[0]), int(p.dilation[1]),
                                                     CUDNN_CROSS_CORRELATION, cudnn::compute_type(dt, op)));
    BCOS_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, int(p.groups)));
    // PyTorch's choices: tensor cores for 16-bit operands (TENSOR_OP), float32 as TF32 only when
    // allowed (DEFAULT permits TF32, FMA forbids it), float64 left to cuDNN (DEFAULT).
    const bool tf32 = dt == DType::f32 && allow_tf32();
    const cudnnMathType_t math = dt == DType::bf16 || dt == DType::f16 ? CUDNN_TENSOR_OP_MATH
                                 : dt == DType::f32 && !tf32          ? CUDNN_FMA_MATH
                                                                      : CUDNN_DEFAULT_MATH;
    BCOS_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, math));
    deterministic = deterministic_algorithms();
    fma_only = dt == DType::f32 && !tf32;
    key = {xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], p.stride[0], p.stride[1], p.padding[0], p.padding[1],
           p.dilation[0], p.dilation[1], p.groups, int(dt), tf32, deterministic};
  }
  std::string shapes() const { return str("(x ", *xs_, ", w ", *ws_, ", y ", *ys_, ", ", dtype_name(dt_), ")"); }
  ~ConvDescriptors() {
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
  ConvDescriptors(const ConvDescriptors&) = delete;
  ConvDescriptors& operator=(const ConvDescriptors&) = delete;
};

// alpha = 1, beta = 0 in the type cuDNN expects for the data type (double for f64, float else).
struct Scalars {
  float f1 = 1, f0 = 0;
  double d1 = 1, d0 = 0;
  const void* one(DType dt) const { return dt == DType::f64 ? static_cast<const void*>(&d1) : &f1; }
  const void* zero(DType dt) const { return dt == DType::f64 ? static_cast<const void*>(&d0) : &f0; }
};

std::shared_ptr<void> workspace(size_t bytes, int device) {
  return bytes ? allocate(bytes, device) : std::shared_ptr<void>();
}

// One entry of cuDNN's heuristics: the algorithm and the math type cuDNN rated it with. Since
// cuDNN 7.4 the pair chooses the kernel, so the math type goes on the descriptor before the
// workspace query and the call (as PyTorch sets it).
template <class Algo>
struct Choice {
  Algo algo;
  cudnnMathType_t math;
};

// The heuristics' entries that may run, fastest first: those cuDNN reports as running; only the
// deterministic ones under deterministic_algorithms(); for float32 without TF32 only FMA math --
// and should cuDNN rate none with FMA math, every entry with FMA math forced on it, so that TF32
// stays off whatever the heuristics answer.
template <class Perf>
auto usable(const Perf* perf, int count, const ConvDescriptors& d) {
  std::vector<Choice<decltype(perf->algo)>> out, forced;
  for (int i = 0; i < count; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS || (d.deterministic && perf[i].determinism != CUDNN_DETERMINISTIC))
      continue;
    if (!d.fma_only || perf[i].mathType == CUDNN_FMA_MATH) out.push_back({perf[i].algo, perf[i].mathType});
    if (d.fma_only) forced.push_back({perf[i].algo, CUDNN_FMA_MATH});
  }
  return out.empty() ? forced : out;
}

// The choice that ran, per (device, shape, direction), and whether it was timed (cudnn_benchmark:
// a shape first seen without it is timed again once it is on).
template <class Algo>
struct AlgoCache {
  std::mutex mu;
  std::map<std::tuple<int, decltype(ConvDescriptors::key), bool>, Choice<Algo>> choices;

  std::optional<Choice<Algo>> find(int device, const ConvDescriptors& d, bool timed) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = choices.find({device, d.key, timed});
    if (it == choices.end()) return std::nullopt;
    return it->second;
  }
  void keep(int device, const ConvDescriptors& d, bool timed, Choice<Algo> c) {
    std::lock_guard<std::mutex> lock(mu);
    choices.insert_or_assign(std::tuple{device, d.key, timed}, c);
  }
};

std::atomic<int64_t> g_benchmarked{0}, g_searched{0};

AlgoCache<cudnnConvolutionFwdAlgo_t> g_forward;
AlgoCache<cudnnConvolutionBwdDataAlgo_t> g_backward_data;
AlgoCache<cudnnConvolutionBwdFilterAlgo_t> g_backward_filter;

// Runs one direction of a convolution: `call` names the cuDNN function, `list` asks the
// heuristics, `size(algo, &bytes)` and `run(algo, workspace, bytes)` wrap its workspace query and
// itself. The first time a shape is seen its entries are tried in order until one runs, and
// that one is kept: an entry whose workspace the device cannot hold, or that cuDNN refuses when
// asked for its workspace or called (gives_way: its heuristics may list what a shape then cannot
// run), gives way to the next, as in PyTorch. The kept one failing so later (another view's
// alignment, a fuller device) sends the shape back through the list. Any other failure raises,
// naming the operation and the shapes.
template <class Algo, class List, class Size, class Run>
void convolve(AlgoCache<Algo>& cache, int device, const ConvDescriptors& d, const char* op, const char* call,
              List&& list, Size&& size, Run&& run) {
  // One call with choice c; `timing`, when given, brackets the call itself (not the workspace query
  // and allocation before it) with its two events on the device's stream.
  auto attempt = [&](const Choice<Algo>& c, TimedRun* timing = nullptr) {
    BCOS_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, c.math));
    size_t bytes = 0;
    if (const cudnnStatus_t status = size(c.algo, &bytes); status != CUDNN_STATUS_SUCCESS) return status;
    std::shared_ptr<void> ws = workspace(bytes, device);  // may raise OutOfMemoryError
    if (timing) record_event(device, timing->start, stream_of(device));
    const cudnnStatus_t status = run(c.algo, ws.get(), bytes);
    if (timing) record_event(device, timing->end, stream_of(device));
    return status;
  };
  auto raise = [&](cudnnStatus_t status, const Choice<Algo>& c) {
    fail(op, " ", d.shapes(), ": ", call, " or its workspace query (algorithm ", int(c.algo), ", math type ",
         int(c.math), ") failed with ", cudnnGetErrorString(status), " (status ", int(status), ")");
  };
  // Not inside a CUDA graph capture, whose events cannot be waited for: the heuristics' choice
  // there -- unless a timed choice exists (a warm-up in benchmark mode), which serves any call.
  const bool timed = cudnn_benchmark() && !capturing();
  std::optional<Choice<Algo>> kept = cache.find(device, d, true);
  if (!kept && !timed) kept = cache.find(device, d, false);
  if (kept) {
    cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
    try {
      status = attempt(*kept);
    } catch (const OutOfMemoryError&) {
      status = CUDNN_STATUS_NOT_SUPPORTED;  // its workspace no longer fits: search again
    }
    if (status == CUDNN_STATUS_SUCCESS) return;
    if (!gives_way(status)) raise(status, *kept);
  }
  g_searched.fetch_add(1, std::memory_order_relaxed);
  const std::vector<Choice<Algo>> choices = list();
  std::string passed;  // why each entry gave way
  // c run once: true when it ran, false when it gave way (why goes to `passed`); other failures raise.
  auto runs = [&](const Choice<Algo>& c, TimedRun* timing = nullptr) {
    cudnnStatus_t status = CUDNN_STATUS_SUCCESS;
    try {
      status = attempt(c, timing);
    } catch (const OutOfMemoryError& e) {
      passed += str("; algorithm ", int(c.algo), ": its workspace does not fit (", e.what(), ")");
      return false;
    }
    if (gives_way(status)) {
      passed += str("; algorithm ", int(c.algo), ": ", cudnnGetErrorString(status));
      return false;
    }
    if (status != CUDNN_STATUS_SUCCESS) raise(status, c);
    return true;
  };
  // Benchmarking: each entry that runs is run once more, timed (the first run warms it up: cuDNN
  // loads an engine's kernels on first use); then the fastest is kept -- run once more unless the
  // output already holds its result (it ran last), falling back to the next fastest should that
  // run give way. Entries whose warm-up ran but whose timed run gave way rank last.
  struct Ran {
    Choice<Algo> choice;
    std::unique_ptr<TimedRun> timing;  // null: not timed
  };
  std::vector<Ran> ran;
  std::optional<Choice<Algo>> last;  // whose result the output holds
  for (const Choice<Algo>& c : choices) {
    if (!runs(c)) continue;
    if (!timed) {
      cache.keep(device, d, false, c);
      return;
    }
    last = c;
    auto timing = std::make_unique<TimedRun>(device);
    const bool timed_run = runs(c, timing.get());
    ran.push_back({c, timed_run ? std::move(timing) : nullptr});
  }
  std::vector<std::pair<float, size_t>> ranked;  // (ms, index into ran); untimed: +inf
  for (size_t i = 0; i < ran.size(); ++i) {
    float ms = INFINITY;
    if (ran[i].timing) {
      event_synchronize(device, ran[i].timing->end);
      ms = event_elapsed_ms(device, ran[i].timing->start, ran[i].timing->end);
    }
    ranked.emplace_back(ms, i);
  }
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [ms, i] : ranked) {
    const Choice<Algo>& c = ran[i].choice;
    const bool holds = last && last->algo == c.algo && last->math == c.math;
    if (!holds && !runs(c)) continue;
    cache.keep(device, d, true, c);
    g_benchmarked.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const std::string kind = str(d.deterministic ? " deterministic" : "", d.fma_only ? " FMA-math (TF32 off)" : "");
  if (choices.empty()) fail(op, " ", d.shapes(), ": cuDNN's heuristics offer no", kind, " algorithm for it");
  fail(op, " ", d.shapes(), ": none of the ", choices.size(), kind, " algorithms cuDNN's heuristics offer runs",
       passed);
}

}  // namespace

int64_t conv_algorithms_benchmarked() { return g_benchmarked.load(std::memory_order_relaxed); }
int64_t conv_algorithm_searches() { return g_searched.load(std::memory_order_relaxed); }

void conv2d_forward(const Tensor& x_in, const Tensor& w_in, const Tensor& bias, const Tensor& out,
                    const Conv2dParams& p) {
  const char* op = "cuda conv2d";
  if (out.numel() == 0) return;
  const int device = x_in.device().index;
  DeviceGuard guard(device);
  const ConvOperands io(x_in, w_in, out, p);
  const Tensor &x = io.first, &w = io.second, &y = io.result;
  cudnnHandle_t h = cudnn::handle(device);
  const Scalars s;
  if (!cudnn_graph_api() || !cudnn::convolve(cudnn::Direction::forward, device, x, w, y, p, op)) {
    ConvDescriptors d(x.shape(), w.shape(), out.shape(), p, io.type, op);
    convolve(
        g_forward, device, d, op, "cudnnConvolutionForward",
        [&] {
          cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
          int count = 0;
          BCOS_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y,
                                                                  CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf));
          return usable(perf, count, d);
        },
        [&](cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
          return cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, algo, bytes);
        },
        [&](cudnnConvolutionFwdAlgo_t algo, void* ws, size_t bytes) {
          return cudnnConvolutionForward(h, s.one(io.type), d.x, x.raw_data(), d.w, w.raw_data(), d.conv, algo, ws,
                                         bytes, s.zero(io.type), d.y, y.raw_data());
        });
  }
  io.finish(out);
  if (bias.defined() && is_half_float(out.dtype())) {  // a 16-bit output: our broadcast add (float32 sum, rounded)
    const Shape& os = out.shape();  // bias [C] as a stride-0 view over [N, C, H, W]
    const Tensor per_channel(bias.storage(), os, Strides{0, bias.stride(0), 0, 0}, bias.offset(), bias.dtype());
    binary(BinaryOp::add, out, per_channel, out);
  } else if (bias.defined()) {  // added to the output in its own type (float32 under autocast)
    const Tensor b = raw_contiguous(bias);
    const DType ot = out.dtype();
    cudnnTensorDescriptor_t bd = nullptr, od = nullptr;
    BCOS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bd));
    BCOS_CUDNN_CHECK(cudnnCreateTensorDescriptor(&od));
    cudnnStatus_t status =
        cudnnSetTensor4dDescriptor(bd, CUDNN_TENSOR_NCHW, cudnn::data_type(ot, op), 1, int(b.numel()), 1, 1);
    if (status == CUDNN_STATUS_SUCCESS)
      status = cudnnSetTensor4dDescriptor(od, CUDNN_TENSOR_NCHW, cudnn::data_type(ot, op), int(out.shape()[0]),
                                          int(out.shape()[1]), int(out.shape()[2]), int(out.shape()[3]));
    if (status == CUDNN_STATUS_SUCCESS)
      status = cudnnAddTensor(h, s.one(ot), bd, b.raw_data(), s.one(ot), od, out.raw_data());
    cudnnDestroyTensorDescriptor(od);
    cudnnDestroyTensorDescriptor(bd);
    BCOS_CUDNN_CHECK(status);
  }
}

void conv2d_backward_input(const Tensor& grad_out_in, const Tensor& w_in, const Tensor& grad_x, const Conv2dParams& p) {
  const char* op = "cuda conv2d backward (input)";
  if (grad_x.numel() == 0) return;
  const int device = grad_out_in.device().index;
  DeviceGuard guard(device);
  if (grad_out_in.numel() == 0) {
    BCOS_CUDA_CHECK(cudaMemsetAsync(grad_x.raw_data(), 0, size_t(grad_x.numel()) * grad_x.element_size(),
                                    stream_of(device)));
    return;
  }
  const ConvOperands io(grad_out_in, w_in, grad_x, p);
  const Tensor &g = io.first, &w = io.second, &gx = io.result;
  if (cudnn_graph_api() && cudnn::convolve(cudnn::Direction::backward_data, device, gx, w, g, p, op)) {
    io.finish(grad_x);
    return;
  }
  cudnnHandle_t h = cudnn::handle(device);
  ConvDescriptors d(grad_x.shape(), w.shape(), g.shape(), p, io.type, op);
  const Scalars s;
  convolve(
      g_backward_data, device, d, op, "cudnnConvolutionBackwardData",
      [&] {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        int count = 0;
        BCOS_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
            h, d.w, d.y, d.conv, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf));
        return usable(perf, count, d);
      },
      [&](cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.conv, d.x, algo, bytes);
      },
      [&](cudnnConvolutionBwdDataAlgo_t algo, void* ws, size_t bytes) {
        return cudnnConvolutionBackwardData(h, s.one(io.type), d.w, w.raw_data(), d.y, g.raw_data(), d.conv, algo,
                                            ws, bytes, s.zero(io.type), d.x, gx.raw_data());
      });
  io.finish(grad_x);
}

void conv2d_backward_weight(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& grad_w,
                            const Conv2dParams& p) {
  const char* op = "cuda conv2d backward (weight)";
  if (grad_w.numel() == 0) return;
  const int device = grad_out_in.device().index;
  DeviceGuard guard(device);
  if (grad_out_in.numel() == 0) {
    BCOS_CUDA_CHECK(cudaMemsetAsync(grad_w.raw_data(), 0, size_t(grad_w.numel()) * grad_w.element_size(),
                                    stream_of(device)));
    return;
  }
  const ConvOperands io(grad_out_in, x_in, grad_w, p);
  const Tensor &g = io.first, &x = io.second, &gw = io.result;
  if (cudnn_graph_api() && cudnn::convolve(cudnn::Direction::backward_filter, device, x, gw, g, p, op)) {
    io.finish(grad_w);
    return;
  }
  cudnnHandle_t h = cudnn::handle(device);
  ConvDescriptors d(x.shape(), grad_w.shape(), g.shape(), p, io.type, op);
  const Scalars s;
  convolve(
      g_backward_filter, device, d, op, "cudnnConvolutionBackwardFilter",
      [&] {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        int count = 0;
        BCOS_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
            h, d.x, d.y, d.conv, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf));
        return usable(perf, count, d);
      },
      [&](cudnnConvolutionBwdFilterAlgo_t algo, size_t* bytes) {
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.conv, d.w, algo, bytes);
      },
      [&](cudnnConvolutionBwdFilterAlgo_t algo, void* ws, size_t bytes) {
        return cudnnConvolutionBackwardFilter(h, s.one(io.type), d.x, x.raw_data(), d.y, g.raw_data(), d.conv, algo,
                                              ws, bytes, s.zero(io.type), d.w, gw.raw_data());
      });
  io.finish(grad_w);
}

}  // namespace bcos::cuda
