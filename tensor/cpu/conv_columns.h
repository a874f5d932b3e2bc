// The column matrix of a convolution on the CPU (tensor/cpu/conv.cpp): im2col and col2im for
// one sample and group, and the zero-padded image that stride-1 and stride-2 "same"
// convolutions read their columns from instead (its four phase images for stride 2).
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/op_kinds.h"
#include "tensor/tensor.h"

namespace bcos::cpu {

struct ConvShape {
  int64_t n, c, h, w;      // input
  int64_t o, kh, kw;       // weight
  int64_t ho, wo, groups;  // output
  int64_t cg, og, k;       // per group: in channels, out channels, K = cg * kh * kw
  bool pointwise;          // 1x1, stride 1, no padding: im2col is the identity
};

ConvShape conv_shape(const Tensor& x, const Tensor& w, const Tensor& out, const Conv2dParams& p);

// col [K, (oh1 - oh0) * Wo] from x [Cg, H, W] (one sample, one group): the columns of output
// rows [oh0, oh1) (all rows by default); rows of col are ld apart. T: float or double.
template <class T>
void im2col(const T* x, const ConvShape& s, const Conv2dParams& p, T* col, int64_t ld, int64_t oh0 = 0,
            int64_t oh1 = -1);

// x [Cg, H, W] += col2im(col [K, Ho*Wo]); rows of col are ld apart. Zeroes col's entries for
// taps outside the image on the whole-row path (col is scratch).
template <class T>
void col2im(T* col, const ConvShape& s, const Conv2dParams& p, T* x, int64_t ld);

// The column matrix is built a block of output rows at a time, about `floats` of it. The forward
// takes 2^18 (1 MiB), so the GEMM packs it from L2 instead of from memory (ResNet-18's 56 x 56
// maps: 7 MiB per sample; layer1 3 x 3 forward 197 -> 255 GFLOP/s). The weight gradient, whose
// GEMM reads the block in place and re-stores all of grad_W per block, takes 2^20 (2 threads,
// 3 x 3 on 64 ch 56 x 56 237 -> 243-257 GFLOP/s, 128 ch 28 x 28 226-232 -> 280-299, 64 ch
// 112 x 112 240 -> 245-268). The rows per block:
int64_t column_block_rows(const ConvShape& s, int64_t floats);

// The padded image of implicit_columns_win: `phases` (1, or 4 for stride 2) blocks of Cg planes
// `plane` floats apart, rows of `row` floats; offsets[p] is where column-matrix row p = (c, i, j)
// of output position 0 reads it; `wide_cols` = Ho rows of `row` output positions. The last tap of
// a discarded column reads past the rows used, into spare space in the plane (or the next plane),
// and a partial 32-wide column panel up to 31 floats past that: `floats` includes 32 spare.
struct PaddedImage {
  int64_t stride, pad, row, plane, wide_cols, floats;
  std::vector<int64_t> offsets;
};

PaddedImage padded_image(const ConvShape& s, int64_t stride);

// The interior of the padded image from x [Cg, H, W] (its zero border is left as it is).
void fill_padded(const float* x, const ConvShape& s, const PaddedImage& im, float* image);

// Stride 2: col [K, (oh1 - oh0) * Wo] as im2col's, copied from the phase images (fill_padded):
// one contiguous run per tap and output row instead of every other input float (ResNet-50's
// layer2 3 x 3/2 weight gradient 227 -> 265 GFLOP/s with the vectorised fill_padded).
void columns_from_phases(const float* image, const PaddedImage& im, const ConvShape& s, float* col, int64_t ld,
                         int64_t oh0, int64_t oh1);

// Stride 2, the input gradient: x [Cg, H, W] = col2im(col [K, Ho*Wo]) (rows ld apart), as
// contiguous sums into the phase images (`image`, overwritten) and one interleaving copy out,
// where col2im added into every other float (ResNet-50's layer2 3 x 3/2 217-228 -> 242-268 GFLOP/s).
void col2im_through_phases(const float* col, int64_t ld, const ConvShape& s, const PaddedImage& im, float* image,
                           float* x);

// The same image in bf16 for autocast's kernels (conv_bf16.h): plane q = phase·Cg + c at q·plane,
// or, `paired`, channels c = 2·cp + h side by side: value (q, pos) at
// 2·((phase·Cg/2 + cp)·plane + pos) + h, so two column-matrix rows (channels 2cp, 2cp + 1 at one
// tap) are one run of (even, odd) values: the layout vdpbf16ps multiplies.
int64_t bf16_image_index(const ConvShape& s, const PaddedImage& im, bool paired, int64_t q, int64_t pos);
void fill_padded_bf16(const float* x, const ConvShape& s, const PaddedImage& im, bool paired, uint16_t* image);

}  // namespace bcos::cpu
