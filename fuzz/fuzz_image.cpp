// Fuzz target: image decoding (data/image.cpp over stb_image): JPEG, PNG, BMP and whatever
// else the bytes claim to be; the decoded tensor must be u8 [H, W, 3].
#include "data/image.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    bcos::Tensor image = bcos::data::decode_image(bcos::fuzz::as_view(data, size), "fuzz image");
    if (image.dim() != 3 || image.size(2) != 3 || image.dtype() != bcos::DType::u8) __builtin_trap();
  } catch (const bcos::Error&) {
  }
  return 0;
}
