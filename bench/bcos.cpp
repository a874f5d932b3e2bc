// bcos.cpp side of bench/bcos (tools/bench_bcos.py runs the same B-cos ResNet-20 in PyTorch
// beside it): images/s of the B-cosification fine-tuning step (train mode: AddInverse, forward,
// uniform-off-label BCE, backward, adaptive gradient clipping, AdamW) or of a batched explanation
// (eval, explanation mode, input gradient of each image's predicted logit), and peak memory.
//   bench_bcos --mode train|explain [--batch 64] [--seconds 10] [--threads N]
// One line: images_per_s <float> peak_rss_mb <float>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "autograd/ops.h"
#include "models/bcosify.h"
#include "models/explain.h"
#include "models/factory.h"
#include "nn/optim.h"
#include "tensor/parallel.h"

using namespace bcos;

int main(int argc, char** argv) {
  try {
    std::string mode = "train";
    int64_t batch = 64;
    double seconds = 10.0;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i], v = argv[i + 1];
      if (a == "--batch") batch = std::stoll(v);
      else if (a == "--mode") mode = v;
      else if (a == "--seconds") seconds = std::stod(v);
      else if (a == "--threads") set_num_threads(std::stoi(v));
      else fail("bench_bcos: unknown argument ", a);
    }
    BCOS_CHECK(mode == "train" || mode == "explain", "bench_bcos: --mode train or explain, got ", mode);
    const models::ModelSpec spec = models::model_spec("resnet20");
    manual_seed(0);
    auto model = models::bcosify(models::create_model("resnet20"),
                                 {2, false, false, spec.mean, spec.std, std::nullopt});
    const Tensor x = rand({batch, 3, 32, 32});
    const Tensor y = randint(0, 10, {batch});
    std::vector<Tensor> params = model->parameters();
    nn::AdamW opt(params, {.lr = 1e-4, .weight_decay = 0.0});
    auto run = [&] {
      if (mode == "train") {
        opt.zero_grad();
        nn::uniform_off_labels_bce((*model)(nn::add_inverse(x)), y).backward();
        nn::adaptive_clip_grad_(params, 0.01, 1e-3);
        opt.step();
      } else {
        models::explain(*model, nn::add_inverse(x), Tensor());  // the predicted classes
      }
    };
    model->train(mode == "train");
    run();  // warm-up
    run();
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
