// Fuzz target: the safetensors reader (nn/safetensors.cpp): header length, JSON header, dtypes,
// shapes, data offsets that must tile the data section.
#include "fuzz/fuzz_util.h"
#include "nn/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bcos::fuzz::InputFile file(".safetensors");
  try {
    std::map<std::string, std::string> metadata;
    bcos::nn::StateDict dict = bcos::nn::load_safetensors(file.write(bcos::fuzz::as_view(data, size)), &metadata);
    for (const auto& [name, t] : dict) (void)t.numel();
  } catch (const bcos::Error&) {
  }
  return 0;
}
