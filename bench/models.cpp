// bcos.cpp side of bench/models (tools/bench_models.py runs PyTorch beside it): images/s of a
// model's inference (eval, no grad) or training step (train mode: forward, cross-entropy,
// backward, SGD with momentum), and peak memory: the process's resident memory on the CPU, the
// most tensor memory held at once on a GPU. One line:
//   images_per_s <float> peak_rss_mb <float>        (peak_gpu_mb <float> on a GPU)
//   bench_models --arch resnet50 --batch 8 --mode infer|train [--seconds 3] [--device cuda] [--profile N]
// --profile N: after the measurement, N more steps with every kernel timed (tensor/profile.h),
// printed as a table after the line above. --cudnn-benchmark 1: cuDNN's algorithms timed per
// convolution shape (tensor/device.h; the warm-up steps pay for it), as torch.backends.cudnn.benchmark.
// --cudnn-api graph | legacy: which cuDNN API runs the convolutions (tensor/device.h).
// --tf32 0: float32 matmuls and convolutions on a GPU in full float32 (default 1: TF32, set_allow_tf32).
// --cuda-graph 1: after two warm-up steps, the step is captured as a CUDA graph (tensor/cuda_graph.h)
// and each timed step replays it: the whole step with its optimizer, as PyTorch's whole-network
// capture (the distillation rows' Adam as torch.optim.Adam(capturable=True)).
// bcos_<arch> (bcos_resnet50, ...): the B-cosified model (models/bcosify.h, b = 2, biases
// removed) on AddInverse(x), trained with the B-cos BCE loss (one-hot targets clamped to 1 / C).
// CLIP: --arch clip_rn50 / clip_vit_b_32 time the image tower of OpenAI's RN50 / ViT-B/32
// (training: cross-entropy of the embedding as logits, SGD on the tower), clip_text the text
// tower on [batch, 77] token ids ("images" are then texts).
// bcos_clip_rn50: B-cos CLIP (models/bcos_clip.h) of the RN50 image tower; training is its
// distillation step (the authors' recipe): the frozen RN50 tower on the normalised images (no
// grad), the student on AddInverse(images), the sigmoid distillation loss, backward, adaptive
// gradient clipping (0.01), Adam (lr 1e-4); inference is the student's forward.

#include <cstdio>
#include <string>

#include "autograd/ops.h"
#include "models/bcos_clip.h"
#include "models/bcosify.h"
#include "models/clip.h"
#include "models/factory.h"
#include "nn/bcos.h"
#include "nn/attention.h"
#include "nn/optim.h"
#include "tensor/cuda_graph.h"
#include "tensor/parallel.h"
#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#endif
#include "tensor/profile.h"
#include "timing.h"

using namespace bcos;

int main(int argc, char** argv) {
  try {
    std::string arch = "resnet18", mode = "infer";
    int64_t batch = 8;
    double seconds = 3.0;
    Device device;
    DType autocast = DType::f32;  // --autocast bf16 | f16: the forward (and its backward) in mixed precision
    DType dtype = DType::f32;     // --dtype bf16 | f16: the whole model (and its input) converted, as module.to(dtype)
    bool fused_attention = true;  // --fused-attention 0: MultiheadAttention's composed form
    int64_t profile_steps = 0;    // --profile N: then N more steps timed per kernel (tensor/profile.h)
    bool cuda_graph = false;      // --cuda-graph 1: the step replayed from a CUDA graph
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i], v = argv[i + 1];
      if (a == "--arch") arch = v;
      else if (a == "--batch") batch = std::stoll(v);
      else if (a == "--mode") mode = v;
      else if (a == "--seconds") seconds = std::stod(v);
      else if (a == "--device") device = Device(v);
      else if (a == "--bf16") set_cpu_bf16(v == "1");
      else if (a == "--fused-attention") fused_attention = v == "1";
      else if (a == "--profile") profile_steps = std::stoll(v);
      else if (a == "--cuda-graph") cuda_graph = v == "1";
      else if (a == "--cudnn-benchmark") set_cudnn_benchmark(v == "1");
      else if (a == "--tf32") set_allow_tf32(v == "1");
      else if (a == "--cudnn-api") {
        BCOS_CHECK(v == "graph" || v == "legacy", "bench_models: --cudnn-api graph or legacy, got ", v);
        set_cudnn_graph_api(v == "graph");
      }
      else if (a == "--autocast") autocast = v == "bf16" ? DType::bf16 : v == "f16" ? DType::f16 : DType::f32;
      else if (a == "--dtype") dtype = v == "bf16" ? DType::bf16 : v == "f16" ? DType::f16 : DType::f32;
      else fail("bench_models: unknown argument ", a);
    }
    BCOS_CHECK(mode == "infer" || mode == "train", "bench_models: --mode infer or train, got ", mode);
    BCOS_CHECK(!cuda_graph || (device.is_cuda() && profile_steps == 0), "bench_models: --cuda-graph 1 needs "
               "--device cuda (and no --profile: a replay makes no op calls to time)");
    manual_seed(0);
    std::shared_ptr<nn::Module> model;
    std::shared_ptr<models::Clip> clip;
    std::shared_ptr<nn::Module> teacher;  // bcos_clip_rn50: the frozen tower the student learns
    Tensor x, y;
    std::vector<Tensor> params;
    if (arch == "bcos_clip_rn50") {
      const models::ClipConfig c = models::ClipConfig::named("RN50");
      auto tower = [&] {
        return std::make_shared<models::ModifiedResNet>(c.vision_layers, c.embed_dim, c.vision_heads,
                                                        c.image_resolution, c.vision_width);
      };
      teacher = tower();
      teacher->eval();
      model = models::bcosify_clip_visual(tower(), {});
      x = rand({batch, 3, c.image_resolution, c.image_resolution});  // images in [0, 1]
    } else if (arch.rfind("clip_", 0) == 0) {
      BCOS_CHECK(arch == "clip_rn50" || arch == "clip_vit_b_32" || arch == "clip_text", "bench_models: unknown ", arch);
      clip = std::make_shared<models::Clip>(models::ClipConfig::named(arch == "clip_vit_b_32" ? "ViT-B/32" : "RN50"));
      if (arch == "clip_text") {
        x = randint(1, 49406, {batch, 77});
        y = randint(0, clip->config.embed_dim, {batch});
      } else {
        x = randn({batch, 3, 224, 224});
        y = randint(0, clip->config.embed_dim, {batch});
      }
      model = clip;
    } else {
      const bool bcos = arch.rfind("bcos_", 0) == 0;
      const std::string base = bcos ? arch.substr(5) : arch;
      const models::ModelSpec spec = models::model_spec(base);
      model = models::create_model(base);
      if (bcos) {
        models::BcosifyOptions o;
        o.mean = spec.mean, o.std = spec.std;
        model = models::bcosify(model, o);
        x = nn::add_inverse(rand({batch, 3, spec.input_size, spec.input_size}));
      } else {
        x = randn({batch, 3, spec.input_size, spec.input_size});
      }
      y = randint(0, spec.num_classes, {batch});
    }
    model->to(device);
    if (teacher) teacher->to(device);
    if (dtype != DType::f32) {
      model->to(dtype);
      if (teacher) teacher->to(dtype);
      if (x.is_floating_point()) x = x.to(dtype);
    }
    x = x.to(device);
    if (y.defined()) y = y.to(device);
    for (auto& [name, m] : model->named_modules())
      if (auto* mha = dynamic_cast<nn::MultiheadAttention*>(m)) mha->fused_attention = fused_attention;
    if (params.empty()) params = clip ? (arch == "clip_text" ? clip->parameters() : clip->visual->parameters())
                                      : model->parameters();
    const bool bcos_loss = arch.rfind("bcos_", 0) == 0;
    const Tensor clip_mean = from_vector(models::kClipMean, {1, 3, 1, 1}).to(dtype).to(device);
    const Tensor clip_std = from_vector(models::kClipStd, {1, 3, 1, 1}).to(dtype).to(device);
    auto forward = [&] {
      AutocastGuard mixed(device.type, autocast, autocast != DType::f32);
      if (teacher) return (*model)(nn::add_inverse(x));
      if (!clip) return (*model)(x);
      return arch == "clip_text" ? clip->encode_text(x) : clip->encode_image(x);
    };
    nn::SGD opt(params, {.lr = 0.01, .momentum = 0.9});
    nn::Adam distill_opt(teacher ? params : std::vector<Tensor>{}, {.lr = 1e-4});
    // A step: its gradients (or the forward alone), then the optimizer's update.
    auto gradients = [&] {
      if (mode == "infer") {
        NoGradGuard no_grad;
        forward();
      } else if (teacher) {
        Tensor target;
        {
          NoGradGuard no_grad;
          AutocastGuard mixed(device.type, autocast, autocast != DType::f32);
          target = (*teacher)((x - clip_mean) / clip_std);
        }
        distill_opt.zero_grad();
        models::sigmoid_distillation_loss(forward(), target).backward();
        nn::adaptive_clip_grad_(params, 0.01, 1e-3);
      } else {
        opt.zero_grad();
        const Tensor out = forward();
        (bcos_loss ? nn::uniform_off_labels_bce(out, y) : cross_entropy(out, y)).backward();
      }
    };
    auto update = [&] {
      if (mode == "infer") return;
      if (teacher) distill_opt.step();
      else opt.step();
    };
    auto run = [&] {
      gradients();
      update();
    };
    model->train(mode == "train");
    CudaGraph graph;
    if (cuda_graph) {
      run(), run();  // the optimizer's state and cuDNN's choices exist before the capture
      graph.capture(device, run);
    }
    // GPU work is queued: time what has finished.
    if (cuda_graph) time_steps([&] { graph.replay(); }, [&] { synchronize(device); }, batch, seconds);
    else time_steps(run, [&] { synchronize(device); }, batch, seconds);
    if (device.is_cuda()) std::printf(" peak_gpu_mb %.1f", double(peak_memory_bytes(device)) / (1 << 20));
    std::printf("\n");
#ifdef BCOS_WITH_CUDA
    if (cudnn_graph_api() && cuda::conv_graph_declined() > 0)  // a note tools/bench_models.py shows once
      std::fprintf(stderr, "bcos: cuDNN's graph API declined %lld convolution shapes (the legacy API ran them); "
                   "last: %s\n", static_cast<long long>(cuda::conv_graph_declined()),
                   cuda::conv_graph_last_declined().c_str());
#endif
    if (profile_steps > 0) {
      profile::start();
      for (int64_t i = 0; i < profile_steps; ++i) run();
      synchronize(device);
      const profile::Report report = profile::stop();
      std::printf("profile of %lld steps (%.2f ms per step):\n%s", static_cast<long long>(profile_steps),
                  report.wall_ms / double(profile_steps), report.format().c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
