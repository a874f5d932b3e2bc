// bcosify_resnet: the whole B-cosification experiment on one command.
//   1. evaluate the pretrained model; 2. check that the conversion with b = 1 (biases and max-pool
//   kept) reproduces its logits; 3. B-cosify it; 4. fine-tune (AdamW, no weight decay, cosine
//   schedule, uniform-off-label BCE, adaptive gradient clipping -- the paper's recipe -- with the
//   biases and BN shifts kept at conversion and faded out over the first 30 % of the steps, b
//   rising from 1 to 2 over the first 25 %, and lr 2e-3: the defaults chosen by
//   tools/bcosify_ablation.py, see the README), checkpointing every epoch; 5. evaluate; 6. GridPG
//   of both models (input × gradient for the original, contributions for the B-cos model);
//   7. explanation PNGs; 8. report.md/json.
//   bcosify_resnet                      (CIFAR-10 ResNet-20 from ../shared or $BCOS_DATA)
//   bcosify_resnet --arch resnet20 --weights CKPT --data TRAIN --test-data TEST --epochs 1 --out out/bcosify
//   bcosify_resnet --from-scratch       (a B-cos ResNet of the same shape from random weights)
//   mpirun -np 2 bcosify_resnet --distributed   (data-parallel fine-tuning; rank 0 does the rest)
//   bcosify_resnet --device cuda --cuda-graph   (each step's schedule, forward and backward replayed
//                                       from one CUDA graph once b and the biases have settled)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "autograd/ops.h"
#include "data/image.h"
#include "dist/data_parallel.h"
#include "data/progress.h"
#include "examples/cli.h"
#include "examples/classifier.h"
#include "examples/distributed.h"
#include "examples/graphed_step.h"
#include "models/bcosify.h"
#include "models/explain.h"
#include "models/factory.h"
#include "models/metrics.h"
#include "nn/bcos.h"
#include "nn/checkpoint.h"
#include "nn/grad_scaler.h"
#include "nn/optim.h"
#include "nn/safetensors.h"
#include "nn/schedule.h"

using namespace bcos;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Setup {
  models::ModelSpec spec;
  bool cifar = false;
  std::vector<float> mean, std;
  Device device;  // where the models run (--device); data and results stay on the CPU
  std::FILE* progress = stderr;  // nullptr on data-parallel ranks other than 0
  Tensor normalize(const Tensor& x) const {  // the original model's input: (x − μ) / σ
    return (x - from_vector(mean, {1, 3, 1, 1}).to(x.device())) / from_vector(std, {1, 3, 1, 1}).to(x.device());
  }
};

// models::explain on the models' device, the explanation brought back to the CPU.
models::Explanation explain_on(nn::Module& model, const Setup& s, const Tensor& inputs, const Tensor& targets) {
  models::Explanation e = models::explain(model, inputs.to(s.device), targets.defined() ? targets.to(s.device) : targets);
  const Device cpu;
  return {e.targets.to(cpu), e.logits.to(cpu), e.weights.to(cpu), e.contributions.to(cpu)};
}

// Correctly classified, confident test images (at most `per_class` of each class): GridPG's pool.
struct Pool {
  std::vector<Tensor> images;
  std::vector<int64_t> labels;
  std::map<int64_t, int64_t> per_class;
};

struct EvalResult {
  double accuracy = 0, seconds = 0;
  int64_t samples = 0;
  Pool pool;
  Tensor first_images;  // the first batch, for the equivalence and completeness checks
};

// B-cos models are confident when sigmoid(logit) > 0.5, standard ones when softmax > 0.5.
EvalResult evaluate(nn::Module& model, bool bcos_model, const Setup& s, data::DataLoader& loader,
                    int64_t per_class, const std::string& title) {
  EvalResult r;
  model.eval();
  NoGradGuard no_grad;
  data::ProgressBar bar(loader.num_samples(), title, "img", s.progress);
  const auto start = Clock::now();
  int64_t correct = 0;
  for (data::Batch& b : loader.epoch(0)) {
    if (!r.first_images.defined()) r.first_images = b.images;
    const Tensor x = b.images.to(s.device);
    Tensor logits = model(bcos_model ? nn::add_inverse(x) : s.normalize(x)).to(Device());
    Tensor confidence = bcos_model ? sigmoid(logits) : softmax(logits, 1);
    ValuesIndices best = max(confidence, 1);
    const auto pred = best.indices.to_vector<int64_t>();
    const auto conf = best.values.to_vector<float>();
    const std::vector<int64_t>& labels = b.label_values;
    for (size_t i = 0; i < labels.size(); ++i) {
      BCOS_CHECK(labels[i] >= 0 && labels[i] < s.spec.num_classes, "bcosify_resnet: ", b.names[i], " has label ",
                 labels[i], ", outside the model's ", s.spec.num_classes, " classes");
      if (pred[i] != labels[i]) continue;
      ++correct;
      if (conf[i] > 0.5f && r.pool.per_class[labels[i]] < per_class) {
        ++r.pool.per_class[labels[i]];
        r.pool.images.push_back(b.images.select(0, int64_t(i)).clone());
        r.pool.labels.push_back(labels[i]);
      }
    }
    r.samples += b.size();
    bar.update(b.size(), {{"acc", 100.0 * double(correct) / double(r.samples)}});
  }
  bar.finish();
  BCOS_CHECK(r.samples > 0, "bcosify_resnet: the test set is empty");
  r.accuracy = 100.0 * double(correct) / double(r.samples);
  r.seconds = seconds_since(start);
  return r;
}

// The share of positive contributions within `ring` px of the image border, on the pool's images
// (at most 500), each explained for its label: the original by input × gradient, the B-cos model
// by its contributions. Explanations spread evenly give models::border_area_share().
double border_share(nn::Module& model, bool bcos_model, const Setup& s, const Pool& pool, int64_t ring) {
  const int64_t n = std::min<int64_t>(int64_t(pool.images.size()), 500);
  if (n == 0) return std::nan("");
  std::vector<Tensor> maps;
  for (int64_t i = 0; i < n; i += 100) {
    const int64_t m = std::min<int64_t>(100, n - i);
    Tensor x = stack(std::vector<Tensor>(pool.images.begin() + i, pool.images.begin() + i + m), 0);
    Tensor y = from_vector(std::vector<int64_t>(pool.labels.begin() + i, pool.labels.begin() + i + m), {m});
    maps.push_back(explain_on(model, s, bcos_model ? nn::add_inverse(x) : s.normalize(x), y).contributions);
  }
  return models::border_share(cat(maps, 0), ring);
}

// One figure of the model at work: a column per class (its first confident, correct test image
// in `pool`, at most `columns`), rows input / W(x) in B-cos colours / contributions, on white.
void write_overview(nn::Module& model, const Setup& s, const Pool& pool, int64_t columns, int64_t smooth,
                    int64_t scale, const std::string& path) {
  std::vector<Tensor> images;
  std::vector<int64_t> labels;
  for (size_t i = 0; i < pool.images.size() && int64_t(images.size()) < columns; ++i)
    if (std::find(labels.begin(), labels.end(), pool.labels[i]) == labels.end())
      images.push_back(pool.images[i]), labels.push_back(pool.labels[i]);
  if (images.empty()) return;
  const int64_t n = int64_t(images.size());
  models::Explanation e = explain_on(model, s, nn::add_inverse(stack(images, 0)), from_vector(labels, {n}));
  const int64_t h = images[0].size(1);
  Tensor gap_v = ones({h, 2, 3}), gap_h;
  std::vector<Tensor> rows(3);
  for (int64_t i = 0; i < n; ++i) {
    Tensor rgba = models::explanation_rgba(e.weights.select(0, i), e.contributions.select(0, i), smooth);
    Tensor alpha = rgba.slice(2, 3, 4);
    Tensor cells[3] = {images[size_t(i)].permute({1, 2, 0}), rgba.slice(2, 0, 3) * alpha + (1.0 - alpha),
                       models::contribution_heatmap(e.contributions.select(0, i))};
    for (int r = 0; r < 3; ++r) {
      if (i > 0) rows[size_t(r)] = cat({rows[size_t(r)], gap_v}, 1);
      rows[size_t(r)] = i == 0 ? cells[r] : cat({rows[size_t(r)], cells[r]}, 1);
    }
  }
  gap_h = ones({2, rows[0].size(1), 3});
  data::write_png(models::to_u8_image(cat({rows[0], gap_h, rows[1], gap_h, rows[2]}, 0), scale), path);
}

models::GridPGResult run_gridpg(nn::Module& model, bool bcos_model, const Setup& s, const Pool& pool,
                                int64_t grids, uint64_t seed, const std::string& title) {
  models::GridPGOptions o;
  o.grids = grids, o.seed = seed, o.batch = 8;
  data::ProgressBar bar(grids * 9, title, "map", s.progress);
  auto attribution = [&](const Tensor& images, const Tensor& targets) {
    const Tensor x = images.to(s.device);
    Tensor input = bcos_model ? nn::add_inverse(x) : s.normalize(x);
    Tensor maps = models::contribution_maps(model, input, targets.to(s.device)).to(Device());
    bar.update(targets.numel());
    return maps;
  };
  if (grids <= 0 || pool.per_class.size() < 9) {  // a weak model (e.g. briefly trained from scratch): no score
    if (grids > 0)
      std::fprintf(stderr, "%s: only %zu classes have confident, correct test images; GridPG needs 9\n",
                   title.c_str(), pool.per_class.size());
    return models::GridPGResult::unscored();
  }
  models::GridPGResult r = models::grid_pointing_game(stack(pool.images, 0),
                                                      from_vector(pool.labels, {int64_t(pool.labels.size())}),
                                                      attribution, o);
  bar.finish();
  return r;
}

// The conversion is right: b = 1 with biases and max-pool kept gives the original's logits (on
// the first 64 test images). Returns the largest error relative to the largest logit.
double b1_equivalence_error(nn::Module& original, const Setup& s, const std::string& weights, const Tensor& images) {
  ExactFloat32Guard exact_products;  // TF32 would blur the identity to ~1e-3 on a GPU
  auto copy = models::create_model(s.spec.arch);
  models::load_pretrained(*copy, weights);
  copy->eval();
  models::BcosifyOptions exact{1, true, true, s.mean, s.std, std::nullopt};
  Tensor x = images.slice(0, 0, std::min<int64_t>(64, images.size(0))).to(s.device);
  NoGradGuard no_grad;
  Tensor expected = original(s.normalize(x)).to(Device());
  auto converted = models::bcosify(copy, exact);
  converted->eval();
  converted->to(s.device);
  Tensor got = (*converted)(nn::add_inverse(x)).to(Device());
  return max(abs(got - expected)).item() / std::max(max(abs(expected)).item(), 1e-12);
}

std::unique_ptr<data::DataLoader> test_loader(const std::string& path, const Setup& s, int64_t batch, int workers,
                                              int64_t limit) {
  using namespace data;
  const int64_t shorter = s.spec.resize_size > 0 ? s.spec.resize_size : s.spec.input_size;
  Transform t = Compose({Resize(shorter), CenterCrop(s.spec.input_size), ToTensor()});  // [0, 1]: no normalisation
  return examples::make_loader(path, "test", t, {.batch_size = batch, .workers = workers, .limit = limit});
}

}  // namespace

int main(int argc, char** argv) {
  const std::string root = examples::data_root();
  const std::string cifar_dir = root + "/data/cifar10";
  // ../shared holds WebDataset shards; scripts/get_data's cache the CIFAR-10 binary version.
  const std::string binary_dir = cifar_dir + "/cifar-10-batches-bin";
  const bool binary = !fs::exists(cifar_dir + "/cifar10-test-000000.tar") && fs::is_directory(binary_dir);
  cli::App app("B-cosify a pretrained ResNet, fine-tune it, and measure accuracy and explanations (GridPG).",
               "bcosify_resnet");
  examples::show_defaults(app);
  std::string arch = "resnet20", weights, out = "out/bcosify", loss_name = "bce", photos_dir = root + "/data/photos";
  std::string train_path = binary ? binary_dir : cifar_dir + "/cifar10-train-{000000..000004}.tar";
  std::string test_path = binary ? binary_dir : cifar_dir + "/cifar10-test-000000.tar";
  double epochs = 1, lr = 2e-3, weight_decay = 0, logit_bias_arg = 0;
  int64_t batch = 64, warmup = 0, bn_recalibrate = 0, grids = 500, explain_count = 16, limit_train = 0, limit_test = 0;
  int workers = int(std::max(1u, std::thread::hardware_concurrency()));
  uint64_t seed = 0;
  bool keep_bias = false, no_original_gridpg = false, resume = false, from_scratch = false, detect_anomaly = false;
  bool distributed = false, sync_bn = false, split_shards = false, cuda_graph = false;
  std::string device_spec = "cpu", autocast = "none";
  models::FinetuneSchedule plan;
  plan.b = 2, plan.b_warmup = 0.25, plan.bias_decay = 0.3;
  const auto fraction = cli::Range(0.0, 1.0);
  app.add_option("--arch", arch, "resnet20/32/44/56/110 (CIFAR-10) or resnet18/34/50/101/152 (ImageNet-style)");
  cli::Option* weights_opt = app.add_option(
      "--weights", weights, "pretrained checkpoint (default for CIFAR ResNets: $BCOS_DATA/weights/resnet-cifar10/)");
  cli::Option* data_opt = app.add_option("--data", train_path, "training data: shards, CIFAR folder or ImageFolder");
  cli::Option* test_opt = app.add_option("--test-data", test_path, "test data");
  app.add_option("--photos", photos_dir, "a folder of extra images to explain (skipped when missing)");
  app.add_option("--epochs", epochs, "fine-tuning epochs (fractions too: 0.25 is a quarter of the training set)")
      ->check(cli::NonNegativeNumber);
  app.add_option("--batch", batch, "batch size")->check(cli::PositiveNumber);
  app.add_option("--lr", lr, "AdamW learning rate (cosine schedule to 0)")->check(cli::NonNegativeNumber);
  app.add_option("--weight-decay", weight_decay, "AdamW weight decay")->check(cli::NonNegativeNumber);
  app.add_option("--warmup", warmup, "linear warm-up steps")->check(cli::NonNegativeNumber);
  app.add_option("--b", plan.b, "the B-cos exponent")->check(cli::Range(1.0, 1e6));
  app.add_option("--b-warmup", plan.b_warmup, "b rises linearly from 1 over this fraction of the fine-tuning "
                 "(0: b from the start)")->check(fraction);
  cli::Option* bias_decay_opt = app.add_option(
      "--bias-decay", plan.bias_decay, "the biases and BN shifts fade to zero over this fraction of the fine-tuning "
      "and are removed at the end (0: removed at conversion)")->check(fraction);
  cli::Option* head_opt = app.add_option("--head-bias-decay", plan.head_bias_decay,
                                         "the same for the classifier head's bias (default: as --bias-decay)")
                              ->check(fraction)
                              ->default_str("");
  cli::Option* logit_bias_opt = app.add_option(
      "--logit-bias", logit_bias_arg, "constant added to the logits (default: -ln(classes - 1); 0 with --keep-bias)")
                                    ->default_str("");
  app.add_option("--bn-recalibrate", bn_recalibrate, "re-estimate the batch-norm statistics on this many training "
                 "batches after the conversion, weights frozen")->check(cli::NonNegativeNumber);
  app.add_option("--loss", loss_name, "bce (uniform-off-label binary cross-entropy, the B-cos loss) or ce "
                 "(cross-entropy)")->check(cli::IsMember({"bce", "ce"}));
  app.add_option("--gridpg-grids", grids, "GridPG: how many 3 x 3 grids (0: skip GridPG)")->check(cli::NonNegativeNumber);
  app.add_option("--explain", explain_count, "explanation PNGs for this many test images")->check(cli::NonNegativeNumber);
  app.add_option("--limit-train", limit_train, "use only N training samples per epoch (0: all)")
      ->check(cli::NonNegativeNumber);
  app.add_option("--limit-test", limit_test, "use only N test samples (0: all)")->check(cli::NonNegativeNumber);
  app.add_option("--workers", workers, "decoding threads")->check(cli::PositiveNumber);
  app.add_option("--seed", seed, "seed of shuffling, augmentation and GridPG");
  app.add_option("--out", out, "output folder: checkpoint, model, report, PNGs");
  app.add_option("--device", device_spec, "where the models run: cpu, cuda or cuda:N");
  examples::add_autocast_option(app, autocast);
  app.add_flag("--cuda-graph", cuda_graph, "GPU: once b and the biases have settled (after the warm-up and the fade), "
               "replay each step's forward and backward from one CUDA graph (one process, not with --autocast f16)");
  app.add_flag("--keep-bias", keep_bias, "keep the biases and batch-norm shifts for good (an ablation: breaks completeness)");
  app.add_flag("--no-original-gridpg", no_original_gridpg,
               "skip the original model's GridPG (ablations, which measure only the B-cos model)");
  app.add_flag("--resume", resume, "continue from OUT/checkpoint.safetensors");
  app.add_flag("--detect-anomaly", detect_anomaly,
               "check every op's output and gradient while fine-tuning; stop at the first NaN, naming the op (slow)");
  app.add_flag("--from-scratch", from_scratch, "train a B-cos model of the same architecture from random weights instead");
  app.add_flag("--distributed", distributed, "data-parallel fine-tuning over the processes of an mpirun / srun / "
               "torchrun launch: --batch is the global batch, split over the ranks; rank 0 evaluates, explains and "
               "writes everything");
  app.add_flag("--sync-bn", sync_bn, "with --distributed: batch-norm statistics over the global batch (default: per "
               "rank, as PyTorch's DDP)");
  app.add_flag("--split-shards", split_shards, "with --distributed and WebDataset shards: each rank reads only its "
               "shards (default: every rank reads the stream and keeps its samples, the one-process epoch exactly)");
  return examples::run(app, argc, argv, [&] {
    const auto t_total = Clock::now();
    Setup s;
    s.spec = models::model_spec(arch);
    s.cifar = s.spec.input_size == 32;
    s.mean = s.spec.mean, s.std = s.spec.std;
    s.device = examples::parse_device(device_spec);
    examples::start_processes("bcosify_resnet", distributed, batch);
    if (distributed && s.device.is_cuda() && device_spec == "cuda") s.device = Device::cuda(dist::local_rank());  // a GPU per rank
    const bool main_rank = dist::is_main();
    if (!main_rank) s.progress = nullptr;
    BCOS_CHECK(!sync_bn || distributed, "bcosify_resnet: --sync-bn needs --distributed");
    BCOS_CHECK(!cuda_graph || (s.device.is_cuda() && !distributed && autocast != "f16" && !detect_anomaly),
               "bcosify_resnet: --cuda-graph needs --device cuda, one process (no --distributed), and neither "
               "--autocast f16 (its loss scale changes per step) nor --detect-anomaly (it reads every op's output)");
    if (weights.empty()) {
      BCOS_CHECK(s.cifar, "bcosify_resnet: --weights is required for ", s.spec.arch);
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(root + "/weights/resnet-cifar10", ec))
        if (e.path().filename().string().rfind(s.spec.arch + "-", 0) == 0) weights = e.path().string();
    }
    // Paths the user gave must exist; missing defaults (no ../shared here) only skip the run.
    for (const cli::Option* given : {weights_opt, data_opt, test_opt})
      BCOS_CHECK(!given->count() || examples::data_exists(given->as_string()), "bcosify_resnet: ", given->get_name(), " ",
                 given->as_string(), " does not exist");
    if (weights.empty() || !fs::exists(weights) || !examples::data_exists(train_path) || !examples::data_exists(test_path)) {
      std::printf("bcosify_resnet: skipped: the pretrained weights or the data are missing (weights '%s', data '%s', "
                  "test data '%s'); set BCOS_DATA or pass --weights / --data / --test-data\n",
                  weights.c_str(), train_path.c_str(), test_path.c_str());
      return;
    }
    fs::create_directories(out + "/explanations");
    if (keep_bias && !bias_decay_opt->count()) plan.bias_decay = 0;  // kept: no fading
    if (!head_opt->count()) plan.head_bias_decay = plan.bias_decay;
    const bool fade_biases = plan.bias_decay > 0 || plan.head_bias_decay > 0;
    BCOS_CHECK(!(keep_bias && fade_biases), "bcosify_resnet: --keep-bias keeps the biases for good, so they cannot "
               "also fade out (--bias-decay / --head-bias-decay)");
    plan.keep_biases = keep_bias;  // (else a decay of 0 would zero them at every step)
    std::vector<std::pair<std::string, double>> timings;
    const std::string command = examples::command_line(argc, argv);

    // 1. The pretrained model. 2. The conversion is right: b = 1 with biases and max-pool kept
    // gives the same logits. (Rank 0 alone, in a data-parallel run; the others wait before step 4.)
    auto original = models::create_model(s.spec.arch);
    models::load_pretrained(*original, weights);
    original->to(s.device);
    auto loader = test_loader(test_path, s, 256, workers, limit_test);
    EvalResult before;
    double equivalence_error = 0, border_before = 0;
    models::GridPGResult grid_before = models::GridPGResult::unscored();
    Tensor explain_images, original_maps;
    int64_t n_explain = 0;
    const int64_t ring = std::max<int64_t>(1, std::llround(2.0 * double(s.spec.input_size) / 32.0));
    const double border_area = models::border_area_share(s.spec.input_size, s.spec.input_size, ring);
    if (main_rank) {
      before = evaluate(*original, false, s, *loader, 100, "evaluate " + s.spec.arch);
      timings.emplace_back("evaluate original", before.seconds);
      std::printf("original %s: top-1 %.2f %% on %lld test images\n", s.spec.arch.c_str(), before.accuracy,
                  static_cast<long long>(before.samples));
      equivalence_error = b1_equivalence_error(*original, s, weights, before.first_images);
      std::printf("b = 1 equivalence: max relative logit error %.3g on %lld images\n", equivalence_error,
                  static_cast<long long>(std::min<int64_t>(64, before.first_images.size(0))));

      // GridPG of the original model (input × gradient) now, before its modules are converted.
      auto t = Clock::now();
      grid_before = run_gridpg(*original, false, s, before.pool, no_original_gridpg ? 0 : grids, seed, "GridPG original");
      timings.emplace_back("GridPG original", seconds_since(t));

      // Input × gradient maps of the original for the PNGs, while it is still the original. The
      // first test images: explained in PNGs (--explain of them) and for the completeness check
      // (at least 16).
      n_explain = std::min(explain_count, before.first_images.size(0));
      explain_images =
          before.first_images.slice(0, 0, std::min(std::max<int64_t>(n_explain, 16), before.first_images.size(0)));
      original_maps = explain_on(*original, s, s.normalize(explain_images), Tensor()).contributions;
      border_before = border_share(*original, false, s, before.pool, ring);
    }

    // 3. B-cosify, or a same-shaped B-cos model from random weights. Biases that fade out during
    // fine-tuning are kept at conversion; with a b warm-up the layers start at b = 1.
    models::BcosifyOptions options{plan.b_warmup > 0 ? 1.0 : plan.b, keep_bias || fade_biases, false, s.mean, s.std,
                                   logit_bias_opt->count() ? logit_bias_arg
                                   : keep_bias            ? 0.0
                                                          : nn::default_logit_bias(s.spec.num_classes)};
    original->to(Device());  // the conversion runs on the CPU
    auto bcos_model = models::bcosify(from_scratch ? models::create_model(s.spec.arch) : original, options);
    original.reset();
    bcos_model->to(s.device);
    if (main_rank)
      std::printf("B-cosified %s (b = %g%s; biases %s)%s\n", s.spec.arch.c_str(), plan.b,
                plan.b_warmup > 0 ? str(", from 1 over ", plan.b_warmup * 100, " % of the steps").c_str() : "",
                keep_bias     ? "kept"
                : fade_biases ? str("fading out over ", plan.bias_decay * 100, " % of the steps (head ",
                                    plan.head_bias_decay * 100, " %)").c_str()
                              : "removed",
                from_scratch ? " from random weights" : "");

    // 4. Fine-tune.
    using namespace data;
    Transform train_t = s.cifar ? Compose({RandomCrop(s.spec.input_size, 4), RandomHorizontalFlip(), ToTensor()})
                                : Compose({RandomResizedCrop(s.spec.input_size), RandomHorizontalFlip(), ToTensor()});
    // Data-parallel: each rank takes its share of every epoch, in batches of batch / world size.
    const int64_t local_batch = batch / dist::world_size();
    LoaderOptions train_opts{.batch_size = local_batch, .shuffle = true, .drop_last = true, .workers = workers,
                             .seed = seed, .limit = limit_train, .rank = dist::rank(), .world_size = dist::world_size(),
                             .split_shards = split_shards, .device = s.device};  // GPU: pinned, side-stream copies
    auto train_loader = examples::make_loader(train_path, "train", train_t, train_opts);
    const int64_t steps_per_epoch = train_loader->num_samples() / local_batch;
    BCOS_CHECK(steps_per_epoch > 0, "bcosify_resnet: fewer training samples (", train_loader->num_samples(),
               ") than one batch (", batch, ")");
    const int64_t total_steps = std::llround(epochs * double(steps_per_epoch));
    const int64_t epoch_count = (total_steps + steps_per_epoch - 1) / steps_per_epoch;  // the last may be partial
    plan.total_steps = std::max<int64_t>(1, total_steps);
    if (distributed) dist::barrier(7 * 24 * 3600.0);  // rank 0 evaluated alone: no job timeout for that wait
    if (const int64_t n = bn_recalibrate; n > 0) {
      const auto t = Clock::now();
      auto batches = train_loader->epoch(-1);  // an extra shuffle of its own, not one of the epochs
      auto it = batches.begin();
      models::recalibrate_batch_norm(*bcos_model, [&] {
        BCOS_CHECK(it != batches.end(), "bcosify_resnet: --bn-recalibrate ", n, " is more batches than an epoch has");
        Tensor x6 = nn::add_inverse((*it).images.to(s.device));
        ++it;
        return x6;
      }, n);
      std::printf("recalibrated the batch norms on %lld batches (%.0f s)\n", static_cast<long long>(n), seconds_since(t));
    }
    if (sync_bn) dist::use_sync_batch_norm(*bcos_model);
    dist::DataParallel ddp(*bcos_model);  // rank 0's weights to all; gradients averaged (nothing on one rank)
    std::vector<Tensor> params;
    for (auto& [name, p] : bcos_model->named_parameters()) params.push_back(p);
    nn::AdamW optimizer(params, {.lr = lr, .weight_decay = weight_decay});
    nn::Scheduler scheduler(optimizer, nn::cosine_schedule(lr, plan.total_steps, 0.0, warmup));
    const DType autocast_dtype = examples::autocast_type(autocast);  // evaluation stays float32
    nn::GradScaler scaler({.enabled = autocast_dtype == DType::f16});  // a no-op unless f16
    const std::string ckpt = out + "/checkpoint.safetensors";
    nn::TrainingState state;
    if (resume) {
      BCOS_CHECK(fs::exists(ckpt), "bcosify_resnet: --resume: no checkpoint at ", ckpt);
      state = nn::load_training_checkpoint(ckpt, *bcos_model, optimizer, &scheduler);
      examples::check_resume_world_size("bcosify_resnet", ckpt, state);
      scaler.load_from(state);
      if (main_rank) std::printf("resumed from %s after epoch %lld\n", ckpt.c_str(), static_cast<long long>(state.epoch));
    }
    double train_seconds = 0;
    int64_t train_images = 0;
    double last_loss = 0, last_acc = 0;
    AnomalyDetectionGuard anomaly(detect_anomaly);
    Tensor logits, loss;  // a step's
    auto forward_backward = [&](const Tensor& images, const Tensor& labels, int64_t step) {
      models::apply_finetune_schedule(*bcos_model, plan, step);
      {
        AutocastGuard mixed(s.device.type, autocast_dtype, autocast_dtype != DType::f32);
        logits = ddp(nn::add_inverse(images));
        loss = loss_name == "bce" ? nn::uniform_off_labels_bce(logits, labels) : cross_entropy(logits, labels);
      }
      optimizer.zero_grad();
      scaler.scale(loss).backward();
    };
    // --cuda-graph: captured at the first step from which the schedule does the same at every step
    // (not the run's first: that one warms up cuDNN's choices and AdamW's state), then replayed.
    examples::GraphedStep graphed;
    const int64_t capture_step = std::max(state.step + 1, plan.settled_step());
    for (int64_t epoch = state.epoch; epoch < epoch_count; ++epoch) {
      bcos_model->train();
      const int64_t steps = std::min(steps_per_epoch, total_steps - epoch * steps_per_epoch);
      ProgressBar bar(steps * batch, str("epoch ", epoch + 1, "/", epoch_count), "img", s.progress);
      const auto start = Clock::now();
      double loss_sum = 0;
      int64_t correct = 0, seen = 0;
      for (Batch& b : train_loader->epoch(epoch)) {
        if (state.step >= (epoch + 1) * steps_per_epoch || state.step >= total_steps) break;  // a partial epoch
        const std::vector<int64_t>& label_values = b.label_values;  // (on the host: no wait for the GPU)
        for (size_t i = 0; i < label_values.size(); ++i)
          BCOS_CHECK(label_values[i] >= 0 && label_values[i] < s.spec.num_classes, "bcosify_resnet: ", b.names[i],
                     " has label ", label_values[i], ", outside the model's ", s.spec.num_classes, " classes");
        const Tensor images = b.images.to(s.device), labels = b.labels.to(s.device);
        graphed.run({images, labels}, cuda_graph && state.step >= capture_step,
                    [&](const std::vector<Tensor>& in) { forward_backward(in[0], in[1], state.step); });
        const double l = loss.item();  // checked before the step, so no NaN reaches the weights
        BCOS_CHECK(std::isfinite(l), "bcosify_resnet: the loss became ", l, " at step ", state.step + 1, " (epoch ",
                   epoch + 1, "); stopped before the update", fs::exists(ckpt) ? str("; ", ckpt, " holds the last good epoch") : "",
                   detect_anomaly ? "" : "; --detect-anomaly names the op that produced the first NaN");
        scaler.unscale_(optimizer);  // (f16: the clipping below sees true gradients)
        nn::adaptive_clip_grad_(params, 0.01, 1e-3);
        scaler.step(optimizer);  // f16: skipped when a gradient overflowed
        scaler.update();
        scheduler.step();
        ++state.step;
        // This step's loss and hits over every rank's share (one small all-reduce), for the display;
        // made on the model's device (a GPU job started torchrun-style has NCCL only), read once.
        const Tensor hits = sum(eq(argmax(logits.detach(), 1), labels).to(DType::f32)).to(DType::f64);
        Tensor step_stats = stack({full({}, l * double(b.size()), {DType::f64, s.device}), hits});
        dist::all_reduce(step_stats);
        const auto totals = step_stats.to_vector<double>();
        loss_sum += totals[0];
        correct += std::llround(totals[1]);
        seen += batch;
        bar.update(batch, {{"loss", loss_sum / double(seen)}, {"acc", 100.0 * double(correct) / double(seen)},
                              {"lr", optimizer.lr}, {"b", plan.exponent(state.step)}});
      }
      bar.finish();
      train_seconds += seconds_since(start);
      train_images += seen;
      last_loss = loss_sum / double(std::max<int64_t>(seen, 1));
      last_acc = 100.0 * double(correct) / double(std::max<int64_t>(seen, 1));
      state.epoch = epoch + 1;
      state.extra.insert_or_assign("arch", s.spec.arch);
      state.extra.insert_or_assign("world_size", str(dist::world_size()));
      scaler.save_to(state);  // f16: the loss scale goes on after a resume
      if (main_rank) nn::save_training_checkpoint(ckpt, *bcos_model, optimizer, &scheduler, state);
    }
    graphed.release();
    optimizer.zero_grad(), logits = loss = Tensor();
    if (!main_rank) {  // the rest is rank 0's: the others wait for it to finish, then end together
      dist::barrier(7 * 24 * 3600.0);
      return;
    }
    timings.emplace_back("fine-tune", train_seconds);
    // The final model: b as asked, and no biases unless --keep-bias (faded ones are zero by now).
    models::set_bcos_exponent(*bcos_model, plan.b);
    if (!keep_bias) models::remove_biases(*bcos_model);
    const double train_ips = train_seconds > 0 ? double(train_images) / train_seconds : 0;
    const double epochs_done = double(state.step) / double(steps_per_epoch);
    nn::save_safetensors(out + "/bcos_" + s.spec.arch + ".safetensors", bcos_model->state_dict(),
                         {{"arch", s.spec.arch}, {"bcos.b", str(plan.b)}, {"epochs", str(epochs_done)},
                          {"bias", keep_bias ? "kept" : "none"}});

    // 5. Evaluate the B-cos model.
    EvalResult after = evaluate(*bcos_model, true, s, *loader, 100, "evaluate B-cos " + s.spec.arch);
    timings.emplace_back("evaluate B-cos", after.seconds);
    std::printf("B-cos %s after %g epoch(s): top-1 %.2f %%\n", s.spec.arch.c_str(), epochs_done, after.accuracy);

    // Completeness: contributions sum to the logit minus the logit bias.
    Tensor x6 = nn::add_inverse(explain_images);
    models::Explanation e = [&] {
      ExactFloat32Guard exact_products;  // TF32 would blur the identity to ~1e-3 on a GPU
      return explain_on(*bcos_model, s, x6, Tensor());  // the predicted classes
    }();
    const Tensor& preds = e.targets;
    const double logit_bias = dynamic_cast<nn::LogitLayer&>(*bcos_model->logit).logit_bias;
    Tensor target_logits = gather(e.logits, 1, preds.reshape({-1, 1})).reshape({-1}) - logit_bias;
    const double completeness_error = max(abs(sum(e.contributions, {1, 2}) - target_logits)).item() /
                                      std::max(max(abs(target_logits)).item(), 1e-12);
    const double logit_scale = max(abs(target_logits)).item();
    std::printf("completeness: max relative error %.3g (largest |logit - bias| %.3g)\n", completeness_error, logit_scale);

    const double border_after = border_share(*bcos_model, true, s, before.pool, ring);
    std::printf("border: %.1f %% of the positive contributions within %lld px of the edge (original input x gradient "
                "%.1f %%, even spread %.1f %%)\n", 100 * border_after, static_cast<long long>(ring), 100 * border_before,
                100 * border_area);

    // 6. GridPG of the B-cos model.
    auto t = Clock::now();
    models::GridPGResult grid_after = run_gridpg(*bcos_model, true, s, after.pool, grids, seed, "GridPG B-cos");
    timings.emplace_back("GridPG B-cos", seconds_since(t));

    // 7. PNGs: input, B-cos explanation (RGBA), B-cos contributions, original input × gradient.
    const int64_t smooth = models::gridpg_smoothing(s.spec.input_size);
    const int64_t scale = s.cifar ? 4 : 1;
    auto write_set = [&](const std::string& stem, const Tensor& image, const Tensor& weights, const Tensor& contrib,
                         const Tensor& ixg) {
      data::write_png(models::to_u8_image(image.permute({1, 2, 0}), scale), stem + "_input.png");
      data::write_png(models::to_u8_image(models::explanation_rgba(weights, contrib, smooth), scale), stem + "_bcos.png");
      data::write_png(models::to_u8_image(models::contribution_heatmap(contrib), scale), stem + "_bcos_contributions.png");
      if (ixg.defined())
        data::write_png(models::to_u8_image(models::contribution_heatmap(ixg), scale), stem + "_original_ixg.png");
    };
    int64_t pngs = 1;
    write_overview(*bcos_model, s, after.pool, 8, smooth, s.cifar ? 3 : 1, out + "/explanations/overview.png");
    for (int64_t i = 0; i < n_explain; ++i, pngs += 4)
      write_set(str(out, "/explanations/test_", i), explain_images.select(0, i), e.weights.select(0, i),
                e.contributions.select(0, i), original_maps.select(0, i));
    std::error_code ec;
    if (fs::is_directory(photos_dir, ec)) {
      const int64_t shorter = s.spec.resize_size > 0 ? s.spec.resize_size : s.spec.input_size;
      data::Transform photo_t = Compose({Resize(shorter), CenterCrop(s.spec.input_size), ToTensor()});
      std::vector<fs::path> photos;
      for (const auto& p : fs::directory_iterator(photos_dir)) photos.push_back(p.path());
      std::sort(photos.begin(), photos.end());
      for (const auto& p : photos) {
        Tensor img;
        try {
          data::Rng rng(seed);
          img = photo_t(data::read_image(p.string()), rng);
        } catch (const Error& err) {
          std::fprintf(stderr, "bcosify_resnet: skipping %s: %s\n", p.string().c_str(), err.what());
          continue;
        }
        models::Explanation pe = explain_on(*bcos_model, s, nn::add_inverse(img.unsqueeze(0)), Tensor());
        write_set(out + "/explanations/photo_" + p.stem().string(), img, pe.weights.select(0, 0),
                  pe.contributions.select(0, 0), Tensor());
        pngs += 3;
      }
    }
    const double total_seconds = seconds_since(t_total);

    // 8. Report.
    const std::string recipe =
        str("AdamW lr ", lr, " (cosine, ", warmup, " warm-up steps, weight decay ",
            weight_decay, "), batch ", batch, ", ", loss_name == "bce" ? "uniform-off-label BCE" : "CE",
            ", b = ", plan.b, plan.b_warmup > 0 ? str(" (from 1 over ", plan.b_warmup * 100, " % of the steps)") : "",
            ", biases ", keep_bias ? "kept" : plan.bias_decay > 0 || plan.head_bias_decay > 0
                ? str("faded out over ", plan.bias_decay * 100, " % (head ", plan.head_bias_decay * 100, " %) of the steps")
                : std::string("removed at conversion"),
            ", logit bias ", logit_bias, bn_recalibrate > 0
                ? str(", BN recalibrated on ", bn_recalibrate, " batches") : "");
    auto grid_line = [](const models::GridPGResult& g) {
      return str(g.mean, " (quartiles ", g.q1, " / ", g.median, " / ", g.q3, ")");
    };
    std::ostringstream md;
    md << "# B-cosification of " << s.spec.arch << "\n\n"
       << "Command: `" << command << "`\n\n"
       << "| | original | B-cos" << (from_scratch ? " (from scratch)" : "") << " |\n|---|---|---|\n"
       << "| top-1 accuracy (%) | " << before.accuracy << " | " << after.accuracy << " |\n"
       << "| GridPG mean (quartiles) | " << grid_line(grid_before) << " | " << grid_line(grid_after) << " |\n"
       << "| GridPG pool (confident, correct test images) | " << before.pool.images.size() << " | "
       << after.pool.images.size() << " |\n\n"
       << "- Test images: " << before.samples << "; fine-tuning: " << epochs_done << " epoch(s), " << state.step
       << " steps of batch " << batch << ", last epoch loss " << last_loss << ", train accuracy " << last_acc << " %\n"
       << "- Recipe: " << recipe << "\n"
       << "- Fine-tuning speed: " << train_ips << " images/s" << (dist::world_size() > 1 ? str(" (", dist::world_size(),
          " processes, data-parallel", sync_bn ? ", synchronised batch norm" : "", ")") : "") << "\n"
       << "- b = 1 equivalence (biases and max-pool kept): max relative logit error " << equivalence_error << "\n"
       << "- Completeness (contributions sum to logit − logit bias " << logit_bias << "): max relative error "
       << completeness_error << " (largest |logit − bias| " << logit_scale << ")\n"
       << "- GridPG: " << grids << " grids of 3 × 3 cells of " << grid_after.cell << " px, attribution smoothed by a "
       << grid_after.smooth << " × " << grid_after.smooth << " average (15 at 224 px, scaled); original: input × "
       << "gradient, B-cos: contributions\n"
       << "- Border: share of the positive contributions within " << ring << " px of the image edge, on up to 500 "
       << "of the original's confident, correct test images explained for their label: original (input × gradient) "
       << border_before << ", B-cos " << border_after << "; spread evenly it would be " << border_area << "\n"
       << "- Explanations: " << pngs << " PNGs in explanations/ (alpha smoothing " << smooth << " px)\n\n"
       << "| phase | seconds |\n|---|---|\n";
    for (const auto& [name, sec] : timings) md << "| " << name << " | " << sec << " |\n";
    md << "| total | " << total_seconds << " |\n";
    data::write_file_atomic(out + "/report.md", md.str());
    auto grid_json = [](const models::GridPGResult& g) {
      return examples::Json{{"mean", g.mean}, {"q1", g.q1}, {"median", g.median}, {"q3", g.q3},
                            {"grids", g.grids}, {"cell", g.cell}, {"smooth", g.smooth}};
    };
    examples::Json report = {
        {"arch", s.spec.arch}, {"command", command}, {"from_scratch", from_scratch},
        {"accuracy_before", before.accuracy}, {"accuracy_after", after.accuracy}, {"test_images", before.samples},
        {"epochs", epochs_done}, {"steps", state.step},
        {"recipe", {{"lr", lr}, {"warmup", warmup}, {"weight_decay", weight_decay}, {"batch", batch},
                    {"b", plan.b}, {"b_warmup", plan.b_warmup}, {"bias_decay", plan.bias_decay},
                    {"head_bias_decay", plan.head_bias_decay}, {"keep_bias", keep_bias},
                    {"logit_bias", logit_bias}, {"bn_recalibrate", bn_recalibrate}, {"loss", loss_name}}},
        {"gridpg_before", grid_json(grid_before)}, {"gridpg_after", grid_json(grid_after)},
        {"border_share", {{"ring", ring}, {"original", border_before}, {"bcos", border_after}, {"even", border_area}}},
        {"b1_equivalence_error", equivalence_error}, {"completeness_error", completeness_error},
        {"completeness_logit_scale", logit_scale}, {"train_images_per_s", train_ips},
        {"last_epoch_loss", last_loss}, {"last_epoch_train_accuracy", last_acc},
        {"processes", dist::world_size()}, {"sync_bn", sync_bn}, {"autocast", autocast},
        {"cuda_graph", cuda_graph}, {"graph_replays", graphed.replays()},
        {"skipped_steps", scaler.skipped_steps()}};
    examples::Json times;
    for (const auto& [name, sec] : timings) times[name] = sec;
    times["total"] = total_seconds;
    report["timings_s"] = times;
    data::write_file_atomic(out + "/report.json", examples::dump(report) + "\n");
    std::printf("wrote %s/report.md, report.json and %lld PNGs (%.0f s in all)\n", out.c_str(),
                static_cast<long long>(pngs), total_seconds);
    if (distributed) dist::barrier(7 * 24 * 3600.0);  // the other ranks wait here for the end
  });
}
