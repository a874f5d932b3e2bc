// Fuzz target: load_checkpoint (nn/torch_checkpoint.cpp), the reader every example uses for
// weights: told apart by the first bytes, a torch.save zip archive, a TorchScript archive, a
// legacy torch.save file or a safetensors file, down to the materialised tensors.
#include "fuzz/fuzz_util.h"
#include "nn/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bcos::fuzz::InputFile file(".pt");
  try {
    bcos::nn::StateDict dict = bcos::nn::load_checkpoint(file.write(bcos::fuzz::as_view(data, size)));
    for (const auto& [name, t] : dict) (void)t.numel();
  } catch (const bcos::Error&) {
  }
  return 0;
}
