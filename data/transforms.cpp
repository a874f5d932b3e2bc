// Image transforms (see transforms.h). Images are small and handled one at a time by a loader
// worker, so these are plain single-threaded loops over contiguous memory; parallelism comes
// from the loader running many images at once.
#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace bcos::data {

namespace {

// The two layouts, as strides of a contiguous image: element (c, y, x) sits at
// c * sc + y * sy + x * sx.
struct Layout {
  bool hwc;  // u8 [H, W, C]; otherwise f32 [C, H, W]
  int64_t c, h, w;
  int64_t sc, sy, sx;
};

Layout layout_of(const Tensor& image, const char* op) {
  BCOS_CHECK(image.is_cpu(), op, ": images are transformed on the CPU; this one is on ",
             image.device());
  BCOS_CHECK(image.dim() == 3 && (image.dtype() == DType::u8 || image.dtype() == DType::f32), op,
             ": expected an image, u8 [H, W, C] or f32 [C, H, W]; got ", dtype_name(image.dtype()),
             " ", image.shape());
  if (image.dtype() == DType::u8) {
    const int64_t h = image.size(0), w = image.size(1), c = image.size(2);
    return {true, c, h, w, 1, w * c, c};
  }
  const int64_t c = image.size(0), h = image.size(1), w = image.size(2);
  return {false, c, h, w, h * w, w, 1};
}

Tensor empty_image(const Layout& l, int64_t h, int64_t w) {
  return l.hwc ? empty({h, w, l.c}, DType::u8) : empty({l.c, h, w}, DType::f32);
}

// ---- antialiased resampling (PIL's algorithm; torchvision's antialias=True) ----------------
// For each output index: the first input index and the normalised filter weights.
struct Taps {
  int64_t width = 0;  // weights per output index (the widest filter footprint)
  std::vector<int64_t> first, count;
  std::vector<float> weights;  // [out, width]
};

float bilinear_filter(float x) {
  x = std::fabs(x);
  return x < 1.f ? 1.f - x : 0.f;
}

float bicubic_filter(float x) {  // Keys' cubic with a = -0.5, as PIL and antialiased torch use
  constexpr float a = -0.5f;
  x = std::fabs(x);
  if (x < 1.f) return ((a + 2.f) * x - (a + 3.f)) * x * x + 1.f;
  if (x < 2.f) return (((x - 5.f) * x + 8.f) * x - 4.f) * a;
  return 0.f;
}

// Follows torch's upsample kernels (which follow PIL) in float, including where it rounds:
// the scale is in/out; downscaling stretches the filter by the scale.
Taps make_taps(int64_t in, int64_t out, Interpolation mode) {
  const float scale = float(in) / float(out);
  const float half = mode == Interpolation::bilinear ? 1.f : 2.f;  // filter radius at scale 1
  const float support = scale >= 1.f ? half * scale : half;
  const float invscale = scale >= 1.f ? float(1.0 / scale) : 1.f;
  auto filter = mode == Interpolation::bilinear ? bilinear_filter : bicubic_filter;
  Taps t;
  t.width = std::min<int64_t>(int64_t(std::ceil(support)) * 2 + 1, in);
  t.first.resize(size_t(out));
  t.count.resize(size_t(out));
  t.weights.assign(size_t(out * t.width), 0.f);
  for (int64_t i = 0; i < out; ++i) {
    const float center = float(scale * (i + 0.5));
    const int64_t lo = std::max<int64_t>(int64_t(center - support + 0.5), 0);
    const int64_t n = std::min<int64_t>(std::min<int64_t>(int64_t(center + support + 0.5), in) - lo, t.width);
    float* w = &t.weights[size_t(i * t.width)];
    float total = 0.f;
    for (int64_t j = 0; j < n; ++j) {
      w[j] = filter(float((float(j + lo) - center + 0.5) * invscale));
      total += w[j];
    }
    if (total != 0.f)
      for (int64_t j = 0; j < n; ++j) w[j] /= total;
    t.first[size_t(i)] = lo;
    t.count[size_t(i)] = n;
  }
  return t;
}

// Rows of pixels with c interleaved channels: src [rows][w][c] -> dst [rows][out_w][c].
void resample_rows(const float* src, float* dst, int64_t rows, int64_t w, int64_t c, int64_t out_w,
                   const Taps& t) {
  for (int64_t row = 0; row < rows; ++row) {
    const float* s = src + row * w * c;
    float* d = dst + row * out_w * c;
    for (int64_t x = 0; x < out_w; ++x) {
      const float* wt = &t.weights[size_t(x * t.width)];
      const float* p = s + t.first[size_t(x)] * c;
      const int64_t n = t.count[size_t(x)];
      for (int64_t ch = 0; ch < c; ++ch) {
        float acc = 0.f;
        for (int64_t j = 0; j < n; ++j) acc += p[j * c + ch] * wt[j];
        d[x * c + ch] = acc;
      }
    }
  }
}

// Whole rows of `len` floats: dst row y = sum_j w_j * src row (first_y + j). The loop over the
// row is innermost so it vectorises; each output still sums its taps in order j = 0, 1, ...
void resample_columns(const float* src, float* dst, int64_t len, int64_t out_h, const Taps& t) {
  for (int64_t y = 0; y < out_h; ++y) {
    const float* wt = &t.weights[size_t(y * t.width)];
    const float* s = src + t.first[size_t(y)] * len;
    float* d = dst + y * len;
    std::fill(d, d + len, 0.f);
    for (int64_t j = 0; j < t.count[size_t(y)]; ++j) {
      const float wj = wt[j];
      const float* sj = s + j * len;
      for (int64_t i = 0; i < len; ++i) d[i] += sj[i] * wj;
    }
  }
}

// Resamples one image of `planes` x [h][w][c] floats (interleaved channels within a plane):
// width first, then height, as torch does.
std::vector<float> resample(std::vector<float> img, int64_t planes, int64_t h, int64_t w, int64_t c,
                            int64_t out_h, int64_t out_w, Interpolation mode) {
  if (out_w != w) {
    const Taps t = make_taps(w, out_w, mode);
    std::vector<float> next(size_t(planes * h * out_w * c));
    resample_rows(img.data(), next.data(), planes * h, w, c, out_w, t);
    img.swap(next);
    w = out_w;
  }
  if (out_h != h) {
    const Taps t = make_taps(h, out_h, mode);
    std::vector<float> next(size_t(planes * out_h * w * c));
    for (int64_t p = 0; p < planes; ++p)
      resample_columns(img.data() + p * h * w * c, next.data() + p * out_h * w * c, w * c, out_h, t);
    img.swap(next);
  }
  return img;
}

int64_t round_half_even(double v) { return int64_t(std::nearbyint(v)); }

}  // namespace

int64_t image_height(const Tensor& image) { return layout_of(image, "image_height").h; }
int64_t image_width(const Tensor& image) { return layout_of(image, "image_width").w; }

Tensor to_tensor(const Tensor& image) {
  const Layout l = layout_of(image, "to_tensor");
  if (!l.hwc) return image;
  Tensor src = image.contiguous(), out = empty({l.c, l.h, l.w}, DType::f32);
  const uint8_t* s = src.data<uint8_t>();
  float* d = out.data<float>();
  const int64_t hw = l.h * l.w;
  for (int64_t i = 0; i < hw; ++i)
    for (int64_t ch = 0; ch < l.c; ++ch) d[ch * hw + i] = float(s[i * l.c + ch]) / 255.f;
  return out;
}

Tensor normalize(const Tensor& image, const std::vector<float>& mean, const std::vector<float>& std) {
  const Layout l = layout_of(image, "normalize");
  BCOS_CHECK(!l.hwc, "normalize: expects f32 [C, H, W] (apply ToTensor first); got u8 ", image.shape());
  auto per_channel = [&](const std::vector<float>& v, const char* what) {
    BCOS_CHECK(v.size() == 1 || int64_t(v.size()) == l.c, "normalize: ", v.size(), " ", what,
               " values for an image with ", l.c, " channels ", image.shape());
    std::vector<float> out(size_t(l.c));
    for (int64_t ch = 0; ch < l.c; ++ch) out[size_t(ch)] = v[v.size() == 1 ? 0 : size_t(ch)];
    return out;
  };
  const std::vector<float> m = per_channel(mean, "mean"), s = per_channel(std, "std");
  for (float v : s) BCOS_CHECK(v != 0.f, "normalize: a std of 0 would divide by zero");
  Tensor src = image.contiguous(), out = empty({l.c, l.h, l.w}, DType::f32);
  const float* a = src.data<float>();
  float* d = out.data<float>();
  const int64_t hw = l.h * l.w;
  for (int64_t ch = 0; ch < l.c; ++ch)
    for (int64_t i = 0; i < hw; ++i) d[ch * hw + i] = (a[ch * hw + i] - m[size_t(ch)]) / s[size_t(ch)];
  return out;
}

Tensor resize(const Tensor& image, int64_t height, int64_t width, Interpolation mode) {
  const Layout l = layout_of(image, "resize");
  BCOS_CHECK(height > 0 && width > 0, "resize: output size ", height, "x", width,
             " must be positive (image ", image.shape(), ")");
  BCOS_CHECK(l.h > 0 && l.w > 0, "resize: empty image ", image.shape());
  if (height == l.h && width == l.w) return image.contiguous().clone();
  Tensor src = image.contiguous();
  Tensor out = empty_image(l, height, width);
  const int64_t n = l.c * l.h * l.w;
  if (l.hwc) {  // one plane of interleaved channels, resampled in float and rounded back
    const uint8_t* s = src.data<uint8_t>();
    std::vector<float> img(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) img[size_t(i)] = float(s[i]);
    img = resample(std::move(img), 1, l.h, l.w, l.c, height, width, mode);
    uint8_t* d = out.data<uint8_t>();
    for (size_t i = 0; i < img.size(); ++i)
      d[i] = uint8_t(round_half_even(std::clamp(double(img[i]), 0.0, 255.0)));
  } else {  // C planes of one channel each
    const float* s = src.data<float>();
    std::vector<float> img = resample(std::vector<float>(s, s + n), l.c, l.h, l.w, 1, height, width, mode);
    std::memcpy(out.data<float>(), img.data(), img.size() * sizeof(float));
  }
  return out;
}

Tensor resize_shorter(const Tensor& image, int64_t size, Interpolation mode, int64_t max_size) {
  const Layout l = layout_of(image, "resize");
  BCOS_CHECK(size > 0, "resize: the shorter side must be positive, got ", size);
  BCOS_CHECK(l.h > 0 && l.w > 0, "resize: empty image ", image.shape());
  BCOS_CHECK(max_size <= 0 || max_size > size, "resize: max_size ", max_size,
             " must exceed the requested shorter side ", size);
  const bool wide = l.w >= l.h;
  const int64_t short_side = wide ? l.h : l.w, long_side = wide ? l.w : l.h;
  int64_t new_short = size, new_long = int64_t(double(size) * double(long_side) / double(short_side));
  if (max_size > 0 && new_long > max_size) {
    new_short = int64_t(double(max_size) * double(new_short) / double(new_long));
    new_long = max_size;
  }
  return wide ? resize(image, new_short, new_long, mode) : resize(image, new_long, new_short, mode);
}

Tensor crop(const Tensor& image, int64_t top, int64_t left, int64_t height, int64_t width) {
  const Layout l = layout_of(image, "crop");
  BCOS_CHECK(height > 0 && width > 0, "crop: window ", height, "x", width, " must be positive (image ",
             image.shape(), ")");
  Tensor src = image.contiguous(), out = empty_image(l, height, width);
  const size_t es = image.element_size();
  const char* s = static_cast<const char*>(src.raw_data());
  char* d = static_cast<char*>(out.raw_data());
  // Rows of the output that come from the image, and the columns within them.
  const int64_t x0 = std::clamp<int64_t>(-left, 0, width), x1 = std::clamp<int64_t>(l.w - left, x0, width);
  const int64_t planes = l.hwc ? 1 : l.c, px = l.hwc ? l.c : 1;  // a row holds width * px elements
  const int64_t src_row = l.w * px, dst_row = width * px;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t y = 0; y < height; ++y) {
      char* drow = d + size_t((p * height + y) * dst_row) * es;
      const int64_t sy = top + y;
      if (sy < 0 || sy >= l.h || x0 >= x1) {
        std::memset(drow, 0, size_t(dst_row) * es);
        continue;
      }
      const char* srow = s + size_t((p * l.h + sy) * src_row) * es;
      std::memset(drow, 0, size_t(x0 * px) * es);
      std::memcpy(drow + size_t(x0 * px) * es, srow + size_t((left + x0) * px) * es, size_t((x1 - x0) * px) * es);
      std::memset(drow + size_t(x1 * px) * es, 0, size_t((width - x1) * px) * es);
    }
  return out;
}

Tensor pad(const Tensor& image, int64_t padding) {
  const Layout l = layout_of(image, "pad");
  BCOS_CHECK(padding >= 0, "pad: padding ", padding, " must be non-negative");
  return crop(image, -padding, -padding, l.h + 2 * padding, l.w + 2 * padding);
}

Tensor center_crop(const Tensor& image, int64_t height, int64_t width) {
  const Layout l = layout_of(image, "center_crop");
  BCOS_CHECK(height > 0 && width > 0, "center_crop: size ", height, "x", width, " must be positive");
  // torchvision first pads a too-small image symmetrically (the odd pixel at the bottom/right),
  // then takes the window at round((H - h) / 2), rounding halves to even as Python does.
  const int64_t pad_top = height > l.h ? (height - l.h) / 2 : 0;
  const int64_t pad_left = width > l.w ? (width - l.w) / 2 : 0;
  const int64_t h = std::max(l.h, height), w = std::max(l.w, width);
  const int64_t top = round_half_even((h - height) / 2.0), left = round_half_even((w - width) / 2.0);
  return crop(image, top - pad_top, left - pad_left, height, width);
}

Tensor horizontal_flip(const Tensor& image) {
  const Layout l = layout_of(image, "horizontal_flip");
  Tensor src = image.contiguous(), out = empty_image(l, l.h, l.w);
  const size_t es = image.element_size();
  const int64_t rows = l.hwc ? l.h : l.c * l.h, px = l.hwc ? l.c : 1;
  const size_t pixel_bytes = size_t(px) * es;
  const char* s = static_cast<const char*>(src.raw_data());
  char* d = static_cast<char*>(out.raw_data());
  for (int64_t r = 0; r < rows; ++r) {
    const char* srow = s + size_t(r * l.w) * pixel_bytes;
    char* drow = d + size_t(r * l.w) * pixel_bytes;
    for (int64_t x = 0; x < l.w; ++x)
      std::memcpy(drow + size_t(x) * pixel_bytes, srow + size_t(l.w - 1 - x) * pixel_bytes, pixel_bytes);
  }
  return out;
}

Tensor add_inverse(const Tensor& image) {
  const Layout l = layout_of(image, "add_inverse");
  BCOS_CHECK(!l.hwc, "add_inverse: expects f32 [C, H, W] in [0, 1] (apply ToTensor first); got u8 ",
             image.shape());
  Tensor src = image.contiguous(), out = empty({2 * l.c, l.h, l.w}, DType::f32);
  const int64_t n = l.c * l.h * l.w;
  const float* s = src.data<float>();
  float* d = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    d[i] = s[i];
    d[n + i] = 1.f - s[i];
  }
  return out;
}

CropBox random_resized_crop_box(int64_t height, int64_t width, Rng& rng, std::array<double, 2> scale,
                                std::array<double, 2> ratio) {
  BCOS_CHECK(height > 0 && width > 0, "random_resized_crop: empty image ", height, "x", width);
  BCOS_CHECK(scale[0] >= 0 && scale[0] <= scale[1] && std::isfinite(scale[1]) && ratio[0] > 0 &&
                 ratio[0] <= ratio[1] && std::isfinite(ratio[1]),
             "random_resized_crop: scale and ratio must be (min, max) ranges, got scale (", scale[0],
             ", ", scale[1], ") ratio (", ratio[0], ", ", ratio[1], ")");
  const double area = double(height) * double(width);
  const double log_lo = std::log(ratio[0]), log_hi = std::log(ratio[1]);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * rng.uniform(scale[0], scale[1]);
    const double aspect = std::exp(rng.uniform(log_lo, log_hi));
    const int64_t w = round_half_even(std::sqrt(target * aspect));
    const int64_t h = round_half_even(std::sqrt(target / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int64_t top = rng.randint(0, height - h + 1), left = rng.randint(0, width - w + 1);
      return {top, left, h, w};
    }
  }
  // Fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred.
  const double in_ratio = double(width) / double(height);
  int64_t w = width, h = height;
  if (in_ratio < ratio[0]) h = round_half_even(double(w) / ratio[0]);
  else if (in_ratio > ratio[1]) w = round_half_even(double(h) * ratio[1]);
  return {(height - h) / 2, (width - w) / 2, h, w};
}

// ---- composable transforms -----------------------------------------------------------------
Transform Compose(std::vector<Transform> transforms) {
  return [ts = std::move(transforms)](const Tensor& image, Rng& rng) {
    Tensor x = image;
    for (const Transform& t : ts) x = t(x, rng);
    return x;
  };
}

Transform ToTensor() {
  return [](const Tensor& image, Rng&) { return to_tensor(image); };
}

Transform Normalize(std::vector<float> mean, std::vector<float> std) {
  return [mean = std::move(mean), std = std::move(std)](const Tensor& image, Rng&) {
    return normalize(image, mean, std);
  };
}

Transform Resize(int64_t shorter_side, Interpolation mode) {
  return [=](const Tensor& image, Rng&) { return resize_shorter(image, shorter_side, mode); };
}

Transform Resize(int64_t height, int64_t width, Interpolation mode) {
  return [=](const Tensor& image, Rng&) { return resize(image, height, width, mode); };
}

Transform CenterCrop(int64_t size) { return CenterCrop(size, size); }

Transform CenterCrop(int64_t height, int64_t width) {
  return [=](const Tensor& image, Rng&) { return center_crop(image, height, width); };
}

Transform RandomResizedCrop(int64_t size, std::array<double, 2> scale, std::array<double, 2> ratio,
                            Interpolation mode) {
  BCOS_CHECK(size > 0, "RandomResizedCrop: size ", size, " must be positive");
  return [=](const Tensor& image, Rng& rng) {
    const CropBox b = random_resized_crop_box(image_height(image), image_width(image), rng, scale, ratio);
    return resize(crop(image, b.top, b.left, b.height, b.width), size, size, mode);
  };
}

Transform RandomCrop(int64_t size, int64_t padding) {
  BCOS_CHECK(size > 0 && padding >= 0, "RandomCrop: size ", size, " and padding ", padding,
             " must be positive and non-negative");
  return [=](const Tensor& image, Rng& rng) {
    // Cropping the padded image without building it: the window starts `padding` earlier.
    const int64_t h = image_height(image) + 2 * padding, w = image_width(image) + 2 * padding;
    BCOS_CHECK(h >= size && w >= size, "RandomCrop: crop ", size, "x", size,
               " is larger than the padded image ", h, "x", w, " (image ", image.shape(), ")");
    const int64_t top = h == size ? 0 : rng.randint(0, h - size + 1);
    const int64_t left = w == size ? 0 : rng.randint(0, w - size + 1);
    return crop(image, top - padding, left - padding, size, size);
  };
}

Transform RandomHorizontalFlip(double p) {
  return [=](const Tensor& image, Rng& rng) {
    return rng.bernoulli(p) ? horizontal_flip(image) : image;
  };
}

Transform AddInverse() {
  return [](const Tensor& image, Rng&) { return add_inverse(image); };
}

}  // namespace bcos::data
