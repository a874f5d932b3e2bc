// predict: the top classes a pretrained classifier gives one image, with logits and
// probabilities, after the architecture's evaluation transform (resize + center crop).
//   predict --arch resnet50 --weights resnet50-11ad3fa6.pth --image cat.png [--topk 5] [--json]
// Class names come from --classes (one per line, e.g. ImageNet's), or CIFAR-10's for the CIFAR
// ResNets; otherwise classes are shown by index.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "autograd/ops.h"
#include "data/image.h"
#include "data/transforms.h"
#include "examples/args.h"
#include "examples/classifier.h"
#include "data/datasets.h"
#include "models/factory.h"

using namespace bcos;

namespace {

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  examples::Args args("predict", "Top classes for one image.");
  examples::model_options(args);
  args.option("image", "", "a JPEG / PNG / BMP file", true)
      .option("topk", "5", "how many classes to show")
      .option("classes", "", "a text file with one class name per line")
      .flag("json", "print JSON instead of a table");
  try {
    args.parse(argc, argv);
    const models::ModelSpec spec = models::model_spec(args.get("arch"));
    auto model = models::create_model(spec.arch);
    models::load_pretrained(*model, args.get("weights"));
    model->eval();

    std::vector<std::string> names;
    if (!args.get("classes").empty()) {
      std::ifstream f(args.get("classes"));
      BCOS_CHECK(f.good(), "predict: cannot open --classes ", args.get("classes"));
      for (std::string line; std::getline(f, line);) names.push_back(line);
      BCOS_CHECK(int64_t(names.size()) == spec.num_classes, "predict: ", args.get("classes"), " has ", names.size(),
                 " names for ", spec.num_classes, " classes");
    } else if (spec.num_classes == 10) {
      names = data::Cifar10::classes();
    }

    data::Rng unused(0);  // the evaluation transform draws nothing
    const Tensor x = examples::eval_transform(spec, args.integer("resize"))(data::read_image(args.get("image")), unused)
                         .unsqueeze(0);
    NoGradGuard no_grad;
    const Tensor logits = (*model)(x).squeeze(0);
    const Tensor probs = softmax(logits, 0);
    const int64_t k = std::clamp<int64_t>(args.integer("topk"), 1, spec.num_classes);
    const ValuesIndices best = topk(logits, k);
    const auto idx = best.indices.to_vector<int64_t>();
    const auto lv = logits.to_vector<float>(), pv = probs.to_vector<float>();
    auto name_of = [&](int64_t c) { return names.empty() ? "class " + std::to_string(c) : names[size_t(c)]; };
    if (args.enabled("json")) {
      std::printf("{\"image\": \"%s\", \"arch\": \"%s\", \"top\": [", json_escape(args.get("image")).c_str(), spec.arch.c_str());
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = idx[size_t(j)];
        BCOS_CHECK(std::isfinite(lv[size_t(c)]), "predict: the model gave a non-finite logit for class ", c);
        std::printf("%s{\"class\": %lld, \"name\": \"%s\", \"logit\": %.6g, \"probability\": %.6g}", j ? ", " : "",
                    static_cast<long long>(c), json_escape(name_of(c)).c_str(), lv[size_t(c)], pv[size_t(c)]);
      }
      std::printf("]}\n");
    } else {
      std::printf("%-5s %-6s %-30s %10s %12s\n", "rank", "class", "name", "logit", "probability");
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = idx[size_t(j)];
        std::printf("%-5lld %-6lld %-30s %10.4f %12.6f\n", static_cast<long long>(j + 1), static_cast<long long>(c),
                    name_of(c).c_str(), lv[size_t(c)], pv[size_t(c)]);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
