// bcos.cpp side of bench/data (tools/bench_data.py runs torchvision + Pillow beside it): one
// timed epoch of a data pipeline, printed as one line
//   images_per_s <float> images <int> seconds <float>
//   bench_data --pipeline cifar|photos --data DIR --workers W --batch B [--limit N] [--photo-samples N]
// cifar:  WebDataset shards, decode JPEG + RandomCrop(32, padding 4) + flip + normalize, shuffled.
// photos: the three shared PNGs (bytes read beforehand, as the torch side does), decode +
//         RandomResizedCrop(224) + flip + normalize.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "data/image.h"
#include "data/loader.h"

using namespace bcos;
using namespace bcos::data;

namespace {

struct InMemory : Dataset {
  std::vector<Record> records;
  int64_t size() const override { return int64_t(records.size()); }
  Record get(int64_t i) const override { return records[size_t(i)]; }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string pipeline = "cifar", data = "../shared";
    int workers = 2;
    int64_t batch = -1, limit = 0, photo_samples = 600;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) fail("bench_data: ", arg, " needs a value");
        return argv[++i];
      };
      if (arg == "--pipeline") pipeline = value();
      else if (arg == "--data") data = value();
      else if (arg == "--workers") workers = std::stoi(value());
      else if (arg == "--batch") batch = std::stoll(value());
      else if (arg == "--limit") limit = std::stoll(value());
      else if (arg == "--photo-samples") photo_samples = std::stoll(value());
      else fail("bench_data: unknown argument ", arg);
    }
    LoaderOptions options{.shuffle = true, .workers = workers, .seed = 0, .limit = limit};
    std::unique_ptr<DataLoader> loader;
    if (pipeline == "cifar") {
      options.batch_size = batch > 0 ? batch : 256;
      auto ds = std::make_shared<WebDataset>(data + "/data/cifar10/cifar10-train-{000000..000004}.tar");
      loader = std::make_unique<DataLoader>(
          ds, Compose({RandomCrop(32, 4), RandomHorizontalFlip(), ToTensor(), Normalize(kImageNetMean, kImageNetStd)}),
          options);
    } else if (pipeline == "photos") {
      options.batch_size = batch > 0 ? batch : 32;
      auto ds = std::make_shared<InMemory>();
      const char* names[] = {"astronaut", "chelsea", "coffee"};
      std::vector<std::string> bytes;
      for (const char* n : names) bytes.push_back(read_file(data + "/data/photos/" + n + ".png"));
      for (int64_t i = 0; i < photo_samples; ++i) {
        Record r;
        r.name = names[i % 3];
        r.image_bytes = bytes[size_t(i % 3)];
        r.label = i % 3;
        ds->records.push_back(std::move(r));
      }
      loader = std::make_unique<DataLoader>(
          ds, Compose({RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize(kImageNetMean, kImageNetStd)}),
          options);
    } else {
      fail("bench_data: --pipeline must be cifar or photos, got ", pipeline);
    }
    const auto start = std::chrono::steady_clock::now();
    int64_t images = 0;
    for (Batch& b : loader->epoch(0)) images += b.size();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("images_per_s %.1f images %lld seconds %.3f\n", double(images) / seconds,
                static_cast<long long>(images), seconds);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
