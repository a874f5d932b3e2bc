// Autocast's "same"-padded convolutions in bfloat16 (see conv_bf16.h). The CIFAR ResNets' 16- and
// 32-channel convolutions are too small for the bf16 GEMM (packing its B panel costs more than
// its tiles save), so under autocast they multiplied rounded float32 copies at float32 speed,
// while PyTorch's bf16 convolutions ran at twice its float32 speed. These two kernels read their
// operands where the implicit column matrix already puts them (and so beat im2col + the bf16
// GEMM on 64-512 channels as well; conv.cpp's bf16_implicit_wins says where they run):
//   forward (W · col(x)): the padded image is written with its channels in pairs, c = 2·cp + h at
//     image[2·(cp·plane + pos) + h], so a pair of column-matrix rows (channels 2cp and 2cp + 1 at
//     one tap) is one run of the image with the two values of each column side by side: the
//     VNNI layout vdpbf16ps reads, in place. Micro-tile 8 x 32 in 16 zmm as the bf16 GEMM's.
//   weight gradient (dY · col(x)^T): both operands run along the image (q); vdpbf16ps takes
//     consecutive q in pairs, so plain bf16 rows need no rearranging. 4 x 6 dot products.
// bf16 products are exact in float32 and summed in float32, so the results are autocast's
// "rounded operands, float32 sums" (in another order than the rounded copies + float32 kernels
// they replace; and vdpbf16ps reads subnormal bf16 values as zero, whatever MXCSR says).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "tensor/cpu/conv_bf16.h"

#include <algorithm>
#include <string>
#include <string_view>

#include "tensor/cpu/gemm.h"
#include "tensor/dtype.h"
#include "tensor/error.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#include <immintrin.h>

#include "tensor/cpu/gemm_tile.h"
#define BCOS_CONV_BF16_X86 1
#endif

namespace bcos::cpu {

namespace {
constexpr int64_t kRows = 8;           // forward micro-tile: 8 rows x 32 columns
constexpr int64_t kPairsPerSlice = 256;  // a B slice of 32 columns: 256 pairs x 128 bytes = 32 KiB, in L1

#ifdef BCOS_CONV_BF16_X86
#define BCOS_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// c[0:mr, 0:nr] (+)= 8 packed rows of A · a 32-column B panel over `pairs` pairs.
BCOS_BF16_TARGET void offset_pairs_tile(int64_t pairs, const uint32_t* ap, const uint16_t* b, const int64_t* pair_rows,
                                        float* c, int64_t ldc, int64_t mr, int64_t nr, bool accumulate) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  __m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
#define BCOS_ROW(r, lo, hi)                                                   \
  {                                                                           \
    const __m512bh av = (__m512bh)_mm512_set1_epi32(int32_t(ap[p * kRows + r])); \
    lo = _mm512_dpbf16_ps(lo, av, b0);                                        \
    hi = _mm512_dpbf16_ps(hi, av, b1);                                        \
  }
#pragma GCC unroll 2
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* row = b + pair_rows[p];
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(row), b1 = (__m512bh)_mm512_loadu_si512(row + 32);
    BCOS_ROW(0, c00, c01) BCOS_ROW(1, c10, c11) BCOS_ROW(2, c20, c21) BCOS_ROW(3, c30, c31)
    BCOS_ROW(4, c40, c41) BCOS_ROW(5, c50, c51) BCOS_ROW(6, c60, c61) BCOS_ROW(7, c70, c71)
  }
#undef BCOS_ROW
  const __m512 rows[kRows][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                                 {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
  store_zmm_tile<kRows>(rows, c, ldc, 1, mr, nr, accumulate);
}

// c[0:mr, 0:nr] (+)= dot products of rows a0..a3 with rows b[0..5] over len values.
BCOS_BF16_TARGET void nt_tile(int64_t len, const uint16_t* const* a, const uint16_t* const* b, float* c, int64_t ldc,
                              int64_t mr, int64_t nr, bool accumulate) {
  // Named accumulators, not an array: GCC keeps an array in memory (gemm.cpp).
  __m512 s00 = _mm512_setzero_ps(), s01 = s00, s02 = s00, s03 = s00, s04 = s00, s05 = s00;
  __m512 s10 = s00, s11 = s00, s12 = s00, s13 = s00, s14 = s00, s15 = s00;
  __m512 s20 = s00, s21 = s00, s22 = s00, s23 = s00, s24 = s00, s25 = s00;
  __m512 s30 = s00, s31 = s00, s32 = s00, s33 = s00, s34 = s00, s35 = s00;
  const uint16_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  const uint16_t *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3], *b4 = b[4], *b5 = b[5];
#define BCOS_COLUMN(bj, c0, c1, c2, c3)              \
  {                                                  \
    const __m512bh y = (__m512bh)LOAD(bj + q);       \
    c0 = _mm512_dpbf16_ps(c0, x0, y);                \
    c1 = _mm512_dpbf16_ps(c1, x1, y);                \
    c2 = _mm512_dpbf16_ps(c2, x2, y);                \
    c3 = _mm512_dpbf16_ps(c3, x3, y);                \
  }
#define BCOS_STEP                                                                                 \
  {                                                                                               \
    const __m512bh x0 = (__m512bh)LOAD(a0 + q), x1 = (__m512bh)LOAD(a1 + q), x2 = (__m512bh)LOAD(a2 + q), \
                   x3 = (__m512bh)LOAD(a3 + q);                                                   \
    BCOS_COLUMN(b0, s00, s10, s20, s30) BCOS_COLUMN(b1, s01, s11, s21, s31)                      \
    BCOS_COLUMN(b2, s02, s12, s22, s32) BCOS_COLUMN(b3, s03, s13, s23, s33)                      \
    BCOS_COLUMN(b4, s04, s14, s24, s34) BCOS_COLUMN(b5, s05, s15, s25, s35)                      \
  }
  int64_t q = 0;
#define LOAD(p) _mm512_loadu_si512(p)
  for (; q + 32 <= len; q += 32) BCOS_STEP
#undef LOAD
  if (q < len) {
    const __mmask32 tail = __mmask32((uint64_t(1) << (len - q)) - 1);
#define LOAD(p) _mm512_maskz_loadu_epi16(tail, p)
    BCOS_STEP
#undef LOAD
  }
#undef BCOS_STEP
#undef BCOS_COLUMN
  const __m512 sums[4][6] = {{s00, s01, s02, s03, s04, s05},
                             {s10, s11, s12, s13, s14, s15},
                             {s20, s21, s22, s23, s24, s25},
                             {s30, s31, s32, s33, s34, s35}};
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      const float v = _mm512_reduce_add_ps(sums[i][j]);
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + v : v;
    }
}

// vcvtneps2bf16 rounds as BFloat16::from_float does (nearest even, NaN kept quiet); it reads
// subnormal inputs as zero, which vdpbf16ps does with subnormal bf16 values anyway.
// Full vectors with plain loads and stores, only the tail masked: the all-masked form measured
// slower here (the paired rounding 7.9 -> 5.1 % of a ResNet-20 autocast training step, perf).
BCOS_BF16_TARGET void round_row_avx512(const float* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  if (i < n) {
    const __mmask16 mask = __mmask16((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(dst + i, mask, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src + i)));
  }
}

// Two rows side by side, dst[2i] = even[i] and dst[2i + 1] = odd[i]: one 32-bit word per column.
BCOS_BF16_TARGET inline __m512i rounded_pairs(__m512 even, __m512 odd) {
  const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(even));
  const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(odd));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

BCOS_BF16_TARGET void round_pair_avx512(const float* even, const float* odd, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_si512(dst + 2 * i, rounded_pairs(_mm512_loadu_ps(even + i), _mm512_loadu_ps(odd + i)));
  if (i < n) {
    const __mmask16 mask = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_epi32(dst + 2 * i, mask,
                             rounded_pairs(_mm512_maskz_loadu_ps(mask, even + i), _mm512_maskz_loadu_ps(mask, odd + i)));
  }
}
#endif  // BCOS_CONV_BF16_X86
}  // namespace

// Callers check conv_bf16_kernels_available() first.
[[noreturn, maybe_unused]] static void unavailable(const char* op) {
  throw Error(std::string(op) + ": this CPU has no AVX-512 BF16 (check conv_bf16_kernels_available() first)");
}

bool conv_bf16_kernels_available() {
#ifdef BCOS_CONV_BF16_X86
  static const bool available = std::string_view(gemm_bf16_kernel_name()) == "avx512bf16";
  return available;
#else
  return false;
#endif
}

void round_to_bf16_row(const float* src, int64_t n, uint16_t* dst) {
#ifdef BCOS_CONV_BF16_X86
  if (conv_bf16_kernels_available()) return round_row_avx512(src, n, dst);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = BFloat16::from_float(src[i]);
}

void round_pair_to_bf16_row(const float* even, const float* odd, int64_t n, uint16_t* dst) {
#ifdef BCOS_CONV_BF16_X86
  if (conv_bf16_kernels_available()) return round_pair_avx512(even, odd, n, dst);
#endif
  for (int64_t i = 0; i < n; ++i) dst[2 * i] = BFloat16::from_float(even[i]), dst[2 * i + 1] = BFloat16::from_float(odd[i]);
}

void pack_pairs_bf16(int64_t m, const float* a, int64_t lda, int64_t pairs, const int64_t* first,
                     const int64_t* second, uint32_t* out) {
  const int64_t panels = (m + kRows - 1) / kRows;
  for (int64_t panel = 0; panel < panels; ++panel)
    for (int64_t p = 0; p < pairs; ++p)
      for (int64_t r = 0; r < kRows; ++r) {
        const int64_t i = panel * kRows + r;
        uint32_t v = 0;
        if (i < m)
          v = uint32_t(BFloat16::from_float(a[i * lda + first[p]])) |
              uint32_t(BFloat16::from_float(a[i * lda + second[p]])) << 16;
        out[(panel * pairs + p) * kRows + r] = v;
      }
}

void gemm_offset_pairs_bf16(int64_t m, int64_t n, int64_t pairs, const uint32_t* a_packed, const uint16_t* b,
                            const int64_t* pair_rows, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (pairs == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
#ifdef BCOS_CONV_BF16_X86
  if (conv_bf16_kernels_available()) {
    for (int64_t j = 0; j < n; j += 32)
      for (int64_t pc = 0; pc < pairs; pc += kPairsPerSlice) {
        const int64_t kc = std::min(kPairsPerSlice, pairs - pc);
        for (int64_t ir = 0; ir < m; ir += kRows)
          offset_pairs_tile(kc, a_packed + ((ir / kRows) * pairs + pc) * kRows, b + 2 * j, pair_rows + pc,
                            c + ir * ldc + j, ldc, std::min(kRows, m - ir), std::min<int64_t>(32, n - j), pc > 0);
      }
    return;
  }
#endif
  (void)a_packed, (void)b, (void)pair_rows;
  unavailable("gemm_offset_pairs_bf16");
}

void gemm_nt_offset_rows_bf16(int64_t m, int64_t n, int64_t len, const uint16_t* a, int64_t lda, const uint16_t* b,
                              const int64_t* b_rows, float* c, int64_t ldc, bool accumulate) {
#ifdef BCOS_CONV_BF16_X86
  if (conv_bf16_kernels_available()) {
    // Rows beyond m or n repeat the last one and are not stored, so the tile has no edges.
    for (int64_t i = 0; i < m; i += 4) {
      const uint16_t* rows[4];
      for (int64_t r = 0; r < 4; ++r) rows[r] = a + std::min(i + r, m - 1) * lda;
      for (int64_t j = 0; j < n; j += 6) {
        const uint16_t* cols[6];
        for (int64_t r = 0; r < 6; ++r) cols[r] = b + b_rows[std::min(j + r, n - 1)];
        nt_tile(len, rows, cols, c + i * ldc + j, ldc, std::min<int64_t>(4, m - i), std::min<int64_t>(6, n - j),
                accumulate);
      }
    }
    return;
  }
#endif
  (void)m, (void)n, (void)len, (void)a, (void)lda, (void)b, (void)b_rows, (void)c, (void)ldc, (void)accumulate;
  unavailable("gemm_nt_offset_rows_bf16");
}

}  // namespace bcos::cpu
