// What the examples that run a pretrained classifier share: the --arch / --weights / --resize
// options, and the architecture's evaluation transform -- resize the shorter side (ImageNet
// models: 256 unless --resize says otherwise; CIFAR models: to the input size, which leaves
// CIFAR's own 32 x 32 images alone), center-crop, to_tensor, normalise.
#pragma once

#include <filesystem>
#include <memory>

#include "data/loader.h"
#include "data/transforms.h"
#include "examples/cli.h"
#include "models/factory.h"

namespace examples {

struct ModelArgs {
  std::string arch, weights, device = "cpu";
  int64_t resize = 0;
};

inline void model_options(cli::App& app, ModelArgs& m) {
  app.add_option("--arch", m.arch, "architecture: resnet18/34/50/101/152, resnet20/32/44/56/110, vit_b_16/b_32/l_16")
      ->required();
  app.add_option("--weights", m.weights, "checkpoint: PyTorch (.pth/.pt/.th, zip or legacy) or .safetensors")
      ->required()
      ->check(cli::ExistingFile);
  app.add_option("--resize", m.resize, "resize the shorter side to this before the center crop (0: the "
                 "architecture's default, 256 for ImageNet models; torchvision's *_V2 ResNet weights expect 232)")
      ->check(cli::NonNegativeNumber);
  app.add_option("--device", m.device, "where the model runs: cpu, cuda or cuda:N");
}

// The --device the user asked for, checked: a CUDA device needs a CUDA build and that GPU.
inline bcos::Device parse_device(const std::string& spec) {
  const bcos::Device d(spec);
  BCOS_CHECK(d.is_cpu() || d.index < bcos::cuda_device_count(), "--device ", spec, ": ",
             bcos::cuda_device_count() == 0 ? std::string("no CUDA device here (or a CPU-only build)")
                                            : "only " + std::to_string(bcos::cuda_device_count()) + " CUDA device(s)");
  return d;
}

inline bcos::data::Transform eval_transform(const bcos::models::ModelSpec& spec, int64_t resize = 0) {
  using namespace bcos::data;
  const int64_t shorter = resize > 0 ? resize : (spec.resize_size > 0 ? spec.resize_size : spec.input_size);
  return Compose({Resize(shorter), CenterCrop(spec.input_size), ToTensor(), Normalize(spec.mean, spec.std)});
}

// Does a --data path exist? A brace pattern ("train-{000000..000004}.tar") does when its first
// shard does.
inline bool data_exists(const std::string& p) {
  std::string first = p;
  const size_t lb = p.find('{'), dots = p.find("..", lb), rb = p.find('}', lb);
  if (lb != std::string::npos && dots != std::string::npos && rb != std::string::npos)
    first = p.substr(0, lb) + p.substr(lb + 1, dots - lb - 1) + p.substr(rb + 1);
  std::error_code ec;
  return std::filesystem::exists(first, ec);
}

// Paths the user typed must exist (an error naming the option); only missing defaults -- no
// ../shared here -- may make an example skip its work. Empty values ("" to skip) are allowed.
inline void check_given_paths(const std::string& program, std::initializer_list<const cli::Option*> options) {
  for (const cli::Option* o : options) {
    if (!o->count()) continue;
    const std::string value = o->as_string();
    BCOS_CHECK(value.empty() || data_exists(value), program, ": ", o->get_name(), " ", value, " does not exist");
  }
}

// A loader for --data: WebDataset shards (a .tar path or a brace pattern), a CIFAR-10 binary
// folder (data_batch_*.bin / test_batch.bin; `split` picks train or test), or an ImageFolder.
inline std::unique_ptr<bcos::data::DataLoader> make_loader(const std::string& path, const std::string& split,
                                                           bcos::data::Transform transform,
                                                           bcos::data::LoaderOptions options) {
  using namespace bcos::data;
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool is_dir = fs::is_directory(path, ec);
  if (!is_dir && (path.find(".tar") != std::string::npos || path.find('{') != std::string::npos))
    return std::make_unique<DataLoader>(std::make_shared<WebDataset>(path), transform, options);
  BCOS_CHECK(is_dir, "data: ", path, " is neither a .tar shard pattern nor a folder");
  const bool cifar = fs::exists(fs::path(path) / "test_batch.bin", ec) || fs::exists(fs::path(path) / "data_batch_1.bin", ec) ||
                     fs::is_directory(fs::path(path) / "cifar-10-batches-bin", ec);
  if (cifar) return std::make_unique<DataLoader>(std::make_shared<Cifar10>(path, split == "train"), transform, options);
  return std::make_unique<DataLoader>(std::make_shared<ImageFolder>(path), transform, options);
}

}  // namespace examples
