// Fuzz target: the zip reader (nn/zip.cpp): end-of-central-directory (ZIP64 too), central
// directory, local headers; every entry is then read (CRC-32 checked).
#include "fuzz/fuzz_util.h"
#include "nn/zip.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    bcos::nn::ZipArchive zip(bcos::fuzz::as_view(data, size), "fuzz.zip");
    for (const auto& entry : zip.entries()) {
      try {
        std::string_view bytes = zip.read(entry);
        if (!bytes.empty()) (void)zip.find(entry.name);
      } catch (const bcos::Error&) {
      }
    }
  } catch (const bcos::Error&) {
  }
  return 0;
}
