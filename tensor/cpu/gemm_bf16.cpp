// bfloat16 GEMM: C = A · B with both operands in bfloat16 -- float32 ones rounded (to nearest
// even) while they are packed, bf16 ones (autocast's kept linear inputs) packed as they are --
// products summed in float32. Used by autocast's products and by the bf16 inference option
// (set_cpu_bf16). Two kernels, by what the CPU has:
//   AMX (Intel, Sapphire Rapids on): one TDPBF16PS multiplies a 16 x 32 bf16 tile of A by a
//   32 x 16 tile of B into a 16 x 16 float32 tile, 8192 multiply-adds per instruction -- several
//   times the float32 AVX-512 kernel there, where AVX-512 BF16's vdpbf16ps ran at 0.55x of float32.
//   AVX-512 BF16 (AMD Zen 4 on): vdpbf16ps, 32 multiply-adds per instruction against an FMA's 16;
//   on Zen 5 it issues as fast as an FMA, so twice the float32 kernel's peak.
// bf16 x bf16 products are exact in float32; the price is bf16's 8-bit mantissa on the inputs
// (relative error ≤ 2^-9 per operand).
//
// Layout: micro-tiles of C are 32 columns wide (AMX 32 rows, four accumulator tiles; AVX-512 8
// rows, 16 zmm); k runs in pairs (AMX: steps of 32).
//   packed A block: row-major bf16, ablk[r * kp + p], rows padded to the tile height, k to kp
//   packed B panel (32 columns): bp[(pair * 32 + j) * 2 + h] = bf16 b[2·pair + h][j] -- the
//   "VNNI" layout both instructions read: the two k-values of a column side by side in 32 bits.
// Linux hands out AMX state only on request (arch_prctl ARCH_REQ_XCOMP_PERM), made once.
// GCC 12 misreads the placeholder operand of AVX-512 intrinsics (`__Y`, _mm512_undefined_*) as
// "maybe uninitialized" (as in gemm.cpp), and at -O1 as "uninitialized".
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "tensor/cpu/gemm_tile.h"
#define BCOS_AMX 1
#endif

#include "tensor/copy.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos {

namespace {
std::atomic<bool> g_bf16{false};

// AMX-BF16 on the CPU and the kernel's permission to use its tile state.
bool cpu_has_amx() {
#ifdef BCOS_AMX
  static const bool has = [] {
    // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 22 AMX-BF16 (read directly: clang 14's
    // __builtin_cpu_supports does not know the AMX names).
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    if (!(edx & (1u << 24)) || !(edx & (1u << 22))) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return has;
#else
  return false;
#endif
}
}  // namespace

bool cpu_bf16_supported() { return std::string_view(cpu::gemm_bf16_kernel_name()) != "none"; }
void set_cpu_bf16(bool on) { g_bf16.store(on && cpu_bf16_supported()); }
bool cpu_bf16() { return g_bf16.load(std::memory_order_relaxed); }

}  // namespace bcos

namespace bcos::cpu {

bool bf16_gemm_fits(int64_t m, int64_t n, int64_t k) {
  return m >= 64 && n >= 64 && k >= 32 && cpu_bf16_supported();
}

bool bf16_product(int64_t m, int64_t n, int64_t k) {
  return (cpu_bf16() || bf16_operands_mode() != Bf16Operands::off) && bf16_gemm_fits(m, n, k);
}

namespace {
// float -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t to_bf16(float f) { return BFloat16::from_float(f); }

// The same rounding kept as a float (autocast's operands).
inline float round_to_bf16(float f) { return BFloat16::to_float(to_bf16(f)); }
}  // namespace

Bf16OperandsScope::Bf16OperandsScope(Bf16Operands mode) : previous_(bf16_operands_mode()) {
  bf16_operands_mode() = mode;
}
Bf16OperandsScope::~Bf16OperandsScope() { bf16_operands_mode() = previous_; }

void round_to_bf16(int64_t rows, int64_t cols, const float* src, int64_t rs, int64_t cs, float* dst) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[i * cols + j] = round_to_bf16(src[i * rs + j * cs]);
}

namespace {
// Whether x's elements fill offsets [0, numel) of its storage span exactly, in some order of its
// dims: contiguous, or a transposed / permuted view of a contiguous block.
bool dense_in_some_order(const Tensor& x) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the dims that matter
  for (int d = 0; d < x.dim(); ++d)
    if (x.size(d) > 1) dims.emplace_back(x.stride(d), x.size(d));
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) return false;
    expected *= size;
  }
  return true;
}
}  // namespace

Tensor rounded_operand(const Tensor& x, DType operands) {
  BCOS_CHECK(x.dtype() == DType::f32 && (operands == DType::bf16 || operands == DType::f16),
             "autocast: rounds float32 operands to bfloat16 or float16, got ", x.dtype(), " to ", operands);
  // A dense block (a transposed weight, say) is rounded in its own layout, in one linear pass; a
  // GEMM reads it through the same strides. Anything else is made contiguous first.
  const Tensor src = dense_in_some_order(x) ? x : raw_contiguous(x);
  Tensor buffer = empty({x.numel()}, {DType::f32, x.device()});
  const float* s = static_cast<const float*>(src.raw_data());
  float* o = buffer.data<float>();
  parallel_for(x.numel(), 1, [&](int64_t b, int64_t e) {
    if (operands == DType::bf16) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) o[i] = round_to_bf16(s[i]);
    } else {
      for (int64_t i = b; i < e; ++i) o[i] = float(Half(s[i]));
    }
  });
  return buffer.alias(x.shape(), src.strides(), 0);
}

#ifdef BCOS_AMX
namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
std::unique_ptr<T[], FreeDeleter> aligned(int64_t count) {
  const size_t bytes = std::max<size_t>((size_t(count) * sizeof(T) + 63) / 64 * 64, 64);
  return std::unique_ptr<T[], FreeDeleter>(static_cast<T*>(std::aligned_alloc(64, bytes)));
}

constexpr int64_t kPanel = 32;  // both kernels: C micro-tiles 32 columns wide, B packed in 32-column panels

// An operand's element (r, c) onwards, as the same kind of operand.
Bf16Operand at(const Bf16Operand& x, int64_t r, int64_t c) {
  Bf16Operand y = x;
  const int64_t offset = r * x.rs + c * x.cs;
  if (x.is_bf16)
    y.data = static_cast<const uint16_t*>(x.data) + offset;
  else
    y.data = static_cast<const float*>(x.data) + offset;
  return y;
}

// A source element as bf16 bits: float32 rounded, bf16 as it is.
inline uint16_t bf16_bits(float f) { return to_bf16(f); }
inline uint16_t bf16_bits(uint16_t b) { return b; }

// A[0:rows, 0:kc] -> ablk[r * kp + p]; zero for r in [rows, rows_pad) and p in [kc, kp).
template <class Src>
void pack_a_block(const Src* a, int64_t rsa, int64_t csa, int64_t rows, int64_t rows_pad, int64_t kc, int64_t kp,
                  uint16_t* ablk) {
  for (int64_t r = 0; r < rows_pad; ++r) {
    uint16_t* dst = ablk + r * kp;
    if (r >= rows) {
      std::memset(dst, 0, size_t(kp) * 2);
      continue;
    }
    const Src* src = a + r * rsa;
    if (csa == 1)
      for (int64_t p = 0; p < kc; ++p) dst[p] = bf16_bits(src[p]);
    else
      for (int64_t p = 0; p < kc; ++p) dst[p] = bf16_bits(src[p * csa]);
    std::memset(dst + kc, 0, size_t(kp - kc) * 2);
  }
}

// B[0:kc, 0:cols] (cols ≤ 32) -> one VNNI panel of kp / 2 pair rows; zero beyond cols and kc.
template <class Src>
void pack_b_panel(const Src* b, int64_t rsb, int64_t csb, int64_t cols, int64_t kc, int64_t kp, uint16_t* bp) {
  for (int64_t q = 0; q < kp / 2; ++q) {
    uint16_t* dst = bp + q * kPanel * 2;
    for (int h = 0; h < 2; ++h) {
      const int64_t p = 2 * q + h;
      if (p >= kc) {
        for (int64_t j = 0; j < kPanel; ++j) dst[2 * j + h] = 0;
        continue;
      }
      const Src* row = b + p * rsb;
      for (int64_t j = 0; j < cols; ++j) dst[2 * j + h] = bf16_bits(row[j * csb]);
      for (int64_t j = cols; j < kPanel; ++j) dst[2 * j + h] = 0;
    }
  }
}

// The same packing with AVX-512 BF16 (Zen 4 on; Sapphire Rapids has it beside AMX): vcvtneps2bf16
// rounds 16 floats at once, and a 16 x 16 transpose of 32-bit pairs serves the transposed
// operands (a linear layer's Wᵀ, a weight gradient's dYᵀ). Scalar packing cost more than the
// products when one side is short (vdpbf16ps, one thread, 16 x 1024 x 144: 0.51x of float32
// with it, 1.04x with this). vcvtneps2bf16 takes subnormal inputs as zero, as vdpbf16ps and
// TDPBF16PS do with subnormal operands anyway (vdpbf16ps checked on Zen 5, TDPBF16PS by Intel's
// manual), so no result changes -- nor does a bf16 source's subnormal, packed as it is.
#define BCOS_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}
inline __mmask32 first_lanes32(int64_t count) {
  return count >= 32 ? __mmask32(0xffffffffu) : count <= 0 ? __mmask32(0) : __mmask32((1u << count) - 1);
}

// 16 consecutive values (those in `lanes`, zero elsewhere) as bf16 bits in the low half of each
// 32-bit lane.
BCOS_BF16_TARGET inline __m512i low_halves(const float* p, __mmask16 lanes) {
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lanes, p)));
}
BCOS_BF16_TARGET inline __m512i low_halves(const uint16_t* p, __mmask16 lanes) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, p));
}

// `even` in the low half of each 32-bit lane, `odd` in the high half.
BCOS_BF16_TARGET inline __m512i pairs_of(__m512i even, __m512i odd) {
  return _mm512_or_si512(even, _mm512_slli_epi32(odd, 16));
}

// 32 consecutive values (the first `count`; zero after) as their 16 pairs.
BCOS_BF16_TARGET inline __m512i pairs_in_row(const float* p, int64_t count) {
  const __m512 lo = _mm512_maskz_loadu_ps(first_lanes(count), p);
  const __m512 hi = _mm512_maskz_loadu_ps(first_lanes(count - 16), p + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}
BCOS_BF16_TARGET inline __m512i pairs_in_row(const uint16_t* p, int64_t count) {
  return _mm512_maskz_loadu_epi16(first_lanes32(count), p);
}

// r[i][j] -> r[j][i] for a 16 x 16 matrix of 32-bit values: pairs within 128-bit lanes, then
// quadruples, then the lanes themselves.
BCOS_BF16_TARGET inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {  // u[g + x]: column 4·lane + x of rows g .. g + 3
    u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int x = 0; x < 4; ++x) {
    const __m512i v = _mm512_shuffle_i32x4(u[x], u[4 + x], 0x88), w = _mm512_shuffle_i32x4(u[x], u[4 + x], 0xdd);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + x], u[12 + x], 0x88);
    const __m512i w2 = _mm512_shuffle_i32x4(u[8 + x], u[12 + x], 0xdd);
    r[x] = _mm512_shuffle_i32x4(v, v2, 0x88);
    r[8 + x] = _mm512_shuffle_i32x4(v, v2, 0xdd);
    r[4 + x] = _mm512_shuffle_i32x4(w, w2, 0x88);
    r[12 + x] = _mm512_shuffle_i32x4(w, w2, 0xdd);
  }
}

// pack_a_block for a row-major (csa = 1) or transposed (rsa = 1) A; kp even.
template <class Src>
BCOS_BF16_TARGET void pack_a_block_avx512(const Src* a, int64_t rsa, int64_t csa, int64_t rows, int64_t rows_pad,
                                          int64_t kc, int64_t kp, uint16_t* ablk) {
  if (csa == 1) {
    for (int64_t r = 0; r < rows_pad; ++r)
      for (int64_t p = 0; p < kp; p += 32) {
        const __m512i v = r < rows ? pairs_in_row(a + r * rsa + p, kc - p) : _mm512_setzero_si512();
        _mm512_mask_storeu_epi32(ablk + r * kp + p, first_lanes((kp - p) / 2), v);
      }
    return;
  }
  for (int64_t r0 = 0; r0 < rows_pad; r0 += 16) {  // 16 rows x 16 pairs of k at a time
    const __mmask16 in_rows = first_lanes(rows - r0);
    for (int64_t p0 = 0; p0 < kp; p0 += 32) {
      __m512i t[16];
      for (int q = 0; q < 16; ++q) {  // t[q]: pair p0 / 2 + q of the 16 rows
        const int64_t p = p0 + 2 * q;
        const __m512i even = p < kc ? low_halves(a + r0 + p * csa, in_rows) : _mm512_setzero_si512();
        const __m512i odd = p + 1 < kc ? low_halves(a + r0 + (p + 1) * csa, in_rows) : _mm512_setzero_si512();
        t[q] = pairs_of(even, odd);
      }
      transpose16(t);  // t[r]: the 16 pairs of row r0 + r
      for (int64_t r = 0; r < 16 && r0 + r < rows_pad; ++r)
        _mm512_mask_storeu_epi32(ablk + (r0 + r) * kp + p0, first_lanes((kp - p0) / 2), t[r]);
    }
  }
}

// pack_b_panel for a row-major (csb = 1) or transposed (rsb = 1) B; kp even.
template <class Src>
BCOS_BF16_TARGET void pack_b_panel_avx512(const Src* b, int64_t rsb, int64_t csb, int64_t cols, int64_t kc,
                                          int64_t kp, uint16_t* bp) {
  if (csb == 1) {
    for (int64_t q = 0; q < kp / 2; ++q)
      for (int64_t h = 0; h < kPanel; h += 16) {
        const __mmask16 in_cols = first_lanes(cols - h);
        const int64_t p = 2 * q;
        const __m512i even = p < kc ? low_halves(b + p * rsb + h, in_cols) : _mm512_setzero_si512();
        const __m512i odd = p + 1 < kc ? low_halves(b + (p + 1) * rsb + h, in_cols) : _mm512_setzero_si512();
        _mm512_storeu_si512(bp + (q * kPanel + h) * 2, pairs_of(even, odd));
      }
    return;
  }
  for (int64_t q0 = 0; q0 < kp / 2; q0 += 16)  // 16 pairs of k x 16 columns at a time
    for (int64_t h = 0; h < kPanel; h += 16) {
      __m512i t[16];
      for (int64_t j = 0; j < 16; ++j)  // t[j]: 16 pairs of column h + j
        t[j] = h + j < cols ? pairs_in_row(b + (h + j) * csb + 2 * q0, kc - 2 * q0) : _mm512_setzero_si512();
      transpose16(t);  // t[q]: pair q0 + q of the 16 columns
      for (int64_t q = 0; q < 16 && q0 + q < kp / 2; ++q) _mm512_storeu_si512(bp + ((q0 + q) * kPanel + h) * 2, t[q]);
    }
}

bool cpu_has_avx512_bf16() {
  static const bool has = [] {
    // CPUID leaf 7 sub-leaf 1: EAX bit 5 is AVX512_BF16 (the OS's zmm state: avx512f's check).
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx))
      return false;
    return (eax & (1u << 5)) != 0;
  }();
  return has;
}

// The packers by the source's type, what the CPU has and the layout.
template <class Src>
void pack_a_from(const Src* a, int64_t rsa, int64_t csa, int64_t rows, int64_t rows_pad, int64_t kc, int64_t kp,
                 uint16_t* ablk) {
  if (cpu_has_avx512_bf16() && (csa == 1 || rsa == 1))
    return pack_a_block_avx512(a, rsa, csa, rows, rows_pad, kc, kp, ablk);
  pack_a_block(a, rsa, csa, rows, rows_pad, kc, kp, ablk);
}
void pack_a(const Bf16Operand& a, int64_t rows, int64_t rows_pad, int64_t kc, int64_t kp, uint16_t* ablk) {
  if (a.is_bf16) return pack_a_from(static_cast<const uint16_t*>(a.data), a.rs, a.cs, rows, rows_pad, kc, kp, ablk);
  pack_a_from(static_cast<const float*>(a.data), a.rs, a.cs, rows, rows_pad, kc, kp, ablk);
}

template <class Src>
void pack_b_from(const Src* b, int64_t rsb, int64_t csb, int64_t cols, int64_t kc, int64_t kp, uint16_t* bp) {
  if (cpu_has_avx512_bf16() && (csb == 1 || rsb == 1)) return pack_b_panel_avx512(b, rsb, csb, cols, kc, kp, bp);
  pack_b_panel(b, rsb, csb, cols, kc, kp, bp);
}
void pack_b(const Bf16Operand& b, int64_t cols, int64_t kc, int64_t kp, uint16_t* bp) {
  if (b.is_bf16) return pack_b_from(static_cast<const uint16_t*>(b.data), b.rs, b.cs, cols, kc, kp, bp);
  pack_b_from(static_cast<const float*>(b.data), b.rs, b.cs, cols, kc, kp, bp);
}

// Palette 1, eight tiles of 16 rows x 64 bytes: 0-3 the C tiles (16 x 16 float), 4-5 A (16 x 32
// bf16), 6-7 B (16 pair rows x 16 columns).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Each kernel: kRows x 32 micro-tiles of C, k padded to a multiple of kDepth, slices up to KC
// deep, row blocks up to MC tall; begin / end bracket a thread's use of it.
struct AmxKernel {
  static constexpr int64_t kRows = 32, kDepth = 32, MC = 128, KC = 512;  // A block 128 KiB, B slice 1 MiB
  __attribute__((target("amx-tile"))) static void begin() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);  // tile state is per thread
  }
  __attribute__((target("amx-tile"))) static void end() { _tile_release(); }

  // c[0:mr, 0:nr] (+)= A rows (32 x kp, row stride kp) · B panel (kp x 32). Full tiles with
  // contiguous C rows go straight between C and the tile registers; others through `tmp`.
  __attribute__((target("amx-tile,amx-bf16"))) static void run(int64_t kp, const uint16_t* a, const uint16_t* bp,
                                                              float* c, int64_t rsc, int64_t csc, int64_t mr,
                                                              int64_t nr, bool accumulate) {
    const bool direct = mr == kRows && nr == kPanel && csc == 1;
    const int64_t a_stride = kp * 2, b_stride = kPanel * 2 * 2, c_stride = rsc * 4;
    if (direct && accumulate) {
      _tile_loadd(0, c, c_stride);
      _tile_loadd(1, c + 16, c_stride);
      _tile_loadd(2, c + 16 * rsc, c_stride);
      _tile_loadd(3, c + 16 * rsc + 16, c_stride);
    } else {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
    }
    for (int64_t p = 0; p < kp; p += kDepth) {
      _tile_loadd(4, a + p, a_stride);
      _tile_loadd(5, a + 16 * kp + p, a_stride);
      const uint16_t* b = bp + (p / 2) * kPanel * 2;
      _tile_loadd(6, b, b_stride);
      _tile_loadd(7, b + 32, b_stride);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    if (direct) {
      _tile_stored(0, c, c_stride);
      _tile_stored(1, c + 16, c_stride);
      _tile_stored(2, c + 16 * rsc, c_stride);
      _tile_stored(3, c + 16 * rsc + 16, c_stride);
      return;
    }
    alignas(64) float tmp[kRows][kPanel];
    _tile_stored(0, &tmp[0][0], kPanel * 4);
    _tile_stored(1, &tmp[0][16], kPanel * 4);
    _tile_stored(2, &tmp[16][0], kPanel * 4);
    _tile_stored(3, &tmp[16][16], kPanel * 4);
    store_tile_scalar<kRows, kPanel>(tmp, c, rsc, csc, mr, nr, accumulate);
  }
};

// AVX-512 BF16 (CPUs without AMX: AMD Zen 4 and later): vdpbf16ps adds the products of one pair of
// k-values into each float32 lane, 32 multiply-adds per instruction where an FMA does 16. The
// micro-tile is 8 x 32 in 16 zmm accumulators, as the float32 kernel's: per k pair, two loads of
// the B panel, eight broadcasts of an A row's pair (read in place from the row-major A block) and
// 16 vdpbf16ps. K slices up to 1024 deep: the B panel (64 KiB) then streams from L2, as the
// float32 kernel's does, but fewer slices mean fewer passes over C and fewer barriers (one
// thread, 64 x 64 x 576, KC 256 / 512 / 1024: 1.13x / 1.32x / 1.52x of float32; 2 threads
// 0.59x / 0.64x / 0.93x). The instruction treats subnormal inputs and results as zero, whatever
// MXCSR says (AMX does the same).
struct DpbfKernel {
  static constexpr int64_t kRows = 8, kDepth = 2, MC = 192, KC = 1024;
  static void begin() {}
  static void end() {}

  __attribute__((target("avx512f,avx512bf16"))) static void run(int64_t kp, const uint16_t* a, const uint16_t* bp,
                                                               float* c, int64_t rsc, int64_t csc, int64_t mr,
                                                               int64_t nr, bool accumulate) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    __m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    const uint16_t *a0 = a, *a1 = a + kp, *a2 = a + 2 * kp, *a3 = a + 3 * kp, *a4 = a + 4 * kp, *a5 = a + 5 * kp,
                   *a6 = a + 6 * kp, *a7 = a + 7 * kp;
#define BCOS_ROW(ai, lo, hi)                                         \
  {                                                                  \
    int32_t pair;                                                    \
    std::memcpy(&pair, ai + p, 4);                                   \
    const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);           \
    lo = _mm512_dpbf16_ps(lo, av, b0);                               \
    hi = _mm512_dpbf16_ps(hi, av, b1);                               \
  }
#pragma GCC unroll 4
    for (int64_t p = 0; p < kp; p += 2, bp += 2 * kPanel) {
      const __m512bh b0 = (__m512bh)_mm512_load_si512(bp), b1 = (__m512bh)_mm512_load_si512(bp + kPanel);
      BCOS_ROW(a0, c00, c01) BCOS_ROW(a1, c10, c11) BCOS_ROW(a2, c20, c21) BCOS_ROW(a3, c30, c31)
      BCOS_ROW(a4, c40, c41) BCOS_ROW(a5, c50, c51) BCOS_ROW(a6, c60, c61) BCOS_ROW(a7, c70, c71)
    }
#undef BCOS_ROW
    const __m512 rows[kRows][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                                   {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
    store_zmm_tile<kRows>(rows, c, rsc, csc, mr, nr, accumulate);
  }
};

// The blocked driver: per NC-wide column block and KC-deep slice, B packed into 32-column VNNI
// panels (shared), then tasks (row block, column panel) with each thread's A block packed once.
template <class Kernel>
void blocked_bf16(int64_t m, int64_t n, int64_t k, const Bf16Operand& a, const Bf16Operand& b, float* c, int64_t rsc,
                  int64_t csc, bool accumulate) {
  constexpr int64_t NC = 1024, MC = Kernel::MC, KC = Kernel::KC, R = Kernel::kRows;
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && double(m) * double(n) * double(k) >= 64.0 * 64.0 * 64.0) threads = num_threads();
#endif
  auto round_up = [](int64_t v, int64_t to) { return (v + to - 1) / to * to; };
  // K in slices of equal depth (each a multiple of the kernel's step), none deeper than KC.
  const int64_t slices = (k + KC - 1) / KC;
  const int64_t kc_step = round_up((k + slices - 1) / slices, Kernel::kDepth);
  // Row blocks of equal height (a multiple of R, at most MC): with MC-high blocks and a short last
  // one, 2 threads split ViT's 1,576 rows 864 / 712 and one waited a sixth of each product.
  const int64_t m_blocks = (m + MC - 1) / MC;
  const int64_t mc_step = round_up((m + m_blocks - 1) / m_blocks, R);
  const int64_t nc_max = round_up(std::min(NC, n), kPanel), mc_max = round_up(std::min(mc_step, m), R);
  // With fewer row blocks than threads, each thread would pack the same A block for its share of
  // the columns: then the threads pack A together, in chunks of 32 rows beside B's panels, into
  // one shared copy (vdpbf16ps, 2 threads, 64 x 64 x 576: 118 -> 150 GFLOP/s).
  const bool shared_a = m_blocks < threads;
  constexpr int64_t kAChunk = 32;
  const int64_t a_chunks = shared_a ? (m + kAChunk - 1) / kAChunk : 0;
  auto bp = aligned<uint16_t>(kc_step * nc_max);
  std::vector<std::unique_ptr<uint16_t[], FreeDeleter>> ablocks;
  for (int t = 0; t < (shared_a ? 1 : threads); ++t)
    ablocks.push_back(aligned<uint16_t>((shared_a ? round_up(m, R) : mc_max) * kc_step));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#ifdef _OPENMP
    uint16_t* ablk = ablocks[shared_a ? 0 : size_t(omp_get_thread_num())].get();
#else
    uint16_t* ablk = ablocks[0].get();
#endif
    Kernel::begin();
    for (int64_t jc = 0; jc < n; jc += NC) {
      const int64_t nc = std::min(NC, n - jc), panels = (nc + kPanel - 1) / kPanel;
      for (int64_t pc = 0; pc < k; pc += kc_step) {
        const int64_t kc = std::min(kc_step, k - pc), kp = round_up(kc, Kernel::kDepth);
        const bool acc = accumulate || pc > 0;
#pragma omp for schedule(static)
        for (int64_t w = 0; w < panels + a_chunks; ++w) {
          if (w < panels) {
            pack_b(at(b, pc, jc + w * kPanel), std::min(kPanel, nc - w * kPanel), kc, kp, bp.get() + w * kPanel * kp);
          } else {
            const int64_t r0 = (w - panels) * kAChunk, rows = std::min(kAChunk, m - r0);
            pack_a(at(a, r0, pc), rows, std::min(kAChunk, round_up(m, R) - r0), kc, kp, ablk + r0 * kp);
          }
        }
        // Tasks: (row block, column panel); a thread re-packs its own A block only when it changes.
        int64_t packed = -1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < m_blocks * panels; ++t) {
          const int64_t ib = t / panels, jp = t % panels;
          const int64_t ic = ib * mc_step, mc = std::min(mc_step, m - ic);
          if (!shared_a && packed != ib) {
            pack_a(at(a, ic, pc), mc, round_up(mc, R), kc, kp, ablk);
            packed = ib;
          }
          const uint16_t* block = shared_a ? ablk + ic * kp : ablk;
          const int64_t j = jc + jp * kPanel;
          for (int64_t ir = 0; ir < mc; ir += R)
            Kernel::run(kp, block + ir * kp, bp.get() + jp * kPanel * kp, c + (ic + ir) * rsc + j * csc, rsc, csc,
                        std::min(R, mc - ir), std::min(kPanel, n - j), acc);
        }
      }
    }
    Kernel::end();
  }
}

using Bf16Fn = void (*)(int64_t, int64_t, int64_t, const Bf16Operand&, const Bf16Operand&, float*, int64_t, int64_t,
                        bool);

// The kernel named `want` ("amx", "avx512bf16"; empty: the best the CPU has), null where the CPU
// lacks it.
Bf16Fn bf16_kernel_for(const std::string& want) {
  if (cpu_has_amx() && (want.empty() || want == "amx")) return blocked_bf16<AmxKernel>;
  if (cpu_has_avx512_bf16() && (want.empty() || want == "avx512bf16")) return blocked_bf16<DpbfKernel>;
  return nullptr;
}

// The kernel for this CPU, decided once; BCOS_GEMM_BF16=avx512bf16 picks vdpbf16ps on a CPU with AMX.
Bf16Fn pick_bf16_kernel() {
  const char* forced = std::getenv("BCOS_GEMM_BF16");
  return bf16_kernel_for(forced ? forced : "");
}

Bf16Fn bf16_kernel() {
  static const Bf16Fn fn = pick_bf16_kernel();
  return fn;
}

bool run_bf16(Bf16Fn fn, int64_t m, int64_t n, int64_t k, const Bf16Operand& a, const Bf16Operand& b, float* c,
              int64_t rsc, int64_t csc, bool accumulate) {
  if (!fn) return false;
  if (m == 0 || n == 0) return true;
  if (k == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c[i * rsc + j * csc] = 0.0f;
    return true;
  }
  fn(m, n, k, a, b, c, rsc, csc, accumulate);
  return true;
}

}  // namespace

bool gemm_bf16(int64_t m, int64_t n, int64_t k, const Bf16Operand& a, const Bf16Operand& b, float* c, int64_t rsc,
               int64_t csc, bool accumulate) {
  return run_bf16(bf16_kernel(), m, n, k, a, b, c, rsc, csc, accumulate);
}

bool gemm_bf16_with(const char* kernel, int64_t m, int64_t n, int64_t k, const Bf16Operand& a, const Bf16Operand& b,
                    float* c, int64_t rsc, int64_t csc, bool accumulate) {
  return run_bf16(bf16_kernel_for(kernel), m, n, k, a, b, c, rsc, csc, accumulate);
}

const char* gemm_bf16_kernel_name() {
  const Bf16Fn fn = bf16_kernel();
  return fn == blocked_bf16<AmxKernel> ? "amx" : fn == blocked_bf16<DpbfKernel> ? "avx512bf16" : "none";
}

#else
bool gemm_bf16(int64_t, int64_t, int64_t, const Bf16Operand&, const Bf16Operand&, float*, int64_t, int64_t, bool) {
  return false;
}
bool gemm_bf16_with(const char*, int64_t, int64_t, int64_t, const Bf16Operand&, const Bf16Operand&, float*, int64_t,
                    int64_t, bool) {
  return false;
}
const char* gemm_bf16_kernel_name() { return "none"; }
#endif

bool gemm_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa, const float* b,
               int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc, bool accumulate) {
  return gemm_bf16(m, n, k, {a, rsa, csa, false}, {b, rsb, csb, false}, c, rsc, csc, accumulate);
}

bool gemm_bf16_with(const char* kernel, int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
                    const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc, bool accumulate) {
  return gemm_bf16_with(kernel, m, n, k, {a, rsa, csa, false}, {b, rsb, csb, false}, c, rsc, csc, accumulate);
}

}  // namespace bcos::cpu
