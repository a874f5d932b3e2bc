// Helpers shared by the CUDA backend's .cu files (not part of the public API): the current
// stream as a cudaStream_t, the per-thread cuBLAS handle, a device guard, launch sizes, and the
// geometry struct that strided kernels receive by value. Plain C++ may include this header (the
// tests do); the device-side parts compile only under nvcc and the CPU emulator
// (tensor/cuda/emulator/, which defines BCOS_CUDA_EMULATION).
#pragma once

#include <cublas_v2.h>

#include <memory>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <type_traits>

#include "tensor/cuda/backend.h"
#include "tensor/cuda/check.h"

#if defined(__CUDACC__) || defined(BCOS_CUDA_EMULATION)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

// `#pragma unroll` for nvcc; nothing for g++, which warns about the pragma (the CUDA emulator
// compiles the device code below too).
#if defined(__CUDACC__)
#define BCOS_UNROLL _Pragma("unroll")
#else
#define BCOS_UNROLL
#endif

namespace bcos::cuda {

// ---- devices and streams (device.cu) ------------------------------------------------------
// Raises naming `op` unless 0 <= device < device_count().
void check_device_index(int device, const char* op);
// The calling thread's current stream on `device` (nullptr: the legacy default stream).
cudaStream_t stream_of(int device);
// Number of streaming multiprocessors (cached per device).
int multiprocessor_count(int device);
// This thread's cuBLAS handle for `device`, created on first use and bound to the thread's
// current stream on every call. The device must be the current one (see DeviceGuard).
cublasHandle_t cublas_handle(int device);
// This thread's cuBLAS workspace for `stream` on `device` (made on first use, kept for the thread's
// life); a CUDA graph holds its capture stream's too, so that the memory its GEMMs were captured
// with outlives the capturing thread (matmul.cu).
std::shared_ptr<void> gemm_workspace_for(int device, cudaStream_t stream);

// Makes `device` current for a scope and restores the previous device afterwards, so a call
// on cuda:1 never leaves the caller's thread switched away from its device -- where that device
// is in use: a thread that never chose one has device 0 "current", and setting it back would
// create a context on GPU 0 (backend.h: device_in_use).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    BCOS_CUDA_CHECK(cudaGetDevice(&previous_));
    mark_device_in_use(device);
    if (previous_ != device) {
      BCOS_CUDA_CHECK(cudaSetDevice(device));
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_ && device_in_use(previous_)) cudaSetDevice(previous_);  // a destructor must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// ---- errors found on the device (fault.cu) ---------------------------------------------------
// An index out of range is found by the kernel that reads it, which skips it and fills in the
// device's fault report; the host raises it at the next synchronisation (a copy to the host,
// synchronize()). No round trip per index op, and a CUDA graph's replay reports the same way.
enum class IndexOp : int { index_select, index_add, gather, scatter_add };

// One per device, in pinned host memory the device writes to. Reports take turns, numbered:
// the device's claim word is 2g while report g is free to take and 2g + 1 once a bad index has
// taken it; `raised` (the host's) counts the reports raised, so a kernel that finds the claim
// taken and report g raised moves it on to 2g + 2 itself -- the host never writes device memory.
struct FaultReport {
  int present, role, op, generation;
  int64_t value, limit;
  unsigned raised;
};

struct IndexCheck {
  unsigned* claim;      // device memory
  FaultReport* report;  // pinned host memory (the same address on the device)
  int64_t limit;
  int role, op;
};

// For a kernel of `op` on `device` whose indices must lie in [0, limit); the device's report is
// made at first use (a capture makes it before it begins: allocations cannot be captured).
IndexCheck index_check(int device, IndexOp op, int64_t limit);
void make_fault_report(int device);
// Raises the fault the device's kernels have reported, if any. Called where the host has waited
// for the device (a report is raised once, by whichever thread waits first).
void raise_device_fault(int device);

#if defined(__CUDACC__) || defined(BCOS_CUDA_EMULATION)
// Whether v is a valid index; if not, reports it (unless a report not yet raised is pending:
// the first bad index found is the one named).
__device__ __forceinline__ bool index_in_range(const IndexCheck& c, int64_t v) {
  if (v >= 0 && v < c.limit) return true;
  volatile FaultReport* r = c.report;
  unsigned now = *static_cast<volatile unsigned*>(c.claim);
  if (now & 1u) {                              // taken by report now / 2
    if (r->raised <= now / 2) return false;    // ... and not raised yet
    atomicCAS(c.claim, now, now + 1);          // raised: free the next one (or another thread did)
    now = *static_cast<volatile unsigned*>(c.claim);
    if (now & 1u) return false;
  }
  if (atomicCAS(c.claim, now, now + 1) == now) {
    // (One statement each: a volatile assignment's value is not used, which C++20 deprecates.)
    r->role = c.role;
    r->op = c.op;
    r->generation = int(now / 2);
    r->value = v;
    r->limit = c.limit;
    __threadfence_system();
    r->present = 1;
  }
  return false;
}
#endif

// ---- launch sizes ---------------------------------------------------------------------------
inline constexpr int kThreads = 256;
// Kernels loop grid-stride, so the grid only needs to be large enough to fill the GPU.
inline constexpr int64_t kMaxBlocks = int64_t(1) << 16;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  return unsigned(std::clamp<int64_t>((n + threads - 1) / threads, 1, kMaxBlocks));
}
// Kernels that give each row a warp run blocks of (32, kRowWarps) threads: one row per warp.
inline constexpr int kRowWarps = 8;
inline unsigned row_warp_blocks(int64_t rows) { return blocks_for(rows, kRowWarps); }
#if defined(__CUDACC__) || defined(BCOS_CUDA_EMULATION)
// The sum of v over the 32 lanes of a warp, in every lane (all 32 must call it).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
BCOS_UNROLL
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ---- 16-byte packs --------------------------------------------------------------------------
// BCOS_CUDA_PACKS=0 keeps the passes packed since session 58 (batch norm, the B-cos layers, layer
// norm) a thread or lane per element: an A/B switch for a GPU's timings (scripts/gpu_check's
// `packs` section). Read at each launch, so that a test can switch it.
inline bool packs_enabled() {
  const char* v = std::getenv("BCOS_CUDA_PACKS");
  return v == nullptr || std::string_view(v) != "0";
}

// Bandwidth-bound kernels move 16 bytes of each operand per access (4 float32, 8 bfloat16, 2
// float64, 16 bool) where every pointer is 16-byte aligned (cudaMalloc's are; a view's offset
// may not be): fewer, wider memory transactions, and four times the bytes in flight per thread
// that a GPU needs to keep its memory busy -- as PyTorch's vectorised elementwise kernels and
// llm.c's x128 do. The elements past the last whole pack go one by one.
template <class T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <class... P>
__host__ __device__ __forceinline__ bool aligned16(const P*... p) {
  return ((reinterpret_cast<uintptr_t>(p) % 16 == 0) && ...);
}

// Pack p of `base` (T may be const). A GPU faults on a 16-byte access that is not 16-byte
// aligned, where the emulator's x86 host mostly would not: there the access is checked first.
template <class T>
using PackOf = std::conditional_t<std::is_const_v<T>, const Pack<std::remove_const_t<T>>, Pack<T>>;

template <class T>
__device__ __forceinline__ PackOf<T>& pack_at(T* base, int64_t p) {
  using Whole = PackOf<T>;
#if defined(BCOS_CUDA_EMULATION)
  ::bcos::emu::count_pack_access();
  if (!aligned16(base + p * Whole::kSize)) {  // fail the launch; meanwhile the thread reads and writes a stand-in
    ::bcos::emu::device_fault("a 16-byte pack access that is not 16-byte aligned");
    static thread_local Pack<std::remove_const_t<T>> stand_in;
    return stand_in;
  }
#endif
  return reinterpret_cast<Whole*>(base)[p];
}
#endif

// ---- dividing by a launch's sizes -------------------------------------------------------------
// Kernels that walk a tensor by flat index split it into (channel, position, ...) by dividing by
// sizes fixed for the launch. A GPU has no integer divider: a 32-bit division is a routine of
// ~20 instructions, a 64-bit one several times longer, and a few per element make a memory-bound
// kernel compute-bound. Divisor<uint32_t> instead precomputes, on the host, m and s such that
// n / d = (umulhi(n, m) + n) >> s for every n < 2^31 (Granlund and Montgomery's round-up method:
// s = ceil(log2 d), m = floor(2^32 (2^s − d) / d) + 1, which fits 32 bits since 2^s − d < d);
// (umulhi(n, m) ≤ n keeps the sum below 2^32.) Divisor<int64_t> divides plainly, for tensors of
// 2^31 elements and more. with_index picks the index type: launches pass Divisor<I> by value.
template <class I>
struct Divisor;

template <>
struct Divisor<uint32_t> {
  uint32_t d = 1, m = 1, s = 0;
  Divisor() = default;
  explicit Divisor(int64_t divisor) : d(uint32_t(divisor)) {
    if (divisor < 1 || divisor > int64_t(INT32_MAX)) fail("cuda Divisor<uint32_t>: divisor ", divisor, " out of range");
    s = uint32_t(std::bit_width(d - 1));  // the smallest s with 2^s >= d
    m = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t high = __umulhi(n, m);
#else
    const uint32_t high = uint32_t((uint64_t(n) * m) >> 32);
#endif
    return (high + n) >> s;
  }
  __host__ __device__ __forceinline__ uint32_t mod(uint32_t n) const { return n - div(n) * d; }
};

template <>
struct Divisor<int64_t> {
  int64_t d = 1;
  Divisor() = default;
  explicit Divisor(int64_t divisor) : d(divisor) {
    if (divisor < 1) fail("cuda Divisor<int64_t>: divisor ", divisor, " out of range");
  }
  __host__ __device__ __forceinline__ int64_t div(int64_t n) const { return n / d; }
  __host__ __device__ __forceinline__ int64_t mod(int64_t n) const { return n % d; }
};

// (plane, row, column) of flat index i over planes of rows x cols: two multiply-and-shifts.
template <class I>
struct PlaneCoords {
  Divisor<I> cols, rows;
  PlaneCoords(int64_t rows_, int64_t cols_) : cols(cols_), rows(rows_) {}
  struct At {
    I plane, row, col;
  };
  __host__ __device__ __forceinline__ At operator()(I i) const {
    const I r = cols.div(i), plane = rows.div(r);
    return {plane, I(r - plane * rows.d), I(i - r * cols.d)};
  }
};

// Calls fn.template operator()<I>() with I = uint32_t where numel < 2^31 (so that an index plus a
// grid's stride cannot wrap, and Divisor<uint32_t> holds), int64_t otherwise.
template <class F>
void with_index(int64_t numel, F&& fn) {
  if (numel <= int64_t(INT32_MAX)) fn.template operator()<uint32_t>();
  else fn.template operator()<int64_t>();
}

// ---- strided geometry -------------------------------------------------------------------------
// The shape shared by N operands and each operand's strides (in elements), passed to kernels by
// value. Built with size-1 dims dropped and adjacent dims merged wherever every operand allows
// it, so a dense or simply-sliced tensor unravels over one or two dims.
template <int N>
struct Geometry {
  int ndim = 0;
  bool contiguous = true;  // every operand dense row-major: the offset is the linear index
  int64_t numel = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
  Divisor<uint32_t> dividers[kMaxDims];  // by sizes[d], for numel in [1, 2^31)

#if defined(__CUDACC__) || defined(BCOS_CUDA_EMULATION)
  // Element offsets of each operand for the row-major linear index `linear`. The loop runs over
  // a compile-time bound so the arrays stay in registers / parameter space. Below 2^31 elements
  // the index splits by multiply-and-shift (Divisor): a 64-bit division is a long software
  // routine on a GPU, a 32-bit one ~20 instructions, and there is one per dim and element.
  __device__ __forceinline__ void offsets(int64_t linear, int64_t (&off)[N]) const {
BCOS_UNROLL
    for (int k = 0; k < N; ++k) off[k] = 0;
    if (numel <= int64_t(INT32_MAX)) {
      uint32_t rest = uint32_t(linear);
BCOS_UNROLL
      for (int d = kMaxDims - 1; d >= 0; --d) {
        if (d < ndim) {
          const uint32_t quotient = dividers[d].div(rest), i = rest - quotient * dividers[d].d;
          rest = quotient;
BCOS_UNROLL
          for (int k = 0; k < N; ++k) off[k] += int64_t(i) * strides[k][d];
        }
      }
      return;
    }
BCOS_UNROLL
    for (int d = kMaxDims - 1; d >= 0; --d) {
      if (d < ndim) {
        int64_t size = sizes[d];
        int64_t i = linear % size;
        linear /= size;
BCOS_UNROLL
        for (int k = 0; k < N; ++k) off[k] += i * strides[k][d];
      }
    }
  }
#endif
};

// Geometry of `shape` viewed through each operand's strides.
template <int N>
Geometry<N> make_geometry(const Shape& shape, const std::array<const Strides*, N>& operand_strides) {
  Geometry<N> g;
  g.numel = shape.numel();
  // Outer-to-inner list of the dims that matter (size > 1), merging a dim into the one inside
  // it whenever, for every operand, stepping the outer dim once equals walking the inner fully.
  for (int d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = g.ndim > 0;
    for (int k = 0; k < N && merge; ++k) {
      int last = g.ndim - 1;
      merge = g.strides[k][last] == (*operand_strides[k])[d] * shape[d];
    }
    if (merge) {
      int last = g.ndim - 1;
      g.sizes[last] *= shape[d];
      for (int k = 0; k < N; ++k) g.strides[k][last] = (*operand_strides[k])[d];
    } else {
      g.sizes[g.ndim] = shape[d];
      for (int k = 0; k < N; ++k) g.strides[k][g.ndim] = (*operand_strides[k])[d];
      g.ndim++;
    }
  }
  if (g.numel > 0 && g.numel <= int64_t(INT32_MAX))
    for (int d = 0; d < g.ndim; ++d) g.dividers[d] = Divisor<uint32_t>(g.sizes[d]);
  g.contiguous = true;
  if (g.ndim > 1) g.contiguous = false;
  for (int k = 0; k < N && g.ndim == 1; ++k)
    if (g.strides[k][0] != 1) g.contiguous = false;
  return g;
}

// ---- dtypes on the device -----------------------------------------------------------------------
// Op names for error messages ("cuda unary: gelu_erf needs float32 or float64, got int64").

#if defined(__CUDACC__) || defined(BCOS_CUDA_EMULATION)
// The device-side type that stores each dtype: f16 / bf16 become CUDA's own 16-bit types, whose
// conversions are round-to-nearest-even like the host's Half / BFloat16.
template <class T> struct device_type { using type = T; };
template <> struct device_type<Half> { using type = __half; };
template <> struct device_type<BFloat16> { using type = __nv_bfloat16; };
template <class T> using device_t = typename device_type<T>::type;

// Calls f.template operator()<T>() with T the device type that stores `dt` (any dtype; 16-bit
// floats as CUDA's own types): for kernels that only move values (where, index_select, gather).
template <class F>
void dispatch_any_dtype(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::i64: return f.template operator()<int64_t>();
    case DType::u8: return f.template operator()<uint8_t>();
    case DType::boolean: return f.template operator()<bool>();
    case DType::f16: return f.template operator()<__half>();
    case DType::bf16: return f.template operator()<__nv_bfloat16>();
  }
  fail(op, ": unsupported dtype ", dtype_name(dt));
}

// Calls f.template operator()<S>() with S = __half or __nv_bfloat16 for float16 / bfloat16.
template <class F>
void dispatch_half(DType dt, F&& f) {
  if (dt == DType::f16) return f.template operator()<__half>();
  if (dt == DType::bf16) return f.template operator()<__nv_bfloat16>();
  fail("dispatch_half: ", dtype_name(dt), " is not a 16-bit float");
}

template <class T>
inline constexpr bool is_half_like_v =
    std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Converts like the CPU's copy kernel: 16-bit floats go through float (so f64 -> f16 rounds
// twice, as on the host), bool is `v != 0`, floats reach uint8 through int64 (the wrap-around
// that x86 gives the host's plain cast).
template <class To, class From>
__device__ __forceinline__ To convert_value(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, __half>) {
    return convert_value<To>(__half2float(v));
  } else if constexpr (std::is_same_v<From, __nv_bfloat16>) {
    return convert_value<To>(__bfloat162float(v));
  } else if constexpr (std::is_same_v<To, __half>) {
    return __float2half_rn(float(v));
  } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    return __float2bfloat16_rn(float(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else if constexpr (std::is_same_v<To, uint8_t> && std::is_floating_point_v<From>) {
    return uint8_t(int64_t(v));
  } else {
    return static_cast<To>(v);
  }
}
#endif

}  // namespace bcos::cuda
