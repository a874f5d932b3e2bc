// clip: CLIP from the command line, one subcommand per task (each with --json).
//   clip tokenize "a photo of a cat." ...                       the token ids
//   clip embed --clip RN50.pt --image cat.jpg --text "a cat"    normalised embeddings (--out F.safetensors)
//   clip predict --clip RN50.pt --image cat.jpg --labels "a cat,a dog"   probabilities
//   clip zeroshot --clip RN50.pt --data cifar10-test-000000.tar [--classes cifar10 --templates cifar10]
// --clip takes OpenAI's .pt files, open_clip .pt/.bin/.safetensors, Hugging Face CLIPModel
// safetensors, or what examples/train_clip saves.
#include <cstdio>
#include <thread>

#include "data/image.h"
#include "examples/classifier.h"
#include "examples/clip_common.h"
#include "models/clip_load.h"
#include "nn/safetensors.h"

using namespace bcos;

namespace {

std::vector<int64_t> trimmed(const Tensor& row) {  // a tokenized row without its zero padding
  std::vector<int64_t> ids = row.contiguous().to_vector<int64_t>();
  while (!ids.empty() && ids.back() == 0) ids.pop_back();
  return ids;
}

std::vector<std::string> split_labels(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    std::string item = s.substr(start, comma - start);
    const size_t a = item.find_first_not_of(' '), b = item.find_last_not_of(' ');
    if (a != std::string::npos) out.push_back(item.substr(a, b - a + 1));
    start = comma + 1;
  }
  return out;
}

Tensor load_images(const std::vector<std::string>& paths, int64_t resolution) {
  std::vector<Tensor> images;
  data::Rng unused(0);
  const data::Transform t = examples::clip_transform(resolution);
  for (const auto& p : paths) images.push_back(t(data::read_image(p), unused));
  return stack(images, 0);
}

}  // namespace

int main(int argc, char** argv) {
  cli::App app("CLIP: tokenize, embed, predict and zero-shot classify.", "clip");
  examples::show_defaults(app);
  app.require_subcommand(1);
  std::string vocab = examples::default_vocab(), clip_path;
  bool json = false, truncate = false, gelu = false;
  int64_t context = 77, batch = 64, limit = 0;
  int workers = int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::string> texts, images;
  std::string out_path, labels, data_path, split = "test", classes = "cifar10", templates = "cifar10";
  std::string device_spec = "cpu";

  auto common = [&](cli::App* sub, bool needs_model) {
    sub->add_option("--vocab", vocab, "CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz)");
    sub->add_flag("--json", json, "print JSON");
    if (needs_model) {
      sub->add_option("--clip", clip_path, "the CLIP checkpoint")->required()->check(cli::ExistingFile);
      sub->add_flag("--gelu", gelu, "the model uses exact GELU, not QuickGELU (open_clip's non-quickgelu "
                    "models; files bcos.cpp wrote say it themselves)");
      sub->add_option("--device", device_spec, "where the model runs: cpu, cuda or cuda:N");
    }
  };
  cli::App* tokenize = app.add_subcommand("tokenize", "print the token ids of each text");
  common(tokenize, false);
  tokenize->add_option("texts", texts, "texts to tokenize")->required();
  tokenize->add_option("--context-length", context, "context length")->check(cli::PositiveNumber);
  tokenize->add_flag("--truncate", truncate, "cut texts that do not fit (else: an error)");

  cli::App* embed = app.add_subcommand("embed", "normalised image and text embeddings");
  common(embed, true);
  embed->add_option("--image", images, "image files")->check(cli::ExistingFile);
  embed->add_option("--text", texts, "texts");
  embed->add_option("--out", out_path, "write them to this safetensors file (image_embeddings, text_embeddings)");

  cli::App* predict = app.add_subcommand("predict", "probabilities of labels for each image");
  common(predict, true);
  predict->add_option("--image", images, "image files")->required()->check(cli::ExistingFile);
  predict->add_option("--labels", labels, "comma-separated texts, e.g. \"a cat,a dog\"")->required();

  cli::App* zeroshot = app.add_subcommand("zeroshot", "zero-shot top-1 / top-5 on a labelled dataset");
  common(zeroshot, true);
  zeroshot->add_option("--data", data_path, "WebDataset shards, a CIFAR-10 binary folder or an ImageFolder")->required();
  zeroshot->add_option("--split", split, "CIFAR-10 binary folders: test or train")->check(cli::IsMember({"test", "train"}));
  zeroshot->add_option("--classes", classes, "class names: a file (one per line), cifar10 or imagenet");
  zeroshot->add_option("--templates", templates, "prompt templates with {}: a file, cifar10 or imagenet");
  zeroshot->add_option("--batch", batch, "batch size")->check(cli::PositiveNumber);
  zeroshot->add_option("--workers", workers, "decoding threads")->check(cli::PositiveNumber);
  zeroshot->add_option("--limit", limit, "only the first N samples (0: all)")->check(cli::NonNegativeNumber);

  return examples::run(app, argc, argv, [&] {
    std::unique_ptr<data::ClipTokenizer> tok_holder;
    auto tokenizer = [&]() -> const data::ClipTokenizer& {  // read only when texts are involved
      if (!tok_holder) tok_holder = examples::load_tokenizer(vocab);
      return *tok_holder;
    };
    if (tokenize->parsed()) {
      const Tensor ids = tokenizer().tokenize(texts, context, truncate);
      examples::Json result = examples::Json::array();
      for (size_t i = 0; i < texts.size(); ++i) {
        const std::vector<int64_t> row = trimmed(ids.select(0, int64_t(i)));
        if (json) {
          result.push_back({{"text", texts[i]}, {"ids", row}});
        } else {
          for (size_t j = 0; j < row.size(); ++j) std::printf("%s%lld", j ? " " : "", static_cast<long long>(row[j]));
          std::printf("\n");
        }
      }
      if (json) std::printf("%s\n", examples::dump(result).c_str());
      return;
    }

    auto model = models::load_clip(clip_path, {.quick_gelu = !gelu});
    const Device device = examples::parse_device(device_spec), cpu;
    model->to(device);
    NoGradGuard no_grad;
    const int64_t resolution = model->config.image_resolution, ctx = model->config.context_length;
    if (embed->parsed()) {
      BCOS_CHECK(!images.empty() || !texts.empty(), "clip embed: give --image and/or --text");
      Tensor image_emb, text_emb;
      if (!images.empty())
        image_emb = models::l2_normalize(model->encode_image(load_images(images, resolution).to(device))).to(cpu);
      if (!texts.empty())
        text_emb = models::l2_normalize(model->encode_text(tokenizer().tokenize(texts, ctx, true).to(device))).to(cpu);
      if (!out_path.empty()) {
        nn::StateDict out;
        if (image_emb.defined()) out.emplace_back("image_embeddings", image_emb);
        if (text_emb.defined()) out.emplace_back("text_embeddings", text_emb);
        nn::save_safetensors(out_path, out, {{"clip", clip_path}});
      }
      examples::Json result = {{"clip", clip_path}, {"images", examples::Json::array()}, {"texts", examples::Json::array()}};
      for (size_t i = 0; i < images.size(); ++i)
        result["images"].push_back({{"image", images[i]}, {"embedding", image_emb.select(0, int64_t(i)).to_vector<float>()}});
      for (size_t i = 0; i < texts.size(); ++i)
        result["texts"].push_back({{"text", texts[i]}, {"embedding", text_emb.select(0, int64_t(i)).to_vector<float>()}});
      if (json) {
        std::printf("%s\n", examples::dump(result).c_str());
      } else if (out_path.empty()) {
        auto show = [](const std::string& what, const Tensor& e) {
          const auto v = e.to_vector<float>();
          std::printf("%s [%lld]:", what.c_str(), static_cast<long long>(v.size()));
          for (size_t j = 0; j < std::min<size_t>(v.size(), 8); ++j) std::printf(" %.4f", v[j]);
          std::printf("%s\n", v.size() > 8 ? " ..." : "");
        };
        for (size_t i = 0; i < images.size(); ++i) show(images[i], image_emb.select(0, int64_t(i)));
        for (size_t i = 0; i < texts.size(); ++i) show("\"" + texts[i] + "\"", text_emb.select(0, int64_t(i)));
      } else {
        std::printf("wrote %zu image and %zu text embeddings to %s\n", images.size(), texts.size(), out_path.c_str());
      }
      return;
    }
    if (predict->parsed()) {
      const std::vector<std::string> names = split_labels(labels);
      BCOS_CHECK(!names.empty(), "clip predict: --labels has no labels");
      const Tensor logits = model->logits(model->encode_image(load_images(images, resolution).to(device)),
                                          model->encode_text(tokenizer().tokenize(names, ctx, true).to(device)));
      const Tensor probs = softmax(logits, 1).to(cpu);
      examples::Json result = examples::Json::array();
      for (size_t i = 0; i < images.size(); ++i) {
        const auto p = probs.select(0, int64_t(i)).to_vector<float>();
        examples::Json row = {{"image", images[i]}, {"probabilities", examples::Json::object()}};
        if (!json) std::printf("%s\n", images[i].c_str());
        std::vector<size_t> order(names.size());
        for (size_t j = 0; j < order.size(); ++j) order[j] = j;
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
        for (size_t j : order) {
          row["probabilities"][names[j]] = p[j];
          if (!json) std::printf("  %-30s %8.4f\n", names[j].c_str(), p[j]);
        }
        result.push_back(row);
      }
      if (json) std::printf("%s\n", examples::dump(result).c_str());
      return;
    }
    // zeroshot
    const auto class_names = examples::read_list(classes, "classes");
    const auto template_list = examples::read_list(templates, "templates");
    const Tensor classifier = examples::zeroshot_weights(*model, tokenizer(), class_names, template_list);
    auto loader = examples::make_loader(data_path, split, examples::clip_transform(resolution),
                                        {.batch_size = batch, .workers = workers, .limit = limit});
    const examples::ZeroShotResult r = examples::zeroshot_eval(*model, classifier, *loader, "zero-shot");
    if (json) {
      std::printf("%s\n", examples::dump({{"clip", clip_path}, {"data", data_path}, {"classes", class_names.size()},
                                           {"templates", template_list.size()}, {"samples", r.samples},
                                           {"top1", r.top1}, {"top5", r.top5}, {"images_per_s", double(r.samples) / r.seconds}})
                              .c_str());
    } else {
      std::printf("zero-shot on %s: top-1 %.2f %%, top-5 %.2f %% (%lld images, %zu classes x %zu templates, %.0f images/s)\n",
                  data_path.c_str(), r.top1, r.top5, static_cast<long long>(r.samples), class_names.size(),
                  template_list.size(), double(r.samples) / r.seconds);
    }
  });
}
