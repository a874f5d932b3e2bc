// bcos.cpp side of bench/models (tools/bench_models.py runs PyTorch beside it): images/s of a
// model's inference (eval, no grad) or training step (train mode: forward, cross-entropy,
// backward, SGD with momentum), and the process's peak resident memory. One line:
//   images_per_s <float> peak_rss_mb <float>
//   bench_models --arch resnet50 --batch 8 --mode infer|train [--seconds 3]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "autograd/ops.h"
#include "models/factory.h"
#include "nn/optim.h"

using namespace bcos;

int main(int argc, char** argv) {
  try {
    std::string arch = "resnet18", mode = "infer";
    int64_t batch = 8;
    double seconds = 3.0;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i], v = argv[i + 1];
      if (a == "--arch") arch = v;
      else if (a == "--batch") batch = std::stoll(v);
      else if (a == "--mode") mode = v;
      else if (a == "--seconds") seconds = std::stod(v);
      else fail("bench_models: unknown argument ", a);
    }
    BCOS_CHECK(mode == "infer" || mode == "train", "bench_models: --mode infer or train, got ", mode);
    const models::ModelSpec spec = models::model_spec(arch);
    manual_seed(0);
    auto model = models::create_model(arch);
    const Tensor x = randn({batch, 3, spec.input_size, spec.input_size});
    const Tensor y = randint(0, spec.num_classes, {batch});
    nn::SGD opt(model->parameters(), {.lr = 0.01, .momentum = 0.9});
    auto run = [&] {
      if (mode == "infer") {
        NoGradGuard no_grad;
        (*model)(x);
      } else {
        opt.zero_grad();
        cross_entropy((*model)(x), y).backward();
        opt.step();
      }
    };
    model->train(mode == "train");
    run();  // warm-up: allocations, caches
    int64_t iters = 0;
    const auto start = std::chrono::steady_clock::now();
    double elapsed = 0;
    while (iters < 2 || elapsed < seconds) {
      run();
      ++iters;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    std::printf("images_per_s %.2f peak_rss_mb %.1f\n", double(iters * batch) / elapsed, double(usage.ru_maxrss) / 1024.0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
