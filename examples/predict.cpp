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
#include "examples/classifier.h"
#include "data/datasets.h"
#include "models/factory.h"

using namespace bcos;

int main(int argc, char** argv) {
  cli::App app("Top classes for one image.", "predict");
  examples::show_defaults(app);
  examples::ModelArgs m;
  std::string image, classes;
  int64_t top = 5;
  bool json = false;
  examples::model_options(app, m);
  app.add_option("--image", image, "a JPEG / PNG / BMP file")->required()->check(cli::ExistingFile);
  app.add_option("--topk", top, "how many classes to show")->check(cli::PositiveNumber);
  app.add_option("--classes", classes, "a text file with one class name per line")->check(cli::ExistingFile);
  app.add_flag("--json", json, "print JSON instead of a table");
  return examples::run(app, argc, argv, [&] {
    const models::ModelSpec spec = models::model_spec(m.arch);
    const Device device = examples::parse_device(m.device);
    auto model = models::create_model(spec.arch);
    models::load_pretrained(*model, m.weights);
    model->eval();
    model->to(device);

    std::vector<std::string> names;
    if (!classes.empty()) {
      std::ifstream f(classes);
      BCOS_CHECK(f.good(), "predict: cannot open --classes ", classes);
      for (std::string line; std::getline(f, line);) names.push_back(line);
      BCOS_CHECK(int64_t(names.size()) == spec.num_classes, "predict: ", classes, " has ", names.size(),
                 " names for ", spec.num_classes, " classes");
    } else if (spec.num_classes == 10) {
      names = data::Cifar10::classes();
    }

    data::Rng unused(0);  // the evaluation transform draws nothing
    const Tensor x = examples::eval_transform(spec, m.resize)(data::read_image(image), unused)
                         .unsqueeze(0);
    NoGradGuard no_grad;
    const Tensor logits = (*model)(x.to(device)).to(Device()).squeeze(0);
    const Tensor probs = softmax(logits, 0);
    const int64_t k = std::clamp<int64_t>(top, 1, spec.num_classes);
    const ValuesIndices best = topk(logits, k);
    const auto idx = best.indices.to_vector<int64_t>();
    const auto lv = logits.to_vector<float>(), pv = probs.to_vector<float>();
    auto name_of = [&](int64_t c) { return names.empty() ? "class " + std::to_string(c) : names[size_t(c)]; };
    if (json) {
      examples::Json result = {{"image", image}, {"arch", spec.arch}, {"top", examples::Json::array()}};
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = idx[size_t(j)];
        BCOS_CHECK(std::isfinite(lv[size_t(c)]), "predict: the model gave a non-finite logit for class ", c);
        result["top"].push_back({{"class", c}, {"name", name_of(c)}, {"logit", lv[size_t(c)]},
                                 {"probability", pv[size_t(c)]}});
      }
      std::printf("%s\n", examples::dump(result).c_str());
    } else {
      std::printf("%-5s %-6s %-30s %10s %12s\n", "rank", "class", "name", "logit", "probability");
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = idx[size_t(j)];
        std::printf("%-5lld %-6lld %-30s %10.4f %12.6f\n", static_cast<long long>(j + 1), static_cast<long long>(c),
                    name_of(c).c_str(), lv[size_t(c)], pv[size_t(c)]);
      }
    }
  });
}
