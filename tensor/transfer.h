// Host -> GPU transfers that overlap with compute. A copy from ordinary (pageable) host memory
// makes the host wait for it; from page-locked ("pinned") memory it runs asynchronously. The
// stager copies groups of host tensors (a batch's images and labels) on a side stream into
// device slots it owns, while the GPU computes on the previous batch, and hands each group out
// as fresh tensors ordered after their copy on the caller's stream -- PyTorch's pin_memory plus
// non_blocking copies, with the stream bookkeeping done in one place.
#pragma once

#include <memory>
#include <vector>

#include "tensor/tensor.h"

namespace bcos {

// A contiguous CPU tensor in page-locked memory when a GPU is present; ordinary CPU memory
// otherwise (pinning only speeds up copies, it changes no value).
// `for_device`: the CUDA device the memory is for, whose context pins it (default: the calling
// thread's current device, as PyTorch's pin_memory()); a worker thread names it, so that it does
// not wake GPU 0.
Tensor empty_pinned(const Shape& shape, DType dtype, Device for_device = Device());
Tensor pin_memory(const Tensor& t, Device for_device = Device());  // a pinned contiguous copy

class DeviceStager {
 public:
  // device: a CUDA device. slots: groups that may be staged and not yet taken.
  explicit DeviceStager(Device device, int slots = 2);
  ~DeviceStager();  // waits for its copies
  DeviceStager(const DeviceStager&) = delete;
  DeviceStager& operator=(const DeviceStager&) = delete;

  // Starts copying `host` (CPU tensors, best pinned) to the device; returns without waiting for
  // the copy when they are pinned. Raises when every slot already holds an untaken group.
  void stage(const std::vector<Tensor>& host);
  // The oldest staged group as new device tensors, ordered after its copy on the calling
  // thread's current stream. Raises when nothing is staged.
  std::vector<Tensor> take();
  int waiting() const { return staged_ - taken_; }
  Device device() const { return device_; }

 private:
  struct Slot;
  Device device_;
  std::vector<std::unique_ptr<Slot>> slots_;
  int staged_ = 0, taken_ = 0;
};

}  // namespace bcos
