// What the CUDA parity files share: the skip without a GPU, and switches (TF32, the cuDNN API) set
// for a scope.
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

// A process-wide switch of tensor/device.h set for a scope, then put back.
template <bool (*Get)(), void (*Set)(bool)>
struct Switched {
  bool was = Get();
  explicit Switched(bool on) { Set(on); }
  ~Switched() { Set(was); }
  Switched(const Switched&) = delete;
  Switched& operator=(const Switched&) = delete;
};
// allow_tf32() (false: float32 products in float32); cudnn_graph_api() (conv_graph.cu);
// cudnn_benchmark() (each candidate timed, the fastest kept).
using Tf32 = Switched<allow_tf32, set_allow_tf32>;
using GraphApi = Switched<cudnn_graph_api, set_cudnn_graph_api>;
using CudnnBenchmark = Switched<cudnn_benchmark, set_cudnn_benchmark>;

}  // namespace bcos::gpu_test
