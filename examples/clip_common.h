// What examples/clip and examples/train_clip share: where the BPE vocabulary is, the prompt lists
// shipped with the tool (examples/prompts: OpenAI's CIFAR-10 and ImageNet class names and
// templates, MIT), CLIP's image preprocessing, and the zero-shot evaluation loop.
#pragma once

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "data/loader.h"
#include "data/progress.h"
#include "data/tokenizer.h"
#include "data/transforms.h"
#include "examples/classifier.h"
#include "examples/cli.h"
#include "models/clip.h"

#ifndef BCOS_PROMPTS_DIR
#define BCOS_PROMPTS_DIR "examples/prompts"
#endif

namespace examples {

inline std::string default_vocab() { return data_root() + "/data/clip/bpe_simple_vocab_16e6.txt.gz"; }

inline std::unique_ptr<bcos::data::ClipTokenizer> load_tokenizer(const std::string& path) {
  BCOS_CHECK(std::ifstream(path).good(), "CLIP's BPE vocabulary ", path, " is missing: pass --vocab, set BCOS_DATA, or "
             "run scripts/get_data (it downloads bpe_simple_vocab_16e6.txt.gz)");
  return std::make_unique<bcos::data::ClipTokenizer>(path);
}

// Non-empty lines of a file; `name` may also be a list shipped with the tool: cifar10_classes,
// cifar10_templates, imagenet_classes, imagenet_templates (or "cifar10" / "imagenet" with `kind`
// "classes" or "templates").
inline std::vector<std::string> read_list(const std::string& name, const std::string& kind) {
  std::string path = name;
  if (name == "cifar10" || name == "imagenet") path = std::string(BCOS_PROMPTS_DIR) + "/" + name + "_" + kind + ".txt";
  else if (!std::ifstream(name).good() && std::ifstream(std::string(BCOS_PROMPTS_DIR) + "/" + name + ".txt").good())
    path = std::string(BCOS_PROMPTS_DIR) + "/" + name + ".txt";
  std::ifstream f(path);
  BCOS_CHECK(f.good(), "cannot read the ", kind, " list '", name, "' (a file, or cifar10 / imagenet)");
  std::vector<std::string> lines;
  for (std::string line; std::getline(f, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  BCOS_CHECK(!lines.empty(), "the ", kind, " list ", path, " is empty");
  return lines;
}

// "a photo of a {}." with the class name in place of {}.
inline std::string fill_template(const std::string& templ, const std::string& name) {
  const size_t at = templ.find("{}");
  BCOS_CHECK(at != std::string::npos, "template '", templ, "' has no {} for the class name");
  return templ.substr(0, at) + name + templ.substr(at + 2);
}

// OpenAI's clip.load preprocessing: shorter side to the resolution (bicubic), centre crop, CLIP's
// mean and std.
inline bcos::data::Transform clip_transform(int64_t resolution) {
  using namespace bcos::data;
  return Compose({Resize(resolution, Interpolation::bicubic), CenterCrop(resolution), ToTensor(),
                  Normalize(bcos::models::kClipMean, bcos::models::kClipStd)});
}

// The zero-shot classifier of `classes` × `templates` (OpenAI's recipe), [classes, embed].
inline bcos::Tensor zeroshot_weights(bcos::models::Clip& model, const bcos::data::ClipTokenizer& tok,
                                     const std::vector<std::string>& classes, const std::vector<std::string>& templates) {
  std::vector<bcos::Tensor> ids;
  for (const auto& c : classes) {
    std::vector<std::string> prompts;
    for (const auto& t : templates) prompts.push_back(fill_template(t, c));
    ids.push_back(tok.tokenize(prompts, model.config.context_length, true));
  }
  return bcos::models::zeroshot_classifier(model, ids);
}

struct ZeroShotResult {
  double top1 = 0, top5 = 0, seconds = 0;
  int64_t samples = 0;
};

// Top-1 / top-5 of 100 · cos(image, class) over a labelled dataset, behind a progress bar; on
// the model's device.
inline ZeroShotResult zeroshot_eval(bcos::models::Clip& model, const bcos::Tensor& classifier,
                                    bcos::data::DataLoader& loader, const std::string& title) {
  using namespace bcos;
  ZeroShotResult r;
  model.eval();
  NoGradGuard no_grad;
  data::ProgressBar bar(loader.num_samples(), title, "img");
  const auto start = std::chrono::steady_clock::now();
  int64_t top1 = 0, top5 = 0;
  const int64_t classes = classifier.size(0), k = std::min<int64_t>(5, classes);
  for (data::Batch& b : loader.epoch(0)) {
    const Device device = model.logit_scale.device();  // the model's (images come on the CPU)
    const Tensor logits = matmul(models::l2_normalize(model.encode_image(b.images.to(device))),
                                 classifier.to(device).transpose(0, 1)) * 100.0;
    const auto best = topk(logits, k, 1).indices.to(Device()).to_vector<int64_t>();
    const std::vector<int64_t>& labels = b.label_values;
    for (size_t i = 0; i < labels.size(); ++i) {
      BCOS_CHECK(labels[i] >= 0 && labels[i] < classes, "zero-shot: ", b.names[i], " has label ", labels[i],
                 ", outside the ", classes, " classes");
      for (int64_t j = 0; j < k; ++j)
        if (best[i * size_t(k) + size_t(j)] == labels[i]) {
          top1 += j == 0;
          ++top5;
        }
    }
    r.samples += b.size();
    bar.update(b.size(), {{"top1", 100.0 * double(top1) / double(r.samples)}});
  }
  bar.finish();
  BCOS_CHECK(r.samples > 0, "zero-shot: the dataset is empty");
  r.top1 = 100.0 * double(top1) / double(r.samples);
  r.top5 = 100.0 * double(top5) / double(r.samples);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace examples
