// Errors a kernel finds, raised on the host without a round trip per op. Checking an index op's
// indices on the host first would stall the host until the GPU caught up (three times in a
// classification step: the loss's gather and its backward, the target check); PyTorch asserts on
// the device instead, which ends the process's CUDA context. Here the kernel that reads a bad
// index skips it and writes a report into pinned host memory; the host raises it as a bcos::Error
// -- the op or its IndexRole, the value, the limit -- at the next point where it waits for the
// device anyway (a copy to the host, synchronize()), and the device works on. Until then the bad
// op's output holds zeros (a read) or misses the skipped terms (an accumulation); no result gets
// to the host without the error.
#include <memory>
#include <mutex>
#include <vector>

#include "tensor/cuda/internal.h"
#include "tensor/index_errors.h"

namespace bcos::cuda {

namespace {
struct Slot {
  unsigned* claim = nullptr;      // device memory
  FaultReport* report = nullptr;  // pinned, mapped; the same address on the host and the device
};

std::mutex g_mutex;
std::vector<Slot>& slots() {
  static auto* s = new std::vector<Slot>;  // leaked: the memory lives as long as the process
  return *s;
}

// The device's slot, made at first use (the caller holds g_mutex and has made device current).
Slot& slot_of(int device) {
  std::vector<Slot>& all = slots();
  if (all.size() <= size_t(device)) all.resize(size_t(device) + 1);
  Slot& s = all[size_t(device)];
  if (s.claim == nullptr) {
    void* claim = nullptr;
    void* report = nullptr;
    BCOS_CUDA_CHECK(cudaMalloc(&claim, sizeof(unsigned)));
    BCOS_CUDA_CHECK(cudaMemsetAsync(claim, 0, sizeof(unsigned), nullptr));
    BCOS_CUDA_CHECK(cudaStreamSynchronize(nullptr));
    // Pinned memory is mapped into every device's address space at the host's address (unified
    // addressing, always on in a 64-bit process): kernels write to it through that pointer.
    BCOS_CUDA_CHECK(cudaHostAlloc(&report, sizeof(FaultReport), cudaHostAllocMapped | cudaHostAllocPortable));
    *static_cast<FaultReport*>(report) = FaultReport{};
    s = {static_cast<unsigned*>(claim), static_cast<FaultReport*>(report)};
  }
  return s;
}

const char* index_op_name(int op) {
  switch (IndexOp(op)) {
    case IndexOp::index_select: return "index_select";
    case IndexOp::index_add: return "index_add";
    case IndexOp::gather: return "gather";
    case IndexOp::scatter_add: return "scatter_add";
  }
  return "an index op";
}
}  // namespace

void make_fault_report(int device) {
  DeviceGuard guard(device);
  std::lock_guard<std::mutex> lock(g_mutex);
  slot_of(device);
}

IndexCheck index_check(int device, IndexOp op, int64_t limit) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const Slot& s = slot_of(device);  // (the caller's DeviceGuard made the device current)
  return {s.claim, s.report, limit, current_index_role(), int(op)};
}

void raise_device_fault(int device) {
  FaultReport found{};
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    std::vector<Slot>& all = slots();
    if (all.size() <= size_t(device) || all[size_t(device)].report == nullptr) return;
    Slot& s = all[size_t(device)];
    volatile FaultReport* r = s.report;
    if (r->present == 0) return;
    found.role = r->role, found.op = r->op, found.value = r->value, found.limit = r->limit;
    r->present = 0;
    // Stream-ordered: kernels queued after this point may report again.
    DeviceGuard guard(device);
    BCOS_CUDA_CHECK(cudaMemsetAsync(s.claim, 0, sizeof(unsigned), stream_of(device)));
  }
  fail(index_error_text(index_op_name(found.op), found.role, found.value, found.limit), " (found on cuda:", device,
       " by the kernel, raised at the next synchronisation)");
}

}  // namespace bcos::cuda
