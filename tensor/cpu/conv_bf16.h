// bf16 products for autocast's convolutions and for the bf16 inference option's (set_cpu_bf16)
// (tensor/cpu/conv_bf16.cpp): the two products of conv.cpp's implicit column matrix -- the
// forward's W · col(x) and the weight gradient's dY · col(x)^T -- with AVX-512 BF16's vdpbf16ps.
// Operands are rounded to bf16 (nearest even) in copies the convolution makes anyway (its padded
// image, its widened output gradient).
#pragma once

#include <cstdint>

namespace bcos::cpu {

// Whether these kernels run here: AVX-512 BF16 is the bf16 GEMM's kernel (not on AMX CPUs, where
// vdpbf16ps measured slower than float32).
bool conv_bf16_kernels_available();

// Rounded copies (nearest even): dst[i] = bf16(src[i]) for i < n; and two rows side by side,
// dst[2i] = bf16(even[i]), dst[2i + 1] = bf16(odd[i]).
void round_to_bf16_row(const float* src, int64_t n, uint16_t* dst);
void round_pair_to_bf16_row(const float* even, const float* odd, int64_t n, uint16_t* dst);

// A [m, 2·pairs] (float32, row stride lda) packed in 8-row panels of bf16 pairs:
// out[(panel · pairs + P) · 8 + r] holds bf16 a[8·panel + r][first[P]] in its low half and
// bf16 a[..][second[P]] in its high half; rows beyond m are zero. out: ceil(m / 8) · pairs · 8.
void pack_pairs_bf16(int64_t m, const float* a, int64_t lda, int64_t pairs, const int64_t* first,
                     const int64_t* second, uint32_t* out);

// c[m, n] (row stride ldc) = A · B over `pairs` pairs of K, A packed by pack_pairs_bf16, B's pair
// P starting at b + pair_rows[P] with its columns' two values side by side (b[2·j + h]: column j,
// the pair's h-th row). A partial last 32-column panel reads up to 64 values past column n.
void gemm_offset_pairs_bf16(int64_t m, int64_t n, int64_t pairs, const uint32_t* a_packed, const uint16_t* b,
                            const int64_t* pair_rows, float* c, int64_t ldc);

// c[i, j] (+)= Σ_q a[i·lda + q] · b[b_rows[j] + q] over q < len (bf16 operands, float32 sums).
void gemm_nt_offset_rows_bf16(int64_t m, int64_t n, int64_t len, const uint16_t* a, int64_t lda, const uint16_t* b,
                              const int64_t* b_rows, float* c, int64_t ldc, bool accumulate);

}  // namespace bcos::cpu
