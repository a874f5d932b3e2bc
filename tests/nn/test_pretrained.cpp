// The real-data bar: the shared pretrained CIFAR ResNet-20 (legacy PyTorch checkpoint) on the
// shared CIFAR-10 test shard, through the DataLoader, against the top-1 PyTorch gets on the same
// shard with Pillow's decoding (81.03 %, ../shared/README.md). stb's JPEG decoder differs from
// libjpeg-turbo's by a few levels (tests/data), so 0.15 points (15 images) of slack.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>

#include "autograd/ops.h"
#include "data/loader.h"
#include "models/factory.h"

using namespace bcos;

TEST_CASE("pretrained: CIFAR ResNet-20 reproduces PyTorch's 81.03 % top-1 within 0.15 points") {
  const char* env = std::getenv("BCOS_DATA");
  const std::string root = env ? env : std::string(BCOS_SOURCE_ROOT) + "/../shared";
  const std::string weights = root + "/weights/resnet-cifar10/resnet20-12fca82f.th";
  const std::string shard = root + "/data/cifar10/cifar10-test-000000.tar";
  if (!std::filesystem::exists(weights) || !std::filesystem::exists(shard)) {
    MESSAGE("skipped: " << weights << " or " << shard << " not found (set BCOS_DATA to the shared data folder)");
    return;
  }
  auto model = models::create_model("resnet20");
  models::load_pretrained(*model, weights);
  model->eval();
  data::DataLoader loader(std::make_shared<data::WebDataset>(shard),
                          data::Compose({data::ToTensor(), data::Normalize(data::kImageNetMean, data::kImageNetStd)}),
                          {.batch_size = 500, .workers = 2});
  NoGradGuard no_grad;
  int64_t correct = 0, seen = 0;
  for (data::Batch& b : loader.epoch(0)) {
    const auto pred = argmax((*model)(b.images), 1).to_vector<int64_t>();
    const auto labels = b.labels.to_vector<int64_t>();
    for (size_t i = 0; i < labels.size(); ++i) correct += pred[i] == labels[i];
    seen += b.size();
  }
  const double top1 = 100.0 * double(correct) / double(seen);
  MESSAGE("resnet20 top-1 on the shared test shard: " << top1 << " % (PyTorch with Pillow: 81.03 %)");
  CHECK(seen == 10000);
  CHECK(std::abs(top1 - 81.03) <= 0.15);
}
