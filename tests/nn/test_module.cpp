// Module mechanics: registration order and keys, load_state_dict's checks, modes, devices,
// dtypes, replacing children, default initialisation bounds.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <optional>

#include "autograd/ops.h"
#include "golden.h"
#include "nn/bcos.h"
#include "nn/init.h"
#include "nn/layers.h"
#include "nn/loss.h"
#include "nn/linear.h"
#include "nn/module.h"
#include "nn/norm.h"
#include "nn/optim.h"
#include "tests/errors.h"

using namespace bcos;
using testing::error_of;
using namespace bcos::nn;

namespace {

struct Block : Module {
  ModulePtr conv, bn, act;
  Tensor scale;
  Block() : Module("Block") {
    register_module("conv", conv, std::make_shared<Conv2d>(3, 4, 3, Conv2dOptions{.padding = 1, .bias = false}));
    register_module("bn", bn, std::make_shared<BatchNorm2d>(4));
    register_module("act", act, std::make_shared<ReLU>());
    register_parameter("scale", scale, ones({1}));
  }
  Tensor forward(const Tensor& x) override { return (*act)((*bn)((*conv)(x))) * scale; }
};

std::vector<std::string> keys(const StateDict& s) {
  std::vector<std::string> k;
  for (const auto& [key, t] : s) k.push_back(key);
  return k;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to_vector<double>() == b.to_vector<double>();
}

}  // namespace

TEST_CASE("module: state_dict keys follow PyTorch: own tensors first, then children in order") {
  Sequential net({std::make_shared<Block>(), std::make_shared<Flatten>(), std::make_shared<Linear>(4 * 5 * 5, 2)});
  CHECK(keys(net.state_dict()) ==
        std::vector<std::string>{"0.scale", "0.conv.weight", "0.bn.weight", "0.bn.bias", "0.bn.running_mean",
                                 "0.bn.running_var", "0.bn.num_batches_tracked", "2.weight", "2.bias"});
  CHECK(keys(net.named_parameters()) ==
        std::vector<std::string>{"0.scale", "0.conv.weight", "0.bn.weight", "0.bn.bias", "2.weight", "2.bias"});
  CHECK(net.num_parameters() == 1 + 4 * 3 * 9 + 4 + 4 + 100 * 2 + 2);
  for (const Tensor& p : net.parameters()) CHECK(p.requires_grad());
  CHECK(net(randn({2, 3, 5, 5})).shape() == Shape({2, 2}));
  CHECK(net.to_string().find("(1): Flatten") != std::string::npos);
}

TEST_CASE("module: load_state_dict copies by key and reports missing, unexpected and mismatched keys") {
  Block a, b;
  b.load_state_dict(a.state_dict());
  for (const auto& [key, t] : b.state_dict()) CHECK(same(t, *find(a.state_dict(), key)));
  StateDict s = a.state_dict();
  s.erase(s.begin());  // "scale"
  s.emplace_back("extra.weight", zeros({2}));
  const std::string err = error_of([&] { b.load_state_dict(s); });
  CHECK(err.find("missing keys: scale") != std::string::npos);
  CHECK(err.find("unexpected keys: extra.weight") != std::string::npos);
  b.load_state_dict(s, /*strict=*/false);  // the rest loads
  CHECK(same(dynamic_cast<Conv2d&>(*b.conv).weight, dynamic_cast<Conv2d&>(*a.conv).weight));
  StateDict wrong = a.state_dict();
  wrong[1].second = zeros({4, 3, 5, 5});
  CHECK(error_of([&] { b.load_state_dict(wrong, false); }).find("conv.weight: checkpoint [4, 3, 5, 5], model [4, 3, 3, 3]") !=
        std::string::npos);
  // Checkpoints from before num_batches_tracked existed still load strictly.
  StateDict old = a.state_dict();
  std::erase_if(old, [](const auto& kv) { return kv.first == "bn.num_batches_tracked"; });
  b.load_state_dict(old);
}

TEST_CASE("module: train / eval reach every child; BatchNorm uses running statistics in eval") {
  Block m;
  m.eval();
  auto& bn = dynamic_cast<BatchNorm2d&>(*m.bn);
  CHECK(!bn.is_training());
  const Tensor x = randn({2, 3, 6, 6}) * 3 + 1;
  Tensor before = bn.running_mean.clone();
  m(x);
  CHECK(same(bn.running_mean, before));
  CHECK(bn.num_batches_tracked.item<int64_t>() == 0);
  m.train();
  m(x);
  CHECK(!same(bn.running_mean, before));
  CHECK(bn.num_batches_tracked.item<int64_t>() == 1);
}

TEST_CASE("module: the batch norms count their training batches in the kernel that steps the statistics") {
  // Each norm op increments a given num_batches_tracked once per training step -- with ReLU, the
  // uncentred norm, the synchronised one (a world of one), 16-bit input, an empty batch -- and
  // leaves it alone in evaluation; the modules hand theirs over (momentum None counts first).
  manual_seed(44);
  const Tensor x = randn({4, 3, 5, 5}), rm = zeros({3}), rv = ones({3}), w = ones({3}), b = zeros({3});
  const auto world_of_one = [](const Tensor& t) { return t; };
  Tensor count = zeros({}, DType::i64);
  auto counted = [&](const std::function<void()>& step) {
    const int64_t before = count.item<int64_t>();
    const uint64_t version = count.version();
    step();
    CHECK(count.version() > version);
    return count.item<int64_t>() - before;
  };
  CHECK(counted([&] { batch_norm(x, rm, rv, w, b, true, 0.1, 1e-5, false, count); }) == 1);
  CHECK(counted([&] { batch_norm(x, rm, rv, w, b, true, 0.1, 1e-5, true, count); }) == 1);
  CHECK(counted([&] { batch_norm(x.to(DType::bf16), rm, rv, w, b, true, 0.1, 1e-5, false, count); }) == 1);
  CHECK(counted([&] { batch_norm(x.to(DType::bf16), rm.to(DType::bf16), rv.to(DType::bf16), w.to(DType::bf16),
                                 b.to(DType::bf16), true, 0.1, 1e-5, false, count); }) == 1);
  CHECK(counted([&] { batch_norm(empty({0, 3, 5, 5}), rm, rv, w, b, true, 0.1, 1e-5, false, count); }) == 1);
  CHECK(counted([&] { batch_norm_uncentered(x, rv, w, b, true, 0.1, 1e-5, false, count); }) == 1);
  CHECK(counted([&] { batch_norm_synced(x, rm, rv, w, b, 0.1, 1e-5, false, true, world_of_one, count); }) == 1);
  CHECK(counted([&] { batch_norm_synced(x, Tensor(), rv, w, b, 0.1, 1e-5, true, false, world_of_one, count); }) == 1);
  const int64_t now = count.item<int64_t>();
  batch_norm(x, rm, rv, w, b, false, 0.1, 1e-5, false, count);
  batch_norm_uncentered(x, rv, w, b, false, 0.1, 1e-5, false, count);
  CHECK(count.item<int64_t>() == now);
  CHECK_THROWS_WITH_AS(batch_norm(x, rm, rv, w, b, true, 0.1, 1e-5, false, zeros({2}, DType::i64)),
                       doctest::Contains("num_batches_tracked must be one int64, got int64 [2]"), Error);
  // The modules: three training steps, one evaluation, with and without momentum.
  for (const std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()}) {
    BatchNorm2d bn(3, 1e-5, momentum);
    nn::BatchNormUncentered2d bnu(3, 1e-5, momentum);
    for (int k = 0; k < 3; ++k) bn(x), bnu(x);
    bn.eval(), bnu.eval();
    bn(x), bnu(x);
    CHECK(bn.num_batches_tracked.item<int64_t>() == 3);
    CHECK(bnu.num_batches_tracked.item<int64_t>() == 3);
  }
}

TEST_CASE("module: BatchNorm2d with momentum = None keeps the plain average of every batch's statistics") {
  manual_seed(41);
  BatchNorm2d bn(3, 1e-5, std::nullopt);
  CHECK(bn.describe().find("momentum=None") != std::string::npos);
  std::vector<Tensor> batches = {randn({4, 3, 5, 5}) * 2 + 1, randn({2, 3, 5, 5}) - 3, randn({3, 3, 5, 5}) * 0.5};
  Tensor mean_sum = zeros({3}), var_sum = zeros({3});
  for (size_t k = 0; k < batches.size(); ++k) {
    bn(batches[k]);
    mean_sum = mean_sum + mean(batches[k], {0, 2, 3});
    var_sum = var_sum + var(batches[k], {0, 2, 3}, 1);  // the running variance is the unbiased one
    const double seen = double(k + 1);
    CHECK(bn.num_batches_tracked.item<int64_t>() == int64_t(k + 1));
    CHECK(golden::relative_error(bn.running_mean, mean_sum / seen) <= 1e-6);
    CHECK(golden::relative_error(bn.running_var, var_sum / seen) <= 1e-6);
  }
  // the first batch replaces the initial statistics outright (factor 1 / 1), unlike momentum 0.1
  BatchNorm2d ema(3);
  ema(batches[0]);
  CHECK(golden::relative_error(ema.running_mean, mean(batches[0], {0, 2, 3}) * 0.1) <= 1e-6);
  // the uncentred norm of bcosify (biased variance, as the authors' layer) averages the same way
  nn::BatchNormUncentered2d bnu(3, 1e-5, std::nullopt);
  CHECK(bnu.describe().find("momentum=None") != std::string::npos);
  bnu(batches[0]), bnu(batches[1]);
  Tensor expect = (var(batches[0], {0, 2, 3}, 0) + var(batches[1], {0, 2, 3}, 0)) / 2.0;
  CHECK(golden::relative_error(bnu.running_var, expect) <= 1e-6);
}

TEST_CASE("module: batch_norm steps strided running statistics (views) exactly as contiguous ones, in place") {
  // The per-channel finish (kernel::batch_norm_finish) steps contiguous copies of strided views and
  // writes them back: the same bits either way, the views' storage updated, its version bumped.
  manual_seed(43);
  const Tensor x = randn({4, 3, 5, 5}) * 2 + 1;
  for (bool uncentered : {false, true}) {
    CAPTURE(uncentered);
    Tensor rm = rand({3}), rv = rand({3}) + 0.5;
    Tensor wide = zeros({3, 2});  // columns 0 and 1: strided views of one storage
    wide.narrow(1, 0, 1).squeeze(1).copy_(rm);
    wide.narrow(1, 1, 1).squeeze(1).copy_(rv);
    Tensor rm_view = wide.narrow(1, 0, 1).squeeze(1), rv_view = wide.narrow(1, 1, 1).squeeze(1);
    REQUIRE(!rm_view.is_contiguous());
    const uint64_t version = wide.version();
    Tensor a, b;
    if (uncentered) {
      a = batch_norm_uncentered(x, rv, Tensor(), Tensor(), true, 0.1, 1e-5);
      b = batch_norm_uncentered(x, rv_view, Tensor(), Tensor(), true, 0.1, 1e-5);
    } else {
      a = batch_norm(x, rm, rv, Tensor(), Tensor(), true, 0.1, 1e-5);
      b = batch_norm(x, rm_view, rv_view, Tensor(), Tensor(), true, 0.1, 1e-5);
      CHECK(golden::equal(wide.narrow(1, 0, 1).squeeze(1), rm));
    }
    CHECK(golden::equal(b, a));
    CHECK(golden::equal(wide.narrow(1, 1, 1).squeeze(1), rv));
    CHECK(wide.version() > version);
    // evaluation reads a strided running variance too
    CHECK(golden::equal(batch_norm(x, rm_view, rv_view, Tensor(), Tensor(), false, 0.1, 1e-5),
                        batch_norm(x, rm_view.contiguous(), rv_view.contiguous(), Tensor(), Tensor(), false, 0.1, 1e-5)));
  }
}

TEST_CASE("module: synchronised batch norm over two identical replicas equals batch norm over the doubled batch") {
  // replica_sum = 2 t stands for a second replica holding the same batch (and, backward, the
  // same output gradient): the statistics, the input gradient (of both replicas' losses) and the
  // running statistics are then those of the batch twice over; weight and bias get this replica's
  // share, half the doubled batch's. [3, 20, 9, 7]: vector remainders; f64: rounding is not the
  // question here.
  manual_seed(61);
  const Tensor x = (randn({3, 20, 9, 7}, DType::f64) * 1.5 + 0.7), gout = randn({3, 20, 9, 7}, DType::f64);
  const Tensor w = randn({20}, DType::f64), b = randn({20}, DType::f64);
  const Tensor twice = cat({x, x}, 0), gout_twice = cat({gout, gout}, 0);
  for (bool uncentred : {false, true})
    for (bool relu : {false, true})
      for (bool explain : {false, true}) {
        INFO("uncentred ", uncentred, " relu ", relu, " explain ", explain);
        auto make = [&]() -> std::shared_ptr<Module> {
          std::shared_ptr<Module> m;
          if (uncentred) m = std::make_shared<nn::BatchNormUncentered2d>(20);
          else m = std::make_shared<BatchNorm2d>(20);
          m->to(DType::f64);
          for (auto& [name, p] : m->named_parameters()) p.detach().copy_(name == "weight" ? w : b);
          return m;
        };
        auto synced = make(), reference = make();
        if (uncentred) static_cast<nn::BatchNormUncentered2d&>(*synced).replica_sum = [](const Tensor& t) { return t * 2.0; };
        else static_cast<BatchNorm2d&>(*synced).replica_sum = [](const Tensor& t) { return t * 2.0; };
        ReLU relu_module;
        auto run = [&](Module& m, const Tensor& in) { return relu ? batch_norm_relu(m, relu_module, in) : m(in); };
        ExplanationModeGuard guard(explain);
        for (int step = 0; step < 2; ++step) {  // the second step starts from moved running statistics
          Tensor x1 = x.clone().requires_grad_(true), x2 = twice.clone().requires_grad_(true);
          Tensor y1 = run(*synced, x1), y2 = run(*reference, x2);
          CHECK(y1.grad_fn_name().rfind("SyncBatchNorm", 0) == 0);
          sum(y1 * gout).backward();
          sum(y2 * gout_twice).backward();
          CHECK(golden::relative_error(y1, y2.narrow(0, 0, 3)) <= 1e-12);
          CHECK(golden::relative_error(x1.grad(), x2.grad().narrow(0, 0, 3)) <= 1e-12);
          const auto ps = synced->named_parameters(), pr = reference->named_parameters();
          for (size_t i = 0; i < ps.size(); ++i) {
            CAPTURE(ps[i].first);
            CHECK(golden::relative_error(ps[i].second.grad() * 2.0, pr[i].second.grad()) <= 1e-12);
          }
          const auto bs = synced->named_buffers(), br = reference->named_buffers();
          for (size_t i = 0; i < bs.size(); ++i) {
            CAPTURE(bs[i].first);
            CHECK(golden::relative_error(bs[i].second.to(DType::f64), br[i].second.to(DType::f64)) <= 1e-12);
          }
          synced->zero_grad(), reference->zero_grad();
        }
      }
}

TEST_CASE("module: batch_norm_relu fuses BatchNorm2d + ReLU and equals the two modules in turn") {
  // [4, 20, 9, 7]: 63 values per row, so the vector loops' remainders run too.
  auto make = [] {
    auto bn = std::make_shared<BatchNorm2d>(20);
    manual_seed(3);
    bn->weight.detach().copy_(randn({20}));
    bn->bias.detach().copy_(randn({20}));
    return bn;
  };
  auto fused_bn = make(), plain_bn = make();
  ReLU relu;
  manual_seed(4);
  const Tensor x = randn({4, 20, 9, 7}), gout = randn({4, 20, 9, 7});
  for (bool training : {true, false}) {
    CAPTURE(training);
    fused_bn->train(training);
    plain_bn->train(training);
    Tensor x1 = x.clone().requires_grad_(true), x2 = x.clone().requires_grad_(true);
    Tensor y1 = batch_norm_relu(*fused_bn, relu, x1), y2 = relu(plain_bn->forward(x2));
    CHECK(same(y1, y2));  // the same fma per element, the same ReLU
    CHECK(y1.grad_fn_name() == "BatchNormReluBackward");
    sum(y1 * gout).backward();
    sum(y2 * gout).backward();
    // The masked sums run in another loop than ReLU's backward then batch norm's: rounding only.
    CHECK(golden::relative_error(x1.grad(), x2.grad()) < 1e-6);
    CHECK(golden::relative_error(fused_bn->weight.grad(), plain_bn->weight.grad()) < 1e-6);
    CHECK(golden::relative_error(fused_bn->bias.grad(), plain_bn->bias.grad()) < 1e-6);
    CHECK(same(fused_bn->running_mean, plain_bn->running_mean));
    CHECK(same(fused_bn->running_var, plain_bn->running_var));
  }
  // Anything other than a plain BatchNorm2d and ReLU: the two modules in turn.
  Identity identity;
  CHECK(same(batch_norm_relu(identity, relu, x), relu(x)));
}

TEST_CASE("module: replace_child keeps the member slot current; to(dtype) keeps parameters trainable") {
  Block m;
  auto fresh = std::make_shared<Identity>();
  m.replace_child("act", fresh);
  CHECK(m.act.get() == fresh.get());
  CHECK(m.child("act").get() == fresh.get());
  CHECK_THROWS_AS(m.replace_child("nope", fresh), Error);
  m.to(DType::f64);
  for (const auto& [key, t] : m.state_dict())
    if (key != "bn.num_batches_tracked") CHECK(t.dtype() == DType::f64);
  for (const Tensor& p : m.parameters()) {
    CHECK(p.requires_grad());
    CHECK(p.is_leaf());
  }
  const Tensor y = m(randn({1, 3, 4, 4}, DType::f64));
  sum(y).backward();
  CHECK(dynamic_cast<Conv2d&>(*m.conv).weight.grad().defined());
  m.zero_grad();
  CHECK(!dynamic_cast<Conv2d&>(*m.conv).weight.grad().defined());
  // An optimizer built before to() holds the replaced tensors: it refuses to step.
  Block n;
  SGD stale(n.parameters(), {.lr = 0.1});
  n.to(DType::f64);
  sum(n(randn({1, 3, 4, 4}, DType::f64))).backward();
  CHECK_THROWS_WITH_AS(stale.step(), doctest::Contains("build the optimizer after moving"), Error);
}

TEST_CASE("module: remove_parameter unregisters a parameter as `module.bias = None` does") {
  Linear fc(3, 2);
  fc.remove_parameter("bias");
  CHECK(!fc.bias.defined());
  CHECK(keys(fc.state_dict()) == std::vector<std::string>{"weight"});
  CHECK(fc.parameters().size() == 1);
  Tensor x = ones({1, 3});
  CHECK(same(fc(x), matmul(x, fc.weight.detach().t())));  // the forward runs without it
  CHECK(error_of([&] { fc.remove_parameter("bias"); }).find("no parameter named 'bias'") != std::string::npos);
}

TEST_CASE("module: default initialisation has PyTorch's bounds") {
  manual_seed(3);
  Linear fc(400, 30);
  const double bound = 1.0 / std::sqrt(400.0);
  CHECK(max(abs(fc.weight)).item() <= bound);
  CHECK(max(abs(fc.weight)).item() > 0.95 * bound);  // uniform over the whole range
  CHECK(max(abs(fc.bias)).item() <= bound);
  Conv2d conv(8, 16, 3);
  CHECK(max(abs(conv.weight)).item() <= 1.0 / std::sqrt(72.0));
  Tensor w = empty({256, 128, 3, 3});
  init::kaiming_normal_(w, /*fan_in=*/false);
  CHECK(bcos::std(w).item() == doctest::Approx(std::sqrt(2.0 / (256 * 9))).epsilon(0.02));
  init::trunc_normal_(w, 0.0, 1.0, -0.5, 0.5);
  CHECK(max(abs(w)).item() <= 0.5);
  BatchNorm2d bn(5);
  CHECK(same(bn.weight, ones({5})));
  CHECK_THROWS_AS(Linear(0, 3), Error);
  CHECK_THROWS_AS(Conv2d(3, 4, 3, Conv2dOptions{.groups = 2}), Error);
  CHECK(error_of([&] { bn(zeros({2, 4, 3, 3})); }).find("[2, 4, 3, 3]") != std::string::npos);
}

TEST_CASE("module: initialisers drawing in chunks give the values of one whole draw") {
  // 2^20 + 3 elements: two chunks, the second odd-sized; a strided target takes the whole draw.
  const int64_t n = (int64_t(1) << 20) + 3;
  manual_seed(11);
  Tensor w = empty({n});
  init::normal_(w, 0.5, 2.0);
  Tensor head_view = w.slice(0, 0, 6);  // a small contiguous view: redrawn in place
  init::uniform_(head_view, -1.0, 3.0);
  manual_seed(11);
  Tensor expect = (randn({n}, DType::f64) * 2.0 + 0.5).to(kFloat32);
  Tensor head = (rand({6}, DType::f64) * 4.0 - 1.0).to(kFloat32);
  CHECK(same(w.slice(0, 6, n), expect.slice(0, 6, n)));
  CHECK(same(w.slice(0, 0, 6), head));
  Tensor strided = empty({4, 6}).t();  // [6, 4], not contiguous
  manual_seed(12);
  init::normal_(strided, 0.0, 1.0);
  manual_seed(12);
  CHECK(same(strided, randn({6, 4}, DType::f64).to(kFloat32)));
}

TEST_CASE("module: losses as modules give the functional losses") {
  manual_seed(4);
  const Tensor logits = randn({6, 5}), target = randint(0, 5, {6});
  CHECK(same(CrossEntropyLoss(0.1)(logits, target), cross_entropy(logits, target, -100, 0.1)));
  CHECK(same(NLLLoss()(log_softmax(logits, 1), target), nll_loss(log_softmax(logits, 1), target)));
  const Tensor probs = rand({6, 5});
  CHECK(same(BCEWithLogitsLoss()(logits, probs), binary_cross_entropy_with_logits(logits, probs)));
  CHECK(same(CrossEntropyLoss(0.0, -100, Reduction::sum)(logits, target),
             cross_entropy(logits, target, -100, 0.0, Reduction::sum)));
  CHECK_THROWS_AS(CrossEntropyLoss()(logits, randint(0, 5, {4})), Error);
}
