// bench_dist: what data-parallel training costs (bench/dist runs it under mpirun -np 1 and 2).
//   bench_dist allreduce [MAX_MB]   all-reduce time and bandwidth of f32 buffers, 4 KB .. MAX_MB
//   bench_dist train ARCH [BCOS] [SECONDS] [sync]
//                                   AdamW steps of ARCH (resnet20, …; BCOS = "bcos": its B-cos
//                                   form) at 64 images per rank on fixed random data: images/s of
//                                   the whole job, and the time each step waits for its all-reduces;
//                                   "sync": batch norms synchronised across the ranks
// Rank 0 prints one line per measurement; each process runs on one thread (OMP_NUM_THREADS).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "autograd/ops.h"
#include "dist/data_parallel.h"
#include "models/bcosify.h"
#include "models/factory.h"
#include "nn/bcos.h"
#include "nn/optim.h"

using namespace bcos;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Ring all-reduce moves 2 (n − 1) / n of the buffer through each rank's link: "bus bandwidth"
// (as nccl-tests report it) is that amount over the time, comparable across world sizes.
void allreduce(double max_mb) {
  const int w = dist::world_size();
  for (double kb = 4; kb <= max_mb * 1024 + 1e-9; kb *= 4) {
    const int64_t n = int64_t(kb * 1024 / 4);
    Tensor t = ones({n});
    for (int i = 0; i < 3; ++i) dist::all_reduce(t);
    // Every rank must make the same calls: rank 0 times 5, and decides the count for about 0.5 s.
    auto start = Clock::now();
    for (int i = 0; i < 5; ++i) dist::all_reduce(t);
    Tensor count = full({1}, std::max(5.0, 0.5 / (since(start) / 5)), DType::f64);
    dist::broadcast(count, 0);
    const int64_t iters = int64_t(count.item());
    dist::barrier();
    start = Clock::now();
    for (int64_t i = 0; i < iters; ++i) dist::all_reduce(t);
    const double elapsed = since(start);
    Tensor agreed = full({1}, elapsed / double(iters), DType::f64);  // rank 0 reports the slowest rank's time
    dist::all_reduce(agreed, dist::ReduceOp::max);
    const double s = agreed.item();
    const double bytes = double(n) * 4;
    if (dist::is_main())
      std::printf("allreduce bytes %.0f seconds %.3e algbw_gb_s %.3f busbw_gb_s %.3f ranks %d\n", bytes, s,
                  bytes / s / 1e9, w > 1 ? 2.0 * (w - 1) / w * bytes / s / 1e9 : 0.0, w);
  }
}

void train(const std::string& arch, bool bcos_model, double seconds, bool sync_bn) {
  const int64_t local_batch = 64;
  manual_seed(1);
  std::shared_ptr<nn::Module> model = models::create_model(arch);
  const models::ModelSpec spec = models::model_spec(arch);
  if (bcos_model) {
    models::BcosifyOptions o;
    o.mean = spec.mean, o.std = spec.std;
    model = models::bcosify(model, o);
  }
  model->train();
  dist::DataParallel ddp(*model);
  if (sync_bn) dist::use_sync_batch_norm(*model);
  nn::AdamW opt(model->parameters(), {.lr = 1e-4, .weight_decay = 0});
  manual_seed(100 + uint64_t(dist::rank()));
  Tensor x = rand({local_batch, 3, spec.input_size, spec.input_size});
  if (bcos_model) x = nn::add_inverse(x);
  Tensor y = randint(0, spec.num_classes, {local_batch});
  auto step = [&] {
    opt.zero_grad();
    Tensor logits = ddp(x);
    (bcos_model ? nn::uniform_off_labels_bce(logits, y) : cross_entropy(logits, y)).backward();
    opt.step();
  };
  step();
  step();
  dist::barrier();
  const double wait_before = ddp.stats().wait_seconds;
  int64_t iters = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  for (;;) {
    step();
    ++iters;
    elapsed = since(start);
    // Every rank must run the same number of steps: rank 0's clock decides for all.
    Tensor go_on = full({1}, double(iters < 3 || elapsed < seconds), DType::f64);
    dist::broadcast(go_on, 0);
    if (go_on.item() == 0) break;
  }
  const double wait = ddp.stats().wait_seconds - wait_before;
  if (dist::is_main())
    std::printf("train arch %s%s ranks %d sync_bn %d images_per_s %.2f step_s %.4f wait_s %.4f buckets %lld grad_mb %.2f\n",
                bcos_model ? "bcos_" : "", arch.c_str(), dist::world_size(), int(sync_bn),
                double(iters * local_batch * dist::world_size()) / elapsed, elapsed / double(iters),
                wait / double(iters), static_cast<long long>(ddp.stats().buckets), ddp.stats().bytes_per_step / 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  try {
    dist::init();
    if (mode == "allreduce") {
      allreduce(argc > 2 ? std::atof(argv[2]) : 64);
    } else if (mode == "train" && argc > 2) {
      train(argv[2], argc > 3 && std::string(argv[3]) == "bcos", argc > 4 ? std::atof(argv[4]) : 10,
            argc > 5 && std::string(argv[5]) == "sync");
    } else {
      std::fprintf(stderr, "usage: bench_dist allreduce [MAX_MB] | train ARCH [bcos|plain] [SECONDS] [sync]\n");
      return 2;
    }
  } catch (const std::exception& e) {
    dist::abort(1, str("bench_dist: rank ", dist::rank(), ": ", e.what()));
  }
  dist::finalize();
  return 0;
}
