// 2-D convolution on the CPU as im2col + GEMM (tensor/cpu/gemm.h), per sample and group:
//   forward          out[n, g]  = W[g] · col(x[n, g])              // [Og, K] x [K, HoWo]
//   backward input   x_grad[n,g] = col2im(W[g]^T · grad_out[n, g])
//   backward weight  W_grad[g] += grad_out[n, g] · col(x[n, g])^T
// with K = Cg·kh·kw. A 1x1 stride-1 unpadded conv skips im2col (the input already is the
// column matrix). With at least as many samples as threads, samples run in parallel with a
// column buffer per thread; otherwise the GEMM threads each product.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "tensor/copy.h"
#include "tensor/cpu/conv_bf16.h"
#include "tensor/cpu/conv_columns.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/kernels.h"
#include "tensor/cpu/winograd.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {

// Runs fn(sample, slot) for every sample: in parallel when there are enough samples. `slot`
// (< num_threads()) picks the caller's scratch buffers.
template <class F>
void over_samples(int64_t n, int64_t cost_per_sample, F&& fn) {
  if (n < num_threads()) cost_per_sample = 0;  // too few samples: let the GEMM thread instead
  parallel_chunks(n, cost_per_sample, [&](int64_t slot, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) fn(i, int(slot));
  });
}

// float32 3 x 3 stride-1 pad-1 convolutions run as Winograd F(2x2, 3x3) (tensor/cpu/winograd.h)
// where it measured faster than im2col + GEMM here (2.25x fewer multiplies, against the cost of
// the transforms), with samples for every thread (forward, 2 threads, direct / Winograd GFLOP/s):
// 64 channels on 56 x 56 (360 / 395), 128 on 28 x 28 (355 / 420), 192-256 on 14 x 14 (300 / 330,
// 258 / 321). It loses on 64 ch 28 x 28 (334 / 260), 128 ch 14 x 14 (274 / 250), 512 ch 7 x 7
// (230 / 150) and under 64 channels (4-5x slower).
bool winograd_wins(const ConvShape& s, const Conv2dParams& p) {
  const bool shape = s.kh == 3 && s.kw == 3 && s.groups == 1 && p.stride[0] == 1 && p.stride[1] == 1 &&
                     p.padding[0] == 1 && p.padding[1] == 1 && p.dilation[0] == 1 && p.dilation[1] == 1;
  const int64_t channels = std::min(s.c, s.o), area = s.h * s.w;
  return shape && !bf16_product(s.o, s.ho * s.wo, s.k) && bf16_operands_mode() != Bf16Operands::unrounded &&
         s.n >= num_threads() &&
         ((channels >= 64 && area >= 56 * 56) || (channels >= 128 && area >= 28 * 28) ||
          (channels >= 192 && area >= 14 * 14));
}

// Each pass forms one product over all samples side by side when they have at most this many
// output positions together (small maps: ResNet's 7 x 7 and 14 x 14 stages at small batches):
// per-sample products there are only a few tiles wide and each runs on one thread.
constexpr int64_t kOneProductColumns = 1024;

// Stride-1 "same" convolutions (odd k x k, pad (k-1)/2) on maps of 16 x 16 or more, with a sample
// for every thread, never build their column matrix: the GEMM reads its rows straight from a
// zero-padded copy of the input (gemm_offset_rows). That copy has rows of R = W + pad floats,
// one run of pad zeros serving as the right border of a row and the left border of the next, so
// tap (i, j) of output (y, x) sits at the constant offset i·R + j from y·R + x. The product runs
// over that wider grid (R columns per output row; the last pad are discarded when copying out).
// im2col wrote and re-read nine copies of the input (CIFAR ResNet: 24 % of a B-cos explanation).
// Stride 2 works the same way on the four phases of the padded image (even / odd rows x even /
// odd columns, each with its own zero borders): tap (i, j) of output (y, x) reads phase
// (i mod 2, j mod 2) at (y + i/2, x + j/2), again a constant offset.
bool implicit_columns_fit(const ConvShape& s, const Conv2dParams& p, int64_t min_positions) {
  const int64_t stride = p.stride[0];
  return s.kh == s.kw && s.kh % 2 == 1 && s.kh > 1 && (stride == 1 || stride == 2) && p.stride[1] == stride &&
         p.dilation[0] == 1 && p.dilation[1] == 1 && p.padding[0] == (s.kh - 1) / 2 &&
         p.padding[1] == (s.kw - 1) / 2 && s.ho * s.wo >= min_positions && s.n >= num_threads();
}

bool implicit_columns_win(const ConvShape& s, const Conv2dParams& p) {
  return implicit_columns_fit(s, p, 256) &&
         !bf16_product(s.og, s.ho * s.wo, s.k) &&  // with bf16 products on, im2col feeds the bf16 GEMM instead
         bf16_operands_mode() != Bf16Operands::unrounded;  // its products would not round their operands
}

// float32 stride-2 "same" convolutions build their column blocks from the phase images
// (columns_from_phases) where they still take im2col.
template <class T>
bool columns_from_phases_fit(const ConvShape& s, const Conv2dParams& p) {
  return std::is_same_v<T, float> && p.stride[0] == 2 && implicit_columns_fit(s, p, 0);
}

// One block of a sample's columns (output rows [oh0, oh1) of x [Cg, H, W]): copied from the
// phase images where the pass filled them (`image`, float32 only), otherwise im2col.
template <class T>
void column_block(const T* x, const ConvShape& s, const Conv2dParams& p, const PaddedImage& im, const float* image,
                  T* col, int64_t ld, int64_t oh0, int64_t oh1) {
  if constexpr (std::is_same_v<T, float>)
    if (image) return columns_from_phases(image, im, s, col, ld, oh0, oh1);
  im2col(x, s, p, col, ld, oh0, oh1);
}

// inside it come from the workers' malloc arenas and raised ResNet-20 training's peak memory by
// 15 %. zeroed_slots: `count` zeros per slot (the padded image's borders, never written, stay
// zero). scratch_slots: `count` uninitialised values per slot, for buffers a pass writes whole
// before reading (zeroing them was 3 % of a ResNet-18 training step).
template <class T = float>
std::vector<std::vector<T>> zeroed_slots(int64_t count) {
  return std::vector<std::vector<T>>(size_t(num_threads()), std::vector<T>(size_t(count), T(0)));
}

template <class T>
std::vector<std::unique_ptr<T[]>> scratch_slots(int64_t slots, int64_t count) {
  std::vector<std::unique_ptr<T[]>> bufs(static_cast<size_t>(std::max<int64_t>(slots, 0)));
  for (auto& b : bufs) b = std::make_unique_for_overwrite<T[]>(size_t(count));
  return bufs;
}

// out[j] += a[j] for the extra threads' weight-gradient accumulators.
template <class T>
void add_accumulators(const std::vector<std::unique_ptr<T[]>>& acc, int64_t count, T* out) {
  for (const auto& a : acc)
    for (int64_t j = 0; j < count; ++j) out[j] += a[j];
}

// Autocast's bf16 kernels (conv_bf16.h) take the implicit column matrix's products where the
// CPU has them, down to ResNet's 7 x 7 maps and also where the bf16 GEMM would take the product
// (it needs im2col): measured beside im2col + bf16 GEMM, 2 threads, bf16 autocast, ResNet-18
// batch 8 training 27 -> 30 img/s, inference 75 -> 82; ResNet-20 training +8 % (its 64-channel
// 8 x 8 stage); 7 x 7 maps level with 8 x 8 and less memory. The forward's pairs of channels need
// an even Cg. The weight gradient keeps dot_product_weight_gradient_wins' shapes (more out
// channels were no faster in bf16). The bf16 inference option (set_cpu_bf16) takes them for the
// forward products it rounds anyway (both sides 64 or more): ResNet-18 inference 92 -> 103 img/s.
bool bf16_implicit_fits(const ConvShape& s, const Conv2dParams& p, bool paired) {
  return conv_bf16_kernels_available() && implicit_columns_fit(s, p, 49) && (!paired || s.cg % 2 == 0);
}

bool bf16_implicit_wins(const ConvShape& s, const Conv2dParams& p, bool paired) {
  return p.operands == DType::bf16 && bf16_implicit_fits(s, p, paired);
}

// out [N, O, Ho, Wo] = conv(x [N, C, H, W], w [O, C/groups, k, k]) (+ bias) as above; false where
// the CPU has no kernel for it (nothing done). bf16: autocast's kernel on the paired bf16 image,
// the weight's pairs packed once per group.
bool forward_implicit_columns(const float* px, const float* pw, const float* pb, float* po, const ConvShape& s,
                              int64_t stride, bool bf16 = false) {
  if (!bf16 && !gemm_offset_rows(0, 0, 0, nullptr, 0, nullptr, nullptr, nullptr, 0)) return false;
  const PaddedImage im = padded_image(s, stride);
  const int64_t in_hw = s.h * s.w, out_hw = s.ho * s.wo;
  const int64_t pairs = bf16 ? s.k / 2 : 0, taps = s.kh * s.kw, panels = (s.og + 7) / 8;
  std::vector<int64_t> first(static_cast<size_t>(pairs)), second(first.size()), pair_rows(first.size());
  for (int64_t pr = 0; pr < pairs; ++pr) {  // pair (cp, tap): channels 2cp and 2cp + 1 at that tap
    first[size_t(pr)] = (pr / taps) * 2 * taps + pr % taps, second[size_t(pr)] = first[size_t(pr)] + taps;
    const int64_t at = im.offsets[size_t(first[size_t(pr)])];
    pair_rows[size_t(pr)] = bf16_image_index(s, im, true, at / im.plane, at % im.plane);
  }
  std::vector<uint32_t> packed(size_t(s.groups * panels * pairs * 8));
  for (int64_t g = 0; g < s.groups && bf16; ++g)
    pack_pairs_bf16(s.og, pw + g * s.og * s.k, s.k, pairs, first.data(), second.data(),
                    packed.data() + g * panels * pairs * 8);
  // The paired image's partial last panel reads up to 64 values past its last column (conv_bf16.h).
  std::vector<std::vector<uint16_t>> images16 = zeroed_slots<uint16_t>(bf16 ? im.floats + 32 : 0);
  std::vector<std::vector<float>> images = zeroed_slots(bf16 ? 0 : im.floats),
                                  products = zeroed_slots(s.og * im.wide_cols);
  over_samples(s.n, s.o * s.k * out_hw, [&](int64_t n, int slot) {
    float* product = products[size_t(slot)].data();
    for (int64_t g = 0; g < s.groups; ++g) {
      const float* xg = px + (n * s.c + g * s.cg) * in_hw;
      if (bf16) {
        uint16_t* image = images16[size_t(slot)].data();
        fill_padded_bf16(xg, s, im, true, image);
        gemm_offset_pairs_bf16(s.og, im.wide_cols, pairs, packed.data() + g * panels * pairs * 8, image,
                               pair_rows.data(), product, im.wide_cols);
      } else {
        float* image = images[size_t(slot)].data();
        fill_padded(xg, s, im, image);
        gemm_offset_rows(s.og, im.wide_cols, s.k, pw + g * s.og * s.k, s.k, image, im.offsets.data(), product,
                         im.wide_cols);
      }
      float* o = po + (n * s.o + g * s.og) * out_hw;
      for (int64_t oc = 0; oc < s.og; ++oc) {
        const float bias = pb ? pb[g * s.og + oc] : 0.0f;
        for (int64_t y = 0; y < s.ho; ++y) {
          const float* src = product + oc * im.wide_cols + y * im.row;
          float* dst = o + oc * out_hw + y * s.wo;
          for (int64_t x = 0; x < s.wo; ++x) dst[x] = src[x] + bias;
        }
      }
    }
  });
  return true;
}

// Where the dot products beat im2col + GEMM for the weight gradient (measured, GFLOP/s, batch 8-128):
// few out channels, whose product with the column matrix the GEMM handled poorly (16 ch 32 x 32
// 118 -> 214, 112 x 112 139 -> 187; 32 ch 32 x 32 215 -> 239); from 32 channels on larger maps and
// 48 on, im2col + GEMM wins (32 ch 112 x 112 256 vs 206, 64 ch 56 x 56 306 vs 225).
bool dot_product_weight_gradient_wins(const ConvShape& s) {
  return s.og <= 16 || (s.og <= 32 && s.h * s.w <= 32 * 32);
}

// bf16: autocast's kernel on bf16 copies of the image and the gradient.
bool backward_weight_implicit_columns(const float* pg, const float* px, float* out, const ConvShape& s,
                                      int64_t stride, bool bf16 = false) {
  if (!bf16 && !gemm_nt_offset_rows(0, 0, 0, nullptr, 0, nullptr, nullptr, nullptr, 0, false)) return false;
  const PaddedImage im = padded_image(s, stride);
  const int64_t in_hw = s.h * s.w, out_hw = s.ho * s.wo, cost = s.o * s.k * out_hw;
  const int64_t slots = chunk_count(s.n, cost);
  // float32 or bf16 copies (one pair per thread); their zero borders are never written.
  const int64_t image_size = bf16 ? 0 : im.floats, grad_size = bf16 ? 0 : s.og * im.wide_cols;
  std::vector<std::vector<float>> images = zeroed_slots(image_size), grads = zeroed_slots(grad_size);
  std::vector<std::vector<uint16_t>> images16 = zeroed_slots<uint16_t>(bf16 ? im.floats : 0),
                                     grads16 = zeroed_slots<uint16_t>(bf16 ? s.og * im.wide_cols : 0);
  // The extra threads' accumulators: each thread's first product overwrites its own.
  const std::vector<std::unique_ptr<float[]>> acc = scratch_slots<float>(slots - 1, s.o * s.k);
  parallel_chunks(s.n, cost, [&](int64_t slot, int64_t n0, int64_t n1) {
    float* dst = slot == 0 ? out : acc[size_t(slot - 1)].get();
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t g = 0; g < s.groups; ++g) {
        const float* xg = px + (n * s.c + g * s.cg) * in_hw;
        const float* go = pg + (n * s.o + g * s.og) * out_hw;
        if (bf16) {
          uint16_t* image = images16[size_t(slot)].data();
          uint16_t* grad = grads16[size_t(slot)].data();
          fill_padded_bf16(xg, s, im, false, image);
          for (int64_t oc = 0; oc < s.og; ++oc)
            for (int64_t y = 0; y < s.ho; ++y)
              round_to_bf16_row(go + oc * out_hw + y * s.wo, s.wo, grad + oc * im.wide_cols + y * im.row);
          gemm_nt_offset_rows_bf16(s.og, s.k, im.wide_cols, grad, im.wide_cols, image, im.offsets.data(),
                                   dst + g * s.og * s.k, s.k, n > n0);
          continue;
        }
        float* image = images[size_t(slot)].data();
        float* grad = grads[size_t(slot)].data();
        fill_padded(xg, s, im, image);
        for (int64_t oc = 0; oc < s.og; ++oc)
          for (int64_t y = 0; y < s.ho; ++y)
            std::memcpy(grad + oc * im.wide_cols + y * im.row, go + oc * out_hw + y * s.wo,
                        size_t(s.wo) * sizeof(float));
        gemm_nt_offset_rows(s.og, s.k, im.wide_cols, grad, im.wide_cols, image, im.offsets.data(),
                            dst + g * s.og * s.k, s.k, n > n0);
      }
  });
  add_accumulators(acc, s.o * s.k, out);
  // The wide grid's discarded columns pair a zero gradient with image values from the next row,
  // so an infinite or NaN input put NaN (0 · Inf) into taps the convolution never reads. Only a
  // non-finite result can hold such a product: then the caller's exact path computes it again.
  return std::all_of(out, out + s.o * s.k, [](float v) { return std::isfinite(v); });
}

template <class T>
void forward_typed(const Tensor& x_in, const Tensor& w_in, const Tensor& bias, const Tensor& out,
                   const Conv2dParams& p) {
  Tensor x = raw_contiguous(x_in), w = raw_contiguous(w_in);
  ConvShape s = conv_shape(x, w, out, p);
  const int64_t hw = s.ho * s.wo;
  const T* px = x.data<T>();
  const T* pw = w.data<T>();
  T* po = out.data<T>();
  Tensor b = bias.defined() ? raw_contiguous(bias) : Tensor();
  const T* pb = b.defined() ? b.data<T>() : nullptr;
  if constexpr (std::is_same_v<T, float>) {
    if (winograd_wins(s, p) && winograd_conv3x3(px, pw, po, s.n, s.c, s.h, s.w, s.o)) {
      if (pb)
        parallel_for(s.n * s.o, hw, [&](int64_t b0, int64_t e0) {
          for (int64_t r = b0; r < e0; ++r)
            for (int64_t j = 0; j < hw; ++j) po[r * hw + j] += pb[r % s.o];
        });
      return;
    }
    if (implicit_columns_win(s, p) && forward_implicit_columns(px, pw, pb, po, s, p.stride[0])) return;
  }
  const int64_t block_rows = column_block_rows(s, int64_t(1) << 18);
  // Column buffers per thread, allocated on the calling thread and not zeroed (im2col writes all).
  const std::vector<std::unique_ptr<T[]>> cols =
      scratch_slots<T>(num_threads(), s.pointwise ? 0 : s.k * block_rows * s.wo);
  const bool phases = columns_from_phases_fit<T>(s, p);
  const PaddedImage im = phases ? padded_image(s, 2) : PaddedImage{};
  std::vector<std::vector<float>> images = zeroed_slots(phases ? im.floats : 0);
  over_samples(s.n, s.o * s.k * hw, [&](int64_t i, int slot) {
    T* col = cols[size_t(slot)].get();
    for (int64_t g = 0; g < s.groups; ++g) {
      const T* xg = px + (i * s.c + g * s.cg) * s.h * s.w;
      T* o = po + (i * s.o + g * s.og) * hw;
      if (s.pointwise) {
        gemm(s.og, hw, s.k, pw + g * s.og * s.k, s.k, 1, xg, hw, 1, o, hw, 1, false);
      } else {
        if constexpr (std::is_same_v<T, float>)
          if (phases) fill_padded(xg, s, im, images[size_t(slot)].data());
        for (int64_t oh0 = 0; oh0 < s.ho; oh0 += block_rows) {
          const int64_t oh1 = std::min(s.ho, oh0 + block_rows), n_cols = (oh1 - oh0) * s.wo;
          column_block(xg, s, p, im, phases ? images[size_t(slot)].data() : nullptr, col, n_cols, oh0, oh1);
          gemm(s.og, n_cols, s.k, pw + g * s.og * s.k, s.k, 1, col, n_cols, 1, o + oh0 * s.wo, hw, 1, false);
        }
      }
      if (pb)
        for (int64_t oc = 0; oc < s.og; ++oc)
          for (int64_t j = 0; j < hw; ++j) o[oc * hw + j] += pb[g * s.og + oc];
    }
  });
}

// A stride-1 convolution's input gradient is itself a stride-1 convolution: of grad_out with the
// kernel flipped in space and its in/out channels swapped, padded by (k - 1)·d - pad.
//   gx[c, y, x] = Σ_o Σ_ij gout[o, y + i'·d - pad', x + j'·d - pad'] · W[o, c, k-1-i', k-1-j']
// Run as a forward pass (im2col + GEMM) it copies columns instead of scattering-adding nine
// shifted copies into gx (col2im), about half the memory traffic: CIFAR ResNet's 3 x 3 bwd_in
// 16 channels 145 -> 187 GFLOP/s, 64 channels at 8 x 8 173 -> 197. Not used where all samples
// form one product (small maps, below), which is faster still.
// Its parameters (*q), false where it does not apply.
bool input_gradient_as_forward(const ConvShape& s, const Conv2dParams& p, Conv2dParams* q) {
  *q = p;
  for (int d = 0; d < 2; ++d) {
    const int64_t k = d == 0 ? s.kh : s.kw;
    q->padding[d] = (k - 1) * p.dilation[d] - p.padding[d];
    if (p.stride[d] != 1 || q->padding[d] < 0) return false;
  }
  return !s.pointwise;
}

// Where all samples form one product (small maps).
bool input_gradient_as_one_product(const ConvShape& s) {
  const int64_t hw = s.ho * s.wo;
  return s.n * hw <= kOneProductColumns && s.n > 1 && hw > 0;
}

// W' [C, Og, kh, kw]: W'[g·Cg + c, o, i, j] = W[g·Og + o, c, kh-1-i, kw-1-j]
template <class T>
Tensor flipped_kernel(const Tensor& w, const ConvShape& s) {
  Tensor flipped = empty({s.c, s.og, s.kh, s.kw}, {w.dtype(), w.device()});
  const T* pw = w.data<T>();
  T* pf = flipped.data<T>();
  const int64_t taps = s.kh * s.kw;
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t o = 0; o < s.og; ++o)
      for (int64_t c = 0; c < s.cg; ++c) {
        const T* src = pw + ((g * s.og + o) * s.cg + c) * taps;
        T* dst = pf + ((g * s.cg + c) * s.og + o) * taps;
        for (int64_t t = 0; t < taps; ++t) dst[t] = src[taps - 1 - t];
      }
  return flipped;
}

template <class T>
bool backward_input_as_forward(const Tensor& gout, const Tensor& w, const Tensor& gx, const ConvShape& s,
                               const Conv2dParams& p) {
  Conv2dParams q;
  if (!input_gradient_as_forward(s, p, &q)) return false;
  forward_typed<T>(gout, flipped_kernel<T>(w, s), Tensor(), gx, q);
  return true;
}

template <class T>
void backward_input_typed(const Tensor& gout_in, const Tensor& w_in, const Tensor& gx,
                          const Conv2dParams& p) {
  Tensor gout = raw_contiguous(gout_in), w = raw_contiguous(w_in);
  ConvShape s = conv_shape(gx, w, gout, p);
  const int64_t hw = s.ho * s.wo;
  // Where the flipped convolution runs as Winograd, that beats the one product (3 x 3, pad 1: the
  // same shape with C and O swapped).
  const bool one_product = input_gradient_as_one_product(s) && !(std::is_same_v<T, float> && winograd_wins(s, p));
  if (!one_product && backward_input_as_forward<T>(gout, w, gx, s, p)) return;
  const T* pg = gout.data<T>();
  const T* pw = w.data<T>();
  T* px = gx.data<T>();
  if (one_product) {
    // cols [K, N*HoWo] = W[g]^T · [grad_out[0, g] | grad_out[1, g] | ...], then col2im per sample.
    const int64_t ld = s.n * hw;
    // Not zeroed: the copies fill grads, the product overwrites cols.
    const std::unique_ptr<T[]> grads_buf = std::make_unique_for_overwrite<T[]>(size_t(s.og * ld));
    const std::unique_ptr<T[]> cols_buf = std::make_unique_for_overwrite<T[]>(size_t(s.k * ld));
    T *grads = grads_buf.get(), *cols = cols_buf.get();
    for (int64_t g = 0; g < s.groups; ++g) {
      parallel_for(s.n, s.og * hw, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          for (int64_t r = 0; r < s.og; ++r)
            std::copy_n(pg + ((i * s.o + g * s.og) + r) * hw, hw, grads + r * ld + i * hw);
      });
      gemm(s.k, ld, s.og, pw + g * s.og * s.k, 1, s.k, grads, ld, 1, cols, ld, 1, false);
      parallel_for(s.n, s.k * hw, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          T* xg = px + (i * s.c + g * s.cg) * s.h * s.w;
          if (s.pointwise) {
            for (int64_t r = 0; r < s.k; ++r) std::copy_n(cols + r * ld + i * hw, hw, xg + r * hw);
          } else {
            std::fill(xg, xg + s.cg * s.h * s.w, T(0));
            col2im(cols + i * hw, s, p, xg, ld);
          }
        }
      });
    }
    return;
  }
  // Per-thread columns, allocated on the calling thread, not zeroed (the product overwrites them).
  const std::vector<std::unique_ptr<T[]>> cols = scratch_slots<T>(num_threads(), s.pointwise ? 0 : s.k * hw);
  const bool phases = columns_from_phases_fit<T>(s, p);
  const PaddedImage im = phases ? padded_image(s, 2) : PaddedImage{};
  const std::vector<std::unique_ptr<float[]>> images = scratch_slots<float>(num_threads(), phases ? im.floats : 0);
  over_samples(s.n, s.o * s.k * hw, [&](int64_t i, int slot) {
    T* col = cols[size_t(slot)].get();
    for (int64_t g = 0; g < s.groups; ++g) {
      T* xg = px + (i * s.c + g * s.cg) * s.h * s.w;
      // W[g]^T [K, Og] (read transposed in place) times grad_out [Og, HoWo]
      const T* wg = pw + g * s.og * s.k;
      const T* go = pg + (i * s.o + g * s.og) * hw;
      if (s.pointwise) {
        gemm(s.k, hw, s.og, wg, 1, s.k, go, hw, 1, xg, hw, 1, false);
      } else {
        gemm(s.k, hw, s.og, wg, 1, s.k, go, hw, 1, col, hw, 1, false);
        if constexpr (std::is_same_v<T, float>)
          if (phases) {
            col2im_through_phases(col, hw, s, im, images[size_t(slot)].get(), xg);
            continue;
          }
        std::fill(xg, xg + s.cg * s.h * s.w, T(0));
        col2im(col, s, p, xg, hw);
      }
    }
  });
}

// grad_W[g] = Σ_n grad_out[n, g] · col(x[n, g])^T. Small feature maps give a short inner
// dimension (Ho*Wo = 49 in ResNet's last stage), and then the GEMM spends its time re-reading and
// re-writing grad_W once per sample; so samples are batched side by side into longer products,
// [Og, G*HoWo] x [G*HoWo, K]. When all samples together have at most kOneProductColumns
// positions they form a single product that the GEMM threads by itself (ResNet-50's layer4 at
// batch 8: 149 -> 232 GFLOP/s); otherwise G makes the inner dimension ~256, chunks of G samples
// run in parallel with a gradient accumulator per thread, and their count is a multiple of the
// thread count so no thread waits on a short last chunk.
template <class T>
void backward_weight_typed(const Tensor& gout_in, const Tensor& x_in, const Tensor& gw,
                           const Conv2dParams& p) {
  Tensor gout = raw_contiguous(gout_in), x = raw_contiguous(x_in);
  ConvShape s = conv_shape(x, gw, gout, p);
  const int64_t hw = s.ho * s.wo;
  T* out = gw.data<T>();
  if (s.n == 0 || hw == 0) return std::fill(out, out + gw.numel(), T(0));
  if constexpr (std::is_same_v<T, float>) {
    if (implicit_columns_win(s, p) && dot_product_weight_gradient_wins(s) &&
        backward_weight_implicit_columns(gout.data<T>(), x.data<T>(), out, s, p.stride[0]))
      return;
  }
  int64_t group = s.n;
  if (s.n * hw > kOneProductColumns) {
    const int64_t threads = num_threads();
    const int64_t g0 = std::max<int64_t>(1, std::min<int64_t>(256 / hw, s.n));
    const int64_t chunks = std::min(s.n, ((s.n + g0 - 1) / g0 + threads - 1) / threads * threads);
    group = (s.n + chunks - 1) / chunks;
  }
  const T* pg = gout.data<T>();
  const T* px = x.data<T>();
  const int64_t chunks = (s.n + group - 1) / group;
  const int64_t slots = chunk_count(chunks, s.o * s.k * hw * group);
  // One weight-gradient accumulator per extra thread, summed at the end, and per-thread scratch:
  // allocated here on the calling thread, and not zeroed (each thread's first product overwrites
  // its accumulator; im2col and the copies write every entry they leave for the GEMM). Zeroing
  // them was 2 % of a ResNet-18 training step (9 MiB per layer4 accumulator).
  const int64_t block_rows = column_block_rows(s, int64_t(1) << 20);
  const std::vector<std::unique_ptr<T[]>> acc = scratch_slots<T>(slots - 1, s.o * s.k);
  const std::vector<std::unique_ptr<T[]>> col_bufs =
      scratch_slots<T>(slots, group == 1 ? s.k * block_rows * s.wo : s.k * hw * group);
  const std::vector<std::unique_ptr<T[]>> grad_bufs = scratch_slots<T>(slots, group == 1 ? 0 : s.og * hw * group);
  const bool phases = group == 1 && columns_from_phases_fit<T>(s, p);
  const PaddedImage im = phases ? padded_image(s, 2) : PaddedImage{};
  std::vector<std::vector<float>> images = zeroed_slots(phases ? im.floats : 0);
  parallel_chunks(chunks, s.o * s.k * hw * group, [&](int64_t slot, int64_t c0, int64_t c1) {
    T* cols = col_bufs[size_t(slot)].get();
    T* grads = grad_bufs[size_t(slot)].get();
    T* dst = slot == 0 ? out : acc[size_t(slot - 1)].get();
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      const int64_t n0 = chunk * group, g_n = std::min(group, s.n - n0), ld = g_n * hw;
      for (int64_t g = 0; g < s.groups; ++g) {
        T* dg = dst + g * s.og * s.k;
        if (group == 1) {
          // One sample: grad_out [Og, HoWo] is read in place, and the column matrix is built and
          // consumed a block of output rows at a time (see column_block_rows).
          const T* xg = px + (n0 * s.c + g * s.cg) * s.h * s.w;
          const T* go = pg + (n0 * s.o + g * s.og) * hw;
          if (s.pointwise) {
            gemm(s.og, s.k, hw, go, hw, 1, xg, 1, hw, dg, s.k, 1, chunk > c0);
            continue;
          }
          if constexpr (std::is_same_v<T, float>)
            if (phases) fill_padded(xg, s, im, images[size_t(slot)].data());
          for (int64_t oh0 = 0; oh0 < s.ho; oh0 += block_rows) {
            const int64_t oh1 = std::min(s.ho, oh0 + block_rows), n_cols = (oh1 - oh0) * s.wo;
            column_block(xg, s, p, im, phases ? images[size_t(slot)].data() : nullptr, cols, n_cols, oh0, oh1);
            gemm(s.og, s.k, n_cols, go + oh0 * s.wo, hw, 1, cols, 1, n_cols, dg, s.k, 1, chunk > c0 || oh0 > 0);
          }
          continue;
        }
        parallel_for(g_n, s.k * hw, [&](int64_t j0, int64_t j1) {  // lay samples side by side
          for (int64_t j = j0; j < j1; ++j) {
            const int64_t i = n0 + j;
            const T* xg = px + (i * s.c + g * s.cg) * s.h * s.w;
            if (s.pointwise) {
              for (int64_t r = 0; r < s.k; ++r) std::copy_n(xg + r * hw, hw, cols + r * ld + j * hw);
            } else {
              im2col(xg, s, p, cols + j * hw, ld);
            }
            const T* go = pg + (i * s.o + g * s.og) * hw;
            for (int64_t r = 0; r < s.og; ++r) std::copy_n(go + r * hw, hw, grads + r * ld + j * hw);
          }
        });
        // grad_out [Og, G*HoWo] times cols^T [G*HoWo, K] (read transposed in place)
        gemm(s.og, s.k, ld, grads, ld, 1, cols, 1, ld, dg, s.k, 1, chunk > c0);
      }
    }
  });
  add_accumulators(acc, s.o * s.k, out);
}

// Autocast: where the bf16 GEMM takes a pass's main product, the operands stay float32 and are
// rounded as they are packed (gemm() rounds copies for any smaller product; Winograd and the
// implicit column matrix step aside); otherwise both are rounded first (gemm.h: rounded_operand)
// and the float32 paths run unchanged. Rounding whole activations first was 9 % of a ResNet-50
// training step under bf16 autocast. Before either, on a CPU with AVX-512 BF16 (not AMX), the
// implicit column matrix's bf16 kernels (conv_bf16.h; bf16_implicit_wins) take what they can,
// rounding in the copies they make: the forward, the input gradient as a forward pass, the weight
// gradient's dot products.
bool autocast_operands(const Tensor& t, const Conv2dParams& p) {
  return p.operands != DType::f32 && t.dtype() == DType::f32;
}

Bf16Operands rounding_of(const Conv2dParams& p, bool main_product_fits) {
  if (p.operands != DType::bf16) return Bf16Operands::off;
  return main_product_fits ? Bf16Operands::unrounded : Bf16Operands::rounded;
}

// The forward on the implicit column matrix's bf16 kernels.
void forward_bf16(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, const ConvShape& s,
                  const Conv2dParams& p) {
  const Tensor xc = raw_contiguous(x), wc = raw_contiguous(w), bc = bias.defined() ? raw_contiguous(bias) : Tensor();
  forward_implicit_columns(xc.data<float>(), wc.data<float>(), bc.defined() ? bc.data<float>() : nullptr,
                           out.data<float>(), s, p.stride[0], true);
}

}  // namespace

namespace {
// float16 / bfloat16 tensors: their values widened to float32 (exactly), convolved as autocast
// does (products of 16-bit values summed in float32), the result rounded once into `out`.
Tensor widened(const Tensor& t) {
  return t.defined() && is_half_float(t.dtype()) ? raw_to(t, DType::f32, t.device()) : t;
}

template <class Run>
void through_float32(const Tensor& out, Conv2dParams& q, Run&& run) {
  q.operands = out.dtype();
  const Tensor wide = empty(out.shape(), {DType::f32, out.device()});
  run(wide);
  copy(out, wide);
}
}  // namespace

void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out,
                    const Conv2dParams& p) {
  if (is_half_float(out.dtype())) {
    Conv2dParams q = p;
    return through_float32(out, q, [&](const Tensor& wide) { conv2d_forward(widened(x), widened(w), widened(bias), wide, q); });
  }
  if (autocast_operands(x, p)) {
    const ConvShape s = conv_shape(x, w, out, p);
    const Bf16OperandsScope bf16(rounding_of(p, bf16_gemm_fits(s.og, s.ho * s.wo, s.k)));
    if (bf16_implicit_wins(s, p, true)) return forward_bf16(x, w, bias, out, s, p);
    if (bf16_operands_mode() == Bf16Operands::unrounded) return forward_typed<float>(x, w, bias, out, p);
    forward_typed<float>(rounded_operand(x, p.operands), rounded_operand(w, p.operands), bias, out, p);
    return;
  }
  if (x.dtype() == DType::f32 && cpu_bf16()) {  // bf16 inference: products the bf16 GEMM would take
    const ConvShape s = conv_shape(x, w, out, p);
    if (bf16_product(s.og, s.ho * s.wo, s.k) && bf16_implicit_fits(s, p, true)) return forward_bf16(x, w, bias, out, s, p);
  }
  dispatch_float(x.dtype(), "conv2d", [&]<class T>() { forward_typed<T>(x, w, bias, out, p); });
}

void conv2d_backward_input(const Tensor& grad_out, const Tensor& w, const Tensor& grad_x,
                           const Conv2dParams& p) {
  if (is_half_float(grad_x.dtype())) {
    Conv2dParams q = p;
    return through_float32(grad_x, q, [&](const Tensor& wide) { conv2d_backward_input(widened(grad_out), widened(w), wide, q); });
  }
  if (autocast_operands(w, p)) {
    const ConvShape s = conv_shape(grad_x, w, grad_out, p);  // products ~ [Cg x Og] · [Og x HoWo]
    const Bf16OperandsScope bf16(rounding_of(p, bf16_gemm_fits(s.cg, s.ho * s.wo, s.og)));
    Conv2dParams q;
    // (the flipped kernel is only built where its bf16 kernel can run)
    if (p.operands == DType::bf16 && conv_bf16_kernels_available() && !input_gradient_as_one_product(s) &&
        input_gradient_as_forward(s, p, &q)) {
      const Tensor flipped = flipped_kernel<float>(raw_contiguous(w), s);
      const ConvShape sf = conv_shape(grad_out, flipped, grad_x, q);
      if (bf16_implicit_wins(sf, q, true)) {
        const Tensor g = raw_contiguous(grad_out);
        forward_implicit_columns(g.data<float>(), flipped.data<float>(), nullptr, grad_x.data<float>(), sf, 1, true);
        return;
      }
    }
    if (bf16_operands_mode() == Bf16Operands::unrounded) return backward_input_typed<float>(grad_out, w, grad_x, p);
    backward_input_typed<float>(rounded_operand(grad_out, p.operands), rounded_operand(w, p.operands), grad_x, p);
    return;
  }
  dispatch_float(w.dtype(), "conv2d_backward_input",
                 [&]<class T>() { backward_input_typed<T>(grad_out, w, grad_x, p); });
}

void conv2d_backward_weight(const Tensor& grad_out, const Tensor& x, const Tensor& grad_w,
                            const Conv2dParams& p) {
  if (is_half_float(grad_w.dtype())) {
    Conv2dParams q = p;
    return through_float32(grad_w, q, [&](const Tensor& wide) { conv2d_backward_weight(widened(grad_out), widened(x), wide, q); });
  }
  if (autocast_operands(x, p)) {
    const ConvShape s = conv_shape(x, grad_w, grad_out, p);  // products [Og x HoWo] · [HoWo x K]
    const Bf16OperandsScope bf16(rounding_of(p, bf16_gemm_fits(s.og, s.k, s.ho * s.wo)));
    if (bf16_implicit_wins(s, p, false) && dot_product_weight_gradient_wins(s)) {
      const Tensor g = raw_contiguous(grad_out), xc = raw_contiguous(x);
      if (backward_weight_implicit_columns(g.data<float>(), xc.data<float>(), grad_w.data<float>(), s, p.stride[0], true))
        return;
    }
    if (bf16_operands_mode() == Bf16Operands::unrounded) return backward_weight_typed<float>(grad_out, x, grad_w, p);
    backward_weight_typed<float>(rounded_operand(grad_out, p.operands), rounded_operand(x, p.operands), grad_w, p);
    return;
  }
  dispatch_float(x.dtype(), "conv2d_backward_weight",
                 [&]<class T>() { backward_weight_typed<T>(grad_out, x, grad_w, p); });
}

}  // namespace bcos::cpu
