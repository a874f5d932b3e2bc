// bcos_clip_zeroshot: the B-cosification paper's CLIP experiment in one command.
//   1. the teacher: --clip FILE (OpenAI, open_clip or Hugging Face weights), else the small CLIP
//      examples/train_clip trains on the CIFAR-10 shards (trained on first use, kept in OUT/teacher);
//   2. its zero-shot accuracy on the CIFAR-10 test shard (the templates it was not trained on);
//   3. the b = 1 equivalence check, then the B-cosified image tower distilled from the frozen
//      teacher (sigmoid loss on normalised embeddings, Adam, cosine schedule, adaptive gradient
//      clipping, RandomResizedCrop + flip), checkpointed every epoch (--resume);
//   4. the student's zero-shot accuracy with the teacher's text tower, agreement, embedding cosine;
//   5. GridPG with text targets on 3 x 3 grids (teacher: input x gradient, student: contributions)
//      and explanation PNGs for the class prompts and free --prompts;
//   6. OUT/report.md, OUT/report.json and the PNGs.
// mpirun -np N bcos_clip_zeroshot --distributed: the distillation (3) data-parallel over the N
// processes (--batch global); rank 0 alone trains the teacher if needed, evaluates and writes.
// --device cuda --cuda-graph: each distillation step's forward and backward (teacher, student,
// loss: hundreds of kernel launches for a small tower) replayed from one CUDA graph captured at
// the run's second step; the loss check, the clipping and Adam's step stay outside it.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "autograd/ops.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/progress.h"
#include "examples/classifier.h"
#include "examples/cli.h"
#include "examples/clip_common.h"
#include "examples/distributed.h"
#include "examples/graphed_step.h"
#include "dist/data_parallel.h"
#include "models/bcos_clip.h"
#include "models/clip_load.h"
#include "models/explain.h"
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

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// Images in [0, 1] -> the teacher's input. CLIP's per-channel constants are put on the device once
// (a CUDA graph capture may not copy from the host).
struct ClipNormalize {
  Tensor mean, std;
  explicit ClipNormalize(Device device)
      : mean(from_vector(models::kClipMean, {1, 3, 1, 1}).to(device)),
        std(from_vector(models::kClipStd, {1, 3, 1, 1}).to(device)) {}
  Tensor operator()(const Tensor& x) const { return (x - mean) / std; }
};

// The test set seen by both models: top-1 / top-5, agreement, embedding cosine, and the images
// both classify correctly (GridPG's pool, the figures' examples).
struct Evaluation {
  double teacher_top1 = 0, teacher_top5 = 0, student_top1 = 0, student_top5 = 0, agreement = 0, cosine = 0;
  int64_t samples = 0;
  std::vector<Tensor> pool_images;
  std::vector<int64_t> pool_labels;
};

Evaluation evaluate(nn::Module& teacher, nn::Module& student, const Tensor& classifier, data::DataLoader& loader,
                    Device device, int64_t pool_size) {
  Evaluation r;
  teacher.eval(), student.eval();
  NoGradGuard no_grad;
  data::ProgressBar bar(loader.num_samples(), "zero-shot (teacher, student)", "img");
  int64_t t1 = 0, t5 = 0, s1 = 0, s5 = 0, agree = 0;
  double cos_sum = 0;
  std::map<int64_t, int64_t> per_class;
  const Tensor cls = classifier.to(device).transpose(0, 1);
  const ClipNormalize clip_normalize(device);
  const int64_t k = std::min<int64_t>(5, classifier.size(0));
  for (data::Batch& b : loader.epoch(0)) {
    const Tensor x = b.images.to(device);
    const Tensor te = models::l2_normalize(teacher(clip_normalize(x))), se = models::l2_normalize(student(nn::add_inverse(x)));
    const auto tbest = topk(matmul(te, cls), k, 1).indices.to_vector<int64_t>();
    const auto sbest = topk(matmul(se, cls), k, 1).indices.to_vector<int64_t>();
    const auto cosines = sum(te * se, {1}).to_vector<float>();
    const std::vector<int64_t>& labels = b.label_values;
    for (size_t i = 0; i < labels.size(); ++i) {
      BCOS_CHECK(labels[i] >= 0 && labels[i] < classifier.size(0), "zero-shot: ", b.names[i], " has label ", labels[i],
                 ", outside the ", classifier.size(0), " classes");
      for (int64_t j = 0; j < k; ++j) {
        t5 += tbest[i * size_t(k) + size_t(j)] == labels[i];
        s5 += sbest[i * size_t(k) + size_t(j)] == labels[i];
      }
      const bool tc = tbest[i * size_t(k)] == labels[i], sc = sbest[i * size_t(k)] == labels[i];
      t1 += tc, s1 += sc, agree += tbest[i * size_t(k)] == sbest[i * size_t(k)];
      cos_sum += cosines[i];
      // The pool keeps up to pool_size / classes images of each class (test shards may be sorted).
      if (tc && sc && per_class[labels[i]] < pool_size / classifier.size(0)) {
        r.pool_images.push_back(b.images.select(0, int64_t(i))), r.pool_labels.push_back(labels[i]);
        ++per_class[labels[i]];
      }
    }
    r.samples += b.size();
    bar.update(b.size(), {{"teacher", 100.0 * double(t1) / double(r.samples)},
                          {"student", 100.0 * double(s1) / double(r.samples)}});
  }
  bar.finish();
  BCOS_CHECK(r.samples > 0, "bcos_clip_zeroshot: the test set is empty");
  const double n = double(r.samples);
  r.teacher_top1 = 100 * double(t1) / n, r.teacher_top5 = 100 * double(t5) / n;
  r.student_top1 = 100 * double(s1) / n, r.student_top5 = 100 * double(s5) / n;
  r.agreement = 100 * double(agree) / n, r.cosine = cos_sum / n;
  return r;
}

// GridPG with text targets: 3 x 3 grids of pool images at three times the towers' resolution;
// `similarity` maps grid images (as the model takes them) to cosines with the class texts.
models::GridPGResult gridpg(nn::Module& similarity, bool bcos_model, const Evaluation& ev, int64_t grids,
                            uint64_t seed, Device device, const std::string& title) {
  models::GridPGOptions o;
  o.grids = grids, o.seed = seed, o.batch = 4;
  data::ProgressBar bar(grids * 9, title, "map");
  const ClipNormalize clip_normalize(device);
  auto attribution = [&](const Tensor& images, const Tensor& targets) {
    const Tensor x = images.to(device);
    const Tensor maps = models::contribution_maps(similarity, bcos_model ? nn::add_inverse(x) : clip_normalize(x),
                                                  targets.to(device)).to(Device());
    bar.update(targets.numel());
    return maps;
  };
  std::set<int64_t> classes(ev.pool_labels.begin(), ev.pool_labels.end());
  if (grids <= 0 || classes.size() < 9) {
    if (grids > 0) std::fprintf(stderr, "%s: only %zu classes have test images both models get right; GridPG needs 9\n",
                                title.c_str(), classes.size());
    return models::GridPGResult::unscored();
  }
  models::GridPGResult r = models::grid_pointing_game(stack(ev.pool_images, 0),
                                                      from_vector(ev.pool_labels, {int64_t(ev.pool_labels.size())}),
                                                      attribution, o);
  bar.finish();
  return r;
}

// One figure per image set: rows = images, columns = input, then per prompt the B-cos explanation
// of cos(student(x), prompt) (colours on white) -- the explained cosine in the file's report entry.
examples::Json write_explanations(models::BcosClipVisual& student, const Tensor& text_embeddings,
                                  const std::vector<std::string>& prompts, const Tensor& images,
                                  const std::string& path, Device device, int64_t scale) {
  auto similarity = std::make_shared<models::TextSimilarity>(
      std::shared_ptr<nn::Module>(&student, [](nn::Module*) {}), text_embeddings.to(device));
  const int64_t n = images.size(0), k = int64_t(prompts.size()), h = images.size(2), w = images.size(3);
  const Tensor x6 = nn::add_inverse(images.to(device));
  std::vector<Tensor> rows;
  const Tensor gap_v = ones({h, 2, 3}), gap_h = ones({2, (w + 2) * (k + 1) - 2, 3});
  std::vector<std::vector<Tensor>> cells(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) cells[size_t(i)].push_back(images.select(0, i).permute({1, 2, 0}));
  examples::Json per_prompt = examples::Json::array();
  for (int64_t j = 0; j < k; ++j) {
    const models::Explanation e =
        models::explain(*similarity, x6, full({n}, double(j), DType::i64).to(device));
    const Tensor weights = e.weights.to(Device()), contrib = e.contributions.to(Device());
    const auto values = gather(e.logits.to(Device()), 1, full({n, 1}, double(j), DType::i64)).to_vector<float>();
    per_prompt.push_back({{"prompt", prompts[size_t(j)]}, {"cosines", values}});
    for (int64_t i = 0; i < n; ++i) {
      const Tensor rgba = models::explanation_rgba(weights.select(0, i), contrib.select(0, i), 0);
      const Tensor alpha = rgba.slice(2, 3, 4);
      cells[size_t(i)].push_back(rgba.slice(2, 0, 3) * alpha + (1.0 - alpha));
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    Tensor row = cells[size_t(i)][0];
    for (size_t c = 1; c < cells[size_t(i)].size(); ++c) row = cat({row, gap_v, cells[size_t(i)][c]}, 1);
    if (!rows.empty()) rows.push_back(gap_h);
    rows.push_back(row);
  }
  data::write_png(models::to_u8_image(cat(rows, 0), scale), path);
  return per_prompt;
}

}  // namespace

int main(int argc, char** argv) {
  cli::App app{"B-cosify CLIP's image tower by distillation and explain zero-shot predictions with text prompts"};
  examples::show_defaults(app);
  const std::string root = examples::data_root(), cifar = root + "/data/cifar10";
  std::string clip_path, out = "out/bcos_clip", train_path = cifar + "/cifar10-train-{000000..000004}.tar",
              test_path = cifar + "/cifar10-test-000000.tar", vocab = examples::default_vocab(), classes = "cifar10",
              templates = "cifar10", held_out_spec = "1,3,5,7,9,11,13,15,17", loss_name = "sigmoid",
              prompts_spec = "a photo of a red car;a photo of a dog on grass", photos = root + "/data/photos",
              device_spec = "cpu", autocast = "none";
  double epochs = 6, lr = 1e-3, b = 2, teacher_epochs = 10, crop_scale = 0.35;
  int64_t batch = 128, limit_train = 0, limit_test = 0, grids = 250, pool_size = 2000, scale = 4, figure_images = 8;
  int workers = 2;
  uint64_t seed = 0;
  bool resume = false, detect_anomaly = false, distributed = false, sync_bn = false, split_shards = false,
       cuda_graph = false;
  app.add_option("--clip", clip_path, "the teacher: CLIP weights (OpenAI .pt, open_clip, Hugging Face); default: the "
                 "small CLIP train_clip makes on the CIFAR-10 shards, trained on first use into OUT/teacher");
  app.add_option("--out", out, "output folder: report.md, report.json, PNGs, checkpoint.safetensors, student.safetensors");
  cli::Option* data_opt = app.add_option("--data", train_path, "training images for the distillation (labels unused)");
  cli::Option* test_opt = app.add_option("--test-data", test_path, "labelled test images for zero-shot, GridPG and figures");
  cli::Option* vocab_opt = app.add_option("--vocab", vocab, "CLIP's BPE vocabulary");
  app.add_option("--classes", classes, "class names: a file, cifar10 or imagenet");
  app.add_option("--templates", templates, "prompt templates with {}: a file, cifar10 or imagenet");
  app.add_option("--held-out", held_out_spec, "indices of the templates the zero-shot classifier uses (default: those "
                 "train_clip leaves out; \"all\" for all)");
  app.add_option("--epochs", epochs, "distillation epochs (fractions too)")->check(cli::NonNegativeNumber);
  app.add_option("--batch", batch, "distillation batch size")->check(cli::Range(2, 65536));
  app.add_option("--lr", lr, "Adam learning rate (cosine to 0, no weight decay; the authors use 1e-4 over far more steps)")->check(cli::NonNegativeNumber);
  app.add_option("--b", b, "the B-cos exponent")->check(cli::Range(1.0, 10.0));
  app.add_option("--loss", loss_name, "sigmoid (the authors') or cosine")->check(cli::IsMember({"sigmoid", "cosine"}));
  app.add_option("--crop-scale", crop_scale, "RandomResizedCrop's smallest area fraction")->check(cli::Range(0.05, 1.0));
  app.add_option("--teacher-epochs", teacher_epochs, "epochs of train_clip when the teacher is trained here");
  app.add_option("--limit-train", limit_train, "training images per epoch (0: all)")->check(cli::NonNegativeNumber);
  app.add_option("--limit-test", limit_test, "test images (0: all)")->check(cli::NonNegativeNumber);
  app.add_option("--grids", grids, "GridPG 3 x 3 grids per model (0: skip)")->check(cli::NonNegativeNumber);
  app.add_option("--prompts", prompts_spec, "free prompts to explain, separated by ';'");
  app.add_option("--photos", photos, "a folder of photos to explain besides test images (\"\" to skip)");
  app.add_option("--workers", workers, "decoding threads")->check(cli::PositiveNumber);
  app.add_option("--seed", seed, "seed of shuffling, augmentation and GridPG");
  app.add_option("--device", device_spec, "where the models run: cpu, cuda or cuda:N");
  examples::add_autocast_option(app, autocast);
  app.add_flag("--cuda-graph", cuda_graph, "GPU: replay each distillation step's forward and backward from one CUDA "
               "graph (the host's launches once, not per step; one process, not with --autocast f16)");
  app.add_flag("--resume", resume, "continue the distillation from OUT/checkpoint.safetensors");
  app.add_flag("--detect-anomaly", detect_anomaly,
               "check every op's output and gradient while distilling; stop at the first NaN, naming the op (slow)");
  app.add_flag("--distributed", distributed, "data-parallel distillation over the processes of an mpirun / srun / "
               "torchrun launch (--batch is the global batch); rank 0 trains the teacher if needed, evaluates and writes");
  app.add_flag("--sync-bn", sync_bn, "with --distributed: the student's batch-norm statistics over the global batch");
  app.add_flag("--split-shards", split_shards, "with --distributed: each rank reads only its shards (default: every "
               "rank reads the stream and keeps its samples, the one-process epoch exactly)");
  return examples::run(app, argc, argv, [&] {
    const auto t_start = Clock::now();
    Device device = examples::parse_device(device_spec);
    examples::start_processes("bcos_clip_zeroshot", distributed, batch);
    BCOS_CHECK(!sync_bn || distributed, "bcos_clip_zeroshot: --sync-bn needs --distributed");
    BCOS_CHECK(!cuda_graph || (device.is_cuda() && !distributed && autocast != "f16" && !detect_anomaly),
               "bcos_clip_zeroshot: --cuda-graph needs --device cuda, one process (no --distributed), and neither "
               "--autocast f16 (its loss scale changes per step) nor --detect-anomaly (it reads every op's output)");
    if (distributed && device.is_cuda() && device_spec == "cuda") device = Device::cuda(dist::local_rank());  // a GPU per rank
    const bool main_rank = dist::is_main();
    std::FILE* progress = main_rank ? stderr : nullptr;
    BCOS_CHECK(clip_path.empty() || fs::exists(clip_path), "bcos_clip_zeroshot: --clip ", clip_path, " does not exist");
    examples::check_given_paths("bcos_clip_zeroshot", {data_opt, test_opt, vocab_opt});
    if (!examples::data_exists(test_path) || !fs::exists(vocab) || (clip_path.empty() && !examples::data_exists(train_path))) {
      std::printf("bcos_clip_zeroshot: skipped: the CIFAR-10 shards or CLIP's vocabulary are missing (%s, %s); set "
                  "BCOS_DATA or pass --data / --test-data / --vocab\n", test_path.c_str(), vocab.c_str());
      return;
    }
    fs::create_directories(out);
    examples::Json report;
    report["command"] = examples::command_line(argc, argv);

    // 1. The teacher.
    std::string teacher_file = clip_path;
    if (teacher_file.empty()) {
      teacher_file = out + "/teacher/clip.safetensors";
      if (main_rank && !fs::exists(teacher_file)) {
        const fs::path trainer = fs::path(argv[0]).parent_path() / "train_clip";
        BCOS_CHECK(fs::exists(trainer), "bcos_clip_zeroshot: no teacher at ", teacher_file, " and no train_clip beside this "
                   "program (", trainer.string(), ") to train one; pass --clip");
        // (Without the launcher's variables: the trainer is one process, not one of this job's.)
        const std::string cmd = str(distributed ? "env -u OMPI_COMM_WORLD_RANK -u OMPI_COMM_WORLD_SIZE -u PMI_RANK "
                                                  "-u PMI_SIZE -u SLURM_PROCID -u SLURM_NTASKS -u RANK -u WORLD_SIZE " : "",
                                    "'", trainer.string(), "' --out '", out, "/teacher' --epochs ", teacher_epochs,
                                    " --data '", train_path, "' --test-data '", test_path, "' --vocab '", vocab,
                                    "' --captions-from-classes --workers ", workers, " --seed ", seed);
        std::printf("training the teacher (first use): %s\n", cmd.c_str());
        std::fflush(stdout);
        BCOS_CHECK(std::system(cmd.c_str()) == 0, "bcos_clip_zeroshot: training the teacher failed: ", cmd);
      }
      if (distributed) dist::barrier(7 * 24 * 3600.0);  // the others wait while rank 0 trains the teacher
    }
    std::shared_ptr<models::Clip> clip = models::load_clip(teacher_file);
    const int64_t res = clip->config.image_resolution;
    if (main_rank) std::printf("teacher: %s (%s)\n", teacher_file.c_str(), clip->config.describe().c_str());
    report["teacher"] = {{"file", teacher_file}, {"config", clip->config.describe()}};

    // 2. The zero-shot classifier from the teacher's text tower, on the held-out templates.
    auto tok = examples::load_tokenizer(vocab);
    const auto class_names = examples::read_list(classes, "classes");
    const auto all_templates = examples::read_list(templates, "templates");
    std::vector<std::string> held_out;
    if (held_out_spec == "all") {
      held_out = all_templates;
    } else {
      std::stringstream ss(held_out_spec);
      for (std::string item; std::getline(ss, item, ',');) {
        const int64_t i = std::stoll(item);
        BCOS_CHECK(i >= 0 && i < int64_t(all_templates.size()), "--held-out: template ", i, " of ", all_templates.size());
        held_out.push_back(all_templates[size_t(i)]);
      }
    }
    const Tensor classifier = examples::zeroshot_weights(*clip, *tok, class_names, held_out);  // [classes, embed]
    std::shared_ptr<nn::Module> teacher = clip->visual;
    teacher->to(device);
    for (Tensor& p : teacher->parameters()) p.requires_grad_(false);

    // 3. The b = 1 equivalence check on a fresh copy of the tower, then the student.
    using namespace data;
    const Transform test_t = Compose({Resize(res, Interpolation::bicubic), CenterCrop(res), ToTensor()});
    auto test_loader = examples::make_loader(test_path, "test", test_t, {.batch_size = 250, .workers = workers, .limit = limit_test});
    double equivalence = 0;  // (rank 0's check)
    Batch first;             // the first test images: the probe here, the figures later (rank 0)
    if (main_rank) {
      {
        auto epoch0 = test_loader->epoch(0);
        BCOS_CHECK(epoch0.next(first), "bcos_clip_zeroshot: the test set is empty");
      }
      const Tensor probe = first.images.slice(0, 0, std::min<int64_t>(16, first.size())).to(device);
      {
        models::BcosClipOptions exact;
        exact.b = 1, exact.keep_bias = true, exact.keep_position = true;
        auto copy = models::bcosify_clip_visual(models::load_clip(teacher_file)->visual, exact);
        copy->to(device), copy->eval(), teacher->eval();
        NoGradGuard no_grad;
        ExactFloat32Guard exact_products;  // TF32 would blur the identity to ~1e-3 on a GPU
        const Tensor expected = (*teacher)(ClipNormalize(device)(probe));
        equivalence = norm((*copy)(nn::add_inverse(probe)) - expected).item() / norm(expected).item();
      }
      std::printf("b = 1 equivalence: relative error %.2e between the converted and the original tower\n", equivalence);
      BCOS_CHECK(equivalence <= 1e-4, "bcos_clip_zeroshot: the b = 1 conversion does not reproduce the teacher (relative "
                 "error ", equivalence, ")");
    }
    models::BcosClipOptions bo;
    bo.b = b;
    auto student = models::bcosify_clip_visual(models::load_clip(teacher_file)->visual, bo);
    student->to(device);
    if (main_rank)
      std::printf("student: B-cos %s, b = %g, %.2fM parameters\n", clip->config.vit() ? "ViT" : "ModifiedResNet", b,
                  double(student->num_parameters()) / 1e6);

    // Distillation: the teacher sees the normalised augmented batch, the student (x, 1 − x) of it.
    const Transform train_t = Compose({RandomResizedCrop(res, {crop_scale, 1.0}), RandomHorizontalFlip(), ToTensor()});
    const int64_t local_batch = batch / dist::world_size();  // each rank's share of a batch
    auto train_loader = examples::make_loader(train_path, "train", train_t,
                                              {.batch_size = local_batch, .shuffle = true, .drop_last = true,
                                               .workers = workers, .seed = seed, .limit = limit_train,
                                               .rank = dist::rank(), .world_size = dist::world_size(),
                                               .split_shards = split_shards, .device = device});
    const int64_t steps_per_epoch = train_loader->num_samples() / local_batch;
    BCOS_CHECK(steps_per_epoch > 0, "bcos_clip_zeroshot: fewer training images than one batch");
    const int64_t total_steps = std::max<int64_t>(1, std::llround(epochs * double(steps_per_epoch)));
    const int64_t epoch_count = epochs > 0 ? (total_steps + steps_per_epoch - 1) / steps_per_epoch : 0;
    if (sync_bn) dist::use_sync_batch_norm(*student);
    dist::DataParallel ddp(*student);  // rank 0's weights to all; gradients averaged (nothing on one rank)
    std::vector<Tensor> params = student->parameters();
    nn::Adam optimizer(params, {.lr = lr});
    nn::Scheduler scheduler(optimizer, nn::cosine_schedule(lr, total_steps, 0.0, 0));
    const std::string ckpt = out + "/checkpoint.safetensors";
    const DType autocast_dtype = examples::autocast_type(autocast);  // (training only; evaluation in float32)
    nn::GradScaler scaler({.enabled = autocast_dtype == DType::f16});  // a no-op unless f16
    nn::TrainingState state;
    if (resume) {
      BCOS_CHECK(fs::exists(ckpt), "bcos_clip_zeroshot: --resume: no checkpoint at ", ckpt);
      state = nn::load_training_checkpoint(ckpt, *student, optimizer, &scheduler);
      examples::check_resume_world_size("bcos_clip_zeroshot", ckpt, state);
      scaler.load_from(state);
      if (main_rank) std::printf("resumed from %s after epoch %lld\n", ckpt.c_str(), static_cast<long long>(state.epoch));
    }
    double train_seconds = 0, last_loss = 0;
    int64_t train_images = 0;
    AnomalyDetectionGuard anomaly(detect_anomaly);
    Tensor target, s, loss;  // a step's: the teacher's and the student's embeddings, the loss
    const ClipNormalize clip_normalize(device);
    auto forward_backward = [&](const Tensor& x) {
      {
        AutocastGuard mixed(device.type, autocast_dtype, autocast_dtype != DType::f32);  // teacher and student
        {
          NoGradGuard no_grad;
          target = (*teacher)(clip_normalize(x));
        }
        // The sigmoid loss pairs every student embedding with every teacher one in the batch: with
        // several ranks, over the gathered global batch (gradients back to their own rank), so the
        // loss is the one-process loss (the identity on one process).
        s = dist::all_gather_autograd(ddp(nn::add_inverse(x)));
        target = dist::all_gather_autograd(target);
        loss = loss_name == "sigmoid" ? models::sigmoid_distillation_loss(s, target)
                                      : models::cosine_distillation_loss(s, target);
      }
      optimizer.zero_grad();
      scaler.scale(loss).backward();
    };
    examples::GraphedStep graphed;  // --cuda-graph: captured at the run's second step (the first warms up)
    const int64_t first_step = state.step;
    for (int64_t epoch = state.epoch; epoch < epoch_count; ++epoch) {
      student->train();
      teacher->eval();
      const int64_t steps = std::min(steps_per_epoch, total_steps - epoch * steps_per_epoch);
      ProgressBar bar(steps * batch, str("distil ", epoch + 1, "/", epoch_count), "img", progress);
      const auto start = Clock::now();
      double loss_sum = 0, cos_sum = 0;
      int64_t seen = 0;
      for (Batch& bt : train_loader->epoch(epoch)) {
        if (state.step >= (epoch + 1) * steps_per_epoch || state.step >= total_steps) break;
        graphed.run({bt.images.to(device)}, cuda_graph && state.step > first_step,
                    [&](const std::vector<Tensor>& in) { forward_backward(in[0]); });
        const double l = loss.item();  // checked before the step, so no NaN reaches the weights
        BCOS_CHECK(std::isfinite(l), "bcos_clip_zeroshot: the loss became ", l, " at step ", state.step + 1, " (epoch ",
                   epoch + 1, "); stopped before the update",
                   fs::exists(ckpt) ? str("; ", ckpt, " holds the last good epoch") : "",
                   detect_anomaly ? "" : "; --detect-anomaly names the op that produced the first NaN");
        scaler.unscale_(optimizer);  // (f16: the clipping below sees true gradients)
        nn::adaptive_clip_grad_(params, 0.01, 1e-3);
        scaler.step(optimizer);  // f16: skipped when a gradient overflowed
        scaler.update();
        scheduler.step();
        ++state.step;
        const double c = mean(sum(models::l2_normalize(s.detach()) * models::l2_normalize(target), {1})).item();
        loss_sum += l * double(batch), cos_sum += c * double(batch), seen += batch;  // the global batch's
        bar.update(batch, {{"loss", loss_sum / double(seen)}, {"cos", cos_sum / double(seen)}, {"lr", optimizer.lr}});
      }
      bar.finish();
      train_seconds += seconds_since(start), train_images += seen;
      last_loss = loss_sum / double(std::max<int64_t>(seen, 1));
      state.epoch = epoch + 1;
      state.extra.insert_or_assign("world_size", str(dist::world_size()));
      scaler.save_to(state);  // f16: the loss scale goes on after a resume
      if (main_rank) nn::save_training_checkpoint(ckpt, *student, optimizer, &scheduler, state);
    }
    graphed.release();
    optimizer.zero_grad(), target = s = loss = Tensor();
    if (!main_rank) {  // the rest is rank 0's: the others wait for it, then end together
      dist::barrier(7 * 24 * 3600.0);
      return;
    }
    nn::save_safetensors(out + "/student.safetensors", student->state_dict());

    // 4. Zero-shot of both, agreement, embedding cosine.
    const Evaluation ev = evaluate(*teacher, *student, classifier, *test_loader, device, pool_size);
    std::printf("zero-shot top-1: teacher %.2f %%, student %.2f %% (top-5 %.2f / %.2f); agreement %.2f %%; mean "
                "embedding cosine %.4f\n", ev.teacher_top1, ev.student_top1, ev.teacher_top5, ev.student_top5,
                ev.agreement, ev.cosine);

    // 5. GridPG with text targets, at three times the resolution (then the towers' own positions
    //    again, for the figures below).
    models::GridPGResult g_teacher, g_student;
    {
      const models::ImageResolutionScope teacher_3x(*teacher, 3 * res), student_3x(*student, 3 * res);
      auto teacher_sim = std::make_shared<models::TextSimilarity>(teacher, classifier.to(device));
      auto student_sim = std::make_shared<models::TextSimilarity>(student, classifier.to(device));
      g_teacher = gridpg(*teacher_sim, false, ev, grids, seed, device, "GridPG teacher (input x gradient)");
      g_student = gridpg(*student_sim, true, ev, grids, seed, device, "GridPG student (contributions)");
    }
    std::printf("GridPG (3 x 3, text targets): teacher input x gradient %.3f, student contributions %.3f\n",
                g_teacher.mean, g_student.mean);

    // Explanations: class prompts on one test image per class, free prompts on photos.
    std::vector<Tensor> shown;
    std::vector<int64_t> shown_labels;
    for (size_t i = 0; i < ev.pool_images.size() && int64_t(shown.size()) < figure_images; ++i)
      if (std::find(shown_labels.begin(), shown_labels.end(), ev.pool_labels[i]) == shown_labels.end())
        shown.push_back(ev.pool_images[i]), shown_labels.push_back(ev.pool_labels[i]);
    if (shown.empty())  // no image both get right (a weak student): the first test images
      for (int64_t i = 0; i < first.size() && int64_t(shown.size()) < figure_images; ++i) {
        const int64_t label = first.label_values[size_t(i)];
        if (label >= 0 && label < int64_t(class_names.size()))
          shown.push_back(first.images.select(0, i)), shown_labels.push_back(label);
      }
    std::vector<std::string> class_prompts;
    std::vector<int64_t> class_rows;
    for (int64_t l : shown_labels) class_prompts.push_back("a photo of a " + class_names[size_t(l)] + "."), class_rows.push_back(l);
    examples::Json figures;
    if (!shown.empty()) {
      const Tensor texts = index_select(classifier, 0, from_vector(class_rows, {int64_t(class_rows.size())}));
      figures["classes.png"] = write_explanations(*student, texts, class_prompts, stack(shown, 0), out + "/classes.png", device, scale);
    }
    std::vector<std::string> free_prompts;
    {
      std::stringstream ss(prompts_spec);
      for (std::string p; std::getline(ss, p, ';');)
        if (!p.empty()) free_prompts.push_back(p);
    }
    if (!free_prompts.empty()) {
      Tensor texts;
      {
        NoGradGuard no_grad;
        texts = clip->encode_text(tok->tokenize(free_prompts, clip->config.context_length, true));
      }
      std::vector<Tensor> photo_images;
      if (!photos.empty() && fs::is_directory(photos)) {
        std::vector<std::string> files;
        for (const auto& entry : fs::directory_iterator(photos)) files.push_back(entry.path().string());
        std::sort(files.begin(), files.end());
        Rng unused(0);
        for (const auto& f : files) photo_images.push_back(test_t(read_image(f), unused));
      }
      if (!shown.empty()) photo_images.insert(photo_images.begin(), shown.begin(), shown.begin() + std::min<size_t>(2, shown.size()));
      if (!photo_images.empty()) {
        figures["prompts.png"] = write_explanations(*student, texts, free_prompts, stack(photo_images, 0), out + "/prompts.png", device, scale);
      }
    }

    // 6. The report.
    const double total = seconds_since(t_start);
    report["equivalence_b1_relative_error"] = equivalence;
    report["distillation"] = {{"epochs", epochs}, {"steps", state.step}, {"batch", batch}, {"lr", lr}, {"b", b},
                              {"loss", loss_name}, {"last_loss", last_loss}, {"train_seconds", train_seconds},
                              {"train_images_per_s", train_images > 0 ? double(train_images) / train_seconds : 0.0},
                              {"processes", dist::world_size()}, {"sync_bn", sync_bn},
                              {"autocast", autocast}, {"cuda_graph", cuda_graph}, {"graph_replays", graphed.replays()},
                              {"skipped_steps", scaler.skipped_steps()}};
    report["zeroshot"] = {{"samples", ev.samples}, {"templates", held_out.size()},
                          {"teacher_top1", ev.teacher_top1}, {"teacher_top5", ev.teacher_top5},
                          {"student_top1", ev.student_top1}, {"student_top5", ev.student_top5},
                          {"agreement", ev.agreement}, {"embedding_cosine", ev.cosine}};
    report["gridpg"] = {{"grids", grids}, {"teacher_input_x_gradient", g_teacher.mean}, {"student_contributions", g_student.mean},
                        {"teacher_quartiles", {g_teacher.q1, g_teacher.median, g_teacher.q3}},
                        {"student_quartiles", {g_student.q1, g_student.median, g_student.q3}}};
    report["figures"] = figures;
    report["seconds"] = total;
    data::write_file_atomic(out + "/report.json", examples::dump(report) + "\n");
    std::ostringstream md;
    md << "# B-cos CLIP: zero-shot on " << ev.samples << " test images\n\n"
       << "`" << report["command"].get<std::string>() << "`\n\n"
       << "| tower | top-1 % | top-5 % | GridPG (3x3, text targets) |\n|---|---|---|---|\n"
       << "| teacher (" << teacher_file << ") | " << fixed(ev.teacher_top1, 2) << " | " << fixed(ev.teacher_top5, 2)
       << " | " << fixed(g_teacher.mean, 3) << " (input x gradient) |\n"
       << "| B-cos student (b = " << b << ", " << epochs << " epochs) | " << fixed(ev.student_top1, 2) << " | "
       << fixed(ev.student_top5, 2) << " | " << fixed(g_student.mean, 3) << " (contributions) |\n\n"
       << "Agreement " << fixed(ev.agreement, 2) << " %, mean teacher-student embedding cosine " << fixed(ev.cosine, 4)
       << "; b = 1 equivalence: relative error " << equivalence << "; distillation " << fixed(train_seconds, 0)
       << " s, total " << fixed(total, 0) << " s.\n\n"
       << "![class prompts](classes.png)\n\n![free prompts](prompts.png)\n";
    data::write_file_atomic(out + "/report.md", md.str());
    std::printf("report: %s/report.md (%.0f s)\n", out.c_str(), total);
    if (distributed) dist::barrier(7 * 24 * 3600.0);  // the other ranks wait here for the end
  });
}
