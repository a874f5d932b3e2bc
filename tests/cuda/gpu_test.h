// What the CUDA parity files share: the skip without a GPU, and TF32 switched for a scope.
#pragma once

#include <doctest/doctest.h>

#include "tensor/device.h"

namespace bcos::gpu_test {

// True with a CUDA device (a real one, or the emulator's); otherwise says the case is skipped.
inline bool have_gpu() {
  if (cuda_device_count() > 0) return true;
  MESSAGE("no CUDA device: skipped");
  return false;
}

// allow_tf32() set for a scope, then put back (false: float32 products in float32).
struct Tf32 {
  bool was = allow_tf32();
  explicit Tf32(bool allow) { set_allow_tf32(allow); }
  ~Tf32() { set_allow_tf32(was); }
  Tf32(const Tf32&) = delete;
  Tf32& operator=(const Tf32&) = delete;
};

}  // namespace bcos::gpu_test
