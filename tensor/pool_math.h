// Pooling window arithmetic shared by tensor/cpu/pool.cpp and tensor/cuda/pool.cu (BCOS_HD:
// __host__ __device__ under nvcc), so both backends clip windows and divide exactly alike.
#pragma once

#include <cstdint>

#include "tensor/elementwise_math.h"  // BCOS_HD
#include "tensor/op_kinds.h"

namespace bcos::pool {

// Taps k = 0, 1, ... of a window starting at `start` (dilation d) that fall inside [0, size):
// the first one, and one past the last one.
BCOS_HD int64_t first_tap(int64_t start, int64_t d) { return start >= 0 ? 0 : (-start + d - 1) / d; }
BCOS_HD int64_t end_tap(int64_t start, int64_t d, int64_t kernel, int64_t size) {
  if (start >= size) return 0;
  const int64_t last = (size - 1 - start) / d + 1;
  return kernel < last ? kernel : last;
}

// The taps of output (oh, ow)'s window that lie inside an h × w plane: rows ki in [ki_lo, ki_hi)
// at h0 + ki · dilation, columns kj in [kj_lo, kj_hi) at w0 + kj · dilation.
struct Taps {
  int64_t h0, w0, ki_lo, ki_hi, kj_lo, kj_hi;
};
BCOS_HD Taps window_taps(int64_t oh, int64_t ow, int64_t h, int64_t w, const Pool2dParams& p) {
  const int64_t h0 = oh * p.stride[0] - p.padding[0], w0 = ow * p.stride[1] - p.padding[1];
  return {h0, w0, first_tap(h0, p.dilation[0]), end_tap(h0, p.dilation[0], p.kernel[0], h),
          first_tap(w0, p.dilation[1]), end_tap(w0, p.dilation[1], p.kernel[1], w)};
}

// The window of output (oh, ow) clipped to the input, and the divisor PyTorch uses for it.
struct AvgWindow {
  int64_t h0, h1, w0, w1;
  double divisor;
};
BCOS_HD AvgWindow avg_window(int64_t oh, int64_t ow, int64_t h, int64_t w, const Pool2dParams& p) {
  int64_t h0 = oh * p.stride[0] - p.padding[0], w0 = ow * p.stride[1] - p.padding[1];
  int64_t h1 = h0 + p.kernel[0] < h + p.padding[0] ? h0 + p.kernel[0] : h + p.padding[0];
  int64_t w1 = w0 + p.kernel[1] < w + p.padding[1] ? w0 + p.kernel[1] : w + p.padding[1];
  const int64_t padded_area = (h1 - h0) * (w1 - w0);
  h0 = h0 > 0 ? h0 : 0, w0 = w0 > 0 ? w0 : 0;
  h1 = h1 < h ? h1 : h, w1 = w1 < w ? w1 : w;
  const double divisor = p.divisor_override    ? double(p.divisor_override)
                         : p.count_include_pad ? double(padded_area)
                                               : double((h1 - h0) * (w1 - w0));
  return {h0, h1, w0, w1, divisor};
}

// The outputs whose windows can hold input pixel (ih, iw): rows [oh0, oh1), columns [ow0, ow1).
// A window starting at oh·s − pad with taps every d rows holds row ih at tap ki when
// oh·s = ih + pad − ki·d, so oh lies in [ceil((ih + pad − (k − 1)·d) / s), floor((ih + pad) / s)]
// (clipping a window to the plane never drops a pixel of the plane). The backward gathers.
struct OutputRange {
  int64_t oh0, oh1, ow0, ow1;
};
BCOS_HD OutputRange windows_holding(int64_t ih, int64_t iw, int64_t ho, int64_t wo, const Pool2dParams& p) {
  const int64_t top = ih + p.padding[0] - (p.kernel[0] - 1) * p.dilation[0];
  const int64_t left = iw + p.padding[1] - (p.kernel[1] - 1) * p.dilation[1];
  const int64_t oh1 = (ih + p.padding[0]) / p.stride[0] + 1, ow1 = (iw + p.padding[1]) / p.stride[1] + 1;
  return {top <= 0 ? 0 : (top + p.stride[0] - 1) / p.stride[0], oh1 < ho ? oh1 : ho,
          left <= 0 ? 0 : (left + p.stride[1] - 1) / p.stride[1], ow1 < wo ? ow1 : wo};
}

// A 1 x 1, stride-1, unpadded window (dilation is then irrelevant): every pixel lies in its own
// window only, so a window sum is the plane itself (the B-cos patch norms' shortcut, both backends).
BCOS_HD bool is_pointwise(const Pool2dParams& p) {
  return p.kernel[0] == 1 && p.kernel[1] == 1 && p.stride[0] == 1 && p.stride[1] == 1 && p.padding[0] == 0 &&
         p.padding[1] == 0;
}
// Adaptive pooling bins: [floor(i * in / out), ceil((i + 1) * in / out)).
BCOS_HD int64_t bin_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
BCOS_HD int64_t bin_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }

}  // namespace bcos::pool
