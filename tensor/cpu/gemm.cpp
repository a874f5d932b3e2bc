// The CPU GEMM (see gemm.h). float32 follows the classic blocked scheme:
//   for each NC-wide column block of B and KC-deep slice of K:
//     pack B[KC, NC] into NR-wide panels (shared by all threads)
//     for each MC-tall row block of A (and, when rows are few, each share of the columns):
//       pack A[MC, KC] into MR-tall panels (per thread)
//       for each MR x NR tile: the micro-kernel accumulates KC rank-1 updates in registers
// Packing makes every operand layout (transposed, strided) look the same to the kernel and keeps
// its working set in L1 (B panel) and L2 (A block). Two micro-kernels, chosen at run time by what
// the CPU has (one binary for both; each is compiled for its instruction set by a target
// attribute): AVX-512, 8 x 32, 16 zmm accumulators, 16 FMAs per 2 loads of B and 8 broadcasts of
// A; AVX2 + FMA, 6 x 16, 12 ymm accumulators, 12 FMAs per 2 loads and 6 broadcasts. Without
// either, Eigen.
// Why not Eigen alone: on the CPUs here (Zen 3) its float GEMM reaches ~60% of the FMA peak;
// the AVX2 kernel reaches ~85%, which is what keeps matmul and convolution level with PyTorch;
// on AVX-512 CPUs the 512-bit kernel doubles the work per instruction.
#include "tensor/cpu/gemm.h"

// GCC 12 misreads the placeholder operand of AVX-512 intrinsics (`__Y`) inlined from Eigen's
// packet code as "maybe uninitialized": ~220 lines of false warnings per build.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "tensor/parallel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include "tensor/cpu/gemm_tile.h"
#define BCOS_GEMM_X86 1
#endif

namespace bcos::cpu {

namespace {

// Eigen with arbitrary strides: float64 everywhere, float32 on CPUs without AVX2 / FMA.
template <class T>
void eigen_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t rsa, int64_t csa,
                const T* b, int64_t rsb, int64_t csb, T* c, int64_t rsc, int64_t csc,
                bool accumulate) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::Map<const Mat, 0, Stride> A(a, m, k, Stride(rsa, csa));
  Eigen::Map<const Mat, 0, Stride> B(b, k, n, Stride(rsb, csb));
  Eigen::Map<Mat, 0, Stride> C(c, m, n, Stride(rsc, csc));
  if (k == 0) {
    if (!accumulate) C.setZero();
    return;
  }
  if (accumulate)
    C.noalias() += A * B;
  else
    C.noalias() = A * B;
}

#ifdef BCOS_GEMM_X86

// Blocking: each kernel names its MC (A block height, a multiple of its MR) and KC (the deepest
// K slice; a product's slices are of equal depth, K split as evenly as KC allows). NC = 1024
// columns for both. AVX2 (CPUs with 512 KiB L2): A block 144 x 256 floats = 144 KiB. AVX-512
// (2 MiB L2 here): 288 x 1024 = 1.1 MiB; the 32-wide B panel (up to 128 KiB) then streams from L2
// rather than sitting in L1, but C is read and written once per slice, and with 256-deep slices
// that traffic cost more: ViT-B/16 training's linear-layer products, 2 threads, summed over 6
// steps, MC x KC 144 x 256 14.27 s, 144 x 768 13.44, 288 x 768 13.07, 288 x 1024 13.07, 432 x 768
// 13.14; bench/models rows all level or faster (ViT-B/16 training 2.63 -> 2.78 img/s, CLIP's text
// tower 45.1 -> 47.9, ResNet-50 training 9.15 -> 9.42).
constexpr int64_t NC = 1024;
// gemm_offset_rows keeps 256-deep slices: its B rows are read in place and stay in L1.
constexpr int64_t kOffsetRowsKC = 256;

// K split into slices of equal depth, none deeper than kc_max.
int64_t slice_depth(int64_t k, int64_t kc_max) {
  const int64_t slices = (k + kc_max - 1) / kc_max;
  return (k + slices - 1) / slices;
}

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], AlignedFree>;
Buffer aligned_floats(int64_t n) {
  size_t bytes = (size_t(n) * sizeof(float) + 63) / 64 * 64;
  return Buffer(static_cast<float*>(std::aligned_alloc(64, std::max<size_t>(bytes, 64))));
}

// B[pc .. pc+kc, jc + NR*panel ..] -> panel-major: bp[p * NR + j]; zero beyond n.
template <int64_t NR>
void pack_b_panel(const float* b, int64_t rsb, int64_t csb, int64_t kc, int64_t cols, float* bp) {
  if (csb == 1 && cols == NR) {
    for (int64_t p = 0; p < kc; ++p) std::memcpy(bp + p * NR, b + p * rsb, NR * sizeof(float));
    return;
  }
  for (int64_t p = 0; p < kc; ++p) {
    const float* row = b + p * rsb;
    float* dst = bp + p * NR;
    for (int64_t j = 0; j < cols; ++j) dst[j] = row[j * csb];
    for (int64_t j = cols; j < NR; ++j) dst[j] = 0.0f;
  }
}

// A[ic .., pc ..] (mc x kc) -> MR-row panels: ap[panel][p * MR + i]; zero beyond mc.
template <int64_t MR>
void pack_a_block(const float* a, int64_t rsa, int64_t csa, int64_t mc, int64_t kc, float* ap) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    int64_t rows = std::min(MR, mc - ir);
    float* dst = ap + ir * kc;
    const float* src = a + ir * rsa;
    if (csa == 1 && rows == MR) {
      for (int64_t p = 0; p < kc; ++p)
        for (int64_t i = 0; i < MR; ++i) dst[p * MR + i] = src[i * rsa + p];
      continue;
    }
    if (rsa == 1 && rows == MR) {  // a transposed A (a weight gradient's dYᵀ): MR floats in a row
      for (int64_t p = 0; p < kc; ++p) std::memcpy(dst + p * MR, src + p * csa, MR * sizeof(float));
      continue;
    }
    for (int64_t p = 0; p < kc; ++p) {
      for (int64_t i = 0; i < rows; ++i) dst[p * MR + i] = src[i * rsa + p * csa];
      for (int64_t i = rows; i < MR; ++i) dst[p * MR + i] = 0.0f;
    }
  }
}

// c[0:mr, 0:nr] (+)= A (MR x kc) · bp (kc x NR panel). A element (i, p) is a[i * ars + p * aks]:
// a packed panel (ars = 1, aks = MR) or, for a row-major A, the matrix itself (ars = row
// stride, aks = 1), which spares packing the larger operand when C is narrow. B's row p starts
// at bp + p * bks, or with kRowOffsets at bp + b_rows[p] (gemm_offset_rows).
// The accumulators are named variables, not an array: GCC keeps an array in memory and
// stores it back every iteration.
struct Avx2Kernel {
  static constexpr int64_t MR = 6, NR = 16, MC = 144, KC = 256;
  template <bool kRowOffsets = false>
  __attribute__((target("avx2,fma"))) static void run(int64_t kc, const float* a, int64_t ars, int64_t aks,
                                                     const float* bp, int64_t bks, float* c, int64_t rsc, int64_t csc,
                                                     int64_t mr, int64_t nr, bool accumulate,
                                                     const int64_t* b_rows = nullptr) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a, *a1 = a + ars, *a2 = a + 2 * ars, *a3 = a + 3 * ars, *a4 = a + 4 * ars,
                *a5 = a + 5 * ars;
#define BCOS_ROW(ai, lo, hi)                         \
  {                                                  \
    __m256 av = _mm256_broadcast_ss(ai + o);         \
    lo = _mm256_fmadd_ps(av, b0, lo);                \
    hi = _mm256_fmadd_ps(av, b1, hi);                \
  }
#pragma GCC unroll 4
    for (int64_t p = 0, o = 0; p < kc; ++p, o += aks) {
      const float* bk = kRowOffsets ? bp + b_rows[p] : bp;
      __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
      BCOS_ROW(a0, c00, c01) BCOS_ROW(a1, c10, c11) BCOS_ROW(a2, c20, c21)
      BCOS_ROW(a3, c30, c31) BCOS_ROW(a4, c40, c41) BCOS_ROW(a5, c50, c51)
      bp += bks;
    }
#undef BCOS_ROW
    const __m256 rows[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    if (mr == MR && nr == NR && csc == 1) {
      for (int i = 0; i < MR; ++i) {
        float* row = c + i * rsc;
        __m256 lo = rows[i][0], hi = rows[i][1];
        if (accumulate) {
          lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
          hi = _mm256_add_ps(hi, _mm256_loadu_ps(row + 8));
        }
        _mm256_storeu_ps(row, lo);
        _mm256_storeu_ps(row + 8, hi);
      }
      return;
    }
    alignas(32) float tile[MR][NR];
    for (int i = 0; i < MR; ++i) {
      _mm256_store_ps(tile[i], rows[i][0]);
      _mm256_store_ps(tile[i] + 8, rows[i][1]);
    }
    store_tile_scalar<MR, NR>(tile, c, rsc, csc, mr, nr, accumulate);
  }
};

struct Avx512Kernel {
  static constexpr int64_t MR = 8, NR = 32, MC = 288, KC = 1024;
  template <bool kRowOffsets = false>
  __attribute__((target("avx512f,fma"))) static void run(int64_t kc, const float* a, int64_t ars, int64_t aks,
                                                        const float* bp, int64_t bks, float* c, int64_t rsc,
                                                        int64_t csc, int64_t mr, int64_t nr, bool accumulate,
                                                        const int64_t* b_rows = nullptr) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    __m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
    const float *a0 = a, *a1 = a + ars, *a2 = a + 2 * ars, *a3 = a + 3 * ars, *a4 = a + 4 * ars,
                *a5 = a + 5 * ars, *a6 = a + 6 * ars, *a7 = a + 7 * ars;
#define BCOS_ROW(ai, lo, hi)                         \
  {                                                  \
    __m512 av = _mm512_set1_ps(ai[o]);               \
    lo = _mm512_fmadd_ps(av, b0, lo);                \
    hi = _mm512_fmadd_ps(av, b1, hi);                \
  }
#pragma GCC unroll 4
    for (int64_t p = 0, o = 0; p < kc; ++p, o += aks) {
      const float* bk = kRowOffsets ? bp + b_rows[p] : bp;
      __m512 b0 = _mm512_loadu_ps(bk), b1 = _mm512_loadu_ps(bk + 16);
      BCOS_ROW(a0, c00, c01) BCOS_ROW(a1, c10, c11) BCOS_ROW(a2, c20, c21) BCOS_ROW(a3, c30, c31)
      BCOS_ROW(a4, c40, c41) BCOS_ROW(a5, c50, c51) BCOS_ROW(a6, c60, c61) BCOS_ROW(a7, c70, c71)
      bp += bks;
    }
#undef BCOS_ROW
    const __m512 rows[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                                {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
    store_zmm_tile<MR>(rows, c, rsc, csc, mr, nr, accumulate);
  }
};

template <class Kernel>
void blocked_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
                   const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc,
                   bool accumulate) {
  constexpr int64_t MR = Kernel::MR, NR = Kernel::NR;
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && double(m) * double(n) * double(k) >= 64.0 * 64.0 * 64.0)
    threads = num_threads();
#endif
  // A row-major B feeding only a few row tiles is read in place (its last partial panel
  // packed): packing would cost more than the few passes over it save (CIFAR ResNet's 16-channel
  // convolutions: 114 -> 146 GFLOP/s forward); with more rows the packed copy pays off.
  const bool b_in_place = csb == 1 && m <= 4 * MR;
  constexpr int64_t MC = Kernel::MC;
  const int64_t nc_max = std::min(NC, (n + NR - 1) / NR * NR);
  const int64_t kc_step = slice_depth(k, Kernel::KC);
  Buffer bp = aligned_floats(kc_step * nc_max);
  std::vector<Buffer> aps;
  for (int t = 0; t < threads; ++t) aps.push_back(aligned_floats(std::min(MC, (m + MR - 1) / MR * MR) * kc_step));

  // Row blocks of equal height (a multiple of MR, at most MC), so no thread gets a short one.
  const int64_t m_blocks = (m + MC - 1) / MC;
  const int64_t mc_step = ((m + m_blocks - 1) / m_blocks + MR - 1) / MR * MR;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    float* ap = aps[size_t(tid)].get();
    for (int64_t jc = 0; jc < n; jc += NC) {
      const int64_t nc = std::min(NC, n - jc);
      const int64_t panels = (nc + NR - 1) / NR;
      // When the row blocks do not divide evenly among the threads (3 blocks on 2 threads would
      // leave one idle a third of the time), each block's column panels are split too: the
      // fewest splits that make the task count a multiple of the thread count.
      int64_t col_splits = 1;
      while ((m_blocks * col_splits) % threads != 0 && col_splits < std::min<int64_t>(panels, threads)) ++col_splits;
      const int64_t tasks = m_blocks * col_splits;
      for (int64_t pc = 0; pc < k; pc += kc_step) {
        const int64_t kc = std::min(kc_step, k - pc);
        const bool acc = accumulate || pc > 0;
#pragma omp for schedule(static)
        for (int64_t jp = b_in_place ? panels - 1 : 0; jp < panels; ++jp)
          if (!b_in_place || nc - jp * NR < NR)
            pack_b_panel<NR>(b + pc * rsb + (jc + jp * NR) * csb, rsb, csb, kc,
                             std::min(NR, nc - jp * NR), bp.get() + jp * NR * kc);
        int64_t packed_block = -1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
          const int64_t ib = t / col_splits, split = t % col_splits;
          const int64_t ic = ib * mc_step, mc = std::min(mc_step, m - ic);
          // A row-major A is read in place, only its last partial row panel packed; any other
          // layout is packed whole.
          const int64_t full_rows = csa == 1 ? mc / MR * MR : 0;
          if (packed_block != ib) {
            pack_a_block<MR>(a + (ic + full_rows) * rsa + pc * csa, rsa, csa, mc - full_rows, kc,
                         ap + full_rows * kc);
            packed_block = ib;
          }
          const int64_t p0 = panels * split / col_splits, p1 = panels * (split + 1) / col_splits;
          for (int64_t jp = p0; jp < p1; ++jp) {
            const int64_t j = jc + jp * NR, nr = std::min(NR, n - j);
            const bool b_direct = b_in_place && nr == NR;
            const float* panel = b_direct ? b + pc * rsb + j : bp.get() + jp * NR * kc;
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const bool direct = ir < full_rows;
              Kernel::run(kc, direct ? a + (ic + ir) * rsa + pc : ap + ir * kc, direct ? rsa : 1,
                          direct ? 1 : MR, panel, b_direct ? rsb : NR, c + (ic + ir) * rsc + j * csc,
                          rsc, csc, std::min(MR, mc - ir), nr, acc);
            }
          }
        }
      }
    }
  }
}

// gemm_offset_rows: A packed once into MR-row panels (zero beyond m: a convolution's weight, small);
// then per NR-wide column panel, each K slice of B (kc rows of 32 floats, read through the row
// offsets) stays in L1 while every row tile of A passes over it.
template <class Kernel>
void offset_rows_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                       const int64_t* b_rows, float* c, int64_t ldc) {
  constexpr int64_t MR = Kernel::MR, NR = Kernel::NR;
  const int64_t m_padded = (m + MR - 1) / MR * MR;
  Buffer ap = aligned_floats(m_padded * k);
  pack_a_block<MR>(a, lda, 1, m, k, ap.get());
  for (int64_t j = 0; j < n; j += NR) {
    const int64_t nr = std::min(NR, n - j);
    for (int64_t pc = 0; pc < k; pc += kOffsetRowsKC) {
      const int64_t kc = std::min(kOffsetRowsKC, k - pc);
      for (int64_t ir = 0; ir < m; ir += MR)
        Kernel::template run<true>(kc, ap.get() + ir * k + pc * MR, 1, MR, b + j, 0, c + ir * ldc + j, ldc, 1,
                                   std::min(MR, m - ir), nr, pc > 0, b_rows + pc);
    }
  }
}

// gemm_nt_offset_rows: C in 4 x 6 blocks; each element a 16-wide dot-product accumulator over q,
// summed across its lanes once at the end. Both operands are read along q where they lie (no
// packing: a convolution's weight gradient contracts over the image, the contiguous direction
// of both). Rows beyond m or n repeat the last one and are not stored, so the loop has no edges.
struct NtAvx512 {
  static constexpr int64_t MR = 4, NR = 6;
  __attribute__((target("avx512f,fma"))) static void run(int64_t len, const float* a0, const float* a1,
                                                        const float* a2, const float* a3,
                                                        const float* const* b, float* c, int64_t ldc,
                                                        int64_t mr, int64_t nr, bool accumulate) {
    __m512 s00 = _mm512_setzero_ps(), s01 = s00, s02 = s00, s03 = s00, s04 = s00, s05 = s00;
    __m512 s10 = s00, s11 = s00, s12 = s00, s13 = s00, s14 = s00, s15 = s00;
    __m512 s20 = s00, s21 = s00, s22 = s00, s23 = s00, s24 = s00, s25 = s00;
    __m512 s30 = s00, s31 = s00, s32 = s00, s33 = s00, s34 = s00, s35 = s00;
    const float *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3], *b4 = b[4], *b5 = b[5];
#define BCOS_COLUMN(bj, c0, c1, c2, c3)         \
  {                                             \
    const __m512 y = LOAD(bj + q);              \
    c0 = _mm512_fmadd_ps(x0, y, c0);            \
    c1 = _mm512_fmadd_ps(x1, y, c1);            \
    c2 = _mm512_fmadd_ps(x2, y, c2);            \
    c3 = _mm512_fmadd_ps(x3, y, c3);            \
  }
#define BCOS_STEP                                                                                         \
  {                                                                                                       \
    const __m512 x0 = LOAD(a0 + q), x1 = LOAD(a1 + q), x2 = LOAD(a2 + q), x3 = LOAD(a3 + q);              \
    BCOS_COLUMN(b0, s00, s10, s20, s30) BCOS_COLUMN(b1, s01, s11, s21, s31)                              \
    BCOS_COLUMN(b2, s02, s12, s22, s32) BCOS_COLUMN(b3, s03, s13, s23, s33)                              \
    BCOS_COLUMN(b4, s04, s14, s24, s34) BCOS_COLUMN(b5, s05, s15, s25, s35)                              \
  }
    int64_t q = 0;
#define LOAD(p) _mm512_loadu_ps(p)
    for (; q + 16 <= len; q += 16) BCOS_STEP
#undef LOAD
    if (q < len) {
      const __mmask16 tail = __mmask16((1u << (len - q)) - 1);
#define LOAD(p) _mm512_maskz_loadu_ps(tail, p)
      BCOS_STEP
#undef LOAD
    }
#undef BCOS_STEP
#undef BCOS_COLUMN
    const __m512 sums[MR][NR] = {{s00, s01, s02, s03, s04, s05},
                                 {s10, s11, s12, s13, s14, s15},
                                 {s20, s21, s22, s23, s24, s25},
                                 {s30, s31, s32, s33, s34, s35}};
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t j = 0; j < nr; ++j) {
        const float v = _mm512_reduce_add_ps(sums[i][j]);
        c[i * ldc + j] = accumulate ? c[i * ldc + j] + v : v;
      }
  }
};

// C^T = B^T A^T is the same product with the operands' roles swapped. Picks the orientation
// with the lower estimated cost, in cycles: padded kernel work (a C 49 wide wastes a quarter of
// 16-wide tiles) plus packing (free for a row-major A, which is read in place; cheap for a
// row-major B, copied a panel row at a time; a gather otherwise) plus storing C (scalar when
// its rows are strided).
template <class Kernel>
void oriented_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa, const float* b,
                    int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc, bool accumulate) {
  constexpr double MR = double(Kernel::MR), NR = double(Kernel::NR);
  // A C whose rows are not contiguous (c_cs != 1: the transposed orientation of a row-major C)
  // is stored element by element, once per K slice.
  auto cost = [](double rows, double cols, double depth, int64_t a_cs, int64_t b_cs, int64_t c_cs) {
    double work = std::ceil(rows / MR) * MR * std::ceil(cols / NR) * NR * depth / (NR / 2);
    double pack_a = a_cs == 1 ? 0 : 2 * rows * depth;
    double pack_b = (b_cs == 1 ? 0.25 : 2) * depth * cols;
    double store_c = c_cs == 1 ? 0 : 2 * rows * cols * std::ceil(depth / double(Kernel::KC));
    return work + pack_a + pack_b + store_c;
  };
  if (cost(double(n), double(m), double(k), rsb, rsa, rsc) < cost(double(m), double(n), double(k), csa, csb, csc))
    return blocked_sgemm<Kernel>(n, m, k, b, csb, rsb, a, csa, rsa, c, csc, rsc, accumulate);
  blocked_sgemm<Kernel>(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, accumulate);
}

using SgemmFn = void (*)(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t,
                         int64_t, float*, int64_t, int64_t, bool);

// The widest kernel the CPU runs that is not wider than `want` ("avx512", "avx2", "eigen"; empty:
// the widest); null for Eigen.
SgemmFn sgemm_for(const std::string& want) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if (want == "eigen") return nullptr;
  if (avx512 && want != "avx2") return oriented_sgemm<Avx512Kernel>;
  if (avx2) return oriented_sgemm<Avx2Kernel>;
  return nullptr;
}

// The kernel for this CPU, decided once. BCOS_GEMM=avx2 / eigen forces a narrower one.
SgemmFn pick_sgemm() {
  const char* forced = std::getenv("BCOS_GEMM");
  return sgemm_for(forced ? forced : "");
}

#endif  // BCOS_GEMM_X86

}  // namespace

bool gemm_with(const char* kernel, int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
               const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc, bool accumulate) {
  const std::string want = kernel;
#ifdef BCOS_GEMM_X86
  const SgemmFn fn = sgemm_for(want);
  const bool runs = want == "eigen" || (want == "avx512" && fn == oriented_sgemm<Avx512Kernel>) ||
                    (want == "avx2" && fn == oriented_sgemm<Avx2Kernel>);
  if (!runs) return false;
  if (m == 0 || n == 0) return true;
  if (fn && k > 0) {
    fn(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, accumulate);
    return true;
  }
#else
  if (want != "eigen") return false;
  if (m == 0 || n == 0) return true;
#endif
  eigen_gemm<float>(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, accumulate);
  return true;
}

const char* gemm_kernel_name() {
#ifdef BCOS_GEMM_X86
  static const SgemmFn fn = pick_sgemm();
  if (fn == oriented_sgemm<Avx512Kernel>) return "avx512 8x32";
  if (fn == oriented_sgemm<Avx2Kernel>) return "avx2 6x16";
#endif
  return "eigen";
}

bool gemm_offset_rows(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                      const int64_t* b_rows, float* c, int64_t ldc) {
#ifdef BCOS_GEMM_X86
  static const SgemmFn fn = pick_sgemm();
  if (fn == nullptr) return false;
  if (m == 0 || n == 0) return true;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return true;
  }
  if (fn == oriented_sgemm<Avx512Kernel>) offset_rows_sgemm<Avx512Kernel>(m, n, k, a, lda, b, b_rows, c, ldc);
  else offset_rows_sgemm<Avx2Kernel>(m, n, k, a, lda, b, b_rows, c, ldc);
  return true;
#else
  (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)b_rows, (void)c, (void)ldc;
  return false;
#endif
}

bool gemm_nt_offset_rows(int64_t m, int64_t n, int64_t len, const float* a, int64_t lda, const float* b,
                         const int64_t* b_rows, float* c, int64_t ldc, bool accumulate) {
#ifdef BCOS_GEMM_X86
  static const SgemmFn fn = pick_sgemm();
  if (fn != oriented_sgemm<Avx512Kernel>) return false;
  constexpr int64_t MR = NtAvx512::MR, NR = NtAvx512::NR;
  for (int64_t i = 0; i < m; i += MR) {
    const float* rows[MR];
    for (int64_t r = 0; r < MR; ++r) rows[r] = a + std::min(i + r, m - 1) * lda;
    for (int64_t j = 0; j < n; j += NR) {
      const float* cols[NR];
      for (int64_t r = 0; r < NR; ++r) cols[r] = b + b_rows[std::min(j + r, n - 1)];
      NtAvx512::run(len, rows[0], rows[1], rows[2], rows[3], cols, c + i * ldc + j, ldc, std::min(MR, m - i),
                    std::min(NR, n - j), accumulate);
    }
  }
  return true;
#else
  (void)m, (void)n, (void)len, (void)a, (void)lda, (void)b, (void)b_rows, (void)c, (void)ldc, (void)accumulate;
  return false;
#endif
}

void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
          const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc,
          bool accumulate) {
  if (m == 0 || n == 0) return;
  if (bf16_product(m, n, k) && gemm_bf16(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, accumulate)) return;
  std::unique_ptr<float[]> a_rounded, b_rounded;
  if (bf16_operands_mode() == Bf16Operands::unrounded && k > 0) {
    // Autocast's bf16 product, too small for the bf16 GEMM: rounded copies, then float32 (whose
    // products of bf16 values are exact).
    a_rounded = std::make_unique_for_overwrite<float[]>(size_t(m * k));
    b_rounded = std::make_unique_for_overwrite<float[]>(size_t(k * n));
    round_to_bf16(m, k, a, rsa, csa, a_rounded.get());
    round_to_bf16(k, n, b, rsb, csb, b_rounded.get());
    a = a_rounded.get(), rsa = k, csa = 1;
    b = b_rounded.get(), rsb = n, csb = 1;
  }
#ifdef BCOS_GEMM_X86
  static const SgemmFn fn = pick_sgemm();
  if (k > 0 && fn) return fn(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, accumulate);
#endif
  num_threads();  // Eigen gets the configured thread count
  eigen_gemm<float>(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, accumulate);
}

void gemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t rsa, int64_t csa,
          const double* b, int64_t rsb, int64_t csb, double* c, int64_t rsc, int64_t csc,
          bool accumulate) {
  if (m == 0 || n == 0) return;
  num_threads();
  eigen_gemm<double>(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, accumulate);
}

}  // namespace bcos::cpu
