// The store at the end of a GEMM micro-kernel, shared by the float32 kernels (gemm.cpp) and the
// bf16 ones (gemm_bf16.cpp): a tile of C accumulated in registers is written to C, or added to
// it. x86 with GCC / clang only (the AVX-512 form uses intrinsics under a target attribute).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace bcos::cpu {

// A partial (or strided) tile: c[0:mr, 0:nr] (+)= tile, one element at a time.
template <int64_t MR, int64_t NR>
inline void store_tile_scalar(const float (&tile)[MR][NR], float* c, int64_t rsc, int64_t csc, int64_t mr,
                              int64_t nr, bool accumulate) {
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      float& dst = c[i * rsc + j * csc];
      dst = accumulate ? dst + tile[i][j] : tile[i][j];
    }
}

// An MR x 32 tile held as two zmm per row: a full tile with contiguous C rows goes straight to C,
// any other through a buffer and store_tile_scalar.
template <int64_t MR>
__attribute__((target("avx512f"))) inline void store_zmm_tile(const __m512 (&rows)[MR][2], float* c, int64_t rsc,
                                                              int64_t csc, int64_t mr, int64_t nr, bool accumulate) {
  if (mr == MR && nr == 32 && csc == 1) {
    for (int64_t i = 0; i < MR; ++i) {
      float* row = c + i * rsc;
      __m512 lo = rows[i][0], hi = rows[i][1];
      if (accumulate) {
        lo = _mm512_add_ps(lo, _mm512_loadu_ps(row));
        hi = _mm512_add_ps(hi, _mm512_loadu_ps(row + 16));
      }
      _mm512_storeu_ps(row, lo);
      _mm512_storeu_ps(row + 16, hi);
    }
    return;
  }
  alignas(64) float tile[MR][32];
  for (int64_t i = 0; i < MR; ++i) {
    _mm512_store_ps(tile[i], rows[i][0]);
    _mm512_store_ps(tile[i] + 16, rows[i][1]);
  }
  store_tile_scalar<MR, 32>(tile, c, rsc, csc, mr, nr, accumulate);
}

}  // namespace bcos::cpu
