// 3 x 3, stride-1, pad-1 convolution by Winograd's minimal filtering F(2x2, 3x3) on the CPU.
// Each 2 x 2 output tile needs 16 multiplies per (in, out) channel pair instead of 36: the
// input's 4 x 4 tiles and the 3 x 3 kernels are transformed (V = Bᵀ d B, U = G g Gᵀ), the 16
// transformed positions become 16 GEMMs M[ξ] = U[ξ] · V[ξ] over channels, and each output tile
// is Aᵀ m A. float32 only; its rounding differs from the direct sum by a few ulps of the
// transformed values (tests/tensor/test_kernels.cpp bounds it against a float64 convolution).
#pragma once

#include <cstdint>

namespace bcos::cpu {

// out [N, O, H, W] = conv2d(x [N, C, H, W], w [O, C, 3, 3]), padding 1, stride 1, no groups;
// all contiguous. False where an output is infinite or NaN: the transforms spread an infinite
// input over its whole tile (Inf − Inf), so the caller computes such a convolution directly.
bool winograd_conv3x3(const float* x, const float* w, float* out, int64_t n, int64_t c, int64_t h, int64_t width,
                      int64_t o, int64_t block_tiles = 0);

}  // namespace bcos::cpu
