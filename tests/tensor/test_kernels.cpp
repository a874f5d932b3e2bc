// CPU kernels against naive reference loops, at sizes large enough to take the threaded and
// fast paths (contiguous rows, outer reductions, Eigen layouts, im2col and 1x1 convolution).
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "autograd/ops.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/vec_math.h"
#include "tensor/cpu/winograd.h"
#include "tensor/parallel.h"

using namespace bcos;

namespace {
double max_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  REQUIRE(x.size() == y.size());
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

// out[b, i, j] = sum_k a[b, i, k] w[b, k, j], in double, element by element.
Tensor naive_bmm(const Tensor& a, const Tensor& b) {
  int64_t B = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  Tensor ac = a.to(kFloat64).contiguous(), bc = b.to(kFloat64).contiguous();
  const double *pa = ac.data<double>(), *pb = bc.data<double>();
  std::vector<double> out(static_cast<size_t>(B * M * N), 0.0);
  for (int64_t s = 0; s < B; ++s)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += pa[(s * M + i) * K + k] * pb[(s * K + k) * N + j];
        out[size_t((s * M + i) * N + j)] = acc;
      }
  return from_vector(out, {B, M, N}, kFloat64);
}

// Direct convolution in double.
Tensor naive_conv(const Tensor& x, const Tensor& w, int64_t stride, int64_t pad, int64_t dil,
                  int64_t groups) {
  Tensor xc = x.to(kFloat64).contiguous(), wc = w.to(kFloat64).contiguous();
  int64_t n = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3);
  int64_t o = w.size(0), kh = w.size(2), kw = w.size(3), cg = c / groups, og = o / groups;
  int64_t ho = (h + 2 * pad - dil * (kh - 1) - 1) / stride + 1;
  int64_t wo = (wd + 2 * pad - dil * (kw - 1) - 1) / stride + 1;
  const double *px = xc.data<double>(), *pw = wc.data<double>();
  std::vector<double> out(static_cast<size_t>(n * o * ho * wo), 0.0);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t oc = 0; oc < o; ++oc)
      for (int64_t i = 0; i < ho; ++i)
        for (int64_t j = 0; j < wo; ++j) {
          double acc = 0;
          int64_t g = oc / og;
          for (int64_t ic = 0; ic < cg; ++ic)
            for (int64_t a = 0; a < kh; ++a)
              for (int64_t e = 0; e < kw; ++e) {
                int64_t ih = i * stride - pad + a * dil, iw = j * stride - pad + e * dil;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                acc += px[((b * c + g * cg + ic) * h + ih) * wd + iw] * pw[((oc * cg + ic) * kh + a) * kw + e];
              }
          out[size_t(((b * o + oc) * ho + i) * wo + j)] = acc;
        }
  return from_vector(out, {n, o, ho, wo}, kFloat64);
}
}  // namespace

TEST_CASE("kernels: large strided elementwise ops take the threaded path correctly") {
  manual_seed(1);
  Tensor a = randn({300, 400}), b = randn({400});
  Tensor out = a.t().contiguous().t() * b + 1.0;  // a non-contiguous operand
  std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>(), ov = out.to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < av.size(); ++i) d = std::max(d, std::abs(ov[i] - (av[i] * bv[i % 400] + 1.0)));
  CHECK(d < 1e-5);  // two float32 roundings
}

TEST_CASE("kernels: reductions over many layouts agree with double sums") {
  manual_seed(2);
  Tensor x = randn({64, 33, 50}, kFloat64);
  std::vector<double> xv = x.to_vector<double>();
  // over dim 0 (outer reduction path), dim 2 (contiguous rows) and all (split across threads)
  Tensor s0 = sum(x, {0}), s2 = sum(x, {2}), sall = sum(x);
  double d0 = 0, d2 = 0, total = 0;
  std::vector<double> r0(33 * 50, 0.0), r2(64 * 33, 0.0);
  for (int64_t i = 0; i < 64; ++i)
    for (int64_t j = 0; j < 33; ++j)
      for (int64_t k = 0; k < 50; ++k) {
        double val = xv[size_t((i * 33 + j) * 50 + k)];
        r0[size_t(j * 50 + k)] += val;
        r2[size_t(i * 33 + j)] += val;
        total += val;
      }
  std::vector<double> s0v = s0.to_vector<double>(), s2v = s2.to_vector<double>();
  for (size_t i = 0; i < r0.size(); ++i) d0 = std::max(d0, std::abs(s0v[i] - r0[i]));
  for (size_t i = 0; i < r2.size(); ++i) d2 = std::max(d2, std::abs(s2v[i] - r2[i]));
  CHECK(d0 < 1e-12);
  CHECK(d2 < 1e-12);
  CHECK(sall.item() == doctest::Approx(total).epsilon(1e-12));
  // max with indices over a middle dim of a permuted view
  Tensor p = x.permute({2, 0, 1});
  ValuesIndices m = max(p, 1);
  Tensor picked = gather(p, 1, m.indices.unsqueeze(1)).squeeze(1);
  CHECK(max_diff(picked, m.values) == 0.0);
  CHECK(min(var(x, {0, 2})).item<double>() > 0.5);
}

TEST_CASE("kernels: thread count does not change results") {
  manual_seed(3);
  Tensor x = randn({256, 512});
  Tensor w = randn({512, 128});
  // layer_norm's backward sums its weight's and bias's gradients over the rows: in blocks of rows,
  // not per thread, so that these too keep their bits. In float64, which shows the order of the
  // sums (they are taken in double, so float32's results would mostly hide it).
  Tensor x64 = x.to(kFloat64), gamma = randn({512}, kFloat64), beta = randn({512}, kFloat64);
  Tensor g = randn({256, 512}, kFloat64);
  auto layer_norm_grads = [&] {
    Tensor xl = x64.clone().requires_grad_(), wl = gamma.clone().requires_grad_(), bl = beta.clone().requires_grad_();
    layer_norm(xl, {512}, wl, bl).backward(g);
    return std::vector<Tensor>{xl.grad(), wl.grad(), bl.grad()};
  };
  int before = num_threads();
  set_num_threads(1);
  Tensor s1 = sum(x, {0}), m1 = matmul(x, w), c1 = softmax(x, 1);
  const std::vector<Tensor> l1 = layer_norm_grads();
  set_num_threads(std::max(2, before));
  Tensor s2 = sum(x, {0}), m2 = matmul(x, w), c2 = softmax(x, 1);
  const std::vector<Tensor> l2 = layer_norm_grads();
  set_num_threads(before);
  CHECK(max_diff(s1, s2) == 0.0);
  CHECK(max_diff(c1, c2) == 0.0);
  for (size_t i = 0; i < l1.size(); ++i) CHECK(max_diff(l1[i], l2[i]) == 0.0);
  CHECK(max_diff(m1, m2) < 1e-3);  // GEMM blocking may differ by thread count
}

TEST_CASE("kernels: matmul layouts (row-major, transposed, strided, broadcast batch) vs naive") {
  manual_seed(4);
  for (auto [m, k, n] : {std::tuple{3, 5, 4}, {64, 130, 70}, {1, 257, 1}, {200, 300, 150}}) {
    CAPTURE(m);
    CAPTURE(k);
    Tensor a = randn({2, m, k}, kFloat64), b = randn({2, k, n}, kFloat64);
    Tensor expect = naive_bmm(a, b);
    CHECK(max_diff(matmul(a, b), expect) < 1e-9);
    // transposed operands, read without copies
    Tensor at = a.transpose(1, 2).contiguous().transpose(1, 2);
    Tensor bt = b.transpose(1, 2).contiguous().transpose(1, 2);
    CHECK(max_diff(matmul(at, bt), expect) < 1e-9);
    // a strided (sliced) operand that needs a copy
    Tensor wide = randn({2, m, 2 * k}, kFloat64);
    Tensor sliced = wide.slice(2, 0, 2 * k, 2);
    CHECK(max_diff(matmul(sliced, b), naive_bmm(sliced.contiguous(), b)) < 1e-9);
  }
  Tensor a = randn({4, 1, 6, 7}), b = randn({3, 7, 5});
  Tensor out = matmul(a, b);
  CHECK(out.shape() == Shape{4, 3, 6, 5});
  Tensor expect = naive_bmm(a.expand({4, 3, 6, 7}).reshape({12, 6, 7}), b.expand({4, 3, 7, 5}).reshape({12, 7, 5}));
  CHECK(max_diff(out.reshape({12, 6, 5}), expect) < 1e-4);
}

TEST_CASE("kernels: conv2d forward and both backward passes vs a direct convolution") {
  manual_seed(5);
  struct Cfg {
    int64_t n, c, h, o, k, stride, pad, dil, groups;
  };
  for (Cfg cfg : {Cfg{2, 3, 9, 4, 3, 1, 1, 1, 1}, Cfg{3, 4, 11, 6, 3, 2, 1, 1, 2}, Cfg{1, 2, 10, 3, 3, 1, 2, 2, 1},
                  Cfg{4, 8, 6, 5, 1, 1, 0, 1, 1}, Cfg{2, 6, 7, 6, 3, 1, 1, 1, 6}, Cfg{1, 3, 12, 2, 5, 3, 2, 1, 1},
                  // more than 1024 output positions in all: per-sample (not one batched) products
                  Cfg{3, 4, 20, 6, 3, 1, 1, 1, 1}, Cfg{2, 5, 24, 3, 1, 1, 0, 1, 1}, Cfg{5, 4, 17, 4, 3, 1, 1, 1, 2},
                  // K = 1152: the column matrix is built in blocks of output rows (whole-row and
                  // strided im2col paths)
                  Cfg{1, 128, 20, 4, 3, 1, 1, 1, 1}, Cfg{1, 128, 41, 3, 3, 2, 1, 1, 1}, Cfg{1, 128, 20, 3, 3, 1, 2, 2, 1},
                  // the weight gradient's blocks (2^20 floats): K·Ho·Wo = 1152·34·34
                  Cfg{1, 128, 34, 3, 3, 1, 1, 1, 1}}) {
    CAPTURE(cfg.n);
    CAPTURE(cfg.c);
    CAPTURE(cfg.h);
    CAPTURE(cfg.k);
    CAPTURE(cfg.groups);
    Tensor x = randn({cfg.n, cfg.c, cfg.h, cfg.h}, kFloat64).requires_grad_();
    Tensor w = randn({cfg.o, cfg.c / cfg.groups, cfg.k, cfg.k}, kFloat64).requires_grad_();
    Tensor y = conv2d(x, w, Tensor(), cfg.stride, cfg.pad, cfg.dil, cfg.groups);
    CHECK(max_diff(y, naive_conv(x.detach(), w.detach(), cfg.stride, cfg.pad, cfg.dil, cfg.groups)) < 1e-10);
    // Backward via the adjoint identity: <conv(x, w), g> is bilinear, so its gradients are
    // checked by comparing directional derivatives computed with the naive convolution.
    Tensor g = randn(y.shape(), kFloat64);
    sum(y * g).backward();
    Tensor dx = randn(x.shape(), kFloat64), dw = randn(w.shape(), kFloat64);
    double lhs_x = sum(x.grad() * dx).item();
    double rhs_x = sum(naive_conv(dx, w.detach(), cfg.stride, cfg.pad, cfg.dil, cfg.groups) * g).item();
    double lhs_w = sum(w.grad() * dw).item();
    double rhs_w = sum(naive_conv(x.detach(), dw, cfg.stride, cfg.pad, cfg.dil, cfg.groups) * g).item();
    CHECK(lhs_x == doctest::Approx(rhs_x).epsilon(1e-10));
    CHECK(lhs_w == doctest::Approx(rhs_w).epsilon(1e-10));
  }
}

TEST_CASE("kernels: float32 3x3 convolutions taking the Winograd path match a float64 direct convolution") {
  // Shapes where conv.cpp picks Winograd F(2x2, 3x3) (enough samples for every thread, >= 64
  // channels on 56 x 56, >= 128 on 28 x 28, >= 192 on 14 x 14; odd sizes exercise the partial
  // last tile, 57 x 56 two blocks of tile rows), with a bias; the input gradient of such a conv
  // runs the same path (a forward with the flipped kernel). That conv2d took it is checked by
  // its bits: those of cpu::winograd_conv3x3 called directly.
  manual_seed(21);
  const int64_t n = 2 * num_threads();
  struct Shape4 {
    int64_t c, o, h, w;
  };
  for (Shape4 sh : {Shape4{64, 72, 57, 56}, Shape4{128, 136, 29, 28}, Shape4{192, 192, 14, 15}}) {
    CAPTURE(sh.c);
    CAPTURE(sh.h);
    CAPTURE(sh.w);
    Tensor x = randn({n, sh.c, sh.h, sh.w}).requires_grad_(), w = randn({sh.o, sh.c, 3, 3}).requires_grad_();
    Tensor b = randn({sh.o});
    Tensor direct = empty({n, sh.o, sh.h, sh.w});
    REQUIRE(cpu::winograd_conv3x3(x.data<float>(), w.data<float>(), direct.data<float>(), n, sh.c, sh.h, sh.w, sh.o));
    CHECK(max_diff(conv2d(x.detach(), w.detach(), Tensor(), 1, 1), direct) == 0.0);
    Tensor y = conv2d(x, w, b, 1, 1);
    Tensor expect = naive_conv(x.detach(), w.detach(), 1, 1, 1, 1) + b.to(kFloat64).reshape({1, sh.o, 1, 1});
    // norm-wise relative error: float32 rounding of 9·C-term sums, transformed (measured ~5e-7)
    const double scale = std::sqrt(sum(expect * expect).item());
    CHECK(std::sqrt(sum(square(y.to(kFloat64) - expect)).item()) / scale < 1e-5);
    Tensor g = randn(y.shape());
    sum(y * g).backward();
    Tensor x64 = x.detach().to(kFloat64).requires_grad_();
    sum(conv2d(x64, w.detach().to(kFloat64), Tensor(), 1, 1) * g.to(kFloat64)).backward();
    const double gscale = std::sqrt(sum(x64.grad() * x64.grad()).item());
    CHECK(std::sqrt(sum(square(x.grad().to(kFloat64) - x64.grad())).item()) / gscale < 1e-5);
  }
}

TEST_CASE("kernels: Winograd in blocks of tile rows matches a float64 direct convolution for every block size") {
  // Blocks of 1 tile (a partial row), of whole rows, of rows ending in a partial block, and the
  // whole map; odd and even sizes; fewer samples than threads (threaded GEMMs) and more.
  manual_seed(23);
  struct Shape4 {
    int64_t n, c, o, h, w;
  };
  for (Shape4 sh : {Shape4{3, 5, 6, 9, 11}, Shape4{1, 7, 4, 12, 10}, Shape4{2 * num_threads() + 1, 3, 9, 8, 7}})
    for (int64_t block_tiles : {1, 6, 13, 1000}) {
      CAPTURE(sh.n);
      CAPTURE(sh.h);
      CAPTURE(sh.w);
      CAPTURE(block_tiles);
      Tensor x = randn({sh.n, sh.c, sh.h, sh.w}), w = randn({sh.o, sh.c, 3, 3});
      Tensor y = full({sh.n, sh.o, sh.h, sh.w}, NAN);  // every output must be written
      REQUIRE(cpu::winograd_conv3x3(x.data<float>(), w.data<float>(), y.data<float>(), sh.n, sh.c, sh.h, sh.w, sh.o,
                                    block_tiles));
      // sums of 9·C terms through the transforms (measured ~3e-7)
      CHECK(max_diff(y, naive_conv(x, w, 1, 1, 1, 1)) < 1e-5);
    }
  // An infinite input: false, so that the caller computes the convolution directly.
  Tensor x = randn({2, 4, 8, 8}), w = randn({5, 4, 3, 3}), y = empty({2, 5, 8, 8});
  x.data<float>()[100] = INFINITY;
  for (int64_t block_tiles : {1, 1000}) CHECK_FALSE(cpu::winograd_conv3x3(x.data<float>(), w.data<float>(), y.data<float>(), 2, 4, 8, 8, 5, block_tiles));
}

TEST_CASE("kernels: float32 'same'-padded stride-1 and stride-2 convolutions read from a padded image or its phases match float64") {
  // Shapes where conv.cpp reads the column matrix through row offsets (gemm_offset_rows): odd
  // k x k with pad (k-1)/2, stride 1 or 2, outputs of 256 positions or more, a sample per thread. Out channels
  // not a multiple of 8 (partial row tiles), widths whose padded grid ends in a partial 32-wide
  // panel, 5 x 5 kernels, groups, a bias; the input gradient runs the same path, the weight
  // gradient its own (gemm_nt_offset_rows).
  manual_seed(22);
  const int64_t n = 2 * num_threads();
  struct Shape5 {
    int64_t c, o, h, w, k, groups, stride;
  };
  for (Shape5 sh : {Shape5{5, 11, 16, 20, 3, 1, 1}, Shape5{16, 16, 32, 32, 3, 1, 1}, Shape5{6, 8, 17, 16, 5, 2, 1},
                    Shape5{3, 16, 16, 19, 7, 1, 1},
                    // stride 2 (four phase images): odd and even sizes, 7 x 7, groups
                    Shape5{5, 11, 32, 34, 3, 1, 2}, Shape5{3, 16, 33, 32, 7, 1, 2}, Shape5{8, 8, 32, 31, 5, 2, 2},
                    // stride 2 on im2col's paths, whose columns come from the phase images: a
                    // forward under 256 positions, weight gradients with more out channels (one
                    // sample per product: over 128 positions), input gradients (groups, 5 x 5)
                    Shape5{24, 40, 29, 27, 3, 1, 2}, Shape5{20, 48, 36, 35, 3, 2, 2}, Shape5{8, 40, 33, 34, 5, 1, 2},
                    // K·Ho·Wo over 2^20: the weight gradient's columns in two blocks of rows
                    Shape5{64, 40, 90, 91, 3, 1, 2}}) {
    CAPTURE(sh.c);
    CAPTURE(sh.o);
    CAPTURE(sh.h);
    CAPTURE(sh.w);
    CAPTURE(sh.k);
    CAPTURE(sh.stride);
    const int64_t pad = (sh.k - 1) / 2;
    Tensor x = randn({n, sh.c, sh.h, sh.w}).requires_grad_();
    Tensor w = randn({sh.o, sh.c / sh.groups, sh.k, sh.k}).requires_grad_();
    Tensor b = randn({sh.o});
    Tensor y = conv2d(x, w, b, sh.stride, pad, 1, sh.groups);
    Tensor expect =
        naive_conv(x.detach(), w.detach(), sh.stride, pad, 1, sh.groups) + b.to(kFloat64).reshape({1, sh.o, 1, 1});
    // norm-wise relative error of float32 sums of k·k·C/groups terms (measured ~1e-7)
    const double scale = std::sqrt(sum(expect * expect).item());
    CHECK(std::sqrt(sum(square(y.to(kFloat64) - expect)).item()) / scale < 1e-6);
    Tensor g = randn(y.shape());
    sum(y * g).backward();
    Tensor x64 = x.detach().to(kFloat64).requires_grad_(), w64 = w.detach().to(kFloat64).requires_grad_();
    sum(conv2d(x64, w64, Tensor(), sh.stride, pad, 1, sh.groups) * g.to(kFloat64)).backward();
    const double gscale = std::sqrt(sum(x64.grad() * x64.grad()).item());
    CHECK(std::sqrt(sum(square(x.grad().to(kFloat64) - x64.grad())).item()) / gscale < 1e-6);
    // sums of n·H·W terms
    const double wscale = std::sqrt(sum(w64.grad() * w64.grad()).item());
    CHECK(std::sqrt(sum(square(w.grad().to(kFloat64) - w64.grad())).item()) / wscale < 1e-6);
    // The float64 reference shares these paths' blocking, so both gradients are also checked
    // against the definition: <grad, d> = <naive_conv(d), g> (adjoint identity), to float32's
    // rounding of the gradient (Cauchy-Schwarz: |error| <= 1e-6·|grad|·|d|).
    const Tensor dx = randn(x.shape(), kFloat64), dw = randn(w.shape(), kFloat64), g64 = g.to(kFloat64);
    const double lhs_x = sum(x.grad().to(kFloat64) * dx).item();
    const double rhs_x = sum(naive_conv(dx, w.detach(), sh.stride, pad, 1, sh.groups) * g64).item();
    CHECK(std::abs(lhs_x - rhs_x) < 1e-6 * gscale * std::sqrt(sum(dx * dx).item()));
    const double lhs_w = sum(w.grad().to(kFloat64) * dw).item();
    const double rhs_w = sum(naive_conv(x.detach(), dw, sh.stride, pad, 1, sh.groups) * g64).item();
    CHECK(std::abs(lhs_w - rhs_w) < 1e-6 * wscale * std::sqrt(sum(dw * dw).item()));
  }
}

TEST_CASE("kernels: an infinite input leaves the weight gradient's other taps finite on the padded-image paths") {
  // The padded image's wide grid has discarded columns whose taps read the next row; their
  // gradient is zero, and 0 · Inf is NaN. Which entries of grad_W are non-finite must be those of
  // the definition (float64 takes the column-matrix path), in float32 and under bf16 autocast.
  manual_seed(5);
  const int64_t n = 2 * num_threads();
  Tensor x = randn({n, 4, 16, 16});
  x.data<float>()[((0 * 4 + 1) * 16 + 5) * 16 + 15] = INFINITY;  // the last column: a discarded tap reads it
  const Tensor w = randn({8, 4, 3, 3}), g = randn({n, 8, 16, 16});
  Tensor w64 = w.to(kFloat64).requires_grad_();
  sum(conv2d(x.to(kFloat64), w64, Tensor(), 1, 1) * g.to(kFloat64)).backward();
  const std::vector<double> expect = w64.grad().to_vector<double>();
  for (bool autocast : {false, true}) {
    CAPTURE(autocast);
    Tensor w32 = w.clone().requires_grad_();
    {
      AutocastGuard mixed(DeviceType::cpu, DType::bf16, autocast);
      sum(conv2d(x, w32, Tensor(), 1, 1) * g).backward();
    }
    const std::vector<double> got = w32.grad().to_vector<double>();
    int64_t nonfinite = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(i);
      CHECK(std::isfinite(got[i]) == std::isfinite(expect[i]));
      nonfinite += !std::isfinite(expect[i]);
      if (!autocast && std::isfinite(expect[i])) CHECK(std::abs(got[i] - expect[i]) < 1e-3);  // sums of 1,024 terms
    }
    CHECK(nonfinite > 0);  // the infinite input reaches some taps
  }
  // Winograd's transforms add and subtract an infinite input's transformed values (Inf − Inf):
  // such a forward is computed directly, so each output is ±Inf or NaN as the direct sum has it.
  Tensor big = randn({n, 64, 56, 56}), wb = randn({64, 64, 3, 3});
  big.data<float>()[(0 * 64 + 3) * 56 * 56 + 10 * 56 + 11] = INFINITY;
  const std::vector<double> y = conv2d(big, wb, Tensor(), 1, 1).to_vector<double>();
  const std::vector<double> y64 = conv2d(big.to(kFloat64), wb.to(kFloat64), Tensor(), 1, 1).to_vector<double>();
  int64_t mismatched = 0, nonfinite = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    mismatched += std::isnan(y[i]) != std::isnan(y64[i]) ||
                  (std::isinf(y64[i]) && y[i] != y64[i]) || std::isfinite(y[i]) != std::isfinite(y64[i]);
    nonfinite += !std::isfinite(y64[i]);
  }
  CHECK(mismatched == 0);
  CHECK(nonfinite == 64 * 9);  // every out channel, the 3 x 3 outputs whose window holds it
}

TEST_CASE("kernels: pooling corner cases") {
  // all-negative input with padding: padding never wins a max
  Tensor x = full({1, 1, 3, 3}, -5.0);
  CHECK(max_pool2d(x, 3, 1, 1).to_vector<double>() == std::vector<double>(9, -5.0));
  // NaN propagates through max pooling, as in PyTorch
  Tensor y = from_vector<float>({1, NAN, 2, 3}, {1, 1, 2, 2});
  CHECK(std::isnan(max_pool2d(y, 2).item()));
  // adaptive pooling with bins that overlap (7 -> 3)
  Tensor z = arange(7.0).reshape({1, 1, 1, 7});
  CHECK(adaptive_avg_pool2d(z, IntPair(1, 3)).to_vector<double>() == std::vector<double>{1, 3, 5});
}

TEST_CASE("kernels: average pooling whose windows tile the plane gives the general loops' bits") {
  // x [2, 3, 7, 9]: ceil_mode adds a partial window (rows or columns), so that call takes the
  // general loops; its whole windows are the tiled call's, summed in the same order from 0.
  manual_seed(41);
  for (DType dt : {kFloat32, kFloat64})
    for (IntPair k : {IntPair(2, 2), IntPair(3, 3), IntPair(2, 3), IntPair(1, 2)}) {
      CAPTURE(dt);
      CAPTURE(k.h);
      CAPTURE(k.w);
      Tensor x = randn({2, 3, 7, 9}, dt);
      x.narrow(2, 0, 3).narrow(3, 0, 3).fill_(-0.0);  // -0 + -0 is -0, but the sums start from +0
      Tensor xt = x.clone().requires_grad_(), xg = x.clone().requires_grad_();
      Tensor tiled = avg_pool2d(xt, k), general = avg_pool2d(xg, k, std::nullopt, 0, true);
      const int64_t ho = tiled.size(2), wo = tiled.size(3);
      REQUIRE((general.size(2) > ho || general.size(3) > wo));
      auto bits = [](const Tensor& t) {
        std::vector<double> v = t.contiguous().to_vector<double>();
        std::vector<uint64_t> b(v.size());
        for (size_t i = 0; i < v.size(); ++i) b[i] = std::bit_cast<uint64_t>(v[i]);
        return b;
      };
      CHECK(bits(general.narrow(2, 0, ho).narrow(3, 0, wo)) == bits(tiled));
      Tensor g = randn(tiled.shape(), dt), g_general = zeros(general.shape(), dt);
      g_general.narrow(2, 0, ho).narrow(3, 0, wo).copy_(g);
      tiled.backward(g);
      general.backward(g_general);
      CHECK(bits(xt.grad()) == bits(xg.grad()));  // rows and columns outside every window: 0
    }
}

TEST_CASE("kernels: topk ordering and ties") {
  Tensor x = from_vector<float>({3, 1, 3, 2, NAN}, {5});
  ValuesIndices t = topk(x, 3);
  std::vector<int64_t> idx = t.indices.to_vector<int64_t>();
  CHECK(idx == std::vector<int64_t>{4, 0, 2});  // NaN first, then ties in index order
  ValuesIndices s = topk(x, 2, 0, false);
  CHECK(s.indices.to_vector<int64_t>() == std::vector<int64_t>{1, 3});
}

TEST_CASE("kernels: float32 GEMM (each path this CPU runs: AVX-512, AVX2, Eigen) on edge sizes, layouts and accumulation") {
  manual_seed(6);
  const std::string chosen = std::string("float32 GEMM path chosen here: ") + cpu::gemm_kernel_name();
  MESSAGE(chosen);
  // Sizes straddle the 6 x 16 and 8 x 32 tiles, the 144-row block and the 256-deep slice; the
  // orientation swap and the read-in-place path for row-major A are exercised through the layouts.
  int paths = 0;
  for (const char* kernel : {"avx512", "avx2", "eigen"})
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {5, 17, 3}, {6, 16, 256}, {8, 32, 256},
                         {7, 15, 257}, {9, 33, 129}, {145, 33, 300}, {49, 300, 70}, {300, 49, 520}, {8, 1000, 64}}) {
    for (int layout = 0; layout < 4; ++layout) {
      CAPTURE(kernel);
      CAPTURE(m);
      CAPTURE(n);
      CAPTURE(k);
      CAPTURE(layout);
      bool ta = layout & 1, tb = layout & 2;
      Tensor a = ta ? randn({k, m}).t() : randn({m, k});
      Tensor b = tb ? randn({n, k}).t() : randn({k, n});
      Tensor c0 = randn({m, n});
      for (bool accumulate : {false, true}) {
        Tensor c = c0.clone();
        if (!cpu::gemm_with(kernel, m, n, k, a.data<float>(), a.stride(0), a.stride(1), b.data<float>(),
                            b.stride(0), b.stride(1), c.data<float>(), n, 1, accumulate))
          continue;  // this CPU lacks the instruction set
        paths += m == 1 && layout == 0 && !accumulate;  // one count per path that ran
        Tensor expect = naive_bmm(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0);
        if (accumulate) expect = expect + c0.to(kFloat64);
        // float32 rounding of a k-term dot product: bounded by k * eps * sum|a||b|
        double bound = 1e-6 * double(k + 1) * 4.0;
        CHECK(max_diff(c, expect) < bound);
      }
    }
  }
  const std::string ran = "GEMM paths run: " + std::to_string(paths);
  MESSAGE(ran);
  CHECK(paths >= 1);  // Eigen runs everywhere
  // a strided, column-major C (the swapped orientation writes through csc != 1)
  Tensor a = randn({9, 20}), b = randn({20, 40});
  Tensor ct = zeros({40, 9});
  cpu::gemm(9, 40, 20, a.data<float>(), 20, 1, b.data<float>(), 40, 1, ct.data<float>(), 1, 9, false);
  CHECK(max_diff(ct.t(), naive_bmm(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0)) < 1e-4);
}

TEST_CASE("kernels: bf16 GEMM (AMX, AVX-512 BF16) is the float64 product of the bf16-rounded operands; set_cpu_bf16 routes matmul and conv2d through it") {
  if (!cpu_bf16_supported()) {
    MESSAGE("this CPU has neither AMX-BF16 nor AVX-512 BF16: bf16 products not tested");
    float one = 1;
    CHECK(!cpu::gemm_bf16(1, 1, 1, &one, 1, 1, &one, 1, 1, &one, 1, 1, false));
    CHECK(std::string(cpu::gemm_bf16_kernel_name()) == "none");
    set_cpu_bf16(true);
    CHECK(!cpu_bf16());  // ignored
    return;
  }
  MESSAGE((std::string("bf16 GEMM kernel: ") + cpu::gemm_bf16_kernel_name()));
  manual_seed(8);
  auto rounded = [](const Tensor& t) { return t.to(kBFloat16).to(kFloat32); };
  int kernels_run = 0;
  for (const char* kernel : {"amx", "avx512bf16"}) {
    float one = 1;
    if (!cpu::gemm_bf16_with(kernel, 1, 1, 1, &one, 1, 1, &one, 1, 1, &one, 1, 1, false)) {
      MESSAGE((std::string("this CPU lacks the ") + kernel + " bf16 kernel: not tested"));
      continue;
    }
    ++kernels_run;
    // Sizes straddle the micro-tiles (32 x 32, 8 x 32), the row blocks (128, 192), the slices
    // (512 / 256 deep; k = 1030: several, so C accumulates across them), odd k (a zero-padded pair).
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {5, 17, 3}, {33, 31, 33}, {64, 64, 64},
                           {130, 70, 520}, {300, 49, 1030}, {200, 40, 257}}) {
      for (int layout = 0; layout < 5; ++layout) {
        CAPTURE(kernel);
        CAPTURE(m);
        CAPTURE(n);
        CAPTURE(k);
        CAPTURE(layout);
        // layouts 0-3: row-major or transposed A and B (the vectorised packers where the CPU has
        // AVX-512 BF16); 4: both strided in both directions (the scalar packers)
        const bool ta = layout & 1, tb = layout & 2;
        // Each operand also as bfloat16 in the same layout (the same view of a bf16 buffer).
        auto a_view = [&](const Tensor& buffer) {
          return layout == 4 ? buffer.slice(1, 0, 2 * k, 2) : ta ? buffer.t() : buffer;
        };
        auto b_view = [&](const Tensor& buffer) {
          return layout == 4 ? buffer.slice(1, 0, 3 * n, 3) : tb ? buffer.t() : buffer;
        };
        const Tensor a_buffer = layout == 4 ? randn({m, 2 * k}) : ta ? randn({k, m}) : randn({m, k});
        const Tensor b_buffer = layout == 4 ? randn({k, 3 * n}) : tb ? randn({n, k}) : randn({k, n});
        const Tensor a = a_view(a_buffer), b = b_view(b_buffer);
        const Tensor a16 = a_view(a_buffer.to(kBFloat16)), b16 = b_view(b_buffer.to(kBFloat16));
        auto operand = [](const Tensor& x) {
          return cpu::Bf16Operand{x.raw_data(), x.stride(0), x.stride(1), x.dtype() == kBFloat16};
        };
        Tensor c0 = randn({m, n});
        for (bool accumulate : {false, true}) {
          Tensor c = c0.clone();
          REQUIRE(cpu::gemm_bf16_with(kernel, m, n, k, a.data<float>(), a.stride(0), a.stride(1), b.data<float>(),
                                      b.stride(0), b.stride(1), c.data<float>(), n, 1, accumulate));
          Tensor expect = naive_bmm(rounded(a).unsqueeze(0), rounded(b).unsqueeze(0)).squeeze(0);
          if (accumulate) expect = expect + c0.to(kFloat64);
          // bf16 x bf16 products are exact in float32; only the float32 sums round.
          CHECK(max_diff(c, expect) < 1e-6 * double(k + 1) * 4.0);
          // Operands already bfloat16 (either or both) are packed as they are: the same bits.
          for (int which = 1; which < 4; ++which) {
            CAPTURE(which);
            Tensor c16 = c0.clone();
            REQUIRE(cpu::gemm_bf16_with(kernel, m, n, k, operand(which & 1 ? a16 : a), operand(which & 2 ? b16 : b),
                                        c16.data<float>(), n, 1, accumulate));
            CHECK(std::memcmp(c16.raw_data(), c.raw_data(), size_t(m * n) * 4) == 0);
          }
        }
      }
    }
    // A C written through strides (its transpose): the tiles' scalar store.
    Tensor a = randn({70, 90}), b = randn({90, 45}), ct = zeros({45, 70});
    REQUIRE(cpu::gemm_bf16_with(kernel, 70, 45, 90, a.data<float>(), 90, 1, b.data<float>(), 45, 1, ct.data<float>(),
                                1, 70, false));
    CHECK(max_diff(ct.t(), naive_bmm(rounded(a).unsqueeze(0), rounded(b).unsqueeze(0)).squeeze(0)) < 1e-4);
  }
  CHECK(kernels_run >= 1);
  CHECK(!cpu::gemm_bf16_with("no-such-kernel", 1, 1, 1, nullptr, 1, 1, nullptr, 1, 1, nullptr, 1, 1, false));

  // NaN in an operand stays NaN (not rounded into an infinity).
  Tensor a = randn({40, 64}), b = randn({64, 40}), c = zeros({40, 40});
  a.data<float>()[3 * 64 + 5] = NAN;
  cpu::gemm_bf16(40, 40, 64, a.data<float>(), 64, 1, b.data<float>(), 40, 1, c.data<float>(), 40, 1, false);
  CHECK(std::isnan(c.data<float>()[3 * 40 + 7]));
  CHECK(!std::isnan(c.data<float>()[4 * 40 + 7]));

  // The switch: matmul and a 64-channel conv2d give the bf16-rounded product, and only under it.
  Tensor x = randn({96, 80}), w = randn({80, 72});
  Tensor exact = naive_bmm(x.unsqueeze(0), w.unsqueeze(0)).squeeze(0);
  Tensor of_rounded = naive_bmm(rounded(x).unsqueeze(0), rounded(w).unsqueeze(0)).squeeze(0);
  Tensor image = randn({2, 64, 12, 12}), filters = randn({64, 64, 3, 3}) * 0.1;
  Tensor conv_rounded = conv2d(rounded(image).to(kFloat64), rounded(filters).to(kFloat64), Tensor(), 1, 1);
  {
    CpuBf16Guard guard;
    CHECK(cpu_bf16());
    Tensor y = matmul(x, w);
    CHECK(max_diff(y, of_rounded) < 1e-4);
    CHECK(max_diff(y, exact) > 1e-3);  // the operands really were rounded
    CHECK(max_diff(conv2d(image, filters, Tensor(), 1, 1), conv_rounded) < 1e-4);
  }
  CHECK(!cpu_bf16());
  CHECK(max_diff(matmul(x, w), exact) < 1e-4);
}

TEST_CASE("kernels: under autocast's unrounded bf16 operands, every gemm() rounds them: the bf16 GEMM while packing, smaller products by rounded copies") {
  manual_seed(9);
  auto rounded = [](const Tensor& t) { return t.to(kBFloat16).to(kFloat32); };
  // 5 x 17 x 40 and a strided 20 x 30 x 50 are below the bf16 GEMM's sizes; 96 x 80 x 64 is not
  // (where the CPU has one).
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{5, 17, 40}, {20, 30, 50}, {96, 80, 64}}) {
    CAPTURE(m);
    CAPTURE(n);
    CAPTURE(k);
    Tensor a = randn({k, m}).t(), b = randn({k, n});  // a transposed A
    Tensor c = zeros({m, n});
    {
      const cpu::Bf16OperandsScope unrounded(Bf16Operands::unrounded);
      cpu::gemm(m, n, k, a.data<float>(), a.stride(0), a.stride(1), b.data<float>(), n, 1, c.data<float>(), n, 1,
                false);
    }
    const Tensor want = naive_bmm(rounded(a).unsqueeze(0), rounded(b).unsqueeze(0)).squeeze(0);
    CHECK(max_diff(c, want) < 1e-6 * double(k + 1) * 4.0);
    CHECK(max_diff(naive_bmm(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0), want) > 1e-3);  // rounding matters here
  }
  CHECK(bf16_operands_mode() == Bf16Operands::off);  // the scope restores the mode
}

TEST_CASE("kernels: int64 sums and extremes are exact beyond 2^53") {
  Tensor x = from_vector<int64_t>({(1LL << 60) + 1, 1, -3}, {3});
  CHECK(sum(x).item<int64_t>() == (1LL << 60) - 1);
  CHECK(sum(x).to_vector<int64_t>()[0] == (1LL << 60) - 1);
  CHECK(amax(x).to_vector<int64_t>()[0] == (1LL << 60) + 1);
}

TEST_CASE("kernels: empty tensors flow through reductions, products and convolutions") {
  CHECK(sum(zeros({0, 3}), {0}).to_vector<double>() == std::vector<double>{0, 0, 0});
  CHECK(sum(zeros({3, 0})).item() == 0.0);
  CHECK(std::isnan(mean(zeros({0})).item()));
  CHECK_THROWS_AS(max(zeros({0})), Error);
  CHECK(matmul(zeros({2, 0}), zeros({0, 3})).to_vector<double>() == std::vector<double>(6, 0.0));
  CHECK(matmul(zeros({0, 4}), zeros({4, 3})).numel() == 0);
  Tensor x = zeros({0, 2, 5, 5}).requires_grad_(), w = ones({3, 2, 3, 3}).requires_grad_();
  Tensor y = conv2d(x, w, Tensor(), 1, 1);
  CHECK(y.shape() == Shape{0, 3, 5, 5});
  sum(y).backward();
  CHECK(w.grad().to_vector<double>() == std::vector<double>(54, 0.0));
  CHECK(softmax(zeros({0, 4}), 1).numel() == 0);
  // Batch norm in training over an empty batch, as torch.nn.functional.batch_norm: an empty
  // output, zero gradients, the running statistics as they were; one value per channel raises.
  Tensor xb = zeros({0, 3, 2, 2}).requires_grad_(), gamma = ones({3}).requires_grad_();
  Tensor beta = zeros({3}).requires_grad_(), running_mean = full({3}, 0.5), running_var = full({3}, 2.0);
  Tensor yb = batch_norm(xb, running_mean, running_var, gamma, beta, true);
  CHECK(yb.shape() == Shape{0, 3, 2, 2});
  sum(yb).backward();
  CHECK(gamma.grad().to_vector<double>() == std::vector<double>(3, 0.0));
  CHECK(beta.grad().to_vector<double>() == std::vector<double>(3, 0.0));
  CHECK(running_mean.to_vector<double>() == std::vector<double>(3, 0.5));
  CHECK(running_var.to_vector<double>() == std::vector<double>(3, 2.0));
  CHECK_THROWS_AS(batch_norm(zeros({1, 3}), Tensor(), Tensor(), Tensor(), Tensor(), true), Error);
}

TEST_CASE("kernels: every chunk runs even when OpenMP grants fewer threads") {
#ifdef _OPENMP
  int before = num_threads();
  set_num_threads(8);
  omp_set_dynamic(1);  // the runtime may now hand out fewer threads than asked for
  Tensor y = mul(ones({400000}), 2.0);
  Tensor x = randn({64, 48, 8, 8}), w = randn({16, 48, 3, 3});
  Tensor c = conv2d(x, w, Tensor(), 1, 1);
  omp_set_dynamic(0);
  set_num_threads(before);
  CHECK(sum(y).item() == 800000.0);
  CHECK(max_diff(c, conv2d(x, w, Tensor(), 1, 1)) < 1e-4);
#endif
}

TEST_CASE("kernels: ops called from the user's own parallel region") {
#ifdef _OPENMP
  int before = num_threads();
  set_num_threads(2);
  Tensor x = randn({4, 3, 16, 16}, kFloat64), w = randn({5, 3, 3, 3}, kFloat64);
  Tensor expect = naive_conv(x, w, 1, 1, 1, 1);
  std::vector<double> errors(8, -1.0);
#pragma omp parallel num_threads(8)
  {
    Tensor y = conv2d(x, w, Tensor(), 1, 1);  // runs serially inside the region
    errors[size_t(omp_get_thread_num())] = max_diff(y, expect);
  }
  set_num_threads(before);
  for (double e : errors) CHECK(e < 1e-10);
#endif
}

// tensor/cpu/vec_math.h replaces libm's expf / erff in float GELU, SiLU, sigmoid, exp and softmax.
// Every 97th float is compared with double precision (a sweep over every float gave the same
// maxima: exp 0.93 ulp, CDF 5.3e-7 relative).
TEST_CASE("kernels: vectorised exp and normal CDF against double precision") {
  auto ulps = [](float got, double want) {
    const float w = float(want);
    const double ulp = double(std::nextafter(std::fabs(w), INFINITY)) - std::fabs(w);
    return std::fabs(double(got) - want) / ulp;
  };
  // Every 97th float of magnitude up to `limit`, both signs, by bit pattern.
  auto sweep = [](float limit, auto&& fn) {
    const uint32_t top = std::bit_cast<uint32_t>(limit);
    for (uint32_t bits = 0; bits <= top; bits += 97) {
      const float x = std::bit_cast<float>(bits);
      fn(x);
      fn(-x);
    }
  };
  double worst_exp = 0;
  sweep(110.0f, [&](float x) {
    if (x >= 88.7f) return;  // overflows to inf: checked below
    const double want = std::exp(double(x));
    worst_exp = std::max(worst_exp, want == 0 ? std::fabs(double(cpu::vec::exp(x))) : ulps(cpu::vec::exp(x), want));
  });
  CHECK(worst_exp < 1.0);
  CHECK(std::isinf(cpu::vec::exp(88.75f)));
  CHECK(cpu::vec::exp(-INFINITY) == 0.0f);
  CHECK(std::isinf(cpu::vec::exp(INFINITY)));
  CHECK(std::isnan(cpu::vec::exp(NAN)));
  CHECK(cpu::vec::exp(-100.0f) > 0.0f);  // denormal results, as expf

  double worst_cdf = 0, worst_abs = 0, worst_pdf = 0;
  sweep(14.0f, [&](float x) {
    const double cdf = 0.5 * std::erfc(-double(x) / std::sqrt(2.0));
    const double pdf = std::exp(-0.5 * double(x) * double(x)) / std::sqrt(2.0 * M_PI);
    const float got = cpu::vec::normal_cdf(x);
    worst_abs = std::max(worst_abs, std::fabs(got - cdf));
    if (cdf > 1e-30) worst_cdf = std::max(worst_cdf, std::fabs(got - cdf) / cdf);
    if (pdf > 1e-30) worst_pdf = std::max(worst_pdf, std::fabs(cpu::vec::normal_pdf(x) - pdf) / pdf);
  });
  CHECK(worst_cdf < 6e-7);
  CHECK(worst_abs < 2.5e-7);
  CHECK(worst_pdf < 3e-7);
  CHECK(cpu::vec::normal_cdf(INFINITY) == 1.0f);
  CHECK(cpu::vec::normal_cdf(-INFINITY) == 0.0f);
  CHECK(std::isnan(cpu::vec::normal_cdf(NAN)));

  // Through the ops: float GELU and its derivative against the float64 op.
  Tensor x = linspace(-12.0, 12.0, 4099, kFloat64);
  Tensor xf = x.to(kFloat32).requires_grad_(true), xd = xf.detach().to(kFloat64).requires_grad_(true);
  Tensor yf = gelu(xf), yd = gelu(xd);
  sum(yf).backward();
  sum(yd).backward();
  CHECK(max_diff(yf.detach(), yd.detach()) < 3e-6);  // 12 · 2.5e-7
  CHECK(max_diff(xf.grad(), xd.grad()) < 4e-6);
  const Tensor x32 = x.to(kFloat32), x32_in_f64 = x32.to(kFloat64);
  CHECK(max_diff(sigmoid(x32), sigmoid(x32_in_f64)) < 1.2e-7);
  CHECK(max_diff(exp(x32).to(kFloat64) / exp(x32_in_f64), ones({4099}, kFloat64)) < 1.2e-7);  // within an ulp
}
