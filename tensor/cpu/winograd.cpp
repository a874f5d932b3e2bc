// Winograd F(2x2, 3x3) convolution (see winograd.h). With
//   Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
//   Aᵀ = [1 1 1 0; 0 1 -1 -1],
// output tile (ty, tx) covers rows 2ty, 2ty+1 and columns 2tx, 2tx+1, and reads the input
// patch starting at (2ty - 1, 2tx - 1). Each input plane is first copied into a zero border
// (the padding, rounded up to whole tiles), so the transforms are branch-free loops over a
// row of tiles that the compiler vectorises.
#include "tensor/cpu/winograd.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "tensor/cpu/gemm.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {

// U [16, O, C]: G g Gᵀ for every kernel g = w[o, c].
void transform_weights(const float* w, int64_t o, int64_t c, float* u) {
  const int64_t oc = o * c;
  parallel_for(oc, 64, [&](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t k = b; k < e; ++k) {
      const float* g = w + k * 9;
      float t[4][3];  // G g
      for (int j = 0; j < 3; ++j) {
        t[0][j] = g[j];
        t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
        t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
        t[3][j] = g[6 + j];
      }
      for (int i = 0; i < 4; ++i) {  // (G g) Gᵀ
        const float r[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]), 0.5f * (t[i][0] - t[i][1] + t[i][2]),
                            t[i][2]};
        for (int j = 0; j < 4; ++j) u[(i * 4 + j) * oc + k] = r[j];
      }
    }
  });
}

// V [16, C, T] for one sample: Bᵀ d B of every 4 x 4 input tile. `pad` is scratch for one
// bordered plane: (2 th + 2) x (2 tw + 2) floats.
void transform_input(const float* x, int64_t c, int64_t h, int64_t w, int64_t th, int64_t tw, float* pad, float* v) {
  const int64_t tiles = th * tw, plane = c * tiles, pw = 2 * tw + 2, ph = 2 * th + 2;
  std::fill(pad, pad + ph * pw, 0.0f);
  for (int64_t ch = 0; ch < c; ++ch) {
    const float* img = x + ch * h * w;
    for (int64_t y = 0; y < h; ++y) std::memcpy(pad + (y + 1) * pw + 1, img + y * w, size_t(w) * sizeof(float));
    for (int64_t ty = 0; ty < th; ++ty) {
      const float* r0 = pad + 2 * ty * pw;
      const float *r1 = r0 + pw, *r2 = r1 + pw, *r3 = r2 + pw;
      float* dst = v + ch * tiles + ty * tw;
#pragma omp simd
      for (int64_t tx = 0; tx < tw; ++tx) {
        const int64_t q = 2 * tx;
        float t[4][4];  // Bᵀ d, column by column
        for (int j = 0; j < 4; ++j) {
          const float d0 = r0[q + j], d1 = r1[q + j], d2 = r2[q + j], d3 = r3[q + j];
          t[0][j] = d0 - d2, t[1][j] = d1 + d2, t[2][j] = d2 - d1, t[3][j] = d1 - d3;
        }
        for (int i = 0; i < 4; ++i) {  // (Bᵀ d) B
          dst[(i * 4 + 0) * plane + tx] = t[i][0] - t[i][2];
          dst[(i * 4 + 1) * plane + tx] = t[i][1] + t[i][2];
          dst[(i * 4 + 2) * plane + tx] = t[i][2] - t[i][1];
          dst[(i * 4 + 3) * plane + tx] = t[i][1] - t[i][3];
        }
      }
    }
  }
}

// out [O, H, W] from M [16, O, T]: Aᵀ m A of every tile. `full` is scratch for one plane of
// whole tiles (2 th x 2 tw), used when H or W is odd. False where an output is not finite.
bool transform_output(const float* m, int64_t o, int64_t h, int64_t w, int64_t th, int64_t tw, float* full, float* out) {
  const int64_t tiles = th * tw, plane = o * tiles, fw = 2 * tw;
  const bool even = h == 2 * th && w == 2 * tw;
  float probe = 0.0f;  // Σ 0 · y: NaN once any y is infinite or NaN, in the vectorised loop
  for (int64_t oc = 0; oc < o; ++oc) {
    float* img = even ? out + oc * h * w : full;
    for (int64_t ty = 0; ty < th; ++ty) {
      const float* src = m + oc * tiles + ty * tw;
      float* y0 = img + 2 * ty * fw;
      float* y1 = y0 + fw;
#pragma omp simd reduction(+ : probe)
      for (int64_t tx = 0; tx < tw; ++tx) {
        float v[4][4];
        for (int i = 0; i < 16; ++i) v[i / 4][i % 4] = src[i * plane + tx];
        float t[2][4];  // Aᵀ m
        for (int j = 0; j < 4; ++j) {
          t[0][j] = v[0][j] + v[1][j] + v[2][j];
          t[1][j] = v[1][j] - v[2][j] - v[3][j];
        }
        const float a = t[0][0] + t[0][1] + t[0][2], b = t[0][1] - t[0][2] - t[0][3];
        const float c = t[1][0] + t[1][1] + t[1][2], d = t[1][1] - t[1][2] - t[1][3];
        y0[2 * tx] = a, y0[2 * tx + 1] = b, y1[2 * tx] = c, y1[2 * tx + 1] = d;
        probe += 0.0f * (a + b + c + d);
      }
    }
    if (!even)
      for (int64_t y = 0; y < h; ++y) std::memcpy(out + oc * h * w + y * w, full + y * fw, size_t(w) * sizeof(float));
  }
  return probe == probe;
}

}  // namespace

bool winograd_conv3x3(const float* x, const float* w, float* out, int64_t n, int64_t c, int64_t h, int64_t width,
                      int64_t o) {
  const int64_t th = (h + 1) / 2, tw = (width + 1) / 2, tiles = th * tw;
  // Written whole by the transform: not zeroed first (16·O·C floats, 16 MiB for 512 channels).
  const std::unique_ptr<float[]> u = std::make_unique_for_overwrite<float[]>(size_t(16 * o * c));
  transform_weights(w, o, c, u.get());
  // Samples in parallel when there are enough (each with its own V and M; the GEMMs then run on
  // one thread), otherwise one after the other with threaded GEMMs.
  const int threads = num_threads();
  const int64_t cost = n >= threads ? 16 * o * c * tiles : 0;
  struct Scratch {
    std::vector<float> v, m, pad, full;
  };
  std::vector<Scratch> scratch(static_cast<size_t>(threads));
  std::vector<char> finite(static_cast<size_t>(threads), 1);
  parallel_chunks(n, cost, [&](int64_t slot, int64_t b, int64_t e) {
    Scratch& s = scratch[size_t(slot)];
    s.v.resize(size_t(16 * c * tiles));
    s.m.resize(size_t(16 * o * tiles));
    s.pad.resize(size_t((2 * th + 2) * (2 * tw + 2)));
    s.full.resize(size_t(4 * tiles));
    for (int64_t i = b; i < e; ++i) {
      transform_input(x + i * c * h * width, c, h, width, th, tw, s.pad.data(), s.v.data());
      for (int xi = 0; xi < 16; ++xi)
        gemm(o, tiles, c, u.get() + xi * o * c, c, 1, s.v.data() + xi * c * tiles, tiles, 1,
             s.m.data() + xi * o * tiles, tiles, 1, false);
      if (!transform_output(s.m.data(), o, h, width, th, tw, s.full.data(), out + i * o * h * width))
        finite[size_t(slot)] = 0;
    }
  });
  return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

}  // namespace bcos::cpu
