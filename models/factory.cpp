// The model factory (see factory.h).
#include "models/factory.h"

#include "data/transforms.h"
#include "models/resnet.h"
#include "models/vit.h"
#include "nn/torch_checkpoint.h"

namespace bcos::models {

std::vector<std::string> architectures() {
  return {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet20", "resnet32",
          "resnet44",  "resnet56", "resnet110", "vit_b_16",  "vit_b_32",  "vit_l_16"};
}

namespace {
int64_t cifar_depth(const std::string& arch) {
  for (int64_t d : {20, 32, 44, 56, 110})
    if (arch == "resnet" + std::to_string(d)) return d;
  return 0;
}
}  // namespace

ModelSpec model_spec(const std::string& arch) {
  ModelSpec s;
  s.arch = arch;
  s.mean = data::kImageNetMean;
  s.std = data::kImageNetStd;
  if (cifar_depth(arch)) {
    s.num_classes = 10;
    s.input_size = 32;
    s.resize_size = 0;
    return s;
  }
  for (const std::string& a : architectures())
    if (a == arch) return s;
  std::string known;
  for (const std::string& a : architectures()) known += (known.empty() ? "" : ", ") + a;
  fail("unknown architecture '", arch, "' (known: ", known, ")");
}

std::shared_ptr<nn::Module> create_model(const std::string& arch, int64_t num_classes) {
  const ModelSpec spec = model_spec(arch);
  const int64_t classes = num_classes > 0 ? num_classes : spec.num_classes;
  if (const int64_t depth = cifar_depth(arch)) return std::make_shared<CifarResNet>(depth, classes);
  if (arch == "vit_b_16") return vit_b_16(classes);
  if (arch == "vit_b_32") return vit_b_32(classes);
  if (arch == "vit_l_16") return vit_l_16(classes);
  ResNetOptions o{.num_classes = classes};
  if (arch == "resnet18") return resnet18(o);
  if (arch == "resnet34") return resnet34(o);
  if (arch == "resnet50") return resnet50(o);
  if (arch == "resnet101") return resnet101(o);
  return resnet152(o);
}

void load_pretrained(nn::Module& model, const std::string& path) {
  nn::StateDict weights = nn::strip_wrapper_prefixes(nn::load_checkpoint(path));
  try {
    model.load_state_dict(weights);
  } catch (const Error& e) {  // the file's name, which load_state_dict does not know
    fail("load_pretrained: ", path, " does not fit the model (weights of another architecture?): ", e.what());
  }
}

}  // namespace bcos::models
