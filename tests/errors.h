// The message of the bcos::Error a piece of code raises: what the error tests of every folder
// compare against (no doctest here, so tests/dist/dist_worker.cpp, a plain program, uses it too).
#pragma once

#include <functional>
#include <string>

#include "tensor/error.h"

namespace testing {

// The message of the bcos::Error that fn raises, or "" when it raises none.
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const bcos::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace testing
