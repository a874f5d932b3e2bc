// bcos.cpp side of bench/bcos (tools/bench_bcos.py runs the same B-cos ResNet-20 in PyTorch
// beside it): images/s of the B-cosification fine-tuning step (train mode: AddInverse, forward,
// uniform-off-label BCE, backward, adaptive gradient clipping, AdamW) or of a batched explanation
// (eval, explanation mode, input gradient of each image's predicted logit), and peak memory.
// clip_distill / clip_explain: the B-cos CLIP tower (models/bcos_clip.h) of the default teacher
// (ModifiedResNet [1, 1, 1] x 32 wide, 32 px, 256-d): its distillation step (frozen teacher,
// sigmoid loss, adaptive clipping, Adam) and the explanation of each image's best of 10 texts.
// --autocast bf16 | f16: the training modes' forward passes (teacher's included) and so their
// backward in mixed precision, as bcosify_resnet / bcos_clip_zeroshot --autocast; explanations
// are not meant to run under autocast (they lose completeness to the rounding), so those modes
// refuse it.
//   bench_bcos --mode train|explain|clip_distill|clip_explain [--batch 64] [--seconds 10] [--threads N]
//              [--autocast none|bf16|f16]
// One line: images_per_s <float> peak_rss_mb <float>

#include <cstdio>
#include <functional>
#include <string>

#include "autograd/ops.h"
#include "models/bcos_clip.h"
#include "models/bcosify.h"
#include "models/explain.h"
#include "models/factory.h"
#include "nn/bcos.h"
#include "nn/optim.h"
#include "tensor/parallel.h"
#include "timing.h"

using namespace bcos;

namespace {

// Times `run` and prints the result line.
void report(const std::function<void()>& run, int64_t batch, double seconds) {
  time_steps(run, [] {}, batch, seconds);
  std::printf("\n");
}

int clip_bench(const std::string& mode, int64_t batch, double seconds, DType autocast) {
  models::ClipConfig c;
  c.vision_layers = {1, 1, 1}, c.vision_width = 32, c.vision_heads = 8, c.image_resolution = 32, c.embed_dim = 256;
  std::shared_ptr<nn::Module> teacher = std::make_shared<models::ModifiedResNet>(c.vision_layers, c.embed_dim,
                                                                                 c.vision_heads, 32, 32);
  auto student = models::bcosify_clip_visual(std::make_shared<models::ModifiedResNet>(c.vision_layers, c.embed_dim,
                                                                                      c.vision_heads, 32, 32), {});
  teacher->eval();
  const Tensor x = rand({batch, 3, 32, 32});
  const Tensor mean = from_vector(models::kClipMean, {1, 3, 1, 1}), std = from_vector(models::kClipStd, {1, 3, 1, 1});
  std::vector<Tensor> params = student->parameters();
  nn::Adam opt(params, {.lr = 1e-4});
  auto similarity = std::make_shared<models::TextSimilarity>(student, randn({10, c.embed_dim}));
  std::function<void()> run;
  if (mode == "clip_distill") {
    student->train();
    run = [&] {
      Tensor target;
      Tensor loss;
      {
        AutocastGuard mixed(DeviceType::cpu, autocast, autocast != DType::f32);
        {
          NoGradGuard no_grad;
          target = (*teacher)((x - mean) / std);
        }
        loss = models::sigmoid_distillation_loss((*student)(nn::add_inverse(x)), target);
      }
      opt.zero_grad();
      loss.backward();
      nn::adaptive_clip_grad_(params, 0.01, 1e-3);
      opt.step();
    };
  } else {
    run = [&] { models::explain(*similarity, nn::add_inverse(x), Tensor()); };  // each image's best text
  }
  report(run, batch, seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string mode = "train";
    int64_t batch = 64;
    double seconds = 10.0;
    DType autocast = DType::f32;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i], v = argv[i + 1];
      if (a == "--batch") batch = std::stoll(v);
      else if (a == "--mode") mode = v;
      else if (a == "--seconds") seconds = std::stod(v);
      else if (a == "--threads") set_num_threads(std::stoi(v));
      else if (a == "--autocast") {
        BCOS_CHECK(v == "none" || v == "bf16" || v == "f16", "bench_bcos: --autocast none, bf16 or f16, got ", v);
        autocast = v == "bf16" ? DType::bf16 : v == "f16" ? DType::f16 : DType::f32;
      }
      else fail("bench_bcos: unknown argument ", a);
    }
    BCOS_CHECK(mode == "train" || mode == "explain" || mode == "clip_distill" || mode == "clip_explain",
               "bench_bcos: --mode train, explain, clip_distill or clip_explain, got ", mode);
    BCOS_CHECK(autocast == DType::f32 || mode == "train" || mode == "clip_distill", "bench_bcos: --autocast ",
               dtype_name(autocast), " applies to the training modes (train, clip_distill), not ", mode);
    const models::ModelSpec spec = models::model_spec("resnet20");
    manual_seed(0);
    if (mode.rfind("clip_", 0) == 0) return clip_bench(mode, batch, seconds, autocast);
    auto model = models::bcosify(models::create_model("resnet20"),
                                 {2, false, false, spec.mean, spec.std, std::nullopt});
    const Tensor x = rand({batch, 3, 32, 32});
    const Tensor y = randint(0, 10, {batch});
    std::vector<Tensor> params = model->parameters();
    nn::AdamW opt(params, {.lr = 1e-4, .weight_decay = 0.0});
    auto run = [&] {
      if (mode == "train") {
        Tensor loss;
        {
          AutocastGuard mixed(DeviceType::cpu, autocast, autocast != DType::f32);
          loss = nn::uniform_off_labels_bce((*model)(nn::add_inverse(x)), y);
        }
        opt.zero_grad();
        loss.backward();
        nn::adaptive_clip_grad_(params, 0.01, 1e-3);
        opt.step();
      } else {
        models::explain(*model, nn::add_inverse(x), Tensor());  // the predicted classes
      }
    };
    model->train(mode == "train");
    report(run, batch, seconds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
