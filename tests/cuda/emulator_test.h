// What the emulator's test files share (tests/cuda/test_emulator*.cpp): device memory for a
// scope, and the emulator's schedule set for a scope.
#pragma once

#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <vector>

#include "tensor/cuda/emulator/device.h"
#include "tensor/cuda/emulator/runtime.h"

namespace bcos::emu_test {

// Device memory holding `v`, freed at scope exit.
template <class T>
struct DeviceArray {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceArray(const std::vector<T>& v) : n(v.size()) {
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&p), n * sizeof(T)) == cudaSuccess);
    REQUIRE(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  explicit DeviceArray(size_t count, T fill = T(0)) : DeviceArray(std::vector<T>(count, fill)) {}
  ~DeviceArray() { cudaFree(p); }
  std::vector<T> host() const {
    std::vector<T> v(n);
    REQUIRE(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return v;
  }
};

// Sets the emulator's schedule for a scope, then puts back the order it had (reseeded).
struct ScheduleScope {
  bcos::emu::Order before = bcos::emu::current_order();
  ScheduleScope(bcos::emu::Order order, uint64_t seed) { bcos::emu::set_order(order, seed); }
  ~ScheduleScope() { bcos::emu::set_order(before, 0); }
};

}  // namespace bcos::emu_test
