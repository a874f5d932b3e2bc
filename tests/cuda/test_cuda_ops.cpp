// The public, autograd-aware API on CUDA tensors: the same calls as on the CPU dispatch to the
// CUDA kernels, gradients come back on the device, and results match the CPU. Skipped (with a
// message) without a GPU.
#include <doctest/doctest.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "autograd/ops.h"
#include "models/bcos_clip.h"
#include "models/bcosify.h"
#include "models/clip.h"
#include "models/explain.h"
#include "models/factory.h"
#include "nn/bcos.h"
#include "nn/optim.h"
#include "tensor/cuda/backend.h"
#include "tests/cuda/gpu_test.h"
#include "tests/cuda/small_models.h"
#include "tests/golden.h"

using namespace bcos;

using gpu_test::have_gpu;

TEST_CASE("cuda ops: add / mul / relu / sum / matmul forward and backward match the CPU") {
  if (!have_gpu()) return;
  manual_seed(11);
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    Tensor x = randn({8, 16}, dt), w = randn({16}, dt), b = randn({8, 1}, dt), m = randn({16, 4}, dt);
    auto run = [&](Device dev) {
      Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_();
      Tensor bd = b.to(dev).requires_grad_(), md = m.to(dev).requires_grad_();
      Tensor h = relu(xd.t().contiguous().t() * wd + bd);  // broadcast, strided operand
      Tensor loss = sum(sum(matmul(h, md), {1}));
      loss.backward();
      CHECK(xd.grad().device() == dev);
      return std::vector<Tensor>{loss.to(Device()), xd.grad().to(Device()), wd.grad().to(Device()),
                                 bd.grad().to(Device()), md.grad().to(Device())};
    };
    std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    double tol = dt == kFloat64 ? 1e-12 : 5e-3;  // f32 products run in TF32 on the GPU
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= tol);
    }
  }
}

TEST_CASE("cuda ops: reductions, comparisons and conversions through the public API") {
  if (!have_gpu()) return;
  manual_seed(12);
  Tensor x = randn({5, 7, 3}, kFloat64);
  Tensor g = x.to(Device::cuda(0));
  CHECK(golden::relative_error(mean(g, {0, 2}).to(Device()), mean(x, {0, 2})) <= 1e-12);
  CHECK(golden::relative_error(var(g, {1}).to(Device()), var(x, {1})) <= 1e-12);
  CHECK(golden::equal(max(g, 1).indices.to(Device()), max(x, 1).indices));
  CHECK(golden::equal(gt(g, 0.0).to(Device()), gt(x, 0.0)));
  CHECK(golden::equal(g.to(kFloat16).to(Device()).to(kFloat32), x.to(kFloat16).to(kFloat32)));
  CHECK(g.to_string().find("device='cuda:0'") != std::string::npos);
}

TEST_CASE("cuda ops: mixing devices and unknown devices raise clear errors") {
  if (!have_gpu()) return;
  Tensor c = ones({2}), g = ones({2}, Device::cuda(0));
  CHECK_THROWS_WITH_AS(add(c, g), doctest::Contains("different devices"), Error);
  CHECK_THROWS_WITH_AS(zeros({1}, Device::cuda(99)), doctest::Contains("cuda:99"), Error);
}

TEST_CASE("cuda ops: softmax, log_softmax and where forward and backward match the CPU") {
  if (!have_gpu()) return;
  manual_seed(12);
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    Tensor x = randn({4, 7, 5}, dt), gout = randn({4, 7, 5}, dt), other = randn({7, 1}, dt);
    Tensor cond = gt(randn({4, 7, 5}), 0.0);
    Tensor wide = randn({50, 300}, dt) * 4, wide_gout = randn({50, 300}, dt);  // rows wider than a warp
    auto run = [&](Device dev) {
      std::vector<Tensor> results;
      for (bool log : {false, true}) {
        Tensor xd = wide.to(dev).requires_grad_();
        Tensor y = log ? log_softmax(xd, 1) : softmax(xd, 1);
        sum(y * wide_gout.to(dev)).backward();
        results.push_back(y.to(Device()));
        results.push_back(xd.grad().to(Device()));
      }
      for (int64_t dim : {0, 1, 2}) {
        for (bool log : {false, true}) {
          Tensor xd = x.to(dev).transpose(0, 2).contiguous().transpose(0, 2).requires_grad_();  // strided input
          Tensor y = log ? log_softmax(xd, dim) : softmax(xd, dim);
          sum(y * gout.to(dev)).backward();
          results.push_back(y.to(Device()));
          results.push_back(xd.grad().to(Device()));
        }
      }
      Tensor a = x.to(dev).requires_grad_(), b = other.to(dev).requires_grad_();
      Tensor w = where(cond.to(dev), a, b);  // broadcast operand
      sum(w * gout.to(dev)).backward();
      results.push_back(w.to(Device()));
      results.push_back(a.grad().to(Device()));
      results.push_back(b.grad().to(Device()));
      return results;
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    const double tol = dt == kFloat64 ? 1e-12 : 1e-5;  // both accumulate in double; exp differs in the last bit
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= tol);
    }
  }
  // where on integer values, and rows holding -inf.
  Tensor c = gt(from_vector(std::vector<float>{1, -1, 1}, {3}), 0.0);
  Tensor ai = from_vector(std::vector<int64_t>{1, 2, 3}, {3}), bi = from_vector(std::vector<int64_t>{7, 8, 9}, {3});
  CHECK(where(c.to(Device::cuda(0)), ai.to(Device::cuda(0)), bi.to(Device::cuda(0))).to(Device()).to_vector<int64_t>() ==
        std::vector<int64_t>{1, 8, 3});
  Tensor inf_rows = from_vector(std::vector<float>{-INFINITY, 0, 1, -INFINITY, -INFINITY, 2}, {2, 3});
  CHECK(golden::relative_error(softmax(inf_rows.to(Device::cuda(0)), 1).to(Device()), softmax(inf_rows, 1)) <= 1e-6);
  // Rows of 40 (wider than a warp): one all −inf (NaN, as the CPU), one partly −inf.
  Tensor wide_inf = randn({3, 40});
  wide_inf.narrow(0, 0, 1).fill_(-INFINITY);
  wide_inf.narrow(0, 1, 1).narrow(1, 5, 30).fill_(-INFINITY);
  for (bool log : {false, true}) {
    CAPTURE(log);
    Tensor cpu = log ? log_softmax(wide_inf, 1) : softmax(wide_inf, 1);
    Tensor gpu = (log ? log_softmax(wide_inf.to(Device::cuda(0)), 1) : softmax(wide_inf.to(Device::cuda(0)), 1));
    CHECK(std::isnan(cpu.to_vector<float>()[0]));
    CHECK(golden::relative_error(gpu.to(Device()), cpu) <= 1e-6);  // NaN and −inf in the same places
  }
  // More rows than one pass of the grid holds (65,536 blocks of 8 warps): the row loops' second lap.
  Tensor many = randn({600000, 3});
  CHECK(golden::relative_error(softmax(many.to(Device::cuda(0)), 1).to(Device()), softmax(many, 1)) <= 1e-6);
  CHECK(golden::relative_error(layer_norm(many.to(Device::cuda(0)), {3}).to(Device()), layer_norm(many, {3})) <= 1e-5);
}

TEST_CASE("cuda ops: index_select and embedding forward and backward match the CPU; bad indices raise") {
  if (!have_gpu()) return;
  manual_seed(13);
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    Tensor w = randn({9, 6}, dt), x = randn({3, 9, 4}, dt);
    Tensor ids = from_vector(std::vector<int64_t>{4, 0, 4, 8, 4, 1}, {2, 3});  // repeats accumulate
    Tensor sel = from_vector(std::vector<int64_t>{8, 2, 2, 0}, {4});
    auto run = [&](Device dev) {
      Tensor wd = w.to(dev).requires_grad_(), xd = x.to(dev).requires_grad_();
      Tensor e = embedding(ids.to(dev), wd);
      Tensor s = index_select(xd, 1, sel.to(dev));
      (sum(e * e) + sum(s * s)).backward();
      return std::vector<Tensor>{e.to(Device()), s.to(Device()), wd.grad().to(Device()), xd.grad().to(Device())};
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-12 : 1e-6));
    }
  }
  Tensor table = ones({5, 2}, Device::cuda(0));
  // (Found by the kernel, raised by the next copy to the host: test_cuda_edges.cpp has the rest.)
  CHECK_THROWS_WITH_AS(index_select(table, 0, from_vector(std::vector<int64_t>{1, 5}, {2}).to(Device::cuda(0))).to(Device()),
                       doctest::Contains("index 5 is out of range for size 5"), Error);
  CHECK_THROWS_WITH_AS(embedding(from_vector(std::vector<int64_t>{-1}, {1}).to(Device::cuda(0)), table).to(Device()),
                       doctest::Contains("index -1 is out of range"), Error);
}

TEST_CASE("cuda ops: gather, scatter_add and cross-entropy forward and backward match the CPU") {
  if (!have_gpu()) return;
  manual_seed(14);
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    Tensor logits = randn({6, 5}, dt), base = randn({4, 3}, dt), src = randn({2, 3}, dt);
    Tensor target = from_vector(std::vector<int64_t>{0, 4, -100, 2, 2, 1}, {6});
    Tensor index = from_vector(std::vector<int64_t>{3, 0, 3, 1, 3, 2}, {2, 3});  // repeats accumulate
    auto run = [&](Device dev) {
      Tensor ld = logits.to(dev).requires_grad_(), bd = base.to(dev).requires_grad_(), sd = src.to(dev).requires_grad_();
      Tensor ce = cross_entropy(ld, target.to(dev), -100, 0.1);
      Tensor sc = scatter_add(bd, 0, index.to(dev), sd);
      Tensor ga = gather(ld, 1, from_vector(std::vector<int64_t>{4, 4, 0, 1, 2, 3}, {6, 1}).to(dev));
      (ce + sum(sc * sc) + sum(ga)).backward();
      return std::vector<Tensor>{ce.to(Device()), sc.to(Device()), ga.to(Device()), ld.grad().to(Device()),
                                 bd.grad().to(Device()), sd.grad().to(Device())};
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-12 : 1e-5));
    }
  }
  Tensor x = ones({2, 3}, Device::cuda(0));
  CHECK_THROWS_WITH_AS(gather(x, 1, from_vector(std::vector<int64_t>{0, 3}, {2, 1}).to(Device::cuda(0))).to(Device()),
                       doctest::Contains("gather: index 3 is out of range for size 3"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(x, from_vector(std::vector<int64_t>{0, 7}, {2}).to(Device::cuda(0))).item(),
                       doctest::Contains("cross_entropy: target 7 is out of range for 3 classes"), Error);
}

TEST_CASE("cuda ops: layer_norm, group_norm and unit_rows forward and backward match the CPU") {
  if (!have_gpu()) return;
  manual_seed(15);
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    Tensor x = randn({3, 5, 8}, dt), w = randn({8}, dt), b = randn({8}, dt);
    Tensor img = randn({2, 6, 3, 3}, dt), gw = randn({6}, dt), gb = randn({6}, dt);
    // B-cos weights: a conv's, and rows wider than a warp and more than a block's 8 warps.
    Tensor conv_w = randn({7, 3, 3, 3}, dt), lin_w = randn({300, 1000}, dt);
    Tensor wide = randn({300, 1000}, dt) * 3 + 1;  // layer norm rows wider than a warp, more than a block's
    // Weight alone over 700 rows that need no gradient (the weight's gradient alone, its rows split
    // over several blocks), bias alone over two dims.
    Tensor tall = randn({700, 40}, dt) - 2, tall_w = randn({40}, dt), two_dims_b = randn({5, 8}, dt);
    auto run = [&](Device dev) {
      Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_(), bd = b.to(dev).requires_grad_();
      Tensor id = img.to(dev).requires_grad_(), gwd = gw.to(dev).requires_grad_(), gbd = gb.to(dev).requires_grad_();
      Tensor ln = layer_norm(xd, {8}, wd, bd, 1e-5);
      Tensor gn = group_norm(id, 3, gwd, gbd, 1e-5);
      Tensor cwd = conv_w.to(dev).requires_grad_(), lwd = lin_w.to(dev).requires_grad_();
      Tensor cu = unit_rows(cwd), lu = unit_rows(lwd);
      Tensor wd2 = wide.to(dev).requires_grad_(), lw = layer_norm(wd2, {1000});
      Tensor td = tall.to(dev), twd = tall_w.to(dev).requires_grad_();
      Tensor tbd = two_dims_b.to(dev).requires_grad_();
      Tensor lt = layer_norm(td, {40}, twd, Tensor()), l2 = layer_norm(xd, {5, 8}, Tensor(), tbd);
      (sum(ln * ln * ln) + sum(gn * gn * gn) + sum(cu * cu * cu) + sum(lu * lu * lu) + sum(lw * lw * lw) +
       sum(lt * lt * lt) + sum(l2 * l2 * l2)).backward();
      return std::vector<Tensor>{ln.to(Device()), gn.to(Device()), xd.grad().to(Device()), wd.grad().to(Device()),
                                 bd.grad().to(Device()), id.grad().to(Device()), gwd.grad().to(Device()),
                                 gbd.grad().to(Device()), cu.to(Device()), lu.to(Device()),
                                 cwd.grad().to(Device()), lwd.grad().to(Device()), lw.to(Device()),
                                 wd2.grad().to(Device()), lt.to(Device()), l2.to(Device()), twd.grad().to(Device()),
                                 tbd.grad().to(Device())};
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-12 : 1e-5));
    }
  }
}

TEST_CASE("cuda ops: max, average and adaptive pooling forward and backward match the CPU") {
  if (!have_gpu()) return;
  manual_seed(16);
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    Tensor x = randn({2, 3, 9, 8}, dt);
    auto run = [&](Device dev) {
      Tensor xd = x.to(dev).requires_grad_();
      Tensor a = max_pool2d(xd, 3, 2, 1);                        // overlapping windows, padding
      Tensor b = max_pool2d(xd, 2, std::nullopt, 0, {2, 1});     // dilation
      Tensor c = avg_pool2d(xd, 3, 2, 1, false, true);           // padding counted
      Tensor d = avg_pool2d(xd, 3, 2, 1, true, false);           // ceil mode, padding not counted
      Tensor e = adaptive_avg_pool2d(xd, {4, 3});                // uneven bins
      Tensor f = avg_pool2d(xd, 2, 3, 0);                        // stride past the kernel: pixels in no window
      Tensor h = avg_pool2d(xd, 3, 2, 1, true, true);            // ceil mode, padding counted (clipped windows)
      Tensor k = avg_pool2d(xd, {3, 2}, IntPair(2, 1), {1, 1}, false, true, 5);  // divisor override
      (sum(a * a) + sum(b * b) + sum(c * c) + sum(d * d) + sum(e * e) + sum(f * f) + sum(h * h) + sum(k * k)).backward();
      return std::vector<Tensor>{a.to(Device()), b.to(Device()), c.to(Device()), d.to(Device()), e.to(Device()),
                                 f.to(Device()), h.to(Device()), k.to(Device()), xd.grad().to(Device())};
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-12 : 1e-5));
    }
  }
}

TEST_CASE("cuda ops: batch_norm (and with ReLU fused; centred and uncentred) in training and evaluation, forward, backward and running statistics match the CPU") {
  if (!have_gpu()) return;
  manual_seed(17);
  for (DType dt : {kFloat32, kFloat64})
  for (const Shape& shape : {Shape{4, 3, 9, 10}, Shape{5, 3, 50, 50}})
  for (bool far_means : {false, true}) {
    CAPTURE(dt);
    CAPTURE(shape);
    CAPTURE(far_means);
    // [4, 3, 9, 10]: 360 values per channel, over the block reduction's 256 threads, so that each
    // thread holds data (at 120 the upper half summed zeros and a missing barrier went unseen).
    // [5, 3, 50, 50]: 12,500 per channel, which the sums split across three blocks whose
    // stretches (4,167 values; 4,168, a whole number of packs, where they go in 16-byte packs)
    // start and end inside the 2,500-value planes.
    // far_means: channels centred at 0.5, 10^4 and -300 with spreads 2, 1 and 0.01. The GPU's one
    // pass shifts each channel's sums by a value of that channel; shifted by one far from the
    // channel's mean (another channel's), the variance would lose ~8 digits to cancellation.
    // These inputs are ill-conditioned in their own right: any two summation orders may give
    // means 1-2 units in the last place apart, and at -300 ± 0.01 one unit (5.7e-14) is 5.7e-12
    // of the spread, which every normalized value and gradient carries. Hence float64's 3e-11
    // here (float32's means, rounded from double sums, agree exactly).
    Tensor x = randn(shape, dt) * 2.0 + 0.5, w = randn({3}, dt), b = randn({3}, dt);
    if (far_means)
      x = randn(shape, dt) * from_vector<double>({2.0, 1.0, 0.01}, {1, 3, 1, 1}).to(dt) +
          from_vector<double>({0.5, 1e4, -300.0}, {1, 3, 1, 1}).to(dt);
    Tensor rm0 = randn({3}, dt), rv0 = rand({3}, dt) + 0.5;
    auto run = [&](Device dev) {
      std::vector<Tensor> results;
      for (int variant = 0; variant < 8; ++variant) {  // 4..7: uncentred
        const bool training = variant % 2 == 0, relu = variant % 4 >= 2;
        Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_(), bd = b.to(dev).requires_grad_();
        Tensor rm = rm0.to(dev).clone(), rv = rv0.to(dev).clone();
        Tensor y = variant < 4 ? batch_norm(xd, rm, rv, wd, bd, training, 0.1, 1e-5, relu)
                               : batch_norm_uncentered(xd, rv, wd, bd, training, 0.1, 1e-5, relu);
        sum(y * y * y).backward();
        for (const Tensor& t : {y, xd.grad(), wd.grad(), bd.grad(), rm, rv}) results.push_back(t.to(Device()));
      }
      return results;
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? (far_means ? 3e-11 : 1e-12) : 1e-5));
    }
  }
}

TEST_CASE("cuda ops: synchronised batch norm (centred and uncentred, with ReLU) matches the CPU") {
  if (!have_gpu()) return;
  manual_seed(27);
  // A doubled sum stands for a second, identical replica: the kernels then take their means from
  // the replicas' sums and count, not their own.
  auto twice = [](const Tensor& t) { return t * 2.0; };
  for (DType dt : {kFloat32, kFloat64}) {
    CAPTURE(dt);
    Tensor x = randn({4, 3, 9, 10}, dt) * 2.0 + 0.5, w = randn({3}, dt), b = randn({3}, dt);
    Tensor rm0 = randn({3}, dt), rv0 = rand({3}, dt) + 0.5;
    auto run = [&](Device dev) {
      std::vector<Tensor> results;
      for (int variant = 0; variant < 4; ++variant) {
        const bool centred = variant % 2 == 0, relu = variant >= 2;
        Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_(), bd = b.to(dev).requires_grad_();
        Tensor rm = rm0.to(dev).clone(), rv = rv0.to(dev).clone();
        Tensor y = batch_norm_synced(xd, centred ? rm : Tensor(), rv, wd, bd, 0.1, 1e-5, relu, centred, twice);
        sum(y * y * y).backward();
        for (const Tensor& t : {y, xd.grad(), wd.grad(), bd.grad(), rm, rv}) results.push_back(t.to(Device()));
      }
      return results;
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-12 : 1e-5));
    }
  }
}

TEST_CASE("cuda ops: cuDNN conv2d forward and backward match the CPU (groups, stride, padding, dilation, bias)") {
  if (!have_gpu()) return;
  manual_seed(18);
  struct Case {
    int64_t c, o, k, groups;
    IntPair stride, padding, dilation;
    bool bias;
  };
  const Case cases[] = {{3, 8, 3, 1, 1, 1, 1, true},  {4, 6, 3, 2, 2, 1, 1, false}, {4, 4, 3, 4, 1, 2, 2, true},
                        {5, 3, 1, 1, 1, 0, 1, true},  {3, 4, 5, 1, {2, 1}, {2, 0}, 1, false}};
  for (DType dt : {kFloat32, kFloat64}) {
    for (const Case& c : cases) {
      CAPTURE(dt);
      CAPTURE(c.k);
      CAPTURE(c.groups);
      Tensor x = randn({2, c.c, 9, 8}, dt), w = randn({c.o, c.c / c.groups, c.k, c.k}, dt), b = randn({c.o}, dt);
      auto run = [&](Device dev) {
        Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_(), bd = b.to(dev).requires_grad_();
        Tensor y = conv2d(xd, wd, c.bias ? bd : Tensor(), c.stride, c.padding, c.dilation, c.groups);
        sum(y * y).backward();
        std::vector<Tensor> r{y.to(Device()), xd.grad().to(Device()), wd.grad().to(Device())};
        if (c.bias) r.push_back(bd.grad().to(Device()));
        return r;
      };
      const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
      for (size_t i = 0; i < cpu.size(); ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-10 : 5e-3));  // f32: TF32 by default
      }
    }
  }
}

TEST_CASE("cuda ops: with cudnn_benchmark, each new convolution shape is timed once per direction, and the fastest's results match the CPU") {
  if (!have_gpu()) return;
  struct Benchmarking {
    bool was = cudnn_benchmark(), graph = cudnn_graph_api();
    Benchmarking() { set_cudnn_benchmark(true), set_cudnn_graph_api(false); }  // the legacy API's count
    ~Benchmarking() { set_cudnn_benchmark(was), set_cudnn_graph_api(graph); }
  } benchmarking;
  manual_seed(41);
  const Device cuda = Device::cuda(0);
  for (bool deterministic : {false, true})
    for (DType dt : {kFloat32, kFloat64}) {
      CAPTURE(deterministic);
      CAPTURE(dt);
      // Shapes no other case convolves (the choices are kept per process), one per pass.
      const int64_t h = deterministic ? 13 : 11;
      const Tensor x = randn({3, 5, h, 7}, dt), w = randn({6, 5, 3, 3}, dt);
      auto run = [&](Device dev) {
        Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_();
        Tensor y = conv2d(xd, wd, Tensor(), 2, 1, 1, 1);
        sum(y * y).backward();
        return std::vector<Tensor>{y.to(Device()), xd.grad().to(Device()), wd.grad().to(Device())};
      };
      set_deterministic_algorithms(deterministic);
      const int64_t before = cuda::conv_algorithms_benchmarked();
      const std::vector<Tensor> gpu = run(cuda);
      // float64 first times the shape in float64: a separate entry, so each dtype counts 3
      CHECK(cuda::conv_algorithms_benchmarked() - before == 3);  // forward, backward data, backward filter
      const std::vector<Tensor> again = run(cuda), cpu = run(Device());
      CHECK(cuda::conv_algorithms_benchmarked() - before == 3);  // kept: not timed again
      set_deterministic_algorithms(false);
      for (size_t i = 0; i < cpu.size(); ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-10 : 5e-3));  // f32: TF32 by default
        if (deterministic) CHECK(golden::equal(again[i], gpu[i]));
      }
    }
}

TEST_CASE("cuda ops: autocast bf16 / f16 linear, matmul and conv2d, forward and backward, match the CPU's autocast") {
  // Both devices multiply rounded operands and sum in float32, and round each result once to the
  // 16-bit type (autocast's result type; the gradients reach the float32 leaves through the
  // casts, rounded too): an element of one device flips by an ulp where the float32 sums, taken
  // in another order, straddle a rounding boundary: 2^-8 (bf16) at most, norm-wise. The loss is
  // linear in the outputs with small-integer weights, so the incoming gradients are exact in
  // 16 bits and the same on both devices (a gradient formed from an output that differs in its
  // last float32 bit could round to another bf16 value and move a product by 2^-8).
  if (!have_gpu()) return;
  manual_seed(19);
  const Tensor x = randn({6, 40}), w = randn({24, 40}), b = randn({24});
  const Tensor a = randn({3, 9, 33}), m = randn({3, 6, 33});  // m used transposed: a strided operand
  const Tensor img = randn({2, 8, 10, 10}), k = randn({6, 4, 3, 3}), kb = randn({6});
  const Tensor c1 = randint(-3, 4, {6, 24}).to(kFloat32), c2 = randint(-3, 4, {3, 9, 6}).to(kFloat32),
               c3 = randint(-3, 4, {2, 6, 5, 5}).to(kFloat32);
  for (DType dt : {kBFloat16, DType::f16}) {
    CAPTURE(dt);
    auto run = [&](Device dev) {
      std::vector<Tensor> leaves;
      for (const Tensor& t : {x, w, b, a, m, img, k, kb}) leaves.push_back(t.to(dev).requires_grad_());
      Tensor y1, y2, y3;
      {
        AutocastGuard guard(dev.type, dt);
        y1 = linear(leaves[0], leaves[1], leaves[2]);
        y2 = matmul(leaves[3], leaves[4].transpose(1, 2));
        y3 = conv2d(leaves[5], leaves[6], leaves[7], 2, 1, 1, 2);
      }
      (sum(y1 * c1.to(dev)) + sum(y2 * c2.to(dev)) + sum(y3 * c3.to(dev))).backward();
      std::vector<Tensor> r{y1.to(Device()), y2.to(Device()), y3.to(Device())};
      for (const Tensor& l : leaves) r.push_back(l.grad().to(Device()));
      return r;
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(cpu[i].dtype() == (i < 3 ? dt : kFloat32));
      CHECK(gpu[i].dtype() == cpu[i].dtype());
      // The convolution's bias: cuDNN rounds its sums, our add (as PyTorch's CUDA path) rounds
      // again, where the CPU rounds once: an element apart by at most 1.5 ulps, 1.5 * 2^-7 of it.
      const double ulp = dt == kBFloat16 ? 0x1p-7 : 0x1p-10;
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= (i == 2 ? 1.5 * ulp : ulp / 2));
    }
  }
}

TEST_CASE("cuda ops: autocast's float32 list on CUDA, as torch's: softmax, norms, sum, exp, pow widen a 16-bit input") {
  // (torch's CPU list keeps these in the input's type: tests/autograd/test_autocast.cpp.)
  if (!have_gpu()) return;
  manual_seed(24);
  const Device gpu = Device::cuda(0);
  const Tensor x = randn({4, 6}).to(gpu), w = randn({5, 6}).to(gpu);
  AutocastGuard guard(DeviceType::cuda);
  const Tensor y = linear(x, w);
  REQUIRE(y.dtype() == kBFloat16);
  for (const Tensor& t : {softmax(y, 1), log_softmax(y, 1), layer_norm(y, {5}), group_norm(y.reshape({4, 5, 1}), 5), sum(y),
                          sum(y, {1}), norm(y), logsumexp(y, {1}), exp(y), log(abs(y)), log1p(abs(y)), rsqrt(abs(y)),
                          reciprocal(y), pow(y, 2.0), pow(y, y), cross_entropy(y, zeros({4}, {DType::i64, gpu}))})
    CHECK(t.dtype() == kFloat32);
  for (const Tensor& t : {relu(y), gelu(y), abs(y), mean(y), y * 2.0, batch_norm(y, Tensor(), Tensor(), Tensor(), Tensor(), true)})
    CHECK(t.dtype() == kBFloat16);
  // The widened ops compute on the widened values: softmax of bf16 y as of y.to(float32).
  CHECK(golden::relative_error(softmax(y, 1), softmax(y.to(kFloat32), 1)) <= 1e-6);
  // A CPU autocast leaves CUDA tensors alone, and the other way round.
  AutocastGuard cuda_off(DeviceType::cuda, kBFloat16, false);
  AutocastGuard cpu_on(DeviceType::cpu);
  CHECK(linear(x, w).dtype() == kFloat32);
}

TEST_CASE("cuda ops: float32 linear layers add their bias in cuBLASLt's epilogue (TF32 and under bf16 autocast) and match the CPU") {
  // A layer of ViT's shape in miniature. On a GPU this shows that cuBLASLt takes the calls as
  // matmul.cu makes them: a refusal would fall back to the copy-and-accumulate path (and pass the
  // model tests), so the count of fallbacks is what fails here.
  if (!have_gpu()) return;
  manual_seed(23);
  const Tensor x = randn({130, 96}), w = randn({72, 96}) * 0.1, b = randn({72});
  for (bool autocast : {false, true}) {
    CAPTURE(autocast);
    auto run = [&](Device dev) {
      Tensor xd = x.to(dev).clone().requires_grad_(), wd = w.to(dev).clone().requires_grad_();
      Tensor bd = b.to(dev).clone().requires_grad_(), y;
      {
        AutocastGuard guard(dev.type, kBFloat16, autocast);
        y = linear(xd, wd, bd);
      }
      sum(y * y).backward();
      return std::vector<Tensor>{y.to(Device()), xd.grad().to(Device()), wd.grad().to(Device()), bd.grad().to(Device())};
    };
    const int64_t epilogues = cuda::linear_bias_epilogues(), fallbacks = cuda::linear_bias_fallbacks();
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    CHECK(cuda::linear_bias_epilogues() - epilogues == 1);
    CHECK(cuda::linear_bias_fallbacks() == fallbacks);
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= 5e-3);  // TF32 / bf16 operands on both sides' terms (and under
                                                              // autocast the bf16 result's rounding: 2^-9)
    }
  }
}

TEST_CASE("cuda ops: topk (largest and smallest, ties, NaN) matches the CPU") {
  if (!have_gpu()) return;
  manual_seed(20);
  Tensor x = randn({5, 9});
  Tensor ties = from_vector(std::vector<float>{1, 3, 3, NAN, 0, 3, -1, NAN}, {2, 4});
  Tensor ints = from_vector(std::vector<int64_t>{4, 1, 4, 9, 0, 9}, {2, 3});
  for (const Tensor& t : {x, ties, ints})
    for (bool largest : {true, false})
      for (int64_t dim : {0, 1}) {
        const int64_t k = std::min<int64_t>(3, t.size(dim));
        const ValuesIndices cpu = topk(t, k, dim, largest), gpu = topk(t.to(Device::cuda(0)), k, dim, largest);
        CHECK(golden::equal(gpu.indices.to(Device()), cpu.indices));
        auto finite = [](const Tensor& v) {  // NaN -> 0, so equal() can compare
          const Tensor d = v.to(Device()).to(kFloat64);
          return where(ne(d, d), zeros_like(d), d);
        };
        CHECK(golden::equal(finite(gpu.values), finite(cpu.values)));
      }
}

TEST_CASE("cuda ops: random fills and dropout masks on the GPU are the CPU's numbers, word for word") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  for (DType dt : {kFloat32, kFloat64, kFloat16}) {
    CAPTURE(dt);
    manual_seed(21);
    const Tensor u = rand({1001}, dt), n = randn({1001}, dt);
    const Tensor k = randint(-5, 9, {333});
    manual_seed(21);
    CHECK(golden::equal(rand({1001}, {dt, gpu}).to(Device()), u));
    // Box-Muller's log / cos / sin are CUDA's on the GPU and the C library's on the CPU: they may
    // differ in the last bit of a double, which rounding to f32 / f16 almost always hides.
    const double tol = dt == kFloat64 ? 1e-15 : dt == kFloat32 ? 1e-6 : 1e-3;
    CHECK(golden::relative_error(randn({1001}, {dt, gpu}).to(Device()), n) <= tol);
    CHECK(golden::equal(randint(-5, 9, {333}, {DType::i64, gpu}).to(Device()), k));
  }
  manual_seed(22);
  const Tensor x = randn({64, 32});
  const GeneratorState before = get_rng_state();
  const Tensor on_cpu = dropout(x, 0.3);
  set_rng_state(before);
  const Tensor on_gpu = dropout(x.to(gpu), 0.3);
  CHECK(on_gpu.device() == gpu);
  CHECK(golden::equal(on_gpu.to(Device()), on_cpu));
}

TEST_CASE("cuda ops: ResNet-20 / 18 / 50 and their B-cos forms -- forward, explanation, one SGD step -- match the CPU") {
  if (!have_gpu()) return;
  for (const char* arch : {"resnet20", "resnet18", "resnet50"})
  for (bool bcos : {false, true}) {
    CAPTURE(arch);
    CAPTURE(bcos);
    const models::ModelSpec spec = models::model_spec(arch);
    const int64_t size = spec.input_size == 32 ? 32 : 64;  // ImageNet ResNets at 64 px: every layer, less time
    auto make = [&](Device dev) {
      manual_seed(21);  // the same weights on both devices
      std::shared_ptr<nn::Module> m = models::create_model(arch);
      if (bcos) {
        models::BcosifyOptions o;
        o.mean = spec.mean, o.std = spec.std;
        m = models::bcosify(m, o);
      }
      m->to(kFloat64);
      m->to(dev);
      return m;
    };
    manual_seed(22);
    const Tensor images = rand({4, 3, size, size}, kFloat64);
    const Tensor labels = from_vector(std::vector<int64_t>{3, 0, 9, 3}, {4});
    auto run = [&](Device dev) {
      auto model = make(dev);
      const Tensor x = (bcos ? nn::add_inverse(images) : images).to(dev);
      std::vector<Tensor> results;
      if (bcos) {
        const models::Explanation e = models::explain(*model, x, labels.to(dev));
        results.push_back(e.contributions.to(Device()));
        results.push_back(e.logits.to(Device()));
      }
      model->train();
      std::vector<Tensor> params = model->parameters();
      nn::SGD sgd(params, {.lr = 0.05, .momentum = 0.9});
      const Tensor logits = (*model)(x);
      const Tensor loss = bcos ? nn::uniform_off_labels_bce(logits, labels.to(dev)) : cross_entropy(logits, labels.to(dev));
      sgd.zero_grad();
      loss.backward();
      sgd.step();
      results.push_back(logits.detach().to(Device()));
      for (const auto& [name, p] : model->named_parameters()) results.push_back(p.detach().to(Device()));
      for (const auto& [name, b] : model->named_buffers()) results.push_back(b.to(Device()).to(kFloat64));
      return results;
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    REQUIRE(cpu.size() == gpu.size());
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-9);
    }
  }
}

TEST_CASE("cuda ops: with deterministic algorithms, f32 B-cos ResNet-20 gradients repeat bit for bit") {
  if (!have_gpu()) return;
  // Without TF32: the default path may choose other cuDNN algorithms than the deterministic
  // one, and TF32's rounding then differs between them by ~1e-3; float32's does not.
  const gpu_test::Tf32 exact_f32(false);
  const models::ModelSpec spec = models::model_spec("resnet20");
  manual_seed(31);
  std::shared_ptr<nn::Module> model = models::create_model("resnet20");
  models::BcosifyOptions o;
  o.mean = spec.mean, o.std = spec.std;
  model = models::bcosify(model, o);
  model->to(Device::cuda(0));
  manual_seed(32);
  const Tensor x = nn::add_inverse(rand({16, 3, 32, 32})).to(Device::cuda(0));
  const Tensor labels = randint(0, 10, {16}).to(Device::cuda(0));
  auto gradients = [&] {
    for (Tensor& p : model->parameters()) p.zero_grad();
    nn::uniform_off_labels_bce((*model)(x), labels).backward();
    std::vector<Tensor> out;
    for (const Tensor& p : model->parameters()) out.push_back(p.grad().to(Device()));
    return out;
  };
  set_deterministic_algorithms(true);
  const std::vector<Tensor> first = gradients(), second = gradients();
  set_deterministic_algorithms(false);
  REQUIRE(first.size() == second.size());
  for (size_t i = 0; i < first.size(); ++i) {
    CAPTURE(i);
    CHECK(golden::equal(first[i], second[i]));
  }
  // And the ordered sums are the same sums: the default path agrees to rounding.
  const std::vector<Tensor> fast = gradients();
  for (size_t i = 0; i < first.size(); ++i) CHECK(golden::relative_error(fast[i], first[i]) <= 1e-4);
}

TEST_CASE("cuda ops: with deterministic algorithms, the scattering ops (pooling, embedding, index_select, gather, scatter_add) repeat bit for bit") {
  if (!have_gpu()) return;
  // Each of these adds several terms into one element with atomics by default; deterministic
  // mode gives every such sum one thread that adds its terms in order. (On the emulator the
  // order of atomics is drawn at each launch, so a default path here would differ between runs.)
  const Device cuda = Device::cuda(0);
  manual_seed(33);
  const Tensor x = randn({4, 8, 12, 12}), table = randn({40, 16}), rows = randn({6, 30, 5});
  const Tensor ids = randint(0, 40, {64, 8}).to(cuda), pick = randint(0, 30, {90}).to(cuda);
  const Tensor where = randint(0, 30, {6, 70, 5}).to(cuda), src = randn({6, 70, 5}).to(cuda);
  const std::vector<std::pair<Tensor, std::function<Tensor(const Tensor&)>>> cases = {
      {x, [](const Tensor& t) { return max_pool2d(t, 3, 1, 1); }},  // overlapping windows
      {x, [](const Tensor& t) { return avg_pool2d(t, 3, 1, 1); }},
      {x, [](const Tensor& t) { return adaptive_avg_pool2d(t, {5, 5}); }},  // 12 -> 5: bins overlap
      {table, [&](const Tensor& t) { return embedding(ids, t); }},           // repeated ids
      {rows, [&](const Tensor& t) { return index_select(t, 1, pick); }},
      {rows, [&](const Tensor& t) { return gather(t, 1, where); }},
      {rows, [&](const Tensor& t) { return scatter_add(t, 1, where, src); }},
  };
  std::vector<Tensor> upstream;  // drawn at the first run: over six orders of magnitude, so that
                                 // float32 sums of them depend on the order of their terms
  auto run = [&] {
    std::vector<Tensor> out;
    for (size_t i = 0; i < cases.size(); ++i) {
      Tensor leaf = cases[i].first.to(cuda).requires_grad_();
      Tensor y = cases[i].second(leaf);
      if (upstream.size() <= i) upstream.push_back((randn(y.shape()) * exp(randn(y.shape()) * 3.0)).to(cuda));
      y.backward(upstream[i]);
      out.push_back(y.to(Device()));
      out.push_back(leaf.grad().to(Device()));
    }
    return out;
  };
  set_deterministic_algorithms(true);
  const std::vector<Tensor> first = run(), second = run();
  set_deterministic_algorithms(false);
  for (size_t i = 0; i < first.size(); ++i) {
    CAPTURE(i);
    CHECK(golden::equal(first[i], second[i]));
  }
  const std::vector<Tensor> fast = run();  // the default path: the same sums, rounded otherwise
  for (size_t i = 0; i < first.size(); ++i) CHECK(golden::relative_error(fast[i], first[i]) <= 1e-5);
}

TEST_CASE("cuda ops: ViT-B/16 and CLIP (RN50 and ViT-B/32 image towers, text tower) -- forward and one SGD step -- match the CPU") {
  if (!have_gpu()) return;
  // float64, so the only differences are summation orders: 1e-9.
  auto compare = [](const std::vector<Tensor>& cpu, const std::vector<Tensor>& gpu) {
    REQUIRE(cpu.size() == gpu.size());
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-9);
    }
  };
  auto step = [](nn::Module& model, const Tensor& out, const Tensor& labels) {
    std::vector<Tensor> params = model.parameters();
    nn::SGD sgd(params, {.lr = 0.05, .momentum = 0.9});
    sgd.zero_grad();
    cross_entropy(out, labels).backward();
    sgd.step();
    std::vector<Tensor> r{out.detach().to(Device())};
    for (const auto& [name, p] : model.named_parameters()) r.push_back(p.detach().to(Device()));
    return r;
  };
  manual_seed(42);
  const Tensor images = randn({2, 3, 224, 224}, kFloat64), labels = from_vector(std::vector<int64_t>{7, 1}, {2});
  {
    auto run = [&](Device dev) {
      manual_seed(43);
      std::shared_ptr<nn::Module> vit = models::create_model("vit_b_16");
      vit->to(kFloat64);
      vit->to(dev);
      vit->train();
      return step(*vit, (*vit)(images.to(dev)), labels.to(dev));
    };
    CAPTURE("vit_b_16");
    compare(run(Device()), run(Device::cuda(0)));
  }
  for (const char* name : {"RN50", "ViT-B/32"}) {
    CAPTURE(name);
    auto run = [&](Device dev) {
      manual_seed(44);
      models::Clip clip(models::ClipConfig::named(name));
      clip.to(kFloat64);
      clip.to(dev);
      clip.train();
      const Tensor tokens = randint(1, 49406, {2, 77}).to(dev);
      const Tensor logits = clip.logits(clip.encode_image(images.to(dev)), clip.encode_text(tokens));
      return step(clip, logits, from_vector(std::vector<int64_t>{0, 1}, {2}).to(dev));
    };
    compare(run(Device()), run(Device::cuda(0)));
  }
}

TEST_CASE("cuda ops: a small CLIP (ModifiedResNet and ViT image towers, causal text tower) -- forward and one SGD step -- matches the CPU") {
  if (!have_gpu()) return;
  // The 224-px case above at a size the CUDA emulator runs in seconds: every module of both
  // towers, the text tower's causal mask included (it once stayed on the CPU after to(cuda)).
  manual_seed(46);
  const Tensor images = randn({2, 3, 32, 32}, kFloat64), images64 = randn({2, 3, 64, 64}, kFloat64);
  const Tensor tokens = randint(1, 63, {2, 9});
  for (int64_t patch : {0, 8}) {
    CAPTURE(patch);
    auto run = [&](Device dev) {
      manual_seed(47);
      models::Clip clip(small_models::clip_config(patch));
      clip.to(kFloat64);
      clip.to(dev);
      clip.train();
      std::vector<Tensor> params = clip.parameters();
      nn::SGD sgd(params, {.lr = 0.05, .momentum = 0.9});
      const Tensor logits = clip.logits(clip.encode_image(images.to(dev)), clip.encode_text(tokens.to(dev)));
      sgd.zero_grad();
      models::clip_contrastive_loss(logits).backward();
      sgd.step();
      std::vector<Tensor> r{logits.detach().to(Device())};
      for (const auto& [name, p] : clip.named_parameters()) r.push_back(p.detach().to(Device()));
      // GridPG's grids at twice the resolution: the positions resampled (on the CPU) stay on dev
      models::set_image_resolution(*clip.visual, 64);
      NoGradGuard no_grad;
      r.push_back(clip.encode_image(images64.to(dev)).to(Device()));
      return r;
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    REQUIRE(cpu.size() == gpu.size());
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-9);
    }
  }
}
