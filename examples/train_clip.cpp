// train_clip: contrastive training of a CLIP, then its zero-shot accuracy.
//   train_clip                        a small CLIP on the CIFAR-10 train shards of ../shared (or
//                                     $BCOS_DATA), captions made from the class names with 9 of
//                                     the 18 CIFAR-10 templates; zero-shot on the test shard with
//                                     the other 9
//   train_clip --data 'pairs-{000000..000009}.tar' --test-data IMAGEFOLDER --classes names.txt
//                                     (image, caption) pairs: <key>.jpg + <key>.txt
//   train_clip --vision rn50 | vit_b_32 | ...   OpenAI's towers (any size trains; slowly on a CPU)
//   mpirun -np 2 train_clip --distributed        data-parallel: each rank encodes its share of the
//                                     batch, the features of all ranks are gathered (with their
//                                     gradients), so the loss sees the whole global batch as on one
//                                     process (open_clip's gather_with_grad)
//   train_clip --device cuda --cuda-graph     each step's forward and backward replayed from one
//                                     CUDA graph (every caption encoded: a graph's shapes are fixed)
// The loss is CLIP's symmetric cross-entropy over the batch's image-text logits, with a learnable
// temperature clamped so exp(logit_scale) <= 100; AdamW with CLIP's betas, decoupled weight decay
// on weight matrices only, cosine schedule with warm-up; checkpoints every epoch and --resume.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <thread>

#include "data/image.h"
#include "data/rng.h"
#include "dist/data_parallel.h"
#include "examples/clip_common.h"
#include "examples/distributed.h"
#include "examples/graphed_step.h"
#include "models/clip_load.h"
#include "nn/checkpoint.h"
#include "nn/grad_scaler.h"
#include "nn/optim.h"
#include "nn/safetensors.h"
#include "nn/schedule.h"

using namespace bcos;
namespace fs = std::filesystem;

namespace {

std::vector<int64_t> parse_ints(const std::string& s, const std::string& what) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      BCOS_CHECK(used == item.size(), "");
    } catch (const std::exception&) {
      BCOS_CHECK(false, "train_clip: ", what, " expects comma-separated integers, got '", s, "'");
    }
  }
  BCOS_CHECK(!out.empty(), "train_clip: ", what, " is empty");
  return out;
}

// The tower sizes: OpenAI's by name, or a small ModifiedResNet / ViT from the options.
struct Towers {
  std::string vision = "resnet";
  int64_t image_size = 32, vision_width = 32, patch_size = 4, vision_heads = 0, embed_dim = 256;
  std::string vision_layers = "1,1,1";
  int64_t text_width = 128, text_layers = 2, text_heads = 2, context_length = 24;
};

models::ClipConfig make_config(const Towers& s, int64_t vocab_size) {
  static const std::map<std::string, std::string> kNamed = {
      {"rn50", "RN50"}, {"rn101", "RN101"}, {"rn50x4", "RN50x4"}, {"rn50x16", "RN50x16"}, {"rn50x64", "RN50x64"},
      {"vit_b_32", "ViT-B/32"}, {"vit_b_16", "ViT-B/16"}, {"vit_l_14", "ViT-L/14"}};
  if (auto it = kNamed.find(s.vision); it != kNamed.end()) return models::ClipConfig::named(it->second);
  BCOS_CHECK(s.vision == "resnet" || s.vision == "vit", "train_clip: --vision is resnet, vit, or one of OpenAI's: rn50, "
             "rn101, rn50x4, rn50x16, rn50x64, vit_b_32, vit_b_16, vit_l_14; got '", s.vision, "'");
  models::ClipConfig c;
  c.image_resolution = s.image_size, c.vision_width = s.vision_width, c.embed_dim = s.embed_dim;
  c.vision_layers = parse_ints(s.vision_layers, "--vision-layers");
  c.vision_patch_size = s.vision == "vit" ? s.patch_size : 0;
  const int64_t pooled = s.vision == "vit" ? s.vision_width : s.vision_width * 4 << (c.vision_layers.size() - 1);
  c.vision_heads = s.vision_heads > 0 ? s.vision_heads : std::max<int64_t>(1, pooled / 64);
  c.vocab_size = vocab_size, c.context_length = s.context_length;
  c.transformer_width = s.text_width, c.transformer_layers = s.text_layers, c.transformer_heads = s.text_heads;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string root = examples::data_root(), cifar = root + "/data/cifar10";
  cli::App app("Train a CLIP contrastively, then classify zero-shot.", "train_clip");
  examples::show_defaults(app);
  std::string train_path = cifar + "/cifar10-train-{000000..000004}.tar", test_path = cifar + "/cifar10-test-000000.tar";
  std::string vocab = examples::default_vocab(), classes = "cifar10", templates = "cifar10";
  std::string train_templates = "0,2,4,6,8,10,12,14,16", out = "out/clip", init, autocast = "none",
              device_spec = "cpu";
  Towers shape;
  double epochs = 10, lr = 2e-3, weight_decay = 0.1;
  int64_t batch = 256, warmup = 100, limit_train = 0, limit_test = 0;
  int workers = int(std::max(1u, std::thread::hardware_concurrency()));
  uint64_t seed = 0;
  bool from_classes = false, resume = false, eval_each_epoch = false, detect_anomaly = false, distributed = false,
       sync_bn = false, split_shards = false, cuda_graph = false;
  cli::Option* data_opt = app.add_option("--data", train_path, "training shards: <key>.jpg + <key>.txt (or .cls with "
                                         "--captions-from-classes)");
  cli::Option* test_opt = app.add_option("--test-data", test_path, "labelled test data for the zero-shot evaluation (\"\" to skip)");
  app.add_flag("--captions-from-classes", from_classes, "captions are templates filled with the class name of each "
               "sample's label (on by default for the CIFAR-10 shards)");
  app.add_option("--classes", classes, "class names: a file, cifar10 or imagenet");
  app.add_option("--templates", templates, "templates with {}: a file, cifar10 or imagenet");
  app.add_option("--train-templates", train_templates, "indices of the templates captions are made from; the "
                 "others are held out for the zero-shot evaluation (\"all\": every template in both)");
  cli::Option* vocab_opt = app.add_option("--vocab", vocab, "CLIP's BPE vocabulary");
  app.add_option("--vision", shape.vision, "resnet / vit (small, from the options below) or OpenAI's tower: rn50, "
                 "rn101, rn50x4, rn50x16, rn50x64, vit_b_32, vit_b_16, vit_l_14");
  app.add_option("--image-size", shape.image_size, "input resolution of the small towers (32 to 64 for CIFAR)")
      ->check(cli::Range(8, 1024));
  app.add_option("--vision-width", shape.vision_width, "ModifiedResNet stem width / ViT width")->check(cli::PositiveNumber);
  app.add_option("--vision-layers", shape.vision_layers, "ModifiedResNet blocks per stage (1 to 4 stages) / ViT depth");
  app.add_option("--patch-size", shape.patch_size, "ViT patch size")->check(cli::PositiveNumber);
  app.add_option("--vision-heads", shape.vision_heads, "attention heads of the image tower (0: width / 64)")
      ->check(cli::NonNegativeNumber);
  app.add_option("--embed-dim", shape.embed_dim, "joint embedding size")->check(cli::PositiveNumber);
  app.add_option("--text-width", shape.text_width, "text transformer width")->check(cli::PositiveNumber);
  app.add_option("--text-layers", shape.text_layers, "text transformer layers")->check(cli::PositiveNumber);
  app.add_option("--text-heads", shape.text_heads, "text transformer heads")->check(cli::PositiveNumber);
  app.add_option("--context-length", shape.context_length, "tokens per caption (OpenAI: 77)")->check(cli::Range(3, 77));
  app.add_option("--init", init, "start from these CLIP weights (any file examples/clip reads) instead of random");
  app.add_option("--epochs", epochs, "training epochs (fractions too)")->check(cli::NonNegativeNumber);
  app.add_option("--batch", batch, "batch size (the contrastive loss sees batch x batch pairs)")->check(cli::Range(2, 65536));
  app.add_option("--lr", lr, "AdamW learning rate (cosine to 0)")->check(cli::NonNegativeNumber);
  app.add_option("--weight-decay", weight_decay, "decoupled weight decay of the weight matrices")->check(cli::NonNegativeNumber);
  app.add_option("--warmup", warmup, "linear warm-up steps")->check(cli::NonNegativeNumber);
  app.add_option("--limit-train", limit_train, "training samples per epoch (0: all)")->check(cli::NonNegativeNumber);
  app.add_option("--limit-test", limit_test, "test samples (0: all)")->check(cli::NonNegativeNumber);
  app.add_option("--workers", workers, "decoding threads")->check(cli::PositiveNumber);
  app.add_option("--seed", seed, "seed of the weights, shuffling, augmentation and captions");
  app.add_option("--out", out, "output folder: checkpoint.safetensors, clip.safetensors, report.json");
  app.add_option("--device", device_spec, "where the model trains: cpu, cuda or cuda:N (with --distributed: "
                 "cuda gives each rank the GPU of its local rank)");
  examples::add_autocast_option(app, autocast);
  app.add_flag("--cuda-graph", cuda_graph, "GPU: replay each step's forward and backward from one CUDA graph, captured "
               "at the run's second step; every caption is encoded (not each distinct one once: a graph's shapes are "
               "fixed); one process, not with --autocast f16");
  app.add_flag("--resume", resume, "continue from OUT/checkpoint.safetensors");
  app.add_flag("--detect-anomaly", detect_anomaly,
               "check every op's output and gradient while training; stop at the first NaN, naming the op (slow)");
  app.add_flag("--eval-each-epoch", eval_each_epoch, "zero-shot accuracy after every epoch, not only at the end");
  app.add_flag("--distributed", distributed, "data-parallel over the processes of an mpirun / srun / torchrun launch: "
               "--batch is the global batch, the loss sees all of it; rank 0 evaluates and writes");
  app.add_flag("--sync-bn", sync_bn, "with --distributed: batch-norm statistics (ResNet towers) over the global batch");
  app.add_flag("--split-shards", split_shards, "with --distributed: each rank reads only its shards (default: every "
               "rank reads the stream and keeps its samples, the one-process epoch exactly)");
  return examples::run(app, argc, argv, [&] {
    const auto t_start = std::chrono::steady_clock::now();
    examples::check_given_paths("train_clip", {data_opt, test_opt, vocab_opt});
    examples::start_processes("train_clip", distributed, batch);
    BCOS_CHECK(!sync_bn || distributed, "train_clip: --sync-bn needs --distributed");
    BCOS_CHECK(!cuda_graph || (examples::parse_device(device_spec).is_cuda() && !distributed && autocast != "f16" &&
                               !detect_anomaly),
               "train_clip: --cuda-graph needs --device cuda, one process (no --distributed), and neither --autocast "
               "f16 (its loss scale changes per step) nor --detect-anomaly (it reads every op's output)");
    const bool main_rank = dist::is_main();
    std::FILE* progress = main_rank ? stderr : nullptr;
    if (!data_opt->count()) from_classes = true;  // the CIFAR-10 shards have labels, not captions
    if (!data_opt->count() && (!examples::data_exists(train_path) || !fs::exists(vocab))) {
      std::printf("train_clip: skipped: the CIFAR-10 shards or CLIP's vocabulary are missing (%s, %s); set BCOS_DATA "
                  "or pass --data / --vocab\n", train_path.c_str(), vocab.c_str());
      return;
    }
    auto tok = examples::load_tokenizer(vocab);
    const auto class_names = examples::read_list(classes, "classes");
    const auto all_templates = examples::read_list(templates, "templates");
    std::vector<std::string> fit_templates, held_out;
    if (train_templates == "all") {
      fit_templates = held_out = all_templates;
    } else {
      const auto picked = parse_ints(train_templates, "--train-templates");
      for (int64_t i : picked)
        BCOS_CHECK(i >= 0 && i < int64_t(all_templates.size()), "train_clip: template index ", i, " is outside the ",
                   all_templates.size(), " templates");
      for (size_t i = 0; i < all_templates.size(); ++i)
        (std::find(picked.begin(), picked.end(), int64_t(i)) != picked.end() ? fit_templates : held_out)
            .push_back(all_templates[i]);
      if (held_out.empty()) held_out = fit_templates;
    }

    manual_seed(seed);
    std::shared_ptr<models::Clip> model = init.empty() ? std::make_shared<models::Clip>(make_config(shape, tok->vocab_size()))
                                                       : models::load_clip(init);
    const models::ClipConfig& config = model->config;
    Device device = examples::parse_device(device_spec);
    if (distributed && device.is_cuda() && device_spec == "cuda") device = Device::cuda(dist::local_rank());  // a GPU per rank
    model->to(device);  // before the optimizer takes its parameters
    if (main_rank)
      std::printf("CLIP: %s; %.2fM parameters\n", config.describe().c_str(), double(model->num_parameters()) / 1e6);

    using namespace data;
    const int64_t res = config.image_resolution;
    Transform train_t = Compose({Resize(res, Interpolation::bicubic), RandomCrop(res, std::max<int64_t>(1, res / 8)),
                                 RandomHorizontalFlip(), ToTensor(), Normalize(models::kClipMean, models::kClipStd)});
    const int64_t ranks = dist::world_size(), local_batch = batch / ranks;  // each rank's share of a batch
    auto train_loader = examples::make_loader(train_path, "train", train_t,
                                              {.batch_size = local_batch, .shuffle = true, .drop_last = true,
                                               .workers = workers, .seed = seed, .limit = limit_train,
                                               .rank = dist::rank(), .world_size = int(ranks),
                                               .split_shards = split_shards});
    const int64_t steps_per_epoch = train_loader->num_samples() / local_batch;
    BCOS_CHECK(steps_per_epoch > 0, "train_clip: fewer training samples (", train_loader->num_samples(),
               ") than one batch (", batch, ")");
    const int64_t total_steps = std::max<int64_t>(1, std::llround(epochs * double(steps_per_epoch)));
    const int64_t epoch_count = (total_steps + steps_per_epoch - 1) / steps_per_epoch;

    if (sync_bn) dist::use_sync_batch_norm(*model);
    dist::DataParallel ddp(*model);  // rank 0's weights to all; gradients averaged (nothing on one rank)
    std::vector<Tensor> params, decayed;
    for (auto& [name, p] : model->named_parameters()) {
      params.push_back(p);
      if (p.dim() >= 2 && name.find("embedding") == std::string::npos) decayed.push_back(p);  // CLIP: no decay on
    }                                                                                          // gains, biases, embeddings
    nn::AdamW optimizer(params, {.lr = lr, .beta1 = 0.9, .beta2 = 0.98, .eps = 1e-6, .weight_decay = 0.0});
    nn::Scheduler scheduler(optimizer, nn::cosine_schedule(lr, total_steps, 0.0, std::min(warmup, total_steps - 1)));
    const DType autocast_dtype = examples::autocast_type(autocast);  // (training only; evaluation in float32)
    nn::GradScaler scaler({.enabled = autocast_dtype == DType::f16});  // a no-op unless f16
    fs::create_directories(out);
    const std::string ckpt = out + "/checkpoint.safetensors";
    nn::TrainingState state;
    if (resume) {
      BCOS_CHECK(fs::exists(ckpt), "train_clip: --resume: no checkpoint at ", ckpt);
      state = nn::load_training_checkpoint(ckpt, *model, optimizer, &scheduler);
      examples::check_resume_world_size("train_clip", ckpt, state);
      scaler.load_from(state);
      if (main_rank) std::printf("resumed from %s after epoch %lld\n", ckpt.c_str(), static_cast<long long>(state.epoch));
    }

    auto zero_shot = [&] {  // on the test data, with the held-out templates
      const Tensor classifier = examples::zeroshot_weights(*model, *tok, class_names, held_out);
      auto test_loader = examples::make_loader(test_path, "test", examples::clip_transform(res),
                                               {.batch_size = 256, .workers = workers, .limit = limit_test});
      return examples::zeroshot_eval(*model, classifier, *test_loader, "zero-shot");
    };
    double train_seconds = 0, last_loss = 0;
    AnomalyDetectionGuard anomaly(detect_anomaly);
    // A step's forward and backward: the captions' tokens encoded, their rows picked by `rows` when
    // given (each distinct caption encoded once), the global batch's logits and loss.
    Tensor logits, loss;
    auto forward_backward = [&](const Tensor& images, const Tensor& tokens, const Tensor& rows) {
      {
        AutocastGuard mixed(device.type, autocast_dtype, autocast_dtype != DType::f32);
        const Tensor encoded = model->encode_text(tokens);
        const Tensor text_features = rows.defined() ? index_select(encoded, 0, rows) : encoded;
        // Every rank's features, in rank order, gradients flowing back to their own rank: the
        // global batch's logits (the identity on one process).
        ddp.broadcast_buffers();  // rank 0's running statistics, as ddp(x) does (the towers run outside it)
        logits = model->logits(dist::all_gather_autograd(model->encode_image(images)),
                               dist::all_gather_autograd(text_features));
        loss = models::clip_contrastive_loss(logits);
      }
      optimizer.zero_grad();
      scaler.scale(loss).backward();
    };
    examples::GraphedStep graphed;  // --cuda-graph: captured at the run's second step (the first warms up)
    const int64_t first_step = state.step;
    for (int64_t epoch = state.epoch; epoch < epoch_count; ++epoch) {
      model->train();
      const int64_t steps = std::min(steps_per_epoch, total_steps - epoch * steps_per_epoch);
      ProgressBar bar(steps * batch, str("epoch ", epoch + 1, "/", epoch_count), "img", progress);
      const auto start = std::chrono::steady_clock::now();
      double loss_sum = 0;
      int64_t seen = 0, matched = 0;
      for (Batch& b : train_loader->epoch(epoch)) {
        if (state.step >= (epoch + 1) * steps_per_epoch || state.step >= total_steps) break;  // a partial epoch
        std::vector<std::string> captions = b.texts;
        if (from_classes) {
          const std::vector<int64_t>& labels = b.label_values;
          Rng rng(seed, 7, uint64_t(state.step));  // each step's template draws, reproducible on resume
          std::vector<int64_t> draws(static_cast<size_t>(batch));  // for the global batch: this rank's samples are
          for (auto& d : draws) d = rng.randint(0, int64_t(fit_templates.size()));  // at i · ranks + rank
          for (size_t i = 0; i < labels.size(); ++i) {
            BCOS_CHECK(labels[i] >= 0 && labels[i] < int64_t(class_names.size()), "train_clip: ", b.names[i],
                       " has label ", labels[i], ", outside the ", class_names.size(), " classes");
            const auto& t = fit_templates[size_t(draws[i * size_t(ranks) + size_t(dist::rank())])];
            captions[i] = examples::fill_template(t, class_names[size_t(labels[i])]);
          }
        }
        for (size_t i = 0; i < captions.size(); ++i)
          BCOS_CHECK(!captions[i].empty(), "train_clip: ", b.names[i], " has no caption (.txt); pass "
                     "--captions-from-classes for labelled data");
        const Tensor images = b.images.to(device);
        if (!cuda_graph) {
          // Each distinct caption is encoded once (captions made from templates repeat within a
          // batch); rows are then gathered back, so the logits and gradients are exactly those of
          // encoding every caption.
          std::vector<std::string> distinct;
          std::vector<int64_t> row_of;
          std::map<std::string, int64_t> seen_at;
          for (const auto& c : captions) {
            auto [it, fresh] = seen_at.emplace(c, int64_t(distinct.size()));
            if (fresh) distinct.push_back(c);
            row_of.push_back(it->second);
          }
          forward_backward(images, tok->tokenize(distinct, config.context_length, true).to(device),
                           from_vector(row_of, {int64_t(row_of.size())}).to(device));
        } else {
          graphed.run({images, tok->tokenize(captions, config.context_length, true).to(device)},
                      state.step > first_step,
                      [&](const std::vector<Tensor>& in) { forward_backward(in[0], in[1], Tensor()); });
        }
        const double l = loss.item();  // checked before the step, so no NaN reaches the weights
        BCOS_CHECK(std::isfinite(l), "train_clip: the loss became ", l, " at step ", state.step + 1, " (epoch ", epoch + 1,
                   "); stopped before the update", fs::exists(ckpt) ? str("; ", ckpt, " holds the last good epoch") : "",
                   detect_anomaly ? "" : "; --detect-anomaly names the op that produced the first NaN");
        scaler.step(optimizer);  // f16: skipped when a gradient overflowed
        scaler.update();
        {  // AdamW's decoupled decay, on the weight matrices only
          NoGradGuard no_grad;
          for (Tensor& p : decayed) p.mul_(1.0 - optimizer.lr * weight_decay);
        }
        scheduler.step();
        models::clamp_logit_scale_(*model);
        ++state.step;
        loss_sum += l * double(batch);  // the global batch's loss, the same on every rank
        // The matches and the clamped scale for the display, read together (one wait for a GPU).
        const Tensor hits = sum(eq(argmax(logits.detach(), 1), arange(double(batch), {DType::i64, device})).to(DType::f32));
        const auto shown = stack({hits, model->logit_scale.detach().to(DType::f32).reshape({})}).to_vector<float>();
        matched += int64_t(shown[0]);
        seen += batch;
        bar.update(batch, {{"loss", loss_sum / double(seen)}, {"i2t", 100.0 * double(matched) / double(seen)},
                              {"lr", optimizer.lr}, {"scale", std::exp(double(shown[1]))}});
      }
      bar.finish();
      train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      last_loss = loss_sum / double(std::max<int64_t>(seen, 1));
      state.epoch = epoch + 1;
      state.extra.insert_or_assign("world_size", str(ranks));
      scaler.save_to(state);  // f16: the loss scale goes on after a resume
      if (main_rank) nn::save_training_checkpoint(ckpt, *model, optimizer, &scheduler, state);
      if (main_rank && eval_each_epoch && !test_path.empty() && epoch + 1 < epoch_count)
        std::printf("epoch %lld: zero-shot top-1 %.2f %%\n", static_cast<long long>(epoch + 1), zero_shot().top1);
    }
    graphed.release();
    optimizer.zero_grad(), logits = loss = Tensor();
    if (!main_rank) {  // the rest is rank 0's: the others wait for it, then end together
      dist::barrier(7 * 24 * 3600.0);
      return;
    }
    const auto meta = config.metadata();
    nn::save_safetensors(out + "/clip.safetensors", model->state_dict(), {meta.begin(), meta.end()});
    std::printf("trained %lld steps in %.0f s; wrote %s/clip.safetensors\n", static_cast<long long>(state.step),
                train_seconds, out.c_str());

    examples::Json report = {{"command", examples::command_line(argc, argv)}, {"config", config.describe()},
                             {"parameters", model->num_parameters()}, {"steps", state.step}, {"batch", batch},
                             {"last_epoch_loss", last_loss}, {"train_seconds", train_seconds},
                             {"train_templates", fit_templates}, {"held_out_templates", held_out},
                             {"processes", ranks}, {"sync_bn", sync_bn}, {"autocast", autocast}, {"device", device.name()},
                             {"cuda_graph", cuda_graph}, {"graph_replays", graphed.replays()},
                             {"skipped_steps", scaler.skipped_steps()}};
    if (!test_path.empty()) {
      const examples::ZeroShotResult r = zero_shot();
      std::printf("zero-shot on %s with %zu held-out templates: top-1 %.2f %%, top-5 %.2f %% (%lld images)\n",
                  test_path.c_str(), held_out.size(), r.top1, r.top5, static_cast<long long>(r.samples));
      report["zeroshot"] = {{"data", test_path}, {"samples", r.samples}, {"top1", r.top1}, {"top5", r.top5}};
    }
    report["total_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    data::write_file_atomic(out + "/report.json", examples::dump(report) + "\n");
    if (distributed) dist::barrier(7 * 24 * 3600.0);  // the other ranks wait here for the end
  });
}
