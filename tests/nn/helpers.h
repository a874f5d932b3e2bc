// Helpers of the serialization tests: files written byte by byte, so that each malformed case
// is exactly the malformation under test.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "tests/data/helpers.h"

namespace testnn {

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

inline std::string le(uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s += char((v >> (8 * i)) & 0xFF);
  return s;
}

inline std::string golden(const std::string& name) { return std::string(BCOS_GOLDEN_DIR) + "/" + name; }

}  // namespace testnn
