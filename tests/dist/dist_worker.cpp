// One rank of the multi-process tests (tests/dist/test_mpi.sh runs it under mpirun -np 2):
//   dist_worker collectives   every collective against its definition, on every dtype MPI takes
//   dist_worker equality      N data-parallel steps of 2 ranks = N steps of one process on the
//                             global batch (f64, within 1e-6): ResNet-20 and its B-cos form, with
//                             synchronised batch norm (without it, per-rank statistics differ);
//                             gradient accumulation; CLIP's contrastive loss over all_gather_autograd
//   dist_worker unused        parameters without a gradient: an error, or find_unused_parameters
//   dist_worker fail-throw    rank 1 raises at step 3: every rank ends, rank 1's error printed
//   dist_worker fail-exit     rank 1 exits at step 3 without a word: every rank ends
//   dist_worker timeout       rank 1 sleeps 60 s before a collective: rank 0 times out
//   dist_worker waits cuda    (the CUDA emulator only) a warmed-up data-parallel GPU step waits for
//                             the device nowhere (the emulator counts the host's waits)
// With a second argument `cuda` every mode runs on the GPU (each rank's cuda:local_rank), so its
// tensors go through NCCL: the model being trained data-parallel, the collectives' tensors (every
// dtype NCCL takes). The equality mode's reference process stays on the CPU. Started with
// RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT instead of mpirun (torchrun-style), the job has
// no MPI: the NCCL id travels over dist's TCP rendezvous and barriers are NCCL all-reduces.
// Prints "dist_worker <mode>: rank R passed" per rank on success.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>

#include "autograd/ops.h"
#include "dist/data_parallel.h"
#include "models/bcosify.h"
#include "models/clip.h"
#include "models/factory.h"
#include "nn/bcos.h"
#include "nn/layers.h"
#include "nn/linear.h"
#include "nn/optim.h"
#include "tests/errors.h"
#ifdef BCOS_DIST_WORKER_EMULATED
#include "tensor/cuda/emulator/runtime.h"
#endif

using namespace bcos;
using testing::error_of;

namespace {

int g_failures = 0;
Device g_device;  // where the data-parallel tensors live: the CPU, or this rank's GPU

void expect(bool ok, const std::string& what) {
  if (ok) return;
  ++g_failures;
  std::fprintf(stderr, "rank %d: FAILED: %s\n", dist::rank(), what.c_str());
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

double max_diff(const Tensor& a, const Tensor& b) {
  return max(abs(a.to(Device()).to(DType::f64) - b.to(Device()).to(DType::f64))).item();
}

// ---- collectives ------------------------------------------------------------------------------
void collectives() {
  const int r = dist::rank(), w = dist::world_size();
  const bool gpu = g_device.is_cuda();
  const std::vector<DType> dtypes = gpu ? std::vector<DType>{DType::f32, DType::f64, DType::f16, DType::bf16, DType::i64}
                                        : std::vector<DType>{DType::f32, DType::f64, DType::i64};
  for (DType dt : dtypes) {
    auto mine = [&](int rank) {  // rank's tensor: 10·rank + i
      return (arange(0, 6, 1.0, DType::f64) + 10.0 * rank).reshape({2, 3}).to(dt).to(g_device);
    };
    Tensor sum_def = zeros({2, 3}, DType::f64);
    for (int q = 0; q < w; ++q) sum_def = sum_def + mine(q).to(Device()).to(DType::f64);
    Tensor t = mine(r);
    dist::all_reduce(t, dist::ReduceOp::sum);
    expect(max_diff(t, sum_def) == 0, str("all_reduce(sum) of ", dt));
    t = mine(r);
    dist::all_reduce(t, dist::ReduceOp::max);
    expect(max_diff(t, mine(w - 1)) == 0, str("all_reduce(max) of ", dt));
    t = mine(r);
    dist::all_reduce(t, dist::ReduceOp::min);
    expect(max_diff(t, mine(0)) == 0, str("all_reduce(min) of ", dt));
    if (dt != DType::i64) {
      t = mine(r);
      dist::all_reduce(t, dist::ReduceOp::avg);
      expect(max_diff(t, sum_def / double(w)) < 1e-6, str("all_reduce(avg) of ", dt));
    }
    t = mine(r);
    dist::broadcast(t, w - 1);
    expect(max_diff(t, mine(w - 1)) == 0, str("broadcast from rank ", w - 1, " of ", dt));
    Tensor g = dist::all_gather(mine(r));
    expect(g.shape() == Shape{w, 2, 3} && g.device() == g_device, str("all_gather shape ", g.shape(), " on ", g.device()));
    for (int q = 0; q < w; ++q) expect(max_diff(g.select(0, q), mine(q)) == 0, str("all_gather row ", q, " of ", dt));
  }
  if (!gpu) {
    // MPI moves 16-bit floats as words (autocast's bf16 features are gathered) and reduces them
    // as float32 copies, the result rounded once.
    for (DType dt : {DType::bf16, DType::f16}) {
      auto mine = [&](int rank) { return (arange(0, 6, 1.0, DType::f64) + 10.0 * rank + 0.25).reshape({2, 3}).to(dt); };
      Tensor g = dist::all_gather(mine(r));
      for (int q = 0; q < w; ++q) expect(max_diff(g.select(0, q), mine(q)) == 0, str("all_gather row ", q, " of ", dt));
      Tensor t = mine(r);
      dist::broadcast(t, w - 1);
      expect(max_diff(t, mine(w - 1)) == 0, str("broadcast of ", dt));
      // 1/3 is not a bf16 value: the float32 sum of the ranks' bf16 values, rounded once.
      auto third = [&](int rank) { return full({5}, (rank + 1) / 3.0, DType::f64).to(dt); };
      Tensor sum_def = zeros({5}, DType::f32);
      for (int q = 0; q < w; ++q) sum_def = sum_def + third(q).to(DType::f32);
      t = third(r);
      dist::all_reduce(t, dist::ReduceOp::sum);
      expect(t.dtype() == dt && max_diff(t, sum_def.to(dt)) == 0, str("all_reduce(sum) of ", dt));
      t = third(r);
      dist::all_reduce(t, dist::ReduceOp::avg);
      expect(max_diff(t, (sum_def / double(w)).to(dt)) == 0, str("all_reduce(avg) of ", dt));
      t = third(r);
      dist::all_reduce(t, dist::ReduceOp::max);
      expect(max_diff(t, third(w - 1)) == 0, str("all_reduce(max) of ", dt));
      // The differentiable gather's backward sums the 16-bit gradient over the ranks:
      // loss_r = Σ (r + 1) · gathered, so every rank's rows get Σ_q (q + 1).
      Tensor x = mine(r).requires_grad_();
      sum(dist::all_gather_autograd(x) * double(r + 1)).backward();
      expect(x.grad().dtype() == dt && x.grad().to_vector<double>()[5] == double(w * (w + 1) / 2),
             str("all_gather_autograd backward of ", dt));
    }
  }
  Tensor flags = full({4}, double(r == 1), DType::u8).to(g_device);
  dist::all_reduce(flags, dist::ReduceOp::max);
  expect(flags.to_vector<uint8_t>() == std::vector<uint8_t>(4, 1), "all_reduce(max) of u8");

  // Several in flight, finished out of order.
  std::vector<Tensor> ts;
  std::vector<dist::Work> works;
  for (int k = 0; k < 3; ++k) {
    ts.push_back(full({1000}, double(k + r), DType::f32).to(g_device));
    works.push_back(dist::all_reduce_async(ts.back()));
  }
  for (int k = 2; k >= 0; --k) {
    works[size_t(k)].wait();
    expect(ts[size_t(k)].to_vector<float>()[999] == float(w * k + w * (w - 1) / 2), str("async all_reduce ", k));
  }
  dist::barrier();

  // The differentiable sum: y = Σ_q x_q on every rank, loss_r = Σ c_r · y, so dx_r = Σ_q c_q.
  Tensor x = full({3}, double(r + 1), DType::f64).to(g_device).requires_grad_();
  Tensor y = dist::all_reduce_sum_autograd(x);
  expect(y.to_vector<double>()[0] == double(w * (w + 1) / 2), "all_reduce_sum_autograd forward");
  sum(y * double(r + 2)).backward();
  double c_sum = 0;
  for (int q = 0; q < w; ++q) c_sum += q + 2;
  expect(x.grad().to_vector<double>()[2] == c_sum, "all_reduce_sum_autograd backward");

  // Bad input: a clear error before anything is sent.
  Tensor m = zeros({3, 4}).to(g_device);
  expect(contains(error_of([&] { dist::all_reduce(m.t()); }), "contiguous"), "non-contiguous tensor refused");
  expect(contains(error_of([&] { dist::all_reduce(zeros({2}, DType::i64).to(g_device), dist::ReduceOp::avg); }),
                  "avg needs a float"),
         "avg of integers refused");
  expect(contains(error_of([&] { dist::broadcast(zeros({2}).to(g_device), w); }), "root"),
         "broadcast root out of range refused");
  if (dist::launch_info().launcher == "torchrun")  // no MPI there: CPU tensors cannot travel
    expect(contains(error_of([&] { dist::all_reduce(zeros({2})); }), "needs MPI"), "a CPU tensor without MPI refused");
}

// ---- equality with one process -----------------------------------------------------------------
struct Experiment {
  std::string name;
  std::function<std::shared_ptr<nn::Module>()> make;  // the same weights each call (seeded)
  std::function<Tensor(const Tensor& logits, const Tensor& labels)> loss;
  std::function<Tensor(const Tensor& images)> input;
  bool sync_bn;
  dist::DataParallelOptions options;
};

// max |parameter and buffer difference| after `steps` AdamW steps: data-parallel (this rank's
// half of each global batch) against one process on the whole batch.
double run_experiment(const Experiment& e, int steps) {
  const int r = dist::rank(), w = dist::world_size();
  const int64_t global_batch = 8, local = global_batch / w;
  auto reference = e.make();
  auto replica = e.make();
  replica->to(g_device);
  if (r != 0) {  // other ranks start elsewhere: DataParallel must bring rank 0's weights
    NoGradGuard no_grad;
    for (Tensor& p : replica->parameters()) p.add_(ones_like(p));
  }
  dist::DataParallel ddp(*replica, e.options);
  if (e.sync_bn) dist::use_sync_batch_norm(*replica);
  nn::AdamW opt_ref(reference->parameters(), {.lr = 1e-2, .weight_decay = 0.05});
  nn::AdamW opt(replica->parameters(), {.lr = 1e-2, .weight_decay = 0.05});
  reference->train();
  replica->train();
  manual_seed(1234);
  for (int step = 0; step < steps; ++step) {
    // 16 x 16 images: the three stages still see 16, 8 and 4 pixels a side, and at 32 x 32 the
    // test took 95 s under the sanitizers (where every allocation records its stack, for LSan).
    Tensor images = rand({global_batch, 3, 16, 16}, DType::f64);
    Tensor labels = randint(0, 10, {global_batch});
    opt_ref.zero_grad();
    e.loss((*reference)(e.input(images)), labels).backward();
    opt_ref.step();
    opt.zero_grad();
    Tensor mine = images.narrow(0, r * local, local).to(g_device);
    Tensor my_labels = labels.narrow(0, r * local, local).to(g_device);
    e.loss(ddp(e.input(mine)), my_labels).backward();
    opt.step();
  }
  double worst = 0;
  const auto ref_state = reference->state_dict(), state = replica->state_dict();
  for (size_t i = 0; i < state.size(); ++i) worst = std::max(worst, max_diff(state[i].second, ref_state[i].second));
  return worst;
}

void equality() {
  auto resnet = [] {
    manual_seed(7);
    auto m = models::create_model("resnet20", 10);
    m->to(DType::f64);
    return m;
  };
  auto bcos_resnet = [&] {
    models::BcosifyOptions o;
    o.mean = {0.5f, 0.5f, 0.5f}, o.std = {0.25f, 0.25f, 0.25f};
    std::shared_ptr<nn::Module> m = models::bcosify(resnet(), o);
    m->to(DType::f64);
    return m;
  };
  auto ce = [](const Tensor& logits, const Tensor& labels) { return cross_entropy(logits, labels); };
  auto identity = [](const Tensor& x) { return x; };
  dist::DataParallelOptions small_buckets;
  small_buckets.bucket_mb = 0.05, small_buckets.first_bucket_mb = 0.01;  // ~20 buckets: order and overlap
  const int steps = 3;

  const double plain = run_experiment({"resnet20", resnet, ce, identity, true, small_buckets}, steps);
  std::printf("rank %d: ResNet-20, synchronised BN, %d steps: max |difference| %.3g\n", dist::rank(), steps, plain);
  expect(plain <= 1e-6, str("ResNet-20 with synchronised batch norm differs from one process by ", plain));

  const double bcos = run_experiment({"bcos resnet20", bcos_resnet, nn::uniform_off_labels_bce,
                                      [](const Tensor& x) { return nn::add_inverse(x); }, true, {}}, steps);
  std::printf("rank %d: B-cos ResNet-20, synchronised BN, %d steps: max |difference| %.3g\n", dist::rank(), steps, bcos);
  expect(bcos <= 1e-6, str("B-cos ResNet-20 with synchronised batch norm differs from one process by ", bcos));

  // Per-rank statistics (PyTorch DDP's default) are not the global batch's: the comparison can fail.
  const double per_rank = run_experiment({"resnet20", resnet, ce, identity, false, {}}, steps);
  std::printf("rank %d: ResNet-20, per-rank BN: max |difference| %.3g (expected > 1e-6)\n", dist::rank(), per_rank);
  expect(per_rank > 1e-6, "per-rank batch norm matched one process: the equality test cannot tell");

  // Gradient accumulation: a step of two micro-batches, the first without synchronising, equals
  // one process on the four quarter-batches (no batch norm here, so micro-batches add up).
  manual_seed(3);
  auto make_mlp = [] {
    manual_seed(11);
    auto m = std::make_shared<nn::Sequential>(std::vector<nn::ModulePtr>{
        std::make_shared<nn::Linear>(12, 16), std::make_shared<nn::ReLU>(), std::make_shared<nn::Linear>(16, 5)});
    m->to(DType::f64);
    return m;
  };
  auto reference = make_mlp(), replica = make_mlp();
  replica->to(g_device);
  dist::DataParallel ddp(*replica);
  nn::SGD opt_ref(reference->parameters(), {.lr = 0.1, .momentum = 0.9});
  nn::SGD opt(replica->parameters(), {.lr = 0.1, .momentum = 0.9});
  for (int step = 0; step < 3; ++step) {
    Tensor x = randn({16, 12}, DType::f64);
    Tensor y = randint(0, 5, {16});
    opt_ref.zero_grad();
    cross_entropy((*reference)(x), y).backward();  // = the mean of the micro-batches' halved losses
    opt_ref.step();
    opt.zero_grad();
    const int64_t local = 16 / dist::world_size();
    for (int micro = 0; micro < 2; ++micro) {
      ddp.set_sync(micro == 1);
      const int64_t start = dist::rank() * local + micro * local / 2;
      (cross_entropy(ddp(x.narrow(0, start, local / 2).to(g_device)), y.narrow(0, start, local / 2).to(g_device)) * 0.5)
          .backward();
    }
    opt.step();
  }
  double worst = 0;
  const auto a = reference->state_dict(), b = replica->state_dict();
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, max_diff(a[i].second, b[i].second));
  expect(worst <= 1e-6, str("gradient accumulation with set_sync(false) differs by ", worst));
  expect(ddp.stats().steps == 3, str("DataParallel counted ", ddp.stats().steps, " synchronised steps, not 3"));
}

// ---- a loss over the global batch -------------------------------------------------------------
// CLIP's contrastive loss sees every rank's images and texts: with all_gather_autograd of both
// feature sets, two ranks train exactly as one process on the global batch (open_clip's
// gather_with_grad). Two linear towers and a learnable temperature, f64.
struct TinyClip : nn::Module {
  std::shared_ptr<nn::Module> image, text;
  Tensor logit_scale;
  TinyClip() : Module("TinyClip") {
    register_module("image", image, std::make_shared<nn::Linear>(12, 8));
    register_module("text", text, std::make_shared<nn::Linear>(10, 8));
    register_parameter("logit_scale", logit_scale, full({}, 2.0));
  }
  Tensor logits(const Tensor& img, const Tensor& txt) {
    return exp(logit_scale) * matmul(models::l2_normalize(img), models::l2_normalize(txt).t());
  }
};

void contrastive() {
  auto make = [] {
    manual_seed(21);
    auto m = std::make_shared<TinyClip>();
    m->to(DType::f64);
    return m;
  };
  auto reference = make(), replica = make();
  replica->to(g_device);
  dist::DataParallel ddp(*replica);
  nn::AdamW opt_ref(reference->parameters(), {.lr = 1e-2});
  nn::AdamW opt(replica->parameters(), {.lr = 1e-2});
  const int64_t global = 8, local = global / dist::world_size(), from = dist::rank() * local;
  manual_seed(22);
  for (int step = 0; step < 4; ++step) {
    Tensor images = randn({global, 12}, DType::f64), texts = randn({global, 10}, DType::f64);
    opt_ref.zero_grad();
    models::clip_contrastive_loss(reference->logits((*reference->image)(images), (*reference->text)(texts))).backward();
    opt_ref.step();
    opt.zero_grad();
    Tensor img = dist::all_gather_autograd((*replica->image)(images.narrow(0, from, local).to(g_device)));
    Tensor txt = dist::all_gather_autograd((*replica->text)(texts.narrow(0, from, local).to(g_device)));
    models::clip_contrastive_loss(replica->logits(img, txt)).backward();
    opt.step();
  }
  double worst = 0;
  const auto a = reference->state_dict(), b = replica->state_dict();
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, max_diff(a[i].second, b[i].second));
  std::printf("rank %d: contrastive loss over the gathered global batch, 4 steps: max |difference| %.3g\n",
              dist::rank(), worst);
  expect(worst <= 1e-6, str("the contrastive loss over all_gather_autograd differs from one process by ", worst));
}

// ---- unused parameters ------------------------------------------------------------------------
// Two heads; "a" is used by rank 0 only, "b" by no rank.
struct TwoHeads : nn::Module {
  std::shared_ptr<nn::Module> trunk, a, b;
  TwoHeads() : Module("TwoHeads") {
    register_module("trunk", trunk, std::make_shared<nn::Linear>(4, 4));
    register_module("a", a, std::make_shared<nn::Linear>(4, 2));
    register_module("b", b, std::make_shared<nn::Linear>(4, 2));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = (*trunk)(x);
    return dist::rank() == 0 ? sum((*a)(h)) + sum(h) : sum(h);
  }
};

#ifdef BCOS_DIST_WORKER_EMULATED
// A warmed-up data-parallel step on the GPU (ResNet-20 and its B-cos form, synchronised batch
// norm, gradient buckets all-reduced through NCCL, AdamW) waits for the device nowhere: each wait
// would stall the host until the GPU caught up, and the GPU then idle while the host queues on.
void waits() {
  namespace rt = bcos::emu::runtime;
  for (const bool bcos : {false, true}) {
    manual_seed(7);
    std::shared_ptr<nn::Module> m = models::create_model("resnet20", 10);
    if (bcos) {
      models::BcosifyOptions o;
      o.mean = {0.5f, 0.5f, 0.5f}, o.std = {0.25f, 0.25f, 0.25f};
      m = models::bcosify(m, o);
    }
    m->to(g_device);
    m->train();
    dist::DataParallelOptions small_buckets;
    small_buckets.bucket_mb = 0.05, small_buckets.first_bucket_mb = 0.01;
    dist::DataParallel ddp(*m, small_buckets);
    dist::use_sync_batch_norm(*m);
    nn::AdamW opt(m->parameters(), {.lr = 1e-3, .weight_decay = 0.05});
    manual_seed(100 + dist::rank());
    const Tensor x = rand({4, 3, 16, 16}).to(g_device), y = randint(0, 10, {4}).to(g_device);
    const Tensor input = bcos ? nn::add_inverse(x) : x;
    auto step = [&] {
      opt.zero_grad();
      const Tensor logits = ddp(input);
      (bcos ? nn::uniform_off_labels_bce(logits, y) : cross_entropy(logits, y)).backward();
      opt.step();
    };
    step(), step();
    const int64_t before = rt::host_waits();
    step();
    const int64_t waited = rt::host_waits() - before;
    std::printf("rank %d: %s data-parallel step: %lld waits for the device\n", dist::rank(),
                bcos ? "B-cos ResNet-20" : "ResNet-20", static_cast<long long>(waited));
    expect(waited == 0, str(bcos ? "B-cos ResNet-20" : "ResNet-20", ": a warmed-up data-parallel step waited for the device ",
                            waited, " times"));
  }
}
#endif

void unused() {
  manual_seed(5);
  auto model = std::make_shared<TwoHeads>();
  model->to(g_device);
  {
    dist::DataParallel ddp(*model);
    const std::string err = error_of([&] { ddp(randn({3, 4}).to(g_device)).backward(); });
    expect(contains(err, "b.weight") && contains(err, "find_unused_parameters"), "unused parameters named: " + err);
  }
  model->zero_grad();
  dist::DataParallelOptions o;
  o.find_unused_parameters = true;
  dist::DataParallel ddp(*model, o);
  manual_seed(6);
  Tensor x = randn({3, 4}).to(g_device);
  ddp(x).backward();
  auto& a = static_cast<nn::Linear&>(*model->a);
  auto& b = static_cast<nn::Linear&>(*model->b);
  expect(!b.weight.grad().defined(), "a parameter used by no rank keeps no gradient");
  // a: rank 0's gradient (Σ over the batch of h) averaged with rank 1's zeros.
  NoGradGuard no_grad;
  Tensor h = (*model->trunk)(x);
  Tensor expected = sum(h, {0}, true).expand({2, 4}) / double(dist::world_size());
  expect(a.weight.grad().defined() && max_diff(a.weight.grad(), expected) < 1e-6,
         "a parameter used by one rank gets the average with zeros");
}

// ---- failures ---------------------------------------------------------------------------------
void train_until_failure(const std::string& mode) {
  manual_seed(2);
  auto model = std::make_shared<nn::Linear>(64, 10);
  model->to(g_device);
  dist::DataParallel ddp(*model);
  nn::SGD opt(model->parameters(), {.lr = 0.1});
  for (int step = 0; step < 1000000; ++step) {
    if (dist::rank() == 1 && step == 3) {
      if (mode == "fail-throw") fail("dist_worker: rank 1 fails on purpose at step ", step);
      if (mode == "fail-exit") std::_Exit(3);
      if (mode == "timeout") std::this_thread::sleep_for(std::chrono::seconds(60));
    }
    opt.zero_grad();
    cross_entropy(ddp(randn({4, 64}).to(g_device)), randint(0, 10, {4}).to(g_device)).backward();
    opt.step();
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const std::string device = argc > 2 ? argv[2] : "cpu";
  try {
    dist::init();
    if (device == "cuda") {
      BCOS_CHECK(cuda_device_count() > 0, "dist_worker: `cuda` asked for, but no CUDA device");
      g_device = Device::cuda(dist::local_rank() % cuda_device_count());
      set_allow_tf32(false);  // float32 results are compared within 1e-6: TF32 products round to 10 bits
    } else {
      BCOS_CHECK(device == "cpu", "dist_worker: device ", device, " is neither cpu nor cuda");
    }
    if (mode == "collectives") {
      collectives();
    } else if (mode == "equality") {
      equality();
      contrastive();
    } else if (mode == "unused") {
      unused();
#ifdef BCOS_DIST_WORKER_EMULATED
    } else if (mode == "waits" && device == "cuda") {
      waits();
#endif
    } else if (mode == "fail-throw" || mode == "fail-exit" || mode == "timeout") {
      train_until_failure(mode);
    } else {
      std::fprintf(stderr, "usage: dist_worker collectives|equality|unused|fail-throw|fail-exit|timeout [cpu|cuda], "
                   "or waits cuda (emulated GPUs)\n");
      return 2;
    }
    dist::barrier();
#ifdef BCOS_DIST_WORKER_EMULATED
    // A rank works on its own GPU only: a context on another (~0.5 GiB there) is a leak.
    if (device == "cuda")
      expect(bcos::emu::runtime::contexts() == uint64_t(1) << g_device.index,
             str("only this rank's GPU has a context (contexts woken: mask ", bcos::emu::runtime::contexts(), ")"));
#endif
  } catch (const std::exception& e) {
    dist::abort(1, str("dist_worker ", mode, ": rank ", dist::rank(), ": ", e.what()));
  }
  if (g_failures) dist::abort(1, str("dist_worker ", mode, ": rank ", dist::rank(), ": ", g_failures, " check(s) failed"));
  std::printf("dist_worker %s: rank %d of %d passed\n", mode.c_str(), dist::rank(), dist::world_size());
  dist::finalize();
  return 0;
}
