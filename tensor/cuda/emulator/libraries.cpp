// The CUDA emulator's cuBLAS and cuDNN: the calls tensor/cuda/matmul.cu and conv.cu make (cuDNN's
// graph API, for conv_graph.cu, is in cudnn_graph.cpp), written
// from the libraries' documented contracts -- column-major GEMM with op(A) / op(B), leading
// dimensions and batch strides; NCHW cross-correlation (or true convolution) with padding,
// stride, dilation and groups, alpha / beta blending -- with the argument checks the libraries
// document (a leading dimension too small, shapes that do not agree, an unsupported type
// combination or a missing workspace is refused with the status the library gives). Products
// are Eigen's, in double precision (convolutions as im2col products); float32 inputs are first
// rounded to TF32 where the real library may do so (CUBLAS_COMPUTE_32F_FAST_TF32, cuDNN's
// default math), so tolerances tested here are the ones a GPU needs.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cudnn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "tensor/cuda/emulator/blas_values.h"
#include "tensor/cuda/emulator/runtime.h"

using bcos::emu::blas::cuda_type_bytes;
using bcos::emu::blas::load;
using bcos::emu::blas::store;
using bcos::emu::blas::tf32;
using bcos::emu::runtime::check_device_range;
using bcos::emu::runtime::draw_order;
using bcos::emu::runtime::enqueue;

// ---- cuBLAS ---------------------------------------------------------------------------------------
struct cublasContext {
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;  // a user workspace (cublasSetWorkspace), or the library's own pool
  size_t workspace_bytes = 0;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  handle->workspace = nullptr, handle->workspace_bytes = 0;  // as documented: back to the default pool
  return CUBLAS_STATUS_SUCCESS;
}
// As documented: the pointer aligned to 256 bytes, the buffer device memory; later calls on the
// handle's stream use it until cublasSetStream resets it.
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace, size_t bytes) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (bytes > 0) check_device_range(workspace, bytes, "cublasSetWorkspace");
  handle->workspace = workspace, handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetProperty(libraryPropertyType type, int* value) {
  *value = type == MAJOR_VERSION ? CUBLAS_VER_MAJOR : type == MINOR_VERSION ? CUBLAS_VER_MINOR : CUBLAS_VER_PATCH;
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    default: return "unknown error";
  }
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long strideB, const void* beta, void* C, cudaDataType Ctype, int ldc,
                                          long long strideC, int batch, cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  // The documented argument checks (cublas<t>gemm): sizes, leading dimensions, the op values.
  if (m < 0 || n < 0 || k < 0 || batch < 0 || (transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) ||
      (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T) || lda < std::max(1, ta ? k : m) ||
      ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m))
    return CUBLAS_STATUS_INVALID_VALUE;
  // The type combinations cublasGemmEx lists that this backend may ask for.
  const bool f64 = compute == CUBLAS_COMPUTE_64F && Atype == CUDA_R_64F && Btype == CUDA_R_64F && Ctype == CUDA_R_64F;
  const bool f32_compute = compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_FAST_TF32 ||
                           compute == CUBLAS_COMPUTE_32F_FAST_16BF || compute == CUBLAS_COMPUTE_32F_FAST_16F;
  const bool f32 = f32_compute && Atype == CUDA_R_32F && Btype == CUDA_R_32F && Ctype == CUDA_R_32F;
  const bool half = compute == CUBLAS_COMPUTE_32F && Atype == Btype && (Atype == CUDA_R_16F || Atype == CUDA_R_16BF) &&
                    (Ctype == Atype || Ctype == CUDA_R_32F);
  if (!f64 && !f32 && !half) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  const double a = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double b = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  const bool round_tf32 = f32 && compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  // Every element each batch reads or writes must be device memory.
  auto extent = [](int64_t rows, int64_t cols, int64_t ld, int64_t stride, int64_t count) {
    return (count - 1) * stride + (cols - 1) * ld + rows;
  };
  if (k > 0) {
    check_device_range(A, size_t(extent(ta ? k : m, ta ? m : k, lda, strideA, batch)) * cuda_type_bytes(Atype),
                       "cublasGemmStridedBatchedEx: A");
    check_device_range(B, size_t(extent(tb ? n : k, tb ? k : n, ldb, strideB, batch)) * cuda_type_bytes(Btype),
                       "cublasGemmStridedBatchedEx: B");
  }
  check_device_range(C, size_t(extent(m, n, ldc, strideC, batch)) * cuda_type_bytes(Ctype),
                     "cublasGemmStridedBatchedEx: C");
  // Queued: it runs in the stream's turn; the scalars were read now (host pointer mode). A user
  // workspace must still be the caller's then: the GEMM scribbles on its ends, as a split-K kernel
  // writes its partial sums there.
  void* const workspace = handle->workspace;
  const size_t workspace_bytes = handle->workspace_bytes;
  enqueue(handle->stream, "cublasGemmStridedBatchedEx", [=] {
    const uint64_t start = bcos::emu::runtime::tracing() ? bcos::emu::runtime::trace_clock_ns() : 0;
    if (workspace_bytes > 0) {
      // (Freed by then -- a graph replayed after its workspace went back to the driver -- a GPU
      // would fault: so does this, stickily.)
      check_device_range(workspace, workspace_bytes, "cublasGemmStridedBatchedEx: the workspace, when the GEMM ran");
      const size_t edge = std::min<size_t>(workspace_bytes, 256);
      std::memset(workspace, 0xFF, edge);
      std::memset(static_cast<char*>(workspace) + workspace_bytes - edge, 0xFF, edge);
    }
    for (int64_t p = 0; p < batch; ++p) {
      const size_t a_bytes = cuda_type_bytes(Atype), b_bytes = cuda_type_bytes(Btype);
      const Eigen::MatrixXd product = bcos::emu::blas::product(
          ta, tb, m, n, k, static_cast<const char*>(A) + p * strideA * int64_t(a_bytes), Atype, lda,
          static_cast<const char*>(B) + p * strideB * int64_t(b_bytes), Btype, ldb, round_tf32);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < m; ++i) {
          const int64_t at = p * strideC + i + j * ldc;
          // beta == 0: C is not read (it may hold NaN), as the documentation promises.
          store(C, Ctype, at, a * product(i, j) + (b == 0 ? 0.0 : b * load(C, Ctype, at)));
        }
    }
    if (start != 0) {
      const char* math = compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? "tf32"
                         : f64                                   ? "f64"
                         : half                                  ? "16-bit"
                                                                 : "f32";
      bcos::emu::runtime::trace_call("cublasGemmStridedBatchedEx",
                                     std::to_string(m) + "," + std::to_string(n) + "," + std::to_string(k) + "," +
                                         std::to_string(batch) + (ta ? ",T" : ",N") + (tb ? "T," : "N,") + math,
                                     bcos::emu::runtime::trace_clock_ns() - start);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

// ---- cuDNN ---------------------------------------------------------------------------------------
struct cudnnContext {
  cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
  bool set = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  int n = 0, c = 0, h = 0, w = 0;
};
struct cudnnFilterStruct {
  bool set = false;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  int k = 0, c = 0, h = 0, w = 0;
};
struct cudnnConvolutionStruct {
  bool set = false;
  int pad[2] = {0, 0}, stride[2] = {1, 1}, dilation[2] = {1, 1};
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  int groups = 1;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace {

cudaDataType as_cuda_type(cudnnDataType_t t) {
  switch (t) {
    case CUDNN_DATA_DOUBLE: return CUDA_R_64F;
    case CUDNN_DATA_FLOAT: return CUDA_R_32F;
    case CUDNN_DATA_HALF: return CUDA_R_16F;
    case CUDNN_DATA_BFLOAT16: return CUDA_R_16BF;
    default: return CUDA_R_8I;  // not one this emulator computes in
  }
}
bool computable(cudnnDataType_t t) { return cuda_type_bytes(as_cuda_type(t)) != 0; }
double scalar(const void* p, cudnnDataType_t io) {  // alpha / beta: double for double data, else float
  return io == CUDNN_DATA_DOUBLE ? *static_cast<const double*>(p) : *static_cast<const float*>(p);
}

// The checks cuDNN documents for a convolution's descriptors (CUDNN_STATUS_BAD_PARAM /
// NOT_SUPPORTED) and the output size it requires.
cudnnStatus_t check_convolution(const cudnnTensorStruct* x, const cudnnFilterStruct* w, const cudnnConvolutionStruct* c,
                                const cudnnTensorStruct* y) {
  if (!x || !w || !c || !y || !x->set || !w->set || !c->set || !y->set) return CUDNN_STATUS_BAD_PARAM;
  if (x->type != w->type || x->type != y->type) return CUDNN_STATUS_BAD_PARAM;
  if (!computable(x->type)) return CUDNN_STATUS_NOT_SUPPORTED;
  // Supported configurations: double in double, float in float, 16-bit data in float (or half).
  const bool config = x->type == CUDNN_DATA_DOUBLE ? c->compute == CUDNN_DATA_DOUBLE
                      : x->type == CUDNN_DATA_FLOAT ? c->compute == CUDNN_DATA_FLOAT
                      : x->type == CUDNN_DATA_HALF  ? c->compute == CUDNN_DATA_FLOAT || c->compute == CUDNN_DATA_HALF
                                                    : c->compute == CUDNN_DATA_FLOAT;
  if (!config) return CUDNN_STATUS_NOT_SUPPORTED;
  if (x->c != w->c * c->groups || w->k % c->groups != 0) return CUDNN_STATUS_BAD_PARAM;
  const int oh = (x->h + 2 * c->pad[0] - c->dilation[0] * (w->h - 1) - 1) / c->stride[0] + 1;
  const int ow = (x->w + 2 * c->pad[1] - c->dilation[1] * (w->w - 1) - 1) / c->stride[1] + 1;
  if (y->n != x->n || y->c != w->k || y->h != oh || y->w != ow || oh <= 0 || ow <= 0) return CUDNN_STATUS_BAD_PARAM;
  return CUDNN_STATUS_SUCCESS;
}

size_t bytes_of(const cudnnTensorStruct* t) {
  return size_t(t->n) * t->c * t->h * t->w * cuda_type_bytes(as_cuda_type(t->type));
}
size_t bytes_of(const cudnnFilterStruct* f) {
  return size_t(f->k) * f->c * f->h * f->w * cuda_type_bytes(as_cuda_type(f->type));
}

// The convolution as products, per sample n and group g: Y_g [K/g, P] = W_g [K/g, R] * X_g [R, P]
// over R = (C/g) KH KW filter taps and P = OH OW output positions. `taps[r * P + p]` is the offset
// of tap r at position p within one sample's group of input channels, or -1 in the padding.
struct Lowering {
  int64_t groups, kpg, cpg, taps_per_out, positions, in_plane, out_plane;
  std::vector<int64_t> taps;
};
Lowering lower(const cudnnTensorStruct* x, const cudnnFilterStruct* w, const cudnnConvolutionStruct* c,
               const cudnnTensorStruct* y) {
  Lowering l;
  l.groups = c->groups, l.kpg = w->k / c->groups, l.cpg = w->c;
  l.taps_per_out = int64_t(w->c) * w->h * w->w, l.positions = int64_t(y->h) * y->w;
  l.in_plane = int64_t(x->h) * x->w, l.out_plane = l.positions;
  l.taps.assign(size_t(l.taps_per_out * l.positions), -1);
  for (int ci = 0; ci < w->c; ++ci)
    for (int fh = 0; fh < w->h; ++fh)
      for (int fw = 0; fw < w->w; ++fw) {
        // True convolution flips the filter; cross-correlation (what frameworks call convolution)
        // does not: filter tap (fh, fw) meets the input at window offset (kh, kw).
        const int kh = c->mode == CUDNN_CONVOLUTION ? w->h - 1 - fh : fh;
        const int kw = c->mode == CUDNN_CONVOLUTION ? w->w - 1 - fw : fw;
        const int64_t r = (int64_t(ci) * w->h + fh) * w->w + fw;
        for (int oh = 0; oh < y->h; ++oh) {
          const int ih = oh * c->stride[0] - c->pad[0] + kh * c->dilation[0];
          if (ih < 0 || ih >= x->h) continue;
          for (int ow = 0; ow < y->w; ++ow) {
            const int iw = ow * c->stride[1] - c->pad[1] + kw * c->dilation[1];
            if (iw < 0 || iw >= x->w) continue;
            l.taps[size_t(r * l.positions + int64_t(oh) * y->w + ow)] = (int64_t(ci) * x->h + ih) * x->w + iw;
          }
        }
      }
  return l;
}

// X_g of sample n, group g (from `x` of type t; TF32-rounded when asked).
Eigen::MatrixXd gather_columns(const Lowering& l, const void* x, cudaDataType t, int64_t n, int64_t g, bool round) {
  const int64_t base = (n * l.groups + g) * l.cpg * l.in_plane;
  Eigen::MatrixXd cols(l.taps_per_out, l.positions);
  for (int64_t p = 0; p < l.positions; ++p)
    for (int64_t r = 0; r < l.taps_per_out; ++r) {
      const int64_t at = l.taps[size_t(r * l.positions + p)];
      const double v = at < 0 ? 0.0 : load(x, t, base + at);
      cols(r, p) = round ? tf32(v) : v;
    }
  return cols;
}
// W_g [K/g, R] (w is [K, C/g, KH, KW]: row k holds R consecutive values).
Eigen::MatrixXd filter_rows(const Lowering& l, const void* w, cudaDataType t, int64_t g, bool round) {
  Eigen::MatrixXd m(l.kpg, l.taps_per_out);
  for (int64_t k = 0; k < l.kpg; ++k)
    for (int64_t r = 0; r < l.taps_per_out; ++r) {
      const double v = load(w, t, (g * l.kpg + k) * l.taps_per_out + r);
      m(k, r) = round ? tf32(v) : v;
    }
  return m;
}
// Y_g [K/g, P] of sample n, group g.
Eigen::MatrixXd output_rows(const Lowering& l, const void* y, cudaDataType t, int64_t n, int64_t g, bool round) {
  Eigen::MatrixXd m(l.kpg, l.positions);
  const int64_t base = (n * l.groups + g) * l.kpg * l.out_plane;
  for (int64_t p = 0; p < l.positions; ++p)
    for (int64_t k = 0; k < l.kpg; ++k) {
      const double v = load(y, t, base + k * l.out_plane + p);
      m(k, p) = round ? tf32(v) : v;
    }
  return m;
}

// cuDNN's default math may take float32 inputs through TF32 (Ampere and later); FMA math may not.
bool rounds_tf32(const cudnnTensorStruct* x, const cudnnConvolutionStruct* c) {
  return x->type == CUDNN_DATA_FLOAT && c->math != CUDNN_FMA_MATH;
}

// The algorithms the emulator offers: the first fast but nondeterministic where cuDNN's is
// (backward), with a workspace; the second deterministic, with none -- so the backend's choice
// and its workspace both get exercised. Each entry reports the descriptor's math type, with
// which cuDNN rated it.
constexpr size_t kWorkspace = 4096;
std::atomic<int> g_fast_mode{0};  // a runtime::FastAlgorithms
std::atomic<int64_t> g_fast_refusals{0};
std::atomic<bool> g_rated_with_descriptor_math{true};

size_t fast_workspace() {  // past the emulated device's 16 GiB when tests ask for it
  return g_fast_mode.load() == int(bcos::emu::runtime::FastAlgorithms::oversized) ? size_t(1) << 45 : kWorkspace;
}

template <class Perf, class Algo>
void two_algorithms(Perf* perf, int requested, int* returned, Algo fast, bool fast_deterministic, Algo plain,
                    cudnnMathType_t math) {
  *returned = std::min(requested, 2);
  for (int i = 0; i < *returned; ++i) {
    std::memset(&perf[i], 0, sizeof perf[i]);
    perf[i].algo = i == 0 ? fast : plain;
    perf[i].status = CUDNN_STATUS_SUCCESS;
    perf[i].time = i == 0 ? 1.0f : 2.0f;
    perf[i].memory = i == 0 ? fast_workspace() : 0;
    perf[i].determinism = i == 0 && !fast_deterministic ? CUDNN_NON_DETERMINISTIC : CUDNN_DETERMINISTIC;
    perf[i].mathType = g_rated_with_descriptor_math.load() ? math : CUDNN_DEFAULT_MATH;
  }
}

// out = alpha · acc + beta · out (beta = 0: out is not read, as cuDNN promises).
void blend_into(void* out, cudaDataType t, const std::vector<double>& acc, double alpha, double beta) {
  for (size_t i = 0; i < acc.size(); ++i)
    store(out, t, int64_t(i), alpha * acc[i] + (beta == 0 ? 0.0 : beta * load(out, t, int64_t(i))));
}

// A partial sum as the nondeterministic algorithms keep it (atomic adds into the result): float32
// for every type but float64. Their terms arrive in the launches' drawn order (draw_order), so the
// sums round differently from call to call, as cuDNN's do; the deterministic algorithms add in
// float64, in a fixed order.
double add_atomically(cudaDataType t, double sum, double term) {
  return t == CUDA_R_64F ? sum + term : double(float(sum) + float(term));
}

// At execution: the algorithm's workspace, and the refusal tests may ask of the fast one.
cudnnStatus_t check_algorithm(void* workspace, size_t bytes, int algo, int fast_algo) {
  const size_t need = algo == fast_algo ? fast_workspace() : 0;
  if (bytes < need || (need > 0 && workspace == nullptr)) return CUDNN_STATUS_BAD_PARAM;
  if (algo == fast_algo && g_fast_mode.load() == int(bcos::emu::runtime::FastAlgorithms::refused)) {
    ++g_fast_refusals;
    return CUDNN_STATUS_NOT_SUPPORTED_SHAPE;
  }
  if (algo == fast_algo && g_fast_mode.load() == int(bcos::emu::runtime::FastAlgorithms::misaligned)) {
    ++g_fast_refusals;
    return CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
  }
  if (algo == fast_algo && g_fast_mode.load() == int(bcos::emu::runtime::FastAlgorithms::failing)) {
    ++g_fast_refusals;
    return CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED;
  }
  if (need > 0) check_device_range(workspace, need, "cuDNN workspace");
  return CUDNN_STATUS_SUCCESS;
}

}  // namespace

cudnnStatus_t cudnnCreate(cudnnHandle_t* handle) {
  *handle = new cudnnContext;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
  delete handle;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUDNN_STATUS_BAD_PARAM;
  handle->stream = stream;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetStream(cudnnHandle_t handle, cudaStream_t* stream) {
  if (handle == nullptr || stream == nullptr) return CUDNN_STATUS_BAD_PARAM;
  *stream = handle->stream;
  return CUDNN_STATUS_SUCCESS;
}
size_t cudnnGetVersion(void) { return CUDNN_VERSION; }
const char* cudnnGetErrorString(cudnnStatus_t status) {
  switch (status) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_NOT_SUPPORTED_SHAPE: return "CUDNN_STATUS_NOT_SUPPORTED_SHAPE";
    case CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER: return "CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER";
    default: return "CUDNN_STATUS_INTERNAL_ERROR";  // the only other status the stand-in returns
  }
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) {
  *d = new cudnnTensorStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format, cudnnDataType_t type,
                                         int n, int c, int h, int w) {
  if (d == nullptr || n <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
  if (format != CUDNN_TENSOR_NCHW) return CUDNN_STATUS_NOT_SUPPORTED;  // the only layout the emulator keeps
  *d = {true, type, n, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) {
  *d = new cudnnFilterStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type, cudnnTensorFormat_t format,
                                         int k, int c, int h, int w) {
  if (d == nullptr || k <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
  if (format != CUDNN_TENSOR_NCHW) return CUDNN_STATUS_NOT_SUPPORTED;
  *d = {true, type, k, c, h, w};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) {
  *d = new cudnnConvolutionStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dilation_h, int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute) {
  if (d == nullptr || pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dilation_h <= 0 || dilation_w <= 0 ||
      (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION))
    return CUDNN_STATUS_BAD_PARAM;
  d->set = true;
  d->pad[0] = pad_h, d->pad[1] = pad_w, d->stride[0] = u, d->stride[1] = v;
  d->dilation[0] = dilation_h, d->dilation[1] = dilation_w;
  d->mode = mode;
  d->compute = compute;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int groups) {
  if (d == nullptr || groups <= 0) return CUDNN_STATUS_BAD_PARAM;
  d->groups = groups;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t math) {
  if (d == nullptr) return CUDNN_STATUS_BAD_PARAM;
  d->math = math;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                     const cudnnFilterDescriptor_t w,
                                                     const cudnnConvolutionDescriptor_t c,
                                                     const cudnnTensorDescriptor_t y, const int requested,
                                                     int* returned, cudnnConvolutionFwdAlgoPerf_t* perf) {
  if (cudnnStatus_t s = check_convolution(x, w, c, y); s != CUDNN_STATUS_SUCCESS) return s;
  if (requested <= 0) return CUDNN_STATUS_BAD_PARAM;
  two_algorithms(perf, requested, returned, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, true,
                 CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, c->math);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t, const cudnnFilterDescriptor_t w,
                                                          const cudnnTensorDescriptor_t dy,
                                                          const cudnnConvolutionDescriptor_t c,
                                                          const cudnnTensorDescriptor_t dx, const int requested,
                                                          int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  if (cudnnStatus_t s = check_convolution(dx, w, c, dy); s != CUDNN_STATUS_SUCCESS) return s;
  if (requested <= 0) return CUDNN_STATUS_BAD_PARAM;
  two_algorithms(perf, requested, returned, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, false,
                 CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, c->math);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                            const cudnnTensorDescriptor_t dy,
                                                            const cudnnConvolutionDescriptor_t c,
                                                            const cudnnFilterDescriptor_t dw, const int requested,
                                                            int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  if (cudnnStatus_t s = check_convolution(x, dw, c, dy); s != CUDNN_STATUS_SUCCESS) return s;
  if (requested <= 0) return CUDNN_STATUS_BAD_PARAM;
  two_algorithms(perf, requested, returned, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, false,
                 CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, c->math);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                      const cudnnFilterDescriptor_t w,
                                                      const cudnnConvolutionDescriptor_t c,
                                                      const cudnnTensorDescriptor_t y, cudnnConvolutionFwdAlgo_t algo,
                                                      size_t* bytes) {
  if (cudnnStatus_t s = check_convolution(x, w, c, y); s != CUDNN_STATUS_SUCCESS) return s;
  *bytes = algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ? fast_workspace() : 0;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, const cudnnFilterDescriptor_t w,
                                                           const cudnnTensorDescriptor_t dy,
                                                           const cudnnConvolutionDescriptor_t c,
                                                           const cudnnTensorDescriptor_t dx,
                                                           cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
  if (cudnnStatus_t s = check_convolution(dx, w, c, dy); s != CUDNN_STATUS_SUCCESS) return s;
  *bytes = algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 ? fast_workspace() : 0;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                             const cudnnTensorDescriptor_t dy,
                                                             const cudnnConvolutionDescriptor_t c,
                                                             const cudnnFilterDescriptor_t dw,
                                                             cudnnConvolutionBwdFilterAlgo_t algo, size_t* bytes) {
  if (cudnnStatus_t s = check_convolution(x, dw, c, dy); s != CUDNN_STATUS_SUCCESS) return s;
  *bytes = algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 ? fast_workspace() : 0;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t xd,
                                      const void* x, const cudnnFilterDescriptor_t wd, const void* w,
                                      const cudnnConvolutionDescriptor_t cd, cudnnConvolutionFwdAlgo_t algo,
                                      void* workspace, size_t workspace_bytes, const void* beta,
                                      const cudnnTensorDescriptor_t yd, void* y) {
  if (h == nullptr) return CUDNN_STATUS_BAD_PARAM;
  if (cudnnStatus_t s = check_convolution(xd, wd, cd, yd); s != CUDNN_STATUS_SUCCESS) return s;
  if (cudnnStatus_t s = check_algorithm(workspace, workspace_bytes, algo, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  check_device_range(x, bytes_of(xd), "cudnnConvolutionForward: x");
  check_device_range(w, bytes_of(wd), "cudnnConvolutionForward: w");
  check_device_range(y, bytes_of(yd), "cudnnConvolutionForward: y");
  // Queued: the descriptors and scalars are read now, the data when it runs.
  const cudaDataType t = as_cuda_type(xd->type);
  const bool r = rounds_tf32(xd, cd);
  const Lowering l = lower(xd, wd, cd, yd);
  const int64_t batch = yd->n, out_numel = int64_t(yd->n) * yd->c * yd->h * yd->w;
  const double al = scalar(alpha, xd->type), be = scalar(beta, xd->type);
  enqueue(h->stream, "cudnnConvolutionForward", [=] {
    std::vector<double> acc(size_t(out_numel), 0.0);
    for (int64_t g = 0; g < l.groups; ++g) {
      const Eigen::MatrixXd wg = filter_rows(l, w, t, g, r);
      for (int64_t n = 0; n < batch; ++n) {
        const Eigen::MatrixXd yg = wg * gather_columns(l, x, t, n, g, r);
        const int64_t base = (n * l.groups + g) * l.kpg * l.out_plane;
        for (int64_t k = 0; k < l.kpg; ++k)
          for (int64_t p = 0; p < l.positions; ++p) acc[size_t(base + k * l.out_plane + p)] = yg(k, p);
      }
    }
    blend_into(y, t, acc, al, be);
  });
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void* alpha, const cudnnFilterDescriptor_t wd,
                                           const void* w, const cudnnTensorDescriptor_t dyd, const void* dy,
                                           const cudnnConvolutionDescriptor_t cd, cudnnConvolutionBwdDataAlgo_t algo,
                                           void* workspace, size_t workspace_bytes, const void* beta,
                                           const cudnnTensorDescriptor_t dxd, void* dx) {
  if (h == nullptr) return CUDNN_STATUS_BAD_PARAM;
  if (cudnnStatus_t s = check_convolution(dxd, wd, cd, dyd); s != CUDNN_STATUS_SUCCESS) return s;
  if (cudnnStatus_t s = check_algorithm(workspace, workspace_bytes, algo, CUDNN_CONVOLUTION_BWD_DATA_ALGO_0);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  check_device_range(w, bytes_of(wd), "cudnnConvolutionBackwardData: w");
  check_device_range(dy, bytes_of(dyd), "cudnnConvolutionBackwardData: dy");
  check_device_range(dx, bytes_of(dxd), "cudnnConvolutionBackwardData: dx");
  const cudaDataType t = as_cuda_type(dxd->type);
  const bool r = rounds_tf32(dxd, cd);
  const Lowering l = lower(dxd, wd, cd, dyd);
  const int64_t batch = dyd->n, in_numel = int64_t(dxd->n) * dxd->c * dxd->h * dxd->w;
  const double al = scalar(alpha, dxd->type), be = scalar(beta, dxd->type);
  const bool atomics = algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0;  // nondeterministic in cuDNN
  enqueue(h->stream, "cudnnConvolutionBackwardData", [=] {
    std::vector<double> acc(size_t(in_numel), 0.0);
    // An input element gathers one term from each output position whose window covers it.
    std::vector<int64_t> positions(size_t(l.positions));
    std::iota(positions.begin(), positions.end(), int64_t(0));
    if (atomics) positions = draw_order(l.positions);
    for (int64_t g = 0; g < l.groups; ++g) {
      const Eigen::MatrixXd wg_t = filter_rows(l, w, t, g, r).transpose();
      for (int64_t n = 0; n < batch; ++n) {
        const Eigen::MatrixXd cols = wg_t * output_rows(l, dy, t, n, g, r);  // [R, P]
        const int64_t base = (n * l.groups + g) * l.cpg * l.in_plane;
        for (const int64_t p : positions)
          for (int64_t q = 0; q < l.taps_per_out; ++q)
            if (const int64_t at = l.taps[size_t(q * l.positions + p)]; at >= 0) {
              double& sum = acc[size_t(base + at)];
              sum = atomics ? add_atomically(t, sum, cols(q, p)) : sum + cols(q, p);
            }
      }
    }
    blend_into(dx, t, acc, al, be);
  });
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t xd,
                                             const void* x, const cudnnTensorDescriptor_t dyd, const void* dy,
                                             const cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void* workspace,
                                             size_t workspace_bytes, const void* beta,
                                             const cudnnFilterDescriptor_t dwd, void* dw) {
  if (h == nullptr) return CUDNN_STATUS_BAD_PARAM;
  if (cudnnStatus_t s = check_convolution(xd, dwd, cd, dyd); s != CUDNN_STATUS_SUCCESS) return s;
  if (cudnnStatus_t s = check_algorithm(workspace, workspace_bytes, algo, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
      s != CUDNN_STATUS_SUCCESS)
    return s;
  check_device_range(x, bytes_of(xd), "cudnnConvolutionBackwardFilter: x");
  check_device_range(dy, bytes_of(dyd), "cudnnConvolutionBackwardFilter: dy");
  check_device_range(dw, bytes_of(dwd), "cudnnConvolutionBackwardFilter: dw");
  const cudaDataType t = as_cuda_type(xd->type);
  const bool r = rounds_tf32(xd, cd);
  const Lowering l = lower(xd, dwd, cd, dyd);
  const int64_t batch = dyd->n, filter_numel = int64_t(dwd->k) * dwd->c * dwd->h * dwd->w;
  const double al = scalar(alpha, xd->type), be = scalar(beta, xd->type);
  const bool atomics = algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0;  // nondeterministic in cuDNN
  enqueue(h->stream, "cudnnConvolutionBackwardFilter", [=] {
    std::vector<double> acc(size_t(filter_numel), 0.0);
    for (int64_t g = 0; g < l.groups; ++g) {
      Eigen::MatrixXd dwg = Eigen::MatrixXd::Zero(l.kpg, l.taps_per_out);
      if (atomics) {  // one term per sample, the samples in drawn order
        for (const int64_t n : draw_order(batch)) {
          const Eigen::MatrixXd term = output_rows(l, dy, t, n, g, r) * gather_columns(l, x, t, n, g, r).transpose();
          dwg = dwg.binaryExpr(term, [t](double a, double b) { return add_atomically(t, a, b); });
        }
      } else {
        for (int64_t n = 0; n < batch; ++n)
          dwg.noalias() += output_rows(l, dy, t, n, g, r) * gather_columns(l, x, t, n, g, r).transpose();
      }
      for (int64_t k = 0; k < l.kpg; ++k)
        for (int64_t q = 0; q < l.taps_per_out; ++q) acc[size_t((g * l.kpg + k) * l.taps_per_out + q)] = dwg(k, q);
    }
    blend_into(dw, t, acc, al, be);
  });
  return CUDNN_STATUS_SUCCESS;
}

// C = alpha A + beta C, A broadcast along each dim where it has size 1.
cudnnStatus_t cudnnAddTensor(cudnnHandle_t h, const void* alpha, const cudnnTensorDescriptor_t ad, const void* a,
                             const void* beta, const cudnnTensorDescriptor_t cd, void* c) {
  if (h == nullptr || !ad || !cd || !ad->set || !cd->set || ad->type != cd->type) return CUDNN_STATUS_BAD_PARAM;
  if (!computable(ad->type)) return CUDNN_STATUS_NOT_SUPPORTED;
  const int adims[4] = {ad->n, ad->c, ad->h, ad->w}, cdims[4] = {cd->n, cd->c, cd->h, cd->w};
  for (int i = 0; i < 4; ++i)
    if (adims[i] != cdims[i] && adims[i] != 1) return CUDNN_STATUS_BAD_PARAM;
  check_device_range(a, bytes_of(ad), "cudnnAddTensor: A");
  check_device_range(c, bytes_of(cd), "cudnnAddTensor: C");
  const cudaDataType t = as_cuda_type(cd->type);
  const double al = scalar(alpha, cd->type), be = scalar(beta, cd->type);
  enqueue(h->stream, "cudnnAddTensor", [=, as = *ad, cs = *cd] {
    int64_t i = 0;
    for (int n = 0; n < cs.n; ++n)
      for (int ch = 0; ch < cs.c; ++ch)
        for (int y = 0; y < cs.h; ++y)
          for (int x = 0; x < cs.w; ++x, ++i) {
            const int64_t ai = ((int64_t(as.n == 1 ? 0 : n) * as.c + (as.c == 1 ? 0 : ch)) * as.h +
                                (as.h == 1 ? 0 : y)) * as.w + (as.w == 1 ? 0 : x);
            store(c, t, i, al * load(a, t, ai) + (be == 0 ? 0.0 : be * load(c, t, i)));
          }
  });
  return CUDNN_STATUS_SUCCESS;
}

namespace bcos::emu::runtime {
void set_fast_algorithms(FastAlgorithms mode) { g_fast_mode = int(mode); }
int64_t fast_refusals() { return g_fast_refusals.load(); }
void set_rated_with_descriptor_math(bool as_descriptor) { g_rated_with_descriptor_math = as_descriptor; }
}  // namespace bcos::emu::runtime
