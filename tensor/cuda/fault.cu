// Errors a kernel finds, raised on the host without a round trip per op. Checking an index op's
// indices on the host first would stall the host until the GPU caught up (three times in a
// classification step: the loss's gather and its backward, the target check); PyTorch asserts on
// the device instead, which ends the process's CUDA context. Here the kernel that reads a bad
// index skips it and writes a report into pinned host memory; the host raises it as a bcos::Error
// -- the op or its IndexRole, the value, the limit -- at the next point where it waits for the
// device anyway (a copy to the host, synchronize()), and the device works on. Until then the bad
// op's output holds zeros (a read) or misses the skipped terms (an accumulation); no result gets
// to the host without the error -- a loop that reads its loss before the optimizer step (as the
// examples do) stops before a step on such gradients. One report per device at a time: the first
// bad index found is named (others found before it is raised are not), raised by whichever thread
// waits for that device first.
#include <atomic>
#include <mutex>

#include "tensor/cuda/internal.h"
#include "tensor/index_errors.h"

namespace bcos::cuda {

namespace {
struct Slot {
  std::once_flag made;
  std::atomic<bool> ready{false};
  unsigned* claim = nullptr;      // device memory
  FaultReport* report = nullptr;  // pinned, mapped: the same address on the host and the device
};

// One slot per device, made once and leaked (kernels of graphs hold the addresses).
Slot& slot_of(int device) {
  static Slot* slots = new Slot[size_t(device_count())];
  return slots[size_t(device)];
}

// The device's slot, made at first use: a claim word of 0 (report 0 free to take) and an empty
// report. The caller has made the device current.
Slot& made_slot(int device) {
  Slot& s = slot_of(device);
  std::call_once(s.made, [&] {
    void* claim = nullptr;
    void* report = nullptr;
    BCOS_CUDA_CHECK(cudaMalloc(&claim, sizeof(unsigned)));
    const cudaStream_t stream = stream_of(device);
    BCOS_CUDA_CHECK(cudaMemsetAsync(claim, 0, sizeof(unsigned), stream));
    BCOS_CUDA_CHECK(cudaStreamSynchronize(stream));  // (once: kernels on any stream may read it next)
    // Pinned memory is mapped into every device's address space at the host's address (unified
    // addressing, always on in a 64-bit process): kernels write to it through that pointer.
    BCOS_CUDA_CHECK(cudaHostAlloc(&report, sizeof(FaultReport), cudaHostAllocMapped | cudaHostAllocPortable));
    *static_cast<FaultReport*>(report) = FaultReport{};
    s.claim = static_cast<unsigned*>(claim), s.report = static_cast<FaultReport*>(report);
    s.ready.store(true, std::memory_order_release);
  });
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
  made_slot(device);
}

IndexCheck index_check(int device, IndexOp op, int64_t limit) {
  const Slot& s = made_slot(device);  // (the caller's DeviceGuard made the device current)
  return {s.claim, s.report, limit, current_index_role(), int(op)};
}

void raise_device_fault(int device) {
  Slot& s = slot_of(device);
  if (!s.ready.load(std::memory_order_acquire)) return;
  FaultReport* r = s.report;
  // Taken by one thread (acquire: the kernel wrote the fields, then a system fence, then present).
  if (__atomic_exchange_n(&r->present, 0, __ATOMIC_ACQ_REL) == 0) return;
  const int role = r->role, op = r->op;
  const int64_t value = r->value, limit = r->limit;
  // The next bad index may take the next report (the kernel that finds it frees it: internal.h).
  __atomic_store_n(&r->raised, unsigned(r->generation) + 1, __ATOMIC_RELEASE);
  fail(index_error_text(index_op_name(op), role, value, limit), " (found on cuda:", device,
       " by the kernel, raised at the next synchronisation)");
}

}  // namespace bcos::cuda
