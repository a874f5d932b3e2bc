// Shared pieces of the fuzz targets (fuzz/*.cpp). Each target is one libFuzzer entry point,
// LLVMFuzzerTestOneInput, that feeds arbitrary bytes to one reader. The contract it checks is
// the project's: bad input raises bcos::Error, and nothing else happens -- no crash, no
// sanitizer report, no other exception type, no allocation beyond the fuzzer's limit. So a
// target catches bcos::Error and lets everything else escape to the fuzzer as a finding.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <unistd.h>

#include "tensor/error.h"

namespace bcos::fuzz {

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Readers that take a path (checkpoints, tar shards) read the input from a per-process file
// under $TMPDIR (default /tmp), rewritten for every input and removed at exit.
class InputFile {
 public:
  explicit InputFile(const char* suffix) {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::string(dir && *dir ? dir : "/tmp") + "/bcos_fuzz_" + std::to_string(::getpid()) + suffix;
  }
  ~InputFile() { std::remove(path_.c_str()); }
  const std::string& write(std::string_view bytes) {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    if (!f) fail("fuzz: cannot write ", path_);
    if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
      std::fclose(f);
      fail("fuzz: short write to ", path_);
    }
    std::fclose(f);
    return path_;
  }

 private:
  std::string path_;
};

}  // namespace bcos::fuzz
