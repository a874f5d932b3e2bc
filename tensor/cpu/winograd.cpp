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

// U [16, O, C]: G g Gᵀ for every kernel g = w[o, c]. Sixteen kernels at a time are copied into
// tap-major order first, so the transform is a vector loop over kernels and each of the 16
// outputs a contiguous store (vectorising over kernels in place gathered every tap at stride 9:
// 4.8 ms instead of 0.9 for 512 x 512 kernels).
void transform_weights(const float* w, int64_t o, int64_t c, float* u) {
  const int64_t oc = o * c;
  constexpr int64_t kLanes = 16;
  parallel_for((oc + kLanes - 1) / kLanes, 64 * kLanes, [&](int64_t b, int64_t e) {
    for (int64_t block = b; block < e; ++block) {
      const int64_t k0 = block * kLanes, len = std::min(kLanes, oc - k0);
      float g[9][kLanes] = {};
      for (int64_t l = 0; l < len; ++l)
        for (int tap = 0; tap < 9; ++tap) g[tap][l] = w[(k0 + l) * 9 + tap];
      float r[16][kLanes];
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        float t[4][3];  // G g
        for (int j = 0; j < 3; ++j) {
          t[0][j] = g[j][l];
          t[1][j] = 0.5f * (g[j][l] + g[3 + j][l] + g[6 + j][l]);
          t[2][j] = 0.5f * (g[j][l] - g[3 + j][l] + g[6 + j][l]);
          t[3][j] = g[6 + j][l];
        }
        for (int i = 0; i < 4; ++i) {  // (G g) Gᵀ
          r[i * 4 + 0][l] = t[i][0];
          r[i * 4 + 1][l] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
          r[i * 4 + 2][l] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
          r[i * 4 + 3][l] = t[i][2];
        }
      }
      for (int xi = 0; xi < 16; ++xi) std::copy_n(r[xi], len, u + xi * oc + k0);
    }
  });
}

// Bᵀ d B of the 4 x 4 tiles in tile rows [ty0, ty1) of one input plane [H, W]: tile (ty, tx)
// goes to v[ξ·stride + (ty - ty0)·tw + tx] for the 16 transformed positions ξ. `pad` is scratch
// for one bordered plane, (2 th + 2) x (2 tw + 2) floats whose border is zero (only the rows of
// the interior these tiles read are written here).
void transform_input_rows(const float* img, int64_t h, int64_t w, int64_t tw, int64_t ty0, int64_t ty1, float* pad,
                          float* v, int64_t stride) {
  const int64_t pw = 2 * tw + 2;
  for (int64_t y = std::max<int64_t>(0, 2 * ty0 - 1); y < std::min(h, 2 * ty1 + 1); ++y)
    std::memcpy(pad + (y + 1) * pw + 1, img + y * w, size_t(w) * sizeof(float));
  for (int64_t ty = ty0; ty < ty1; ++ty) {
    const float* r0 = pad + 2 * ty * pw;
    const float *r1 = r0 + pw, *r2 = r1 + pw, *r3 = r2 + pw;
    float* dst = v + (ty - ty0) * tw;
#pragma omp simd
    for (int64_t tx = 0; tx < tw; ++tx) {
      const int64_t q = 2 * tx;
      float t[4][4];  // Bᵀ d, column by column
      for (int j = 0; j < 4; ++j) {
        const float d0 = r0[q + j], d1 = r1[q + j], d2 = r2[q + j], d3 = r3[q + j];
        t[0][j] = d0 - d2, t[1][j] = d1 + d2, t[2][j] = d2 - d1, t[3][j] = d1 - d3;
      }
      for (int i = 0; i < 4; ++i) {  // (Bᵀ d) B
        dst[(i * 4 + 0) * stride + tx] = t[i][0] - t[i][2];
        dst[(i * 4 + 1) * stride + tx] = t[i][1] + t[i][2];
        dst[(i * 4 + 2) * stride + tx] = t[i][2] - t[i][1];
        dst[(i * 4 + 3) * stride + tx] = t[i][1] - t[i][3];
      }
    }
  }
}

// Output rows [2 ty0, 2 ty1) of one plane [H, W] from the transformed products
// m[ξ·stride + (ty - ty0)·tw + tx]: Aᵀ m A of every tile. `full` is scratch for one plane of
// whole tiles (2 th x 2 tw), used when H or W is odd. False where an output is not finite.
bool transform_output_rows(const float* m, int64_t stride, int64_t h, int64_t w, int64_t th, int64_t tw, int64_t ty0,
                           int64_t ty1, float* full, float* out) {
  const int64_t fw = 2 * tw;
  const bool even = h == 2 * th && w == 2 * tw;
  float* img = even ? out : full;
  float probe = 0.0f;  // Σ 0 · y: NaN once any y is infinite or NaN, in the vectorised loop
  for (int64_t ty = ty0; ty < ty1; ++ty) {
    const float* src = m + (ty - ty0) * tw;
    float* y0 = img + 2 * ty * fw;
    float* y1 = y0 + fw;
#pragma omp simd reduction(+ : probe)
    for (int64_t tx = 0; tx < tw; ++tx) {
      float v[4][4];
      for (int i = 0; i < 16; ++i) v[i / 4][i % 4] = src[i * stride + tx];
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
    for (int64_t y = 2 * ty0; y < std::min(h, 2 * ty1); ++y)
      std::memcpy(out + y * w, full + y * fw, size_t(w) * sizeof(float));
  return probe == probe;
}

}  // namespace

bool winograd_conv3x3(const float* x, const float* w, float* out, int64_t n, int64_t c, int64_t h, int64_t width,
                      int64_t o, int64_t block_tiles) {
  const int64_t th = (h + 1) / 2, tw = (width + 1) / 2, hw = h * width;
  if (block_tiles <= 0) block_tiles = 65536 / (c + o);
  const int64_t block_rows = std::clamp<int64_t>(block_tiles / tw, 1, th), blocks = (th + block_rows - 1) / block_rows;
  const int64_t bt = block_rows * tw;
  // Written whole by the transform: not zeroed first (16·O·C floats, 16 MiB for 512 channels).
  const std::unique_ptr<float[]> u = std::make_unique_for_overwrite<float[]>(size_t(16 * o * c));
  transform_weights(w, o, c, u.get());
  // Blocks of tile rows (of every sample) in parallel, each with its own V [16, C, bt] and
  // M [16, O, bt]; its GEMMs run on the block's thread. Scratch per thread, allocated here on
  // the calling thread (tensor/cpu/conv.cpp: scratch_slots).
  const int64_t threads = num_threads(), units = n * blocks;
  const int64_t cost = n >= threads ? 16 * o * c * bt : 0;
  const int64_t slots = chunk_count(units, cost);
  struct Scratch {
    std::vector<float> pad, full;
    std::unique_ptr<float[]> v, m;
  };
  std::vector<Scratch> scratch(static_cast<size_t>(slots));
  for (Scratch& s : scratch) {
    s.pad.assign(size_t((2 * th + 2) * (2 * tw + 2)), 0.0f);
    s.full.resize(size_t(4 * th * tw));
    s.v = std::make_unique_for_overwrite<float[]>(size_t(16 * c * bt));
    s.m = std::make_unique_for_overwrite<float[]>(size_t(16 * o * bt));
  }
  std::vector<char> finite(static_cast<size_t>(slots), 1);
  parallel_chunks(units, cost, [&](int64_t slot, int64_t b, int64_t e) {
    Scratch& s = scratch[size_t(slot)];
    for (int64_t unit = b; unit < e; ++unit) {
      const int64_t i = unit / blocks, ty0 = unit % blocks * block_rows, ty1 = std::min(th, ty0 + block_rows);
      const int64_t cols = (ty1 - ty0) * tw;
      for (int64_t ch = 0; ch < c; ++ch)
        transform_input_rows(x + (i * c + ch) * hw, h, width, tw, ty0, ty1, s.pad.data(), s.v.get() + ch * cols,
                             c * cols);
      for (int xi = 0; xi < 16; ++xi)
        gemm(o, cols, c, u.get() + xi * o * c, c, 1, s.v.get() + xi * c * cols, cols, 1, s.m.get() + xi * o * cols,
             cols, 1, false);
      for (int64_t oc = 0; oc < o; ++oc)
        if (!transform_output_rows(s.m.get() + oc * cols, o * cols, h, width, th, tw, ty0, ty1, s.full.data(),
                                   out + (i * o + oc) * hw))
          finite[size_t(slot)] = 0;
    }
  });
  return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

}  // namespace bcos::cpu
