// Transforms against torchvision (tests/golden/data.safetensors, from tools/golden/data.py),
// and the sampling rules of the random ones.
#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "data/image.h"
#include "data/transforms.h"
#include "tests/data/helpers.h"
#include "tests/golden.h"

using namespace bcos;
using namespace bcos::data;

namespace {

const golden::Fixtures& fixtures() {
  static golden::Fixtures f(golden::golden_dir() + "/data.safetensors");
  return f;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

const Tensor& F(const std::string& name) { return fixtures()[name]; }

}  // namespace

// Exact transforms: the same arithmetic as torchvision, so bit-for-bit equal.
TEST_CASE("transforms: to_tensor, normalize, flips, crops, padding, add_inverse match torchvision") {
  const Tensor u8 = F("synth.in_u8");
  const Tensor f32 = F("synth.in_f32");
  CHECK(max_abs_diff(to_tensor(u8), F("synth.to_tensor.f32")) == 0);
  CHECK(max_abs_diff(normalize(f32, kImageNetMean, kImageNetStd), F("synth.normalize.f32")) == 0);
  CHECK(max_abs_diff(horizontal_flip(f32), F("synth.hflip.f32")) == 0);
  CHECK(max_abs_diff(horizontal_flip(u8), F("synth.hflip.u8")) == 0);
  CHECK(max_abs_diff(crop(pad(f32, 4), 2, 7, 23, 31), F("synth.pad4_crop.f32")) == 0);
  CHECK(max_abs_diff(crop(f32, 2 - 4, 7 - 4, 23, 31), F("synth.pad4_crop.f32")) == 0);
  CHECK(max_abs_diff(center_crop(f32, 15, 20), F("synth.center_crop.f32")) == 0);
  CHECK(max_abs_diff(center_crop(f32, 27, 33), F("synth.center_crop_big.f32")) == 0);
  CHECK(max_abs_diff(center_crop(f32, 24, 34), F("synth.center_crop_odd.f32")) == 0);
  CHECK(max_abs_diff(center_crop(f32, 20, 36), F("synth.center_crop_mixed.f32")) == 0);
  CHECK(max_abs_diff(add_inverse(f32), F("synth.add_inverse.f32")) == 0);
  // The u8 layout crops and flips the same pixels as the f32 layout.
  CHECK(max_abs_diff(to_tensor(center_crop(u8, 27, 33)), center_crop(to_tensor(u8), 27, 33)) == 0);
  CHECK(max_abs_diff(to_tensor(crop(u8, -3, 5, 30, 40)), crop(to_tensor(u8), -3, 5, 30, 40)) == 0);
}

// Resampling follows torch's kernel in float32; only the order of float additions may differ
// (measured: at most 3e-7), so 2e-6 absolute bounds it with room. uint8 outputs are rounded
// from such floats: a value within 1e-6 of .5 may round the other way (1 of 41,472 does on
// chelsea), hence 1 level, the 1/255 the photos must meet.
TEST_CASE("transforms: antialiased resize matches torchvision on random images") {
  const Tensor f32 = F("synth.in_f32");
  const Tensor u8 = F("synth.in_u8");
  const auto bl = Interpolation::bilinear, bc = Interpolation::bicubic;
  CHECK(max_abs_diff(resize(f32, 11, 17, bl), F("synth.bilinear_down.f32")) <= 2e-6);
  CHECK(max_abs_diff(resize(f32, 11, 17, bc), F("synth.bicubic_down.f32")) <= 2e-6);
  CHECK(max_abs_diff(resize(f32, 37, 50, bl), F("synth.bilinear_up.f32")) <= 2e-6);
  CHECK(max_abs_diff(resize(f32, 37, 50, bc), F("synth.bicubic_up.f32")) <= 2e-6);
  CHECK(max_abs_diff(resize(f32, 40, 12, bl), F("synth.bilinear_mixed.f32")) <= 2e-6);
  CHECK(max_abs_diff(resize(f32, 40, 12, bc), F("synth.bicubic_mixed.f32")) <= 2e-6);
  CHECK(max_abs_diff(resize_shorter(u8, 16, bl), F("synth.bilinear_short16.u8")) <= 1);
  CHECK(max_abs_diff(resize_shorter(u8, 16, bc), F("synth.bicubic_short16.u8")) <= 1);
  CHECK(max_abs_diff(resize(crop(f32, 3, 5, 14, 19), 8, 8, bl), F("synth.resized_crop.f32")) <= 2e-6);
  const Tensor portrait = f32.transpose(1, 2).contiguous();  // [3, 31, 23]
  CHECK(max_abs_diff(resize_shorter(portrait, 16, bl), F("synth.portrait_short16.f32")) <= 2e-6);
}

TEST_CASE("transforms: resize matches torchvision on the shared photos within 1/255") {
  for (const char* name : {"astronaut", "chelsea", "coffee"}) {
    const std::string path = testdata::find(std::string("data/photos/") + name + ".png");
    if (path.empty()) return;
    CAPTURE(name);
    const Tensor img = read_image(path);
    const std::string p = std::string("photo.") + name;
    // PNG is lossless: stb and Pillow must agree exactly.
    CHECK(std::vector<int64_t>{img.size(0), img.size(1), img.size(2)} == F(p + ".shape").to_vector<int64_t>());
    std::vector<double> sums(3, 0.0);
    const std::vector<uint8_t> px = img.to_vector<uint8_t>();
    for (size_t i = 0; i < px.size(); ++i) sums[i % 3] += px[i];
    const std::vector<double> ref = F(p + ".mean").to_vector<double>();
    for (size_t c = 0; c < 3; ++c) CHECK(sums[c] / double(px.size() / 3) == doctest::Approx(ref[c]).epsilon(1e-12));
    CHECK(max_abs_diff(resize_shorter(img, 96, Interpolation::bilinear), F(p + ".bilinear_short96.u8")) <= 1);
    CHECK(max_abs_diff(resize(img, 57, 83, Interpolation::bicubic), F(p + ".bicubic_57x83.u8")) <= 1);
    if (std::string(name) == "astronaut") {
      const Tensor f = to_tensor(img);
      CHECK(max_abs_diff(resize_shorter(f, 64), F(p + ".bilinear_short64.f32")) <= 2e-6);
      const Tensor c = crop(f, 100, 120, 40, 40);
      CHECK(max_abs_diff(resize(c, 61, 61, Interpolation::bilinear), F(p + ".crop_up_bilinear.f32")) <= 2e-6);
      CHECK(max_abs_diff(resize(c, 61, 61, Interpolation::bicubic), F(p + ".crop_up_bicubic.f32")) <= 2e-6);
    }
  }
}

TEST_CASE("transforms: random_resized_crop follows torchvision's sampling") {
  std::set<int64_t> heights;
  for (uint64_t seed = 0; seed < 2000; ++seed) {
    Rng rng(seed);
    const CropBox b = random_resized_crop_box(300, 451, rng);
    REQUIRE(b.top >= 0);
    REQUIRE(b.left >= 0);
    REQUIRE(b.top + b.height <= 300);
    REQUIRE(b.left + b.width <= 451);
    // Rounded from an area in [0.08, 1] x 300 * 451 and a ratio in [3/4, 4/3], unless the
    // fallback (the whole image clamped to ratio 4/3: 300 x 400) was taken.
    const double area = double(b.height * b.width) / (300.0 * 451.0), ratio = double(b.width) / double(b.height);
    const bool fallback = b.height == 300 && b.width == 400 && b.left == 25;
    if (!fallback) {
      CHECK(area >= 0.08 * 0.9);
      CHECK(area <= 1.0);
      CHECK(ratio >= 0.75 * 0.9);
      CHECK(ratio <= 4.0 / 3.0 * 1.1);
    }
    heights.insert(b.height);
    Rng again(seed);
    const CropBox c = random_resized_crop_box(300, 451, again);
    CHECK((c.top == b.top && c.left == b.left && c.height == b.height && c.width == b.width));
  }
  CHECK(heights.size() > 100);  // really random
  // Images too elongated for any sample: the central crop at the nearest allowed ratio.
  Rng rng(7);
  CropBox wide = random_resized_crop_box(10, 1000, rng);  // ratio 100 > 4/3: h = 10, w = round(13.33)
  CHECK(wide.height == 10);
  CHECK(wide.width == 13);
  CHECK(wide.top == 0);
  CHECK(wide.left == (1000 - 13) / 2);
  CropBox tall = random_resized_crop_box(1000, 10, rng);  // ratio 0.01 < 3/4: w = 10, h = round(13.33)
  CHECK(tall.width == 10);
  CHECK(tall.height == 13);
  CHECK(tall.top == (1000 - 13) / 2);
  CHECK(tall.left == 0);
}

TEST_CASE("transforms: RandomCrop with padding 4 takes every one of the 81 offsets") {
  const Tensor u8 = F("synth.in_u8");  // 23 x 31
  const Tensor img = crop(u8, 0, 0, 23, 23);
  Transform t = RandomCrop(23, 4);
  std::set<std::pair<int, int>> seen;
  for (uint64_t seed = 0; seed < 3000; ++seed) {
    Rng rng(seed);
    const Tensor out = t(img, rng);
    bool found = false;
    for (int dy = -4; dy <= 4 && !found; ++dy)
      for (int dx = -4; dx <= 4 && !found; ++dx)
        if (max_abs_diff(out, crop(img, dy, dx, 23, 23)) == 0) found = true, seen.insert({dy, dx});
    REQUIRE(found);
  }
  CHECK(seen.size() == 81);
}

TEST_CASE("transforms: Compose is deterministic for a seed, and flips about half the time") {
  Transform t = Compose({RandomResizedCrop(24), RandomHorizontalFlip(), ToTensor(),
                         Normalize(kImageNetMean, kImageNetStd), AddInverse()});
  const Tensor u8 = F("synth.in_u8");
  Rng a(5), b(5);
  const Tensor x = t(u8, a), y = t(u8, b);
  CHECK(x.shape() == Shape({6, 24, 24}));
  CHECK(max_abs_diff(x, y) == 0);
  int flips = 0;
  Transform flip = RandomHorizontalFlip();
  for (uint64_t s = 0; s < 1000; ++s) {
    Rng rng(s);
    flips += max_abs_diff(flip(u8, rng), u8) != 0;
  }
  CHECK(flips > 430);
  CHECK(flips < 570);
}

TEST_CASE("transforms: bad input raises bcos::Error") {
  const Tensor u8 = F("synth.in_u8");
  CHECK_THROWS_AS(normalize(u8, kImageNetMean, kImageNetStd), Error);
  CHECK_THROWS_AS(normalize(to_tensor(u8), {0.5f, 0.5f}, {0.5f, 0.5f}), Error);
  CHECK_THROWS_AS(normalize(to_tensor(u8), {0.5f}, {0.f}), Error);
  CHECK_THROWS_AS(add_inverse(u8), Error);
  CHECK_THROWS_AS(resize(u8, 0, 5), Error);
  CHECK_THROWS_AS(crop(u8, 0, 0, 0, 5), Error);
  CHECK_THROWS_AS(to_tensor(zeros({4, 4})), Error);
  CHECK_THROWS_AS(resize(zeros({3, 4, 4}, DType::f64), 2, 2), Error);
  Rng rng(0);
  CHECK_THROWS_AS(RandomCrop(40)(u8, rng), Error);
  try {
    normalize(u8, kImageNetMean, kImageNetStd);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("normalize") != std::string::npos);
    CHECK(std::string(e.what()).find("[23, 31, 3]") != std::string::npos);
  }
}
