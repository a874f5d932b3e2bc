// Helpers of the data tests: where ../shared is ($BCOS_DATA, else the folder beside the source
// tree; tests that need it skip with a message naming the missing path), temporary folders, and
// the message of an expected bcos::Error.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>

#include <unistd.h>

#include <doctest/doctest.h>

#include "tensor/error.h"
#include "tests/errors.h"

namespace testdata {

inline std::string data_dir() {
  if (const char* env = std::getenv("BCOS_DATA")) return env;
  return std::string(BCOS_SOURCE_ROOT) + "/../shared";
}

// The path under the data folder, or "" (after printing why) when it is missing.
inline std::string find(const std::string& relative) {
  const std::string path = data_dir() + "/" + relative;
  if (std::filesystem::exists(path)) return path;
  MESSAGE("skipped: " << path << " not found (set BCOS_DATA to the shared data folder)");
  return "";
}

// A fresh, empty temporary directory, removed when the object goes.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("bcos-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  static int& counter() {
    static int n = 0;
    return n;
  }
};

using testing::error_of;  // tests/errors.h

}  // namespace testdata
