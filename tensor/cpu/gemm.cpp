// The CPU GEMM (see gemm.h). float32 follows the classic blocked scheme:
//   for each NC-wide column block of B and KC-deep slice of K:
//     pack B[KC, NC] into NR-wide panels (shared by all threads)
//     for each MC-tall row block of A (and, when rows are few, each share of the columns):
//       pack A[MC, KC] into MR-tall panels (per thread)
//       for each MR x NR tile: the micro-kernel accumulates KC rank-1 updates in registers
// Packing makes every operand layout (transposed, strided) look the same to the kernel and keeps
// its working set in L1 (B panel) and L2 (A block). The 6 x 16 micro-kernel holds 12 AVX
// accumulators and issues 12 FMAs per 2 loads of B and 6 broadcasts of A.
// Why not Eigen alone: on the CPUs here (Zen 3) its float GEMM reaches ~60% of the FMA peak;
// this kernel reaches ~85%, which is what keeps matmul and convolution level with PyTorch.
#include "tensor/cpu/gemm.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "tensor/parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define BCOS_GEMM_AVX2 1
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

#ifdef BCOS_GEMM_AVX2

constexpr int64_t MR = 6, NR = 16;     // micro-tile
constexpr int64_t MC = 144, KC = 256;  // A block: 144 x 256 floats = 144 KiB (L2)
constexpr int64_t NC = 4096;           // B slice: 256 x 4096 floats = 4 MiB (L3)

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], AlignedFree>;
Buffer aligned_floats(int64_t n) {
  size_t bytes = (size_t(n) * sizeof(float) + 63) / 64 * 64;
  return Buffer(static_cast<float*>(std::aligned_alloc(64, std::max<size_t>(bytes, 64))));
}

// B[pc .. pc+kc, jc + NR*panel ..] -> panel-major: bp[p * NR + j]; zero beyond n.
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
    for (int64_t p = 0; p < kc; ++p) {
      for (int64_t i = 0; i < rows; ++i) dst[p * MR + i] = src[i * rsa + p * csa];
      for (int64_t i = rows; i < MR; ++i) dst[p * MR + i] = 0.0f;
    }
  }
}

// c[0:mr, 0:nr] (+)= A (MR x kc) · bp (kc x NR panel). A element (i, p) is a[i * ars + p * aks]:
// a packed panel (ars = 1, aks = MR) or, for a row-major A, the matrix itself (ars = row
// stride, aks = 1), which spares packing the larger operand when C is narrow.
// The 12 accumulators are named variables, not an array: GCC keeps an array in memory and
// stores it back every iteration.
void micro_kernel(int64_t kc, const float* a, int64_t ars, int64_t aks, const float* bp, float* c,
                  int64_t rsc, int64_t csc, int64_t mr, int64_t nr, bool accumulate) {
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
    __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);
    BCOS_ROW(a0, c00, c01) BCOS_ROW(a1, c10, c11) BCOS_ROW(a2, c20, c21)
    BCOS_ROW(a3, c30, c31) BCOS_ROW(a4, c40, c41) BCOS_ROW(a5, c50, c51)
    bp += NR;
  }
#undef BCOS_ROW
  alignas(32) float tile[MR][NR];
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
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(tile[i], rows[i][0]);
    _mm256_store_ps(tile[i] + 8, rows[i][1]);
  }
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      float& dst = c[i * rsc + j * csc];
      dst = accumulate ? dst + tile[i][j] : tile[i][j];
    }
}

void blocked_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
                   const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc,
                   bool accumulate) {
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && double(m) * double(n) * double(k) >= 64.0 * 64.0 * 64.0)
    threads = num_threads();
#endif
  const int64_t nc_max = std::min(NC, (n + NR - 1) / NR * NR);
  const int64_t kc_max = std::min(KC, k);
  Buffer bp = aligned_floats(kc_max * nc_max);
  std::vector<Buffer> aps;
  for (int t = 0; t < threads; ++t) aps.push_back(aligned_floats(std::min(MC, (m + MR - 1) / MR * MR) * kc_max));

  const int64_t m_blocks = (m + MC - 1) / MC;
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
      // With fewer row blocks than threads, threads also split each block's column panels.
      const int64_t col_splits = m_blocks >= threads ? 1 : std::min<int64_t>(panels, threads);
      const int64_t tasks = m_blocks * col_splits;
      for (int64_t pc = 0; pc < k; pc += KC) {
        const int64_t kc = std::min(KC, k - pc);
        const bool acc = accumulate || pc > 0;
#pragma omp for schedule(static)
        for (int64_t jp = 0; jp < panels; ++jp)
          pack_b_panel(b + pc * rsb + (jc + jp * NR) * csb, rsb, csb, kc,
                       std::min(NR, nc - jp * NR), bp.get() + jp * NR * kc);
        int64_t packed_block = -1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
          const int64_t ib = t / col_splits, split = t % col_splits;
          const int64_t ic = ib * MC, mc = std::min(MC, m - ic);
          // A row-major A is read in place, only its last partial row panel packed; any other
          // layout is packed whole.
          const int64_t full_rows = csa == 1 ? mc / MR * MR : 0;
          if (packed_block != ib) {
            pack_a_block(a + (ic + full_rows) * rsa + pc * csa, rsa, csa, mc - full_rows, kc,
                         ap + full_rows * kc);
            packed_block = ib;
          }
          const int64_t p0 = panels * split / col_splits, p1 = panels * (split + 1) / col_splits;
          for (int64_t jp = p0; jp < p1; ++jp) {
            const int64_t j = jc + jp * NR, nr = std::min(NR, n - j);
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const bool direct = ir < full_rows;
              micro_kernel(kc, direct ? a + (ic + ir) * rsa + pc : ap + ir * kc, direct ? rsa : 1,
                           direct ? 1 : MR, bp.get() + jp * NR * kc, c + (ic + ir) * rsc + j * csc,
                           rsc, csc, std::min(MR, mc - ir), nr, acc);
            }
          }
        }
      }
    }
  }
}

#endif  // BCOS_GEMM_AVX2

}  // namespace

void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
          const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc,
          bool accumulate) {
  if (m == 0 || n == 0) return;
#ifdef BCOS_GEMM_AVX2
  if (k > 0) {
    // C^T = B^T A^T is the same product with the operands' roles swapped. Pick the orientation
    // with the lower estimated cost, in cycles: padded kernel work (tiles are 6 x 16, so a C 49
    // wide wastes a quarter) plus packing (free for a row-major A, which is read in place; cheap
    // for a row-major B, copied 16 floats at a time; a gather otherwise).
    auto cost = [](double rows, double cols, double depth, int64_t a_cs, int64_t b_cs) {
      double work = std::ceil(rows / MR) * MR * std::ceil(cols / NR) * NR * depth / 8;
      double pack_a = a_cs == 1 ? 0 : 2 * rows * depth;
      double pack_b = (b_cs == 1 ? 0.25 : 2) * depth * cols;
      return work + pack_a + pack_b;
    };
    if (cost(double(n), double(m), double(k), rsb, rsa) < cost(double(m), double(n), double(k), csa, csb))
      return blocked_sgemm(n, m, k, b, csb, rsb, a, csa, rsa, c, csc, rsc, accumulate);
    return blocked_sgemm(m, n, k, a, rsa, csa, b, rsb, csb, c, rsc, csc, accumulate);
  }
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
