// CUDA graphs (tensor/cuda_graph.h): a captured stretch of work replays as the eager work would
// run, training steps included; the graph's memory stays its own; what a graph cannot hold raises
// while capturing and leaves nothing behind. Skipped (with a message) without a GPU.
#include <doctest/doctest.h>

#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "autograd/ops.h"
#include "models/bcosify.h"
#include "models/clip.h"
#include "models/factory.h"
#include "nn/bcos.h"
#include "nn/optim.h"
#include "tensor/cuda/backend.h"
#include "tensor/cuda_graph.h"
#include "tensor/profile.h"
#include "tensor/transfer.h"
#include "tests/cuda/gpu_test.h"
#include "tests/cuda/small_models.h"
#include "tests/golden.h"

using namespace bcos;

using gpu_test::have_gpu;

namespace {
// Two copies of a model (the same weights) train side by side on batches (xs[b], ys[b]): after a
// warm-up step each on batch 0 (optimizer state, cuDNN's choices), `eager` steps as usual while
// `graphed` replays one captured step (zero_grad, loss, backward) with each batch copied into the
// tensors the capture read, its optimizer stepped after the replay -- or, with `step_inside`, in
// it (PyTorch's whole-network capture). Both learning rates are multiplied by `lr_factor` before
// each step after the warm-up (a schedule, which a step inside the graph follows). Loss,
// parameters and buffers (running statistics) must agree bit for bit after every step.
using LossOf = std::function<Tensor(nn::Module&, const Tensor&, const Tensor&)>;
void check_replayed_steps(nn::Module& eager, nn::Optimizer& eager_opt, nn::Module& graphed, nn::Optimizer& graphed_opt,
                          const std::vector<Tensor>& xs, const std::vector<Tensor>& ys, const LossOf& loss_of,
                          bool step_inside = false, double lr_factor = 1.0) {
  for (auto [m, opt] : {std::pair{&eager, &eager_opt}, std::pair{&graphed, &graphed_opt}}) {
    opt->zero_grad();
    loss_of(*m, xs[0], ys[0]).backward();
    opt->step();
  }
  Tensor static_x = xs[0].clone(), static_y = ys[0].clone(), graphed_loss;
  CudaGraph graph;
  graph.capture(xs[0].device(), [&] {
    graphed_opt.zero_grad();
    graphed_loss = loss_of(graphed, static_x, static_y);
    graphed_loss.backward();
    if (step_inside) graphed_opt.step();
  });
  CHECK(graphed_opt.steps_taken() == 1);  // (a captured step is taken at each replay, not at the capture)
  for (size_t b = 1; b < xs.size(); ++b) {
    CAPTURE(b);
    eager_opt.lr *= lr_factor;
    graphed_opt.lr *= lr_factor;
    eager_opt.zero_grad();
    const Tensor loss = loss_of(eager, xs[b], ys[b]);
    loss.backward();
    eager_opt.step();
    static_x.copy_(xs[b]);
    static_y.copy_(ys[b]);
    graph.replay();
    if (!step_inside) graphed_opt.step();
    CHECK(graphed_opt.steps_taken() == eager_opt.steps_taken());
    CHECK(golden::equal(graphed_loss.detach().to(Device()), loss.detach().to(Device())));
    for (const bool buffers : {false, true}) {
      const auto a = buffers ? eager.named_buffers() : eager.named_parameters();
      const auto g = buffers ? graphed.named_buffers() : graphed.named_parameters();
      REQUIRE(a.size() == g.size());
      for (size_t i = 0; i < a.size(); ++i) {
        CAPTURE(a[i].first);
        CHECK(golden::equal(g[i].second.detach().to(Device()), a[i].second.detach().to(Device())));
      }
    }
  }
}
}  // namespace

TEST_CASE("CUDA graph: a captured chain of ops runs only when replayed, on the inputs of the moment") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  manual_seed(3);
  Tensor x = randn({1000}).to(gpu), w = randn({1000}).to(gpu);
  Tensor out;
  {
    CudaGraph graph;
    CHECK_FALSE(graph.captured());
    graph.capture(gpu, [&] {
      CHECK(cuda_graph_capturing());
      Tensor t = exp(x * 0.5) + w;  // a temporary freed inside the capture
      out = t * sum(x);
    });
    CHECK(graph.captured());
    CHECK_FALSE(cuda_graph_capturing());
    for (int round = 0; round < 3; ++round) {
      CAPTURE(round);
      x.copy_(randn({1000}).to(gpu));  // new inputs, into the tensor the capture read
      graph.replay();
      const Tensor expected = (exp(x * 0.5) + w) * sum(x);
      CHECK(golden::equal(out.to(Device()), expected.to(Device())));
    }
  }
}

TEST_CASE("CUDA graph: a copy from pinned host memory is captured, and reads the buffer at each replay") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  Tensor host = pin_memory(full({256}, 1.0)), out;
  CudaGraph graph;
  graph.capture(gpu, [&] { out = host.to(gpu) * 2.0; });
  for (double v : {3.0, -5.0}) {
    CAPTURE(v);
    host.fill_(v);  // the host writes the graph's input; the replay copies it in
    graph.replay();
    CHECK(golden::equal(out.to(Device()), full({256}, 2 * v)));
  }
  // Copies of the same buffer outside the graph keep their bookkeeping (events) as before.
  for (int i = 0; i < 3; ++i) {
    host.fill_(double(i));
    CHECK(golden::equal(host.to(gpu).to(Device()), full({256}, double(i))));
  }
}

TEST_CASE("CUDA graph: memory allocated while capturing stays the graph's, freed blocks included") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  manual_seed(5);
  constexpr int64_t n = int64_t(1) << 22;  // 16 MiB: a segment of its own
  const Tensor x = randn({n}).to(gpu);
  const void* temporary = nullptr;
  Tensor out;
  cuda::empty_cache();
  const size_t cached_before = cuda::memory_stats(0).cached;
  CudaGraph graph;
  graph.capture(gpu, [&] {
    Tensor t = x * 3.0;  // freed when the lambda returns: each replay still writes it
    temporary = t.raw_data();
    out = sum(t);
  });
  // Its segment, entirely free now, is the graph's: emptying the cache keeps it.
  const size_t cached = cuda::memory_stats(0).cached;
  REQUIRE(cached >= cached_before + size_t(n) * 4);
  cuda::empty_cache();
  REQUIRE(cuda::memory_stats(0).cached == cached);
  // Eager tensors of the temporary's size: none may get its block, or each replay would overwrite it.
  std::vector<Tensor> eager;
  for (int i = 0; i < 3; ++i) {
    eager.push_back(full({n}, double(i), {kFloat32, gpu}));
    CHECK(eager.back().raw_data() != temporary);
  }
  graph.replay();
  for (int i = 0; i < 3; ++i) CHECK(golden::equal(eager[size_t(i)].to(Device()), full({n}, double(i))));
  CHECK(golden::relative_error(out.to(Device()), sum(x.to(Device()) * 3.0)) < 1e-5);
  // The graph gone and its outputs dropped, its memory can go back to the driver.
  graph = CudaGraph();
  out = Tensor();
  synchronize(gpu);
  const size_t in_use = cuda::memory_stats(0).in_use;
  cuda::empty_cache();
  CHECK(cuda::memory_stats(0).in_use == in_use);
}

TEST_CASE("CUDA graph: a ResNet-20 training step (and its B-cos form's) replays as the eager step, bit for bit (the optimizer's step outside the graph or in it, SGD or Adam, under a schedule)") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  const gpu_test::Tf32 exact_f32(false);  // (the same algorithms either way; TF32 would only add noise)
  set_deterministic_algorithms(true);     // scatters in a fixed order: an eager step repeats its bits
  for (const int variant : {0, 1, 2, 3}) {
    // 0, 1: ResNet-20 and its B-cos form, SGD stepped after each replay; 2: SGD's step in the graph,
    // 3: Adam's (L2 decay, AMSGrad), both under a decaying learning rate.
    const bool bcos = variant == 1, step_inside = variant >= 2, adam = variant == 3;
    CAPTURE(variant);
    auto make = [&] {
      manual_seed(41);
      std::shared_ptr<nn::Module> m = small_models::resnet20(bcos);
      m->to(gpu);
      m->train();
      return m;
    };
    manual_seed(42);
    std::vector<Tensor> images, labels;
    for (int b = 0; b < 4; ++b) {
      const Tensor x = rand({8, 3, 32, 32});
      images.push_back((bcos ? nn::add_inverse(x) : x).to(gpu));
      labels.push_back(randint(0, 10, {8}).to(gpu));
    }
    auto loss_of = [&](nn::Module& m, const Tensor& x, const Tensor& y) {
      const Tensor logits = m(x);
      return bcos ? nn::uniform_off_labels_bce(logits, y) : cross_entropy(logits, y);
    };
    auto eager = make(), graphed = make();
    auto optimizer = [&](nn::Module& m) -> std::unique_ptr<nn::Optimizer> {
      if (adam) return std::make_unique<nn::Adam>(m.parameters(), nn::AdamOptions{.lr = 1e-2, .weight_decay = 1e-4, .amsgrad = true});
      return std::make_unique<nn::SGD>(m.parameters(), nn::SGDOptions{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-4});
    };
    auto eager_opt = optimizer(*eager), graphed_opt = optimizer(*graphed);
    check_replayed_steps(*eager, *eager_opt, *graphed, *graphed_opt, images, labels, loss_of, step_inside,
                         step_inside ? 0.7 : 1.0);
  }
  set_deterministic_algorithms(false);
}

TEST_CASE("CUDA graph: a captured SGD step is taken at each replay with the learning rate of the moment; a replay refuses changed momentum or a destroyed optimizer before queuing anything") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  Tensor w = full({32}, 1.0, {kFloat32, gpu}).requires_grad_();
  auto sgd = std::make_unique<nn::SGD>(std::vector<Tensor>{w}, nn::SGDOptions{.lr = 0.5});
  auto step = [&] {  // the gradient of sum(w²) / 2 is w: each step multiplies w by 1 - lr (exactly)
    sgd->zero_grad();
    (sum(w * w) * 0.5).backward();
    sgd->step();
  };
  auto w_is = [&](double v) { return golden::equal(w.detach().to(Device()), full({32}, v)); };
  step();
  CudaGraph graph;
  graph.capture(gpu, step);
  CHECK(sgd->steps_taken() == 1);
  CHECK(w_is(0.5));  // (capturing ran nothing)
  graph.replay();
  graph.replay();
  CHECK(sgd->steps_taken() == 3);
  CHECK(w_is(0.125));
  sgd->lr = 0.25;  // a schedule's change reaches the captured step
  graph.replay();
  CHECK(w_is(0.09375));
  sgd->lr = 0.75;
  graph.replay();
  CHECK(w_is(0.0234375));
  CHECK(sgd->steps_taken() == 5);
  CudaGraph other;  // (a replay inside a capture is refused before its hooks run)
  CHECK_THROWS_WITH_AS(other.capture(gpu, [&] { graph.replay(); }),
                       doctest::Contains("CudaGraph.replay: not while capturing a graph"), Error);
  CHECK(sgd->steps_taken() == 5);
  sgd->options.momentum = 0.9;  // the graph holds no momentum buffers
  CHECK_THROWS_WITH_AS(graph.replay(), doctest::Contains("captured without momentum buffers, but momentum is now 0.9"),
                       Error);
  CHECK(sgd->steps_taken() == 5);
  CHECK(w_is(0.0234375));
  sgd->options.momentum = 0;
  sgd.reset();
  CHECK_THROWS_WITH_AS(graph.replay(), doctest::Contains("SGD optimizer whose step the graph captured was destroyed"), Error);
  CHECK(w_is(0.0234375));
}

TEST_CASE("CUDA graph: a captured Adam step follows each parameter's step count, the learning rate and a loaded state; a replay refuses diverged counts, a changed AMSGrad or a destroyed optimizer before queuing anything") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  manual_seed(17);
  const Tensor a0 = randn({40}), b0 = randn({7, 3});
  auto step = [](std::vector<Tensor>& p, nn::Optimizer& opt, bool only_first) {
    opt.zero_grad();
    Tensor loss = sum(p[0] * p[0] * p[0]);
    if (!only_first) loss = loss + sum(exp(p[1] * 0.3));
    loss.backward();
    opt.step();
  };
  auto counts = [](const nn::Optimizer& opt) {
    std::vector<int64_t> out;
    for (const auto& [key, t] : opt.state_dict())
      if (key.ends_with(".step")) out.push_back(t.item<int64_t>());
    return out;
  };
  for (const DType dt : {kFloat32, kBFloat16}) {  // (bf16: stepped through float32 copies made in the graph)
    CAPTURE(dt);
    // Two parameters; an eager twin takes the same steps (the replay's scalars come from the same
    // host arithmetic, so its values must match bit for bit).
    auto make = [&] { return std::vector<Tensor>{a0.to(dt).to(gpu).requires_grad_(), b0.to(dt).to(gpu).requires_grad_()}; };
    std::vector<Tensor> graphed = make(), eager = make();
    auto same = [&] {
      for (size_t i = 0; i < 2; ++i)
        if (!golden::equal(graphed[i].detach().to(Device()), eager[i].detach().to(Device()))) return false;
      return true;
    };
    // Parameter 1 has a gradient in the first warm-up step only: the capture holds two sets of
    // parameters (steps taken 2 and 1), each replay steps each with its own bias corrections.
    nn::AdamW graphed_opt(graphed, {.lr = 1e-2, .weight_decay = 0.1});
    nn::AdamW eager_opt(eager, {.lr = 1e-2, .weight_decay = 0.1});
    step(eager, eager_opt, false), step(graphed, graphed_opt, false);
    step(eager, eager_opt, true), step(graphed, graphed_opt, true);
    nn::StateDict saved;  // (a copy: the state's own tensors go on changing)
    for (const auto& [key, t] : eager_opt.state_dict()) saved.emplace_back(key, t.clone());
    CudaGraph graph;
    graph.capture(gpu, [&] { step(graphed, graphed_opt, false); });
    CHECK(graphed_opt.steps_taken() == 2);
    for (double lr : {1e-2, 3e-3, 5e-2}) {  // a schedule
      CAPTURE(lr);
      eager_opt.lr = graphed_opt.lr = lr;
      step(eager, eager_opt, false);
      graph.replay();
      CHECK(same());
    }
    CHECK(graphed_opt.steps_taken() == 5);
    CHECK(counts(graphed_opt) == std::vector<int64_t>{5, 4});
    CHECK(counts(eager_opt) == std::vector<int64_t>{5, 4});
    // Eager steps between replays count too: the next replay takes steps 7 and 5.
    step(eager, eager_opt, true), step(graphed, graphed_opt, true);
    step(eager, eager_opt, false);
    graph.replay();
    CHECK(same());
    CHECK(counts(graphed_opt) == std::vector<int64_t>{7, 5});
    // A state loaded between replays (moments and counts of the warm-up) is the one the graph steps.
    eager_opt.load_state_dict(saved, 2);
    graphed_opt.load_state_dict(saved, 2);
    step(eager, eager_opt, false);
    graph.replay();
    CHECK(same());
    CHECK(counts(graphed_opt) == std::vector<int64_t>{3, 2});
    CHECK(golden::equal(graphed_opt.state_dict()[0].second.to(Device()), eager_opt.state_dict()[0].second.to(Device())));
  }
  // One set (both parameters at one count) whose counts then diverge through an eager step.
  std::vector<Tensor> params{a0.to(gpu).requires_grad_(), b0.to(gpu).requires_grad_()};
  auto opt = std::make_unique<nn::Adam>(params, nn::AdamOptions{.lr = 1e-3});
  step(params, *opt, false);
  CudaGraph graph;
  graph.capture(gpu, [&] { step(params, *opt, false); });
  graph.replay();
  CHECK(counts(*opt) == std::vector<int64_t>{2, 2});
  step(params, *opt, true);
  const Tensor before = params[0].detach().to(Device());
  CHECK_THROWS_WITH_AS(graph.replay(), doctest::Contains("parameters 0 and 1 of the graph's Adam step have taken 3 and 2 steps"),
                       Error);
  CHECK(counts(*opt) == std::vector<int64_t>{3, 2});  // (nothing counted, nothing queued)
  CHECK(golden::equal(params[0].detach().to(Device()), before));
  opt->options.amsgrad = true;
  CHECK_THROWS_WITH_AS(graph.replay(), doctest::Contains("captured with AMSGrad off, but it is on now"), Error);
  opt->options.amsgrad = false;
  opt.reset();
  CHECK_THROWS_WITH_AS(graph.replay(), doctest::Contains("the Adam optimizer whose step the graph captured was destroyed"),
                       Error);

  // Two optimizers' steps in one graph: when the second's check fails, the first has not counted
  // its step either, and nothing ran.
  nn::SGD head(std::vector<Tensor>{params[1]}, {.lr = 0.1, .momentum = 0.9});
  nn::Adam body(std::vector<Tensor>{params[0]}, {.lr = 1e-3});
  auto both = [&] {
    head.zero_grad(), body.zero_grad();
    (sum(params[0] * params[0]) + sum(params[1] * params[1])).backward();
    head.step(), body.step();
  };
  both();
  CudaGraph pair;
  pair.capture(gpu, both);
  pair.replay();
  CHECK(head.steps_taken() == 2);
  CHECK(body.steps_taken() == 2);
  const Tensor head_before = params[1].detach().to(Device());
  body.options.amsgrad = true;
  CHECK_THROWS_WITH_AS(pair.replay(), doctest::Contains("captured with AMSGrad off"), Error);
  CHECK(head.steps_taken() == 2);
  CHECK(body.steps_taken() == 2);
  CHECK(golden::equal(params[1].detach().to(Device()), head_before));
  body.options.amsgrad = false;
  pair.replay();
  CHECK(head.steps_taken() == 3);
  CHECK(body.steps_taken() == 3);
}

TEST_CASE("CUDA graph: a graph outlives the thread that captured it and that thread's other graphs (the cuBLAS workspace its GEMMs write is its own to keep)") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  const gpu_test::Tf32 exact_f32(false);
  manual_seed(9);
  const Tensor a = randn({64, 96}), b = randn({96, 80});
  const Tensor ag = a.to(gpu), bg = b.to(gpu);
  Tensor y;
  CudaGraph kept;
  std::thread([&] {
    CudaGraph first;  // the thread's first graph: its capture stream's workspace is made then
    Tensor unused;
    first.capture(gpu, [&] { unused = matmul(ag, bg); });
    kept.capture(gpu, [&] { y = matmul(ag, bg); });
  }).join();  // the first graph, and the thread's own hold on its workspaces, are gone
  cuda::empty_cache();
  const Tensor other = full({int64_t(1) << 23}, 3.0, {kFloat32, gpu});  // 32 MiB the allocator hands out now
  kept.replay();
  CHECK(golden::relative_error(y.to(Device()), matmul(a, b)) <= 1e-5);
  CHECK(sum(other).item<double>() == 3.0 * double(int64_t(1) << 23));  // untouched by the replay's GEMM
}

TEST_CASE("CUDA graph: what a graph cannot hold raises while capturing, and leaves nothing behind") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  manual_seed(7);
  const Tensor x = randn({64}).to(gpu);
  const cuda::StreamHandle stream_before = cuda::current_stream(0);
  auto refused = [&](const char* what, const std::function<void()>& work, const std::string& says) {
    CAPTURE(what);
    CudaGraph graph;
    try {
      graph.capture(gpu, work);
      FAIL("captured");
    } catch (const Error& e) {
      const std::string m = e.what();
      CAPTURE(m);
      CHECK(m.find("CudaGraph.capture on cuda:0") != std::string::npos);
      CHECK(m.find(says) != std::string::npos);
    }
    CHECK_FALSE(graph.captured());
    CHECK_FALSE(cuda_graph_capturing());
    CHECK(cuda::current_stream(0) == stream_before);
    // The device works as before.
    CHECK(golden::equal((x * 2.0).to(Device()), x.to(Device()) * 2.0));
  };
  refused("a host round trip", [&] { (void)sum(x).item(); }, "capturing");
  refused("a copy to the host", [&] { (void)x.to(Device()); }, "capturing");
  refused("a copy from pageable host memory", [&] { (void)randn({8}).to(gpu); }, "capturing");
  refused("dropout's draw", [&] { (void)dropout(x, 0.5, true); }, "each replay would repeat the captured draw");
  std::vector<Tensor> params{x.clone().requires_grad_()};
  sum(params[0] * params[0]).backward();
  nn::SGD sgd(params, {.lr = 0.1, .momentum = 0.9});
  nn::Adam adam(params, {.lr = 0.1});
  refused("an SGD step before its momentum buffers exist", [&] { sgd.step(); },
          "SGD.step inside a CUDA graph capture: parameter 0 [64] has no momentum buffer yet");
  nn::SGD plain(params, {.lr = 0.1});  // (no state to make, but the device memory its replays read)
  refused("an SGD step without momentum before any eager step", [&] { plain.step(); },
          "SGD.step inside a CUDA graph capture: take an eager step on cuda:0 first");
  nn::SGD twice(params, {.lr = 0.1});
  twice.step();
  refused("two steps of one optimizer in one capture", [&] { twice.step(), twice.step(); },
          "SGD.step: a second step of this optimizer inside one CUDA graph capture");
  Tensor on_cpu = full({4}, 1.0).requires_grad_();
  sum(on_cpu * on_cpu).backward();
  nn::SGD cpu_sgd(std::vector<Tensor>{on_cpu}, {.lr = 0.1});
  cpu_sgd.step();
  refused("a step of CPU parameters", [&] { cpu_sgd.step(); },
          "SGD.step inside a CUDA graph capture on cuda:0: parameter 0 [4] is on cpu (a graph steps the parameters of its own device)");
  refused("an Adam step before its moments exist", [&] { adam.step(); },
          "Adam.step inside a CUDA graph capture: parameter 0 [64] has no moments yet");
  const Tensor m = zeros({64}).to(gpu), v = zeros({64}).to(gpu);
  refused("an Adam step with its scalars as the launch's", [&] {
    adam_step_(params[0].data_alias(), params[0].grad(), m, v, Tensor(), {.lr = 0.1, .step_size = 1, .bias2_sqrt = 0.1});
  }, "adam_step over 1 tensors inside a CUDA graph capture: its scalars must be read from device memory");
  refused("an SGD step with its scalars as the launch's", [&] {
    sgd_step_(params[0].data_alias(), params[0].grad(), Tensor(), {.lr = 0.1});
  }, "sgd_step over 1 tensors inside a CUDA graph capture: its scalars must be read from device memory");
  // Refused before making any state: a momentum buffer made inside the failed capture would never
  // have been filled.
  CHECK(sgd.state_dict().empty());
  CHECK(adam.state_dict().empty());
  refused("a nested capture", [&] { CudaGraph inner; inner.capture(gpu, [] {}); }, "captures do not nest");
  refused("a synchronisation", [&] { synchronize(gpu); }, "capturing");
  refused("an exception of the work's own", [&] { fail("the work's own error"); }, "the work's own error");

  CudaGraph empty;
  CHECK_THROWS_WITH_AS(empty.replay(), doctest::Contains("nothing captured"), Error);
  CHECK_THROWS_WITH_AS(empty.capture(Device(), [] {}), doctest::Contains("graphs are CUDA's"), Error);
}

TEST_CASE("CUDA graph: one_hot of GPU labels (made on the GPU, no host round trip) matches the CPU's; a bad label raises at the next synchronisation") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  const Tensor labels = from_vector(std::vector<int64_t>{3, 0, 9, 3, 7, 1}, {2, 3});
  CHECK(golden::equal(one_hot(labels.to(gpu), 10).to(Device()), one_hot(labels, 10)));
  CHECK(one_hot(labels.to(gpu), 10).dtype() == DType::i64);
  for (int64_t bad : {10, -1}) {
    CAPTURE(bad);
    const Tensor wrong = from_vector(std::vector<int64_t>{3, bad}, {2}).to(gpu);
    CHECK_THROWS_WITH_AS(one_hot(wrong, 10).to(Device()),
                         doctest::Contains(str("one_hot: class index ", bad, " is out of range for 10 classes").c_str()), Error);
  }
}

TEST_CASE("CUDA graph: an index out of range in a replay raises at the next synchronisation, and the device works on") {
  if (!have_gpu()) return;
  // The index ops check inside their kernels and report into memory the host reads after it
  // waits (tensor/cuda/fault.cu): a replay reports as eager work does, and the CUDA context
  // survives (PyTorch's device-side assert would end it).
  const Device gpu = Device::cuda(0);
  manual_seed(9);
  const Tensor table = randn({10, 4}).to(gpu);
  Tensor index = from_vector(std::vector<int64_t>{1, 2, 9}, {3}).to(gpu), rows;
  CudaGraph graph;
  graph.capture(gpu, [&] { rows = index_select(table, 0, index); });
  graph.replay();
  CHECK(golden::equal(rows.to(Device()), index_select(table.to(Device()), 0, index.to(Device()))));
  index.copy_(from_vector(std::vector<int64_t>{1, 10, 2}, {3}).to(gpu));
  graph.replay();
  CHECK_THROWS_WITH_AS(synchronize(gpu), doctest::Contains("index_select: index 10 is out of range for size 10"), Error);
  // A bad target of cross_entropy, in its own words; then good targets replay right again.
  const Tensor logits = randn({3, 10}).to(gpu);
  Tensor target = from_vector(std::vector<int64_t>{0, 4, 9}, {3}).to(gpu), loss;
  CudaGraph step;
  step.capture(gpu, [&] { loss = cross_entropy(logits, target); });
  target.copy_(from_vector(std::vector<int64_t>{0, 11, 9}, {3}).to(gpu));
  step.replay();
  CHECK_THROWS_WITH_AS(loss.to(Device()), doctest::Contains("cross_entropy: target 11 is out of range for 10 classes"),
                       Error);
  target.copy_(from_vector(std::vector<int64_t>{2, 4, 9}, {3}).to(gpu));
  step.replay();
  CHECK(golden::equal(loss.to(Device()), cross_entropy(logits, target).to(Device())));  // (the eager step's bits)
  index.copy_(from_vector(std::vector<int64_t>{0, 3, 0}, {3}).to(gpu));
  graph.replay();
  CHECK(golden::equal(rows.to(Device()), index_select(table.to(Device()), 0, index.to(Device()))));
}

TEST_CASE("CUDA graph: a capture with the profiler running and cuDNN's benchmark mode on (a new shape) works") {
  if (!have_gpu()) return;
  // Inside a capture nothing runs to time and its events cannot be waited for: the profiler skips
  // the captured calls, and a convolution shape first seen there takes the heuristics' choice.
  const Device gpu = Device::cuda(0);
  const gpu_test::Tf32 exact_f32(false);
  manual_seed(13);
  const Tensor x = randn({2, 3, 11, 13}).to(gpu), w = randn({5, 3, 3, 3}).to(gpu);
  Tensor y;
  set_cudnn_benchmark(true);
  profile::start();
  CudaGraph graph;
  graph.capture(gpu, [&] { y = conv2d(x, w, Tensor(), 1, 1); });
  graph.replay();
  const profile::Report report = profile::stop();  // (raises the first CUDA error met while timing)
  set_cudnn_benchmark(false);
  CHECK(golden::relative_error(y.to(Device()), conv2d(x.to(Device()), w.to(Device()), Tensor(), 1, 1)) < 1e-5);
  CHECK(report.gpu_span_ms >= 0);
}

TEST_CASE("CUDA graph: a second capture while another thread captures is refused") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  const Tensor x = randn({16}).to(gpu);
  std::promise<void> started, finish;
  std::thread first([&] {
    CudaGraph graph;
    graph.capture(gpu, [&] {
      (void)(x * 2.0);
      started.set_value();
      finish.get_future().wait();  // the other thread tries meanwhile
    });
  });
  started.get_future().wait();
  CudaGraph second;
  CHECK_THROWS_WITH_AS(second.capture(gpu, [&] { (void)(x * 3.0); }),
                       doctest::Contains("another thread is capturing a graph"), Error);
  finish.set_value();
  first.join();
  CHECK_FALSE(second.captured());
  second.capture(gpu, [&] { (void)(x * 3.0); });  // and once it is done, the next one goes ahead
  CHECK(second.captured());
}

TEST_CASE("CUDA graph: a small CLIP's contrastive training step (ViT and causal text towers) replays as the eager step, bit for bit (AdamW's step outside the graph, or in it under a schedule)") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  const gpu_test::Tf32 exact_f32(false);
  set_deterministic_algorithms(true);
  auto make = [&] {
    manual_seed(51);
    auto clip = std::make_shared<models::Clip>(small_models::clip_config());
    clip->to(gpu);
    clip->train();
    return clip;
  };
  manual_seed(52);
  std::vector<Tensor> images, tokens;
  for (int b = 0; b < 4; ++b) {
    images.push_back(randn({4, 3, 32, 32}).to(gpu));
    tokens.push_back(randint(1, 63, {4, 9}).to(gpu));
  }
  for (const bool step_inside : {false, true}) {
    CAPTURE(step_inside);
    auto eager = make(), graphed = make();
    nn::AdamW eager_opt(eager->parameters(), {.lr = 1e-3, .weight_decay = 0.1});
    nn::AdamW graphed_opt(graphed->parameters(), {.lr = 1e-3, .weight_decay = 0.1});
    check_replayed_steps(*eager, eager_opt, *graphed, graphed_opt, images, tokens,
                         [](nn::Module& m, const Tensor& x, const Tensor& t) {
                           auto& clip = dynamic_cast<models::Clip&>(m);
                           return models::clip_contrastive_loss(clip.logits(clip.encode_image(x), clip.encode_text(t)));
                         },
                         step_inside, step_inside ? 0.8 : 1.0);
  }
  set_deterministic_algorithms(false);
}

TEST_CASE("CUDA graph: arange and eye are made on the GPU (so a graph can hold them), the CPU's values in every dtype") {
  if (!have_gpu()) return;
  const Device gpu = Device::cuda(0);
  for (DType dt : {kFloat32, kFloat64, kFloat16, kBFloat16, kInt64, kUInt8, kBool}) {
    CAPTURE(dt);
    CHECK(golden::equal(arange(-3.5, 40, 0.75, {dt, gpu}).to(Device()), arange(-3.5, 40, 0.75, {dt, Device()})));
    for (auto [n, m] : {std::pair<int64_t, int64_t>{3, 5}, {5, 3}, {4, -1}, {0, 2}}) {
      CAPTURE(n);
      CAPTURE(m);
      CHECK(golden::equal(eye(n, m, {dt, gpu}).to(Device()), eye(n, m, {dt, Device()})));
    }
  }
  Tensor a, e;
  CudaGraph graph;
  graph.capture(gpu, [&] {
    a = arange(0, 9, 1, {kInt64, gpu});
    e = eye(3, 3, {kFloat32, gpu});
  });
  graph.replay();
  CHECK(golden::equal(a.to(Device()), arange(0, 9, 1, kInt64)));
  CHECK(golden::equal(e.to(Device()), eye(3, 3, kFloat32)));
}
