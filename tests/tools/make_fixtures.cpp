// make_fixtures: writes the inputs the end-to-end script tests need (tests/scripts/), so they
// run anywhere without ../shared or Python:
//   make_fixtures weights ARCH FILE [SEED]      randomly initialised weights (safetensors)
//   make_fixtures cifar DIR TRAIN TEST [SEED]   a CIFAR-10 binary folder: data_batch_1..5.bin
//                                               (TRAIN records over the five) and test_batch.bin
//   make_fixtures png FILE WIDTH HEIGHT         a PNG of that size (gradient pixels)
// Everything is a function of the arguments, so two calls write the same bytes.
#include <cstdio>
#include <filesystem>
#include <string>

#include "data/image.h"
#include "models/factory.h"
#include "nn/safetensors.h"
#include "tensor/tensor.h"

using namespace bcos;

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: make_fixtures weights ARCH FILE [SEED]\n"
               "       make_fixtures cifar DIR TRAIN TEST [SEED]\n"
               "       make_fixtures png FILE WIDTH HEIGHT\n");
  return 2;
}

// CIFAR-10 records: a label byte (0-9) and 3 x 32 x 32 pixel bytes, from a small LCG.
std::string cifar_records(int64_t n, uint64_t& state) {
  std::string bytes;
  bytes.reserve(size_t(n) * 3073);
  for (int64_t i = 0; i < n; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const int label = int((state >> 33) % 10);
    bytes += char(label);
    for (int j = 0; j < 3072; ++j) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      // brighter in the label's own third of the image, so a model can learn something
      const int base = int(state >> 56);
      bytes += char(std::min(255, base / 2 + ((j / 1024) == label % 3 ? 100 : 0)));
    }
  }
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string cmd = argv[1];
  try {
    if (cmd == "weights" && (argc == 4 || argc == 5)) {
      manual_seed(argc == 5 ? std::stoull(argv[4]) : 0);
      auto model = models::create_model(argv[2]);
      nn::save_safetensors(argv[3], model->state_dict(), {{"arch", argv[2]}});
    } else if (cmd == "cifar" && (argc == 5 || argc == 6)) {
      const std::string dir = argv[2];
      const int64_t train = std::stoll(argv[3]), test = std::stoll(argv[4]);
      uint64_t state = argc == 6 ? std::stoull(argv[5]) : 1;
      std::filesystem::create_directories(dir);
      for (int i = 1; i <= 5; ++i) {
        const int64_t n = train / 5 + (i <= train % 5 ? 1 : 0);
        data::write_file_atomic(dir + "/data_batch_" + std::to_string(i) + ".bin", cifar_records(n, state));
      }
      data::write_file_atomic(dir + "/test_batch.bin", cifar_records(test, state));
    } else if (cmd == "png" && argc == 5) {
      const int64_t w = std::stoll(argv[3]), h = std::stoll(argv[4]);
      Tensor image = empty({h, w, 3}, DType::u8);
      uint8_t* p = image.data<uint8_t>();
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
          for (int c = 0; c < 3; ++c) p[(y * w + x) * 3 + c] = uint8_t((x * 7 + y * 3 + c * 50) & 255);
      data::write_file_atomic(argv[2], data::encode_png(image));
    } else {
      return usage();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_fixtures: %s\n", e.what());
    return 1;
  }
  return 0;
}
