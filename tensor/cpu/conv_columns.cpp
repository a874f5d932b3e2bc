// im2col, col2im and the padded image of a convolution (see conv_columns.h).
#include "tensor/cpu/conv_columns.h"

#include <algorithm>
#include <cstring>

#include "tensor/cpu/conv_bf16.h"

namespace bcos::cpu {

namespace {

// The output columns ow whose input column iw0 + ow * stride lies in [0, w): [lo, hi).
inline void columns_inside(int64_t iw0, int64_t stride, int64_t w, int64_t wo, int64_t* lo, int64_t* hi) {
  *lo = iw0 >= 0 ? 0 : std::min<int64_t>((-iw0 + stride - 1) / stride, wo);
  *hi = iw0 > w - 1 ? *lo : std::clamp<int64_t>((w - 1 - iw0) / stride + 1, *lo, wo);
}

// A stride-1 convolution whose output is as wide as its input ("same" padding: 3x3 pad 1) sees
// each tap (ki, kj) as the whole plane shifted by a constant: row ki·d - pad, column kj·d - pad.
// Its column-matrix row is then one contiguous run of the plane, except the columns shifted out
// of the image (which wrap into the neighbouring image row and must read as zero). For small
// maps this beats copying image row by image row (CIFAR's 32 x 32: 2.4x faster im2col).
bool shifts_whole_rows(const ConvShape& s, const Conv2dParams& p) {
  return p.stride[0] == 1 && p.stride[1] == 1 && s.wo == s.w;
}

// The output rows [*oh_lo, *oh_hi) whose tap row ki lies inside the image.
inline void rows_inside(const ConvShape& s, const Conv2dParams& p, int64_t ki, int64_t* oh_lo, int64_t* oh_hi) {
  const int64_t ih0 = ki * p.dilation[0] - p.padding[0];  // input row of output row 0
  *oh_lo = std::clamp<int64_t>(-ih0, 0, s.ho);
  *oh_hi = std::clamp<int64_t>(s.h - ih0, *oh_lo, s.ho);
}

}  // namespace

ConvShape conv_shape(const Tensor& x, const Tensor& w, const Tensor& out, const Conv2dParams& p) {
  ConvShape s{};
  s.n = x.size(0), s.c = x.size(1), s.h = x.size(2), s.w = x.size(3);
  s.o = w.size(0), s.kh = w.size(2), s.kw = w.size(3);
  s.ho = out.size(2), s.wo = out.size(3), s.groups = p.groups;
  s.cg = s.c / p.groups, s.og = s.o / p.groups, s.k = s.cg * s.kh * s.kw;
  s.pointwise = s.kh == 1 && s.kw == 1 && p.stride[0] == 1 && p.stride[1] == 1 &&
                p.padding[0] == 0 && p.padding[1] == 0;
  return s;
}

template <class T>
void im2col(const T* x, const ConvShape& s, const Conv2dParams& p, T* col, int64_t ld, int64_t oh0,
            int64_t oh1) {
  if (oh1 < 0) oh1 = s.ho;
  if (shifts_whole_rows(s, p)) {
    for (int64_t c = 0; c < s.cg; ++c)
      for (int64_t ki = 0; ki < s.kh; ++ki)
        for (int64_t kj = 0; kj < s.kw; ++kj) {
          T* row = col + ((c * s.kh + ki) * s.kw + kj) * ld;  // output (oh, ow) at row[(oh - oh0) * wo + ow]
          const T* plane = x + c * s.h * s.w;
          const int64_t dh = ki * p.dilation[0] - p.padding[0], dw = kj * p.dilation[1] - p.padding[1];
          const int64_t base = oh0 * s.wo;
          int64_t oh_lo, oh_hi, lo, hi;
          rows_inside(s, p, ki, &oh_lo, &oh_hi);
          oh_lo = std::clamp(oh_lo, oh0, oh1), oh_hi = std::clamp(oh_hi, oh_lo, oh1);
          columns_inside(dw, 1, s.w, s.wo, &lo, &hi);
          std::fill(row, row + oh_lo * s.wo - base, T(0));
          std::fill(row + oh_hi * s.wo - base, row + oh1 * s.wo - base, T(0));
          if (oh_lo == oh_hi) continue;
          // One run: output [oh_lo * wo + lo, oh_hi * wo - (wo - hi)) reads the plane shifted by
          // dh rows and dw columns; it starts and ends inside the plane.
          const int64_t first = oh_lo * s.wo + lo, last = (oh_hi - 1) * s.wo + hi;
          if (first < last)
            std::memcpy(row + first - base, plane + first + dh * s.w + dw, size_t(last - first) * sizeof(T));
          for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {  // the wrapped columns read as zero
            T* r = row + oh * s.wo - base;
            for (int64_t ow = 0; ow < lo; ++ow) r[ow] = T(0);
            for (int64_t ow = hi; ow < s.wo; ++ow) r[ow] = T(0);
          }
        }
    return;
  }
  for (int64_t c = 0; c < s.cg; ++c)
    for (int64_t ki = 0; ki < s.kh; ++ki)
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        T* row = col + ((c * s.kh + ki) * s.kw + kj) * ld;
        const T* plane = x + c * s.h * s.w;
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          int64_t ih = oh * p.stride[0] - p.padding[0] + ki * p.dilation[0];
          T* dst = row + (oh - oh0) * s.wo;
          if (ih < 0 || ih >= s.h) {
            std::fill(dst, dst + s.wo, T(0));
            continue;
          }
          const T* src = plane + ih * s.w;
          const int64_t iw0 = -p.padding[1] + kj * p.dilation[1], st = p.stride[1];
          int64_t lo, hi;  // zero margins around the columns inside the image
          columns_inside(iw0, st, s.w, s.wo, &lo, &hi);
          std::fill(dst, dst + lo, T(0));
          if (st == 1) {
            std::memcpy(dst + lo, src + iw0 + lo, size_t(hi - lo) * sizeof(T));
          } else if (st == 2) {  // a constant stride: the compiler's even-lane permutes (3x faster)
            const T* even = src + iw0;
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = even[2 * ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = src[iw0 + ow * st];
          }
          std::fill(dst + hi, dst + s.wo, T(0));
        }
      }
}

template <class T>
void col2im(T* col, const ConvShape& s, const Conv2dParams& p, T* x, int64_t ld) {
  if (shifts_whole_rows(s, p)) {  // one shifted run per tap, as in im2col
    for (int64_t c = 0; c < s.cg; ++c)
      for (int64_t ki = 0; ki < s.kh; ++ki)
        for (int64_t kj = 0; kj < s.kw; ++kj) {
          T* row = col + ((c * s.kh + ki) * s.kw + kj) * ld;
          T* plane = x + c * s.h * s.w;
          const int64_t dh = ki * p.dilation[0] - p.padding[0], dw = kj * p.dilation[1] - p.padding[1];
          int64_t oh_lo, oh_hi, lo, hi;
          rows_inside(s, p, ki, &oh_lo, &oh_hi);
          columns_inside(dw, 1, s.w, s.wo, &lo, &hi);
          if (oh_lo == oh_hi || lo == hi) continue;
          for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {  // wrapped columns must add nothing
            T* r = row + oh * s.wo;
            for (int64_t ow = 0; ow < lo; ++ow) r[ow] = T(0);
            for (int64_t ow = hi; ow < s.wo; ++ow) r[ow] = T(0);
          }
          const int64_t first = oh_lo * s.wo + lo, last = (oh_hi - 1) * s.wo + hi;
          const int64_t shift = dh * s.w + dw;
          for (int64_t q = first; q < last; ++q) plane[q + shift] += row[q];
        }
    return;
  }
  for (int64_t c = 0; c < s.cg; ++c)
    for (int64_t ki = 0; ki < s.kh; ++ki)
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        const T* row = col + ((c * s.kh + ki) * s.kw + kj) * ld;
        T* plane = x + c * s.h * s.w;
        for (int64_t oh = 0; oh < s.ho; ++oh) {
          int64_t ih = oh * p.stride[0] - p.padding[0] + ki * p.dilation[0];
          if (ih < 0 || ih >= s.h) continue;
          const T* src = row + oh * s.wo;
          T* dst = plane + ih * s.w;
          const int64_t iw0 = -p.padding[1] + kj * p.dilation[1], st = p.stride[1];
          int64_t lo, hi;  // only the columns inside the image receive gradient
          columns_inside(iw0, st, s.w, s.wo, &lo, &hi);
          if (st == 1) {  // contiguous: vectorises
            for (int64_t ow = lo; ow < hi; ++ow) dst[iw0 + ow] += src[ow];
          } else {
            for (int64_t ow = lo; ow < hi; ++ow) dst[iw0 + ow * st] += src[ow];
          }
        }
      }
}

int64_t column_block_rows(const ConvShape& s, int64_t floats) {
  const int64_t columns = std::max<int64_t>(256, floats / std::max<int64_t>(s.k, 1));
  return std::clamp<int64_t>(columns / std::max<int64_t>(s.wo, 1), 1, std::max<int64_t>(s.ho, 1));
}


PaddedImage padded_image(const ConvShape& s, int64_t stride) {
  PaddedImage im;
  im.stride = stride, im.pad = (s.kh - 1) / 2;
  int64_t phases = 1;
  if (stride == 1) {
    im.row = s.w + im.pad;
    im.plane = (s.h + 2 * im.pad) * im.row + 2 * im.pad;
  } else {
    phases = 4;
    im.row = (s.w + 2 * im.pad + 1) / 2;
    im.plane = ((s.h + 2 * im.pad + 1) / 2 + 1) * im.row;
  }
  im.wide_cols = s.ho * im.row;
  im.floats = phases * s.cg * im.plane + 32;
  im.offsets.resize(size_t(s.k));
  for (int64_t c = 0; c < s.cg; ++c)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j)
        im.offsets[size_t((c * s.kh + i) * s.kw + j)] =
            stride == 1 ? c * im.plane + i * im.row + j
                        : (((i & 1) * 2 + (j & 1)) * s.cg + c) * im.plane + (i >> 1) * im.row + (j >> 1);
  return im;
}

// Per-thread scratch is allocated on the calling thread, before the parallel region: allocations
void fill_padded(const float* x, const ConvShape& s, const PaddedImage& im, float* image) {
  for (int64_t c = 0; c < s.cg; ++c)
    for (int64_t y = 0; y < s.h; ++y) {
      const float* src = x + (c * s.h + y) * s.w;
      if (im.stride == 1) {
        std::memcpy(image + c * im.plane + (y + im.pad) * im.row + im.pad, src, size_t(s.w) * sizeof(float));
        continue;
      }
      const int64_t r = y + im.pad;  // padded row: phase r mod 2, phase row r / 2
      for (int64_t b = 0; b < 2; ++b) {
        // padded columns t = x + pad of parity b: phase column t / 2
        float* dst = image + (((r & 1) * 2 + b) * s.cg + c) * im.plane + (r >> 1) * im.row;
        const int64_t x0 = ((b - im.pad) % 2 + 2) % 2;  // first x with (x + pad) mod 2 = b
        const float* even = src + x0;  // a constant stride, which the compiler vectorises
        float* to = dst + ((x0 + im.pad) >> 1);
        for (int64_t j = 0; j < (s.w - x0 + 1) / 2; ++j) to[j] = even[2 * j];
      }
    }
}

void columns_from_phases(const float* image, const PaddedImage& im, const ConvShape& s, float* col, int64_t ld,
                         int64_t oh0, int64_t oh1) {
  for (int64_t r = 0; r < s.k; ++r)
    for (int64_t oh = oh0; oh < oh1; ++oh)
      std::memcpy(col + r * ld + (oh - oh0) * s.wo, image + im.offsets[size_t(r)] + oh * im.row,
                  size_t(s.wo) * sizeof(float));
}

void col2im_through_phases(const float* col, int64_t ld, const ConvShape& s, const PaddedImage& im, float* image,
                           float* x) {
  std::fill(image, image + im.floats, 0.0f);
  for (int64_t r = 0; r < s.k; ++r)
    for (int64_t oh = 0; oh < s.ho; ++oh) {
      const float* src = col + r * ld + oh * s.wo;
      float* dst = image + im.offsets[size_t(r)] + oh * im.row;
      for (int64_t ow = 0; ow < s.wo; ++ow) dst[ow] += src[ow];
    }
  // Input column x sits in phase column (x + pad) / 2 of the phase of parity (x + pad) mod 2.
  const int64_t even_b = im.pad & 1, odd_b = (1 + im.pad) & 1, even_at = im.pad >> 1, odd_at = (1 + im.pad) >> 1;
  for (int64_t c = 0; c < s.cg; ++c)
    for (int64_t y = 0; y < s.h; ++y) {
      const int64_t r = y + im.pad;
      const float* phase_row = image + ((r & 1) * 2 * s.cg + c) * im.plane + (r >> 1) * im.row;
      const float* even = phase_row + even_b * s.cg * im.plane + even_at;
      const float* odd = phase_row + odd_b * s.cg * im.plane + odd_at;
      float* dst = x + (c * s.h + y) * s.w;
      for (int64_t j = 0; j < s.w / 2; ++j) dst[2 * j] = even[j], dst[2 * j + 1] = odd[j];
      if (s.w & 1) dst[s.w - 1] = even[s.w / 2];
    }
}

int64_t bf16_image_index(const ConvShape& s, const PaddedImage& im, bool paired, int64_t q, int64_t pos) {
  if (!paired) return q * im.plane + pos;
  const int64_t phase = q / s.cg, c = q % s.cg;
  return 2 * ((phase * (s.cg / 2) + c / 2) * im.plane + pos) + (c & 1);
}

void fill_padded_bf16(const float* x, const ConvShape& s, const PaddedImage& im, bool paired, uint16_t* image) {
  const int64_t step = paired ? 2 : 1;
  for (int64_t c = 0; c < s.cg; c += (im.stride == 1 ? step : 1))
    for (int64_t y = 0; y < s.h; ++y) {
      const float* src = x + (c * s.h + y) * s.w;
      if (im.stride == 1) {
        uint16_t* dst = image + bf16_image_index(s, im, paired, c, (y + im.pad) * im.row + im.pad);
        if (paired) round_pair_to_bf16_row(src, src + s.h * s.w, s.w, dst);  // channels c, c + 1
        else round_to_bf16_row(src, s.w, dst);
        continue;
      }
      const int64_t r = y + im.pad;
      for (int64_t b = 0; b < 2; ++b) {
        uint16_t* dst = image + bf16_image_index(s, im, paired, ((r & 1) * 2 + b) * s.cg + c, (r >> 1) * im.row);
        const int64_t x0 = ((b - im.pad) % 2 + 2) % 2;
        for (int64_t xi = x0; xi < s.w; xi += 2) dst[((xi + im.pad) >> 1) * step] = BFloat16::from_float(src[xi]);
      }
    }
}

template void im2col<float>(const float*, const ConvShape&, const Conv2dParams&, float*, int64_t, int64_t, int64_t);
template void im2col<double>(const double*, const ConvShape&, const Conv2dParams&, double*, int64_t, int64_t,
                             int64_t);
template void col2im<float>(float*, const ConvShape&, const Conv2dParams&, float*, int64_t);
template void col2im<double>(double*, const ConvShape&, const Conv2dParams&, double*, int64_t);

}  // namespace bcos::cpu
