// Batched matrix products through cuBLAS (one strided-batched GEMM per call). cuBLAS is
// column-major and our tensors are row-major, so we ask it for C^T = B^T A^T, which in its
// view is exactly our C. An operand whose rows or columns are unit-stride is handed over as
// it is (a transposed view costs nothing); only other layouts are copied. f32 products use
// TF32 tensor cores unless set_allow_tf32(false); f64 runs in full double. Under autocast both
// operands are first copied to bf16 (or f16) -- unless already of that type -- and cuBLAS
// multiplies those on the tensor cores, summing and writing float32. A float32 linear layer's
// product with its bias goes through cuBLASLt, whose epilogue adds the bias as it stores D
// (PyTorch's addmm does the same): writing the bias into out first, for the GEMM to read back as
// C, moves ~8 bytes more per output element (~8 GB per ViT-B/16 training step at batch 64).
#include <cublasLt.h>

#include <atomic>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {


// One [B, R, C] operand as cuBLAS reads it: a pointer, the op that turns the stored matrix
// into X^T, its leading dimension and batch stride. `keep` holds a copy alive when one was
// needed.
struct GemmOperand {
  const void* ptr = nullptr;
  cublasOperation_t op = CUBLAS_OP_N;
  int64_t ld = 1;
  int64_t batch_stride = 0;
  Tensor keep;
};

// Row-major X (unit column stride, rows `ld` apart) read column-major is X^T already: OP_N.
// Column-major X (unit row stride) read column-major is X: OP_T. Strides of size-1 dims do not
// matter and are ignored.
bool describe_without_copy(int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                           GemmOperand& g) {
  const bool row_major = (col_stride == 1 || cols == 1) &&
                         (rows == 1 || row_stride >= std::max<int64_t>(1, cols));
  if (row_major) {
    g.op = CUBLAS_OP_N;
    g.ld = rows == 1 ? std::max<int64_t>(1, cols) : row_stride;
    return g.ld <= INT_MAX;
  }
  const bool col_major = (row_stride == 1 || rows == 1) &&
                         (cols == 1 || col_stride >= std::max<int64_t>(1, rows));
  if (col_major) {
    g.op = CUBLAS_OP_T;
    g.ld = cols == 1 ? std::max<int64_t>(1, rows) : col_stride;
    return g.ld <= INT_MAX;
  }
  return false;
}

GemmOperand describe_operand(const Tensor& x) {
  const int64_t batch = x.shape()[0], rows = x.shape()[1], cols = x.shape()[2];
  GemmOperand g;
  g.batch_stride = batch == 1 ? 0 : x.strides()[0];
  if (describe_without_copy(rows, cols, x.strides()[1], x.strides()[2], g)) {
    g.ptr = x.raw_data();
    return g;
  }
  // Any other layout: a dense row-major copy; a broadcast batch (stride 0) copies one matrix.
  const bool broadcast = g.batch_stride == 0;
  Tensor source = broadcast ? x.alias({1, rows, cols}, x.strides(), x.offset()) : x;
  g.keep = empty(source.shape(), {x.dtype(), x.device()});
  copy(g.keep, source);
  g.ptr = g.keep.raw_data();
  g.op = CUBLAS_OP_N;
  g.ld = std::max<int64_t>(1, cols);
  g.batch_stride = broadcast ? 0 : rows * cols;
  return g;
}

cudaDataType cuda_data_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::f64: return CUDA_R_64F;
    case DType::f16: return CUDA_R_16F;
    case DType::bf16: return CUDA_R_16BF;
    default: fail("cuda bmm: expected float32, float64, float16 or bfloat16, got ", dtype_name(t));
  }
}

// cuBLAS's and cuBLASLt's workspace size: 32 MiB from Hopper on (sm_90, what NVIDIA's cuBLAS
// documentation asks for there and PyTorch gives it), 4 MiB before. cuBLASLt's is taken from the
// caching allocator per call, cuBLAS's kept per thread and stream (gemm_workspace_for).
uint64_t blas_workspace_bytes(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, uint64_t> bytes;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = bytes.find(device);
  if (it == bytes.end()) it = bytes.emplace(device, uint64_t(device_info(device).major >= 9 ? 32 : 4) << 20).first;
  return it->second;
}

// out (dense [B, M, N]) = a @ b (+ out when accumulate).
void gemm_into_contiguous(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
  const int64_t batch = out.shape()[0], m = out.shape()[1], n = out.shape()[2];
  const int64_t k = a.shape()[2];
  BCOS_CHECK(batch <= INT_MAX && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX,
             "cuda bmm: sizes ", a.shape(), " x ", b.shape(), " exceed cuBLAS's int range");
  const int device = out.device().index;
  GemmOperand ga = describe_operand(a);
  GemmOperand gb = describe_operand(b);
  const DType dt = out.dtype();  // a and b: dt, or bf16 / f16 under autocast
  const cudaDataType data_type = cuda_data_type(dt), operand_type = cuda_data_type(a.dtype());
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (dt == DType::f64) compute = CUBLAS_COMPUTE_64F;
  if (dt == DType::f32 && a.dtype() == DType::f32 && allow_tf32())
    compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  // Scalars are in the compute precision: double for DGEMM, float otherwise.
  const double alpha64 = 1.0, beta64 = accumulate ? 1.0 : 0.0;
  const float alpha32 = 1.0f, beta32 = accumulate ? 1.0f : 0.0f;
  const void* alpha = dt == DType::f64 ? static_cast<const void*>(&alpha64) : &alpha32;
  const void* beta = dt == DType::f64 ? static_cast<const void*>(&beta64) : &beta32;

  DeviceGuard guard(device);
  cublasHandle_t handle = cublas_handle(device);
  // cuBLAS's own workspace pool is 4 MiB; from Hopper on NVIDIA asks for 32 MiB (kernels that
  // split K keep their partial sums there), which PyTorch gives each handle from its caching
  // allocator: so does this (cublas_handle's cublasSetStream resets it every call).
  const uint64_t workspace_bytes = blas_workspace_bytes(device);
  BCOS_CUBLAS_CHECK(cublasSetWorkspace(handle, gemm_workspace_for(device, stream_of(device)).get(), workspace_bytes));
  // Column-major C^T [N, M] = op(B-storage) [N, K] * op(A-storage) [K, M].
  BCOS_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, gb.op, ga.op, int(n), int(m), int(k), alpha, gb.ptr, operand_type, int(gb.ld),
      gb.batch_stride, ga.ptr, operand_type, int(ga.ld), ga.batch_stride, beta, out.raw_data(),
      data_type, int(std::max<int64_t>(1, n)), m * n, int(batch), compute, CUBLAS_GEMM_DEFAULT));
}

// x as autocast's operand type (a copy unless it is already of that type).
Tensor narrowed(const Tensor& x, DType operands) {
  if (x.dtype() == operands) return x;
  Tensor copy_of_x = empty(x.shape(), {operands, x.device()});
  copy(copy_of_x, x);
  return copy_of_x;
}

// ---- cuBLASLt: a linear layer's bias in the GEMM's epilogue --------------------------------------
std::atomic<int64_t> g_bias_epilogues{0}, g_bias_fallbacks{0};

// This thread's cuBLASLt handle for `device` (it holds no stream: cublasLtMatmul takes one).
cublasLtHandle_t lt_handle(int device) {
  thread_local std::vector<cublasLtHandle_t> by_device;
  if (by_device.size() <= size_t(device)) by_device.resize(size_t(device) + 1, nullptr);
  if (by_device[size_t(device)] == nullptr) BCOS_CUBLAS_CHECK(cublasLtCreate(&by_device[size_t(device)]));
  return by_device[size_t(device)];
}

// A cuBLASLt descriptor destroyed at scope exit.
template <class Handle, cublasStatus_t (*Destroy)(Handle)>
struct LtOwned {
  Handle h = nullptr;
  LtOwned() = default;
  LtOwned(const LtOwned&) = delete;
  LtOwned& operator=(const LtOwned&) = delete;
  ~LtOwned() {
    if (h != nullptr) Destroy(h);
  }
};

// The largest power of two up to 256 dividing p's address: what cuBLASLt's heuristics are told,
// so that they offer only algorithms that can read a view starting inside an allocation.
uint32_t alignment_of(const void* p) {
  uint32_t align = 256;
  while (align > 1 && reinterpret_cast<uintptr_t>(p) % align != 0) align /= 2;
  return align;
}

// cuBLASLt's "no": the status with which it turns down a problem it has no kernel for (any other
// failure -- a bad argument, a fault -- is an error, raised as everywhere else).
bool lt_declined(cublasStatus_t status) { return status == CUBLAS_STATUS_NOT_SUPPORTED; }

// out (dense [M, N], float32) = a [M, K] · b [K, N] + bias [N] with the bias added in the epilogue.
// Returns false, having written nothing, where cuBLASLt offers no algorithm or declines the call;
// the caller then takes the copy-and-accumulate path.
bool lt_linear_bias(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out) {
  const int64_t m = out.size(0), n = out.size(1), k = a.size(1);
  const int device = out.device().index;
  // Column-major D^T [N, M] = op(B-storage) [N, K] * op(A-storage) [K, M] + bias [N] down each column.
  GemmOperand ga = describe_operand(a.unsqueeze(0)), gb = describe_operand(b.unsqueeze(0));
  const cudaDataType operand_type = cuda_data_type(a.dtype());
  const cublasComputeType_t compute = a.dtype() == DType::f32 && allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                               : CUBLAS_COMPUTE_32F;
  LtOwned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy> desc;
  BCOS_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.h, compute, CUDA_R_32F));
  const int32_t trans_a = gb.op, trans_b = ga.op;
  const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  const void* bias_ptr = bias.raw_data();
  BCOS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  BCOS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  BCOS_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  // Set before the heuristics: they read the bias's alignment from it.
  BCOS_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));
  // Layouts describe the stored matrices (before op): rows, columns, leading dimension.
  using Layout = LtOwned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
  Layout layout_a, layout_b, layout_d;
  const bool a_plain = gb.op == CUBLAS_OP_N, b_plain = ga.op == CUBLAS_OP_N;
  BCOS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_a.h, operand_type, a_plain ? n : k, a_plain ? k : n, gb.ld));
  BCOS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_b.h, operand_type, b_plain ? k : m, b_plain ? m : k, ga.ld));
  BCOS_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_d.h, cuda_data_type(out.dtype()), n, m, n));
  LtOwned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy> preference;
  const uint64_t max_workspace = blas_workspace_bytes(device);
  const uint32_t align_a = alignment_of(gb.ptr), align_b = alignment_of(ga.ptr), align_d = alignment_of(out.raw_data());
  BCOS_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference.h));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a}, {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d}, {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d}};
  BCOS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &max_workspace, sizeof(max_workspace)));
  for (const auto& [attribute, bytes] : alignments)
    BCOS_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference.h, attribute, &bytes, sizeof(bytes)));
  DeviceGuard guard(device);
  cublasLtHandle_t handle = lt_handle(device);
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  const cublasStatus_t asked = cublasLtMatmulAlgoGetHeuristic(handle, desc.h, layout_a.h, layout_b.h, layout_d.h,
                                                              layout_d.h, preference.h, 1, &heuristic, &found);
  if (lt_declined(asked)) return false;
  if (asked != CUBLAS_STATUS_SUCCESS) detail::raise_cublas_error("cublasLtMatmulAlgoGetHeuristic", asked, __FILE__, __LINE__);
  if (found == 0 || heuristic.state != CUBLAS_STATUS_SUCCESS) return false;
  // From the caching allocator on this stream: returned after the call, reused only by later work on it.
  std::shared_ptr<void> workspace;
  if (heuristic.workspaceSize > 0) workspace = allocate(heuristic.workspaceSize, device);
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t ran = cublasLtMatmul(handle, desc.h, &alpha, gb.ptr, layout_a.h, ga.ptr, layout_b.h, &beta,
                                            out.raw_data(), layout_d.h, out.raw_data(), layout_d.h, &heuristic.algo,
                                            workspace.get(), heuristic.workspaceSize, stream_of(device));
  if (lt_declined(ran)) return false;
  if (ran != CUBLAS_STATUS_SUCCESS) detail::raise_cublas_error("cublasLtMatmul", ran, __FILE__, __LINE__);
  return true;
}

}  // namespace

// This thread's cuBLAS workspace for `stream`, kept for the thread's life (and by the CUDA graphs
// captured on it: graph.cu) as PyTorch keeps one per (handle, stream): GEMMs on one stream run in
// turn, so they can share it; two streams (two threads, or a side stream) must not, as their GEMMs
// may overlap.
std::shared_ptr<void> gemm_workspace_for(int device, cudaStream_t stream) {
  thread_local std::map<std::pair<int, StreamHandle>, std::shared_ptr<void>> workspaces;
  std::shared_ptr<void>& w = workspaces[{device, StreamHandle(stream)}];
  if (!w) w = allocate(blas_workspace_bytes(device), device);
  return w;
}

int64_t linear_bias_epilogues() { return g_bias_epilogues.load(); }
int64_t linear_bias_fallbacks() { return g_bias_fallbacks.load(); }

void linear_bias(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, DType operands) {
  BCOS_CHECK(a.defined() && b.defined() && bias.defined() && out.defined() && a.is_cuda() &&
                 b.device() == a.device() && bias.device() == a.device() && out.device() == a.device(),
             "cuda linear_bias: a, b, bias and out must be on one CUDA device");
  BCOS_CHECK(a.dim() == 2 && b.dim() == 2 && bias.dim() == 1 && out.dim() == 2 && a.size(1) == b.size(0) &&
                 out.size(0) == a.size(0) && out.size(1) == b.size(1) && bias.size(0) == b.size(1),
             "cuda linear_bias: shapes ", a.shape(), " x ", b.shape(), " + ", bias.shape(), " -> ", out.shape(),
             " do not match [M, K] x [K, N] + [N] -> [M, N]");
  BCOS_CHECK(bias.dtype() == out.dtype(), "cuda linear_bias: bias is ", dtype_name(bias.dtype()), ", out is ",
             dtype_name(out.dtype()));
  const int64_t m = out.size(0), n = out.size(1), k = a.size(1);
  const bool autocast = operands != DType::f32 && out.dtype() == DType::f32;
  Tensor narrow_a = autocast ? narrowed(a, operands) : a, narrow_b = autocast ? narrowed(b, operands) : b;
  BCOS_CHECK(narrow_a.dtype() == narrow_b.dtype(), "cuda linear_bias: operands of two types, ",
             dtype_name(narrow_a.dtype()), " ", a.shape(), " and ", dtype_name(narrow_b.dtype()), " ", b.shape());
  // cuBLASLt for float32 outputs and 16-bit ones (bias and result of the operands' type: autocast's
  // linear layers, the bias added to the float32 sums before the one rounding), as PyTorch's addmm
  // (not float64); PyTorch also keeps vectors (a dim of 1) off it. A bias not 16-byte aligned goes
  // the other way too.
  const bool lt_types = out.dtype() == DType::f32 || (is_half_float(out.dtype()) && narrow_a.dtype() == out.dtype());
  const bool lt = lt_types && out.is_contiguous() && bias.is_contiguous() && m > 1 && n > 1 &&
                  k > 1 && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX &&
                  reinterpret_cast<uintptr_t>(bias.raw_data()) % 16 == 0;
  if (lt) {
    if (lt_linear_bias(narrow_a, narrow_b, bias, out)) {
      ++g_bias_epilogues;
      return;
    }
    ++g_bias_fallbacks;
  }
  copy(out, bias.unsqueeze(0).expand(out.shape()));
  bmm(narrow_a.unsqueeze(0), narrow_b.unsqueeze(0), out.unsqueeze(0), true, operands);
}

void bmm(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate, DType operands) {
  BCOS_CHECK(a.defined() && b.defined() && out.defined() && a.is_cuda() &&
                 b.device() == a.device() && out.device() == a.device(),
             "cuda bmm: a, b and out must be on one CUDA device");
  BCOS_CHECK(a.dim() == 3 && b.dim() == 3 && out.dim() == 3, "cuda bmm: expected 3-D tensors, got ",
             a.shape(), ", ", b.shape(), " and ", out.shape());
  const int64_t batch = a.shape()[0], m = a.shape()[1], k = a.shape()[2], n = b.shape()[2];
  BCOS_CHECK(b.shape()[0] == batch && b.shape()[1] == k && out.shape()[0] == batch &&
                 out.shape()[1] == m && out.shape()[2] == n,
             "cuda bmm: shapes ", a.shape(), " x ", b.shape(), " -> ", out.shape(),
             " do not match [B, M, K] x [B, K, N] -> [B, M, N]");
  // Under autocast an operand may already be of the operand type (a linear layer's saved input).
  const bool autocast = operands != DType::f32 && out.dtype() == DType::f32;
  auto fits = [&](DType t) { return t == out.dtype() || (autocast && t == operands); };
  BCOS_CHECK(fits(a.dtype()) && fits(b.dtype()), "cuda bmm: dtypes ", dtype_name(a.dtype()), ", ",
             dtype_name(b.dtype()), " and ", dtype_name(out.dtype()), " must agree",
             autocast ? " (or be autocast's operand type)" : "");
  cuda_data_type(out.dtype());  // raises for dtypes cuBLAS is not asked to handle
  if (batch == 0 || m == 0 || n == 0) return;
  if (k == 0) {  // an empty sum: zeros, or out unchanged when accumulating
    if (!accumulate) fill(out, 0.0);
    return;
  }
  Tensor narrow_a = a, narrow_b = b;
  if (autocast) {
    BCOS_CHECK(operands == DType::bf16 || operands == DType::f16, "cuda bmm: autocast operands must be "
               "bfloat16 or float16, got ", dtype_name(operands));
    narrow_a = narrowed(a, operands);
    narrow_b = narrowed(b, operands);
  }
  if (out.is_contiguous()) {
    gemm_into_contiguous(narrow_a, narrow_b, out, accumulate);
    return;
  }
  // The contract gives a dense out; a strided one still gets a correct answer via a copy.
  Tensor dense = empty(out.shape(), {out.dtype(), out.device()});
  if (accumulate) copy(dense, out);
  gemm_into_contiguous(narrow_a, narrow_b, dense, accumulate);
  copy(out, dense);
}

}  // namespace bcos::cuda
