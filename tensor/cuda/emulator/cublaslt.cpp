// The CUDA emulator's cuBLASLt: the calls tensor/cuda/matmul.cu makes for a linear layer's bias
// epilogue, written from the library's documented contract -- descriptors whose attributes have
// the documented sizes, column-major layouts (ld >= rows), heuristics that offer an algorithm
// for the supported type combinations and remember the alignments the preference promised,
// D = alpha · op(A) · op(B) + beta · C (+ the bias vector down every column, one value per row of
// D). Anything else is refused with the status the library gives; a call whose pointers are less
// aligned than its algorithm was chosen for is refused as on a GPU, where it would fault.
#include <cublasLt.h>

#include <atomic>
#include <cstring>

#include "tensor/cuda/emulator/blas_values.h"
#include "tensor/cuda/emulator/runtime.h"

using bcos::emu::blas::cuda_type_bytes;
using bcos::emu::blas::load;
using bcos::emu::blas::store;
using bcos::emu::runtime::check_device_range;
using bcos::emu::runtime::enqueue;

struct cublasLtContext {
  bool live = true;
};

namespace {

// What each semi-opaque descriptor holds, kept in its data words (trivially copyable).
struct Desc {
  cublasComputeType_t compute;
  cudaDataType scale;
  int32_t trans_a, trans_b;
  uint32_t epilogue;
  const void* bias;
};
struct Layout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};
struct Preference {
  uint64_t max_workspace;
  uint32_t align[4];  // A, B, C, D
};
struct Algo {  // what the heuristics chose for: the alignments promised, the workspace needed
  uint32_t align[4];
  uint64_t workspace;
};
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t) &&
              sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t) &&
              sizeof(Preference) <= sizeof(cublasLtMatmulPreferenceOpaque_t) && sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t));

template <class T, class Opaque>
T read(const Opaque* o) {
  T t;
  std::memcpy(&t, o->data, sizeof(T));
  return t;
}
template <class T, class Opaque>
void write(Opaque* o, const T& t) {
  std::memcpy(o->data, &t, sizeof(T));
}

// Copies an attribute's value when its size is the documented one.
template <class T>
bool take(T& into, const void* buf, size_t size) {
  if (buf == nullptr || size != sizeof(T)) return false;
  std::memcpy(&into, buf, sizeof(T));
  return true;
}

std::atomic<bool> g_offer_algorithms{true};
std::atomic<bcos::emu::runtime::LtMatmulAnswer> g_matmul_answer{bcos::emu::runtime::LtMatmulAnswer::run};
constexpr uint64_t kWorkspace = 64 << 10;  // what the emulated algorithm asks for, when allowed

uint32_t alignment_of(const void* p) {
  uint32_t align = 256;
  while (align > 1 && reinterpret_cast<uintptr_t>(p) % align != 0) align /= 2;
  return align;
}

// op(X) of a stored layout: [rows, cols] or, transposed, [cols, rows].
uint64_t op_rows(const Layout& l, int32_t trans) { return trans == CUBLAS_OP_N ? l.rows : l.cols; }
uint64_t op_cols(const Layout& l, int32_t trans) { return trans == CUBLAS_OP_N ? l.cols : l.rows; }

// The combinations this backend asks for, all in cublasLtMatmul's table: float32 (plain or TF32)
// and bf16 / f16 operands summed in float32, writing float32 or the operand type.
bool supported(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dl) {
  if (d.scale != CUDA_R_32F || c.type != dl.type || a.type != b.type) return false;
  if (d.epilogue != CUBLASLT_EPILOGUE_DEFAULT && d.epilogue != CUBLASLT_EPILOGUE_BIAS) return false;
  if (d.epilogue == CUBLASLT_EPILOGUE_BIAS && d.bias == nullptr) return false;
  if (a.type == CUDA_R_32F)
    return (d.compute == CUBLAS_COMPUTE_32F || d.compute == CUBLAS_COMPUTE_32F_FAST_TF32) && dl.type == CUDA_R_32F;
  if (a.type == CUDA_R_16BF || a.type == CUDA_R_16F)
    return d.compute == CUBLAS_COMPUTE_32F && (dl.type == CUDA_R_32F || dl.type == a.type);
  return false;
}

bool shapes_agree(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dl) {
  return op_rows(a, d.trans_a) == dl.rows && op_cols(b, d.trans_b) == dl.cols &&
         op_cols(a, d.trans_a) == op_rows(b, d.trans_b) && c.rows == dl.rows && c.cols == dl.cols;
}

}  // namespace

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute, cudaDataType_t scale) {
  if (desc == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *desc = new cublasLtMatmulDescOpaque_t{};
  write(*desc, Desc{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t size) {
  if (desc == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  Desc d = read<Desc>(desc);
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: ok = take(d.trans_a, buf, size); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: ok = take(d.trans_b, buf, size); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: ok = take(d.epilogue, buf, size); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: ok = take(d.bias, buf, size); break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;  // not one this backend sets
  }
  if (!ok || (d.trans_a != CUBLAS_OP_N && d.trans_a != CUBLAS_OP_T) ||
      (d.trans_b != CUBLAS_OP_N && d.trans_b != CUBLAS_OP_T))
    return CUBLAS_STATUS_INVALID_VALUE;
  write(desc, d);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (layout == nullptr || cuda_type_bytes(type) == 0 || ld < int64_t(std::max<uint64_t>(rows, 1)))
    return CUBLAS_STATUS_INVALID_VALUE;
  *layout = new cublasLtMatrixLayoutOpaque_t{};
  write(*layout, Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (pref == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *pref = new cublasLtMatmulPreferenceOpaque_t{};
  write(*pref, Preference{0, {256, 256, 256, 256}});  // the documented defaults
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                    size_t size) {
  if (pref == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  Preference p = read<Preference>(pref);
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: ok = take(p.max_workspace, buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: ok = take(p.align[0], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: ok = take(p.align[1], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: ok = take(p.align[2], buf, size); break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: ok = take(p.align[3], buf, size); break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (!ok) return CUBLAS_STATUS_INVALID_VALUE;
  write(pref, p);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* returned) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!desc || !a || !b || !c || !d || !pref || requested < 1 || !results || !returned) return CUBLAS_STATUS_INVALID_VALUE;
  *returned = 0;
  const Desc dd = read<Desc>(desc);
  const Layout la = read<Layout>(a), lb = read<Layout>(b), lc = read<Layout>(c), ld = read<Layout>(d);
  if (!shapes_agree(dd, la, lb, lc, ld)) return CUBLAS_STATUS_INVALID_VALUE;
  // No algorithm: the library's status for it, as when none suits (tests switch the offer off).
  if (!g_offer_algorithms.load() || !supported(dd, la, lb, lc, ld)) return CUBLAS_STATUS_NOT_SUPPORTED;
  const Preference p = read<Preference>(pref);
  Algo algo{};
  std::memcpy(algo.align, p.align, sizeof(algo.align));
  algo.workspace = std::min<uint64_t>(p.max_workspace, kWorkspace);
  results[0] = cublasLtMatmulHeuristicResult_t{};
  write(&results[0].algo, algo);
  results[0].workspaceSize = size_t(algo.workspace);
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b, const void* beta,
                              const void* C, cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                              cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!desc || !a || !b || !c || !d || !algo || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  const Desc dd = read<Desc>(desc);
  const Layout la = read<Layout>(a), lb = read<Layout>(b), lc = read<Layout>(c), ld = read<Layout>(d);
  if (!shapes_agree(dd, la, lb, lc, ld)) return CUBLAS_STATUS_INVALID_VALUE;
  if (!supported(dd, la, lb, lc, ld)) return CUBLAS_STATUS_NOT_SUPPORTED;
  switch (g_matmul_answer.load()) {
    case bcos::emu::runtime::LtMatmulAnswer::decline: return CUBLAS_STATUS_NOT_SUPPORTED;
    case bcos::emu::runtime::LtMatmulAnswer::fail: return CUBLAS_STATUS_EXECUTION_FAILED;
    case bcos::emu::runtime::LtMatmulAnswer::run: break;
  }
  const Algo chosen = read<Algo>(algo);
  if (workspace_bytes < chosen.workspace || (chosen.workspace > 0 && workspace == nullptr))
    return CUBLAS_STATUS_INVALID_VALUE;
  // An algorithm chosen for aligned pointers would fault on these: refused here, with a status.
  const void* pointers[4] = {A, B, C, D};
  for (int i = 0; i < 4; ++i)
    if (alignment_of(pointers[i]) < chosen.align[i]) return CUBLAS_STATUS_INVALID_VALUE;
  // The documentation's own requirements: a workspace 256-byte aligned; a bias its kernels may read
  // 16 bytes at a time (the alignment preferences do not cover it; misaligned, the GPU faults).
  if (workspace != nullptr && alignment_of(workspace) < 256) return CUBLAS_STATUS_INVALID_VALUE;
  if (dd.epilogue == CUBLASLT_EPILOGUE_BIAS && alignment_of(dd.bias) < 16) return CUBLAS_STATUS_INVALID_VALUE;
  const uint64_t m = ld.rows, n = ld.cols, k = op_cols(la, dd.trans_a);
  const double al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  auto extent = [](const Layout& l) { return size_t((l.cols - 1) * uint64_t(l.ld) + l.rows) * cuda_type_bytes(l.type); };
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  if (k > 0) {
    check_device_range(A, extent(la), "cublasLtMatmul: A");
    check_device_range(B, extent(lb), "cublasLtMatmul: B");
  }
  if (be != 0) check_device_range(C, extent(lc), "cublasLtMatmul: C");
  check_device_range(D, extent(ld), "cublasLtMatmul: D");
  const bool bias = dd.epilogue == CUBLASLT_EPILOGUE_BIAS;  // of D's type (the default bias type)
  if (bias) check_device_range(dd.bias, m * cuda_type_bytes(ld.type), "cublasLtMatmul: bias");
  if (workspace_bytes > 0 && workspace != nullptr) check_device_range(workspace, workspace_bytes, "cublasLtMatmul: workspace");
  const bool round_tf32 = la.type == CUDA_R_32F && dd.compute == CUBLAS_COMPUTE_32F_FAST_TF32;
  enqueue(stream, "cublasLtMatmul", [=] {
    const uint64_t start = bcos::emu::runtime::tracing() ? bcos::emu::runtime::trace_clock_ns() : 0;
    const Eigen::MatrixXd product = bcos::emu::blas::product(dd.trans_a != CUBLAS_OP_N, dd.trans_b != CUBLAS_OP_N,
                                                             int64_t(m), int64_t(n), int64_t(k), A, la.type, la.ld, B,
                                                             lb.type, lb.ld, round_tf32);
    for (uint64_t j = 0; j < n; ++j)
      for (uint64_t i = 0; i < m; ++i) {
        double v = al * product(int64_t(i), int64_t(j));
        if (be != 0) v += be * load(C, lc.type, int64_t(i + j * uint64_t(lc.ld)));  // beta == 0: C is not read
        if (bias) v += load(dd.bias, ld.type, int64_t(i));
        store(D, ld.type, int64_t(i + j * uint64_t(ld.ld)), v);
      }
    if (start != 0)
      bcos::emu::runtime::trace_call("cublasLtMatmul",
                                     std::to_string(m) + "," + std::to_string(n) + "," + std::to_string(k) + ",1," +
                                         (dd.trans_a != CUBLAS_OP_N ? "T" : "N") + (dd.trans_b != CUBLAS_OP_N ? "T" : "N") +
                                         (bias ? ",bias," : ",") + (round_tf32 ? "tf32" : "other"),
                                     bcos::emu::runtime::trace_clock_ns() - start);
  });
  return CUBLAS_STATUS_SUCCESS;
}

namespace bcos::emu::runtime {
void set_lt_algorithms(bool offered) { g_offer_algorithms = offered; }
void set_lt_matmul_answer(LtMatmulAnswer answer) { g_matmul_answer = answer; }
}  // namespace bcos::emu::runtime
