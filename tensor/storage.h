// A Storage is one block of bytes on one device, shared by every tensor that views it.
// Its version counter is bumped by in-place ops so autograd can tell a saved tensor changed.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>

#include "tensor/device.h"

namespace bcos {

struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  std::shared_ptr<void> owner;  // frees the bytes (allocator) or keeps a borrowed owner alive
  std::atomic<uint64_t> version{0};

  // Fresh memory: 64-byte aligned on the CPU, from the caching allocator on CUDA.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);
  // Memory owned elsewhere; `keep_alive` (may be null) is held as long as the storage lives.
  static std::shared_ptr<Storage> borrow(void* data, size_t nbytes, Device device,
                                         std::shared_ptr<void> keep_alive = nullptr);
};

}  // namespace bcos
