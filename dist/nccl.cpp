// CUDA tensors between ranks through NCCL. One communicator per process (one GPU per rank, the
// usual data-parallel layout), made on the first CUDA collective. Each collective runs on a side
// stream that first waits for the caller's stream (so it sees the tensor's latest values) and
// records an event that Work polls; when it finishes, the caller's stream waits for that event,
// so later kernels see the result. Until Work::wait the caller's stream is not held back (the
// backward goes on beside the all-reduce); wait() itself polls the event on the host, so a
// collective stuck on a dead peer raises at the deadline, after aborting the communicator, instead
// of hanging the GPU. A peer's failure that NCCL reports (ncclCommGetAsyncError) is checked on
// every poll, as NCCL's guide asks: its kernels then never complete, so waiting for the event
// alone would only end at the deadline. Compiled only when
// meson found NCCL and the CUDA backend is on (-Dnccl).
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "dist/internal.h"
#include "tensor/cuda/backend.h"
#include "tensor/cuda/check.h"

#define BCOS_NCCL_CHECK(expr)                                                                       \
  do {                                                                                              \
    ncclResult_t bcos_nccl_rc_ = (expr);                                                            \
    if (bcos_nccl_rc_ != ncclSuccess)                                                               \
      ::bcos::fail("NCCL error: ", #expr, " failed with ", ncclGetErrorString(bcos_nccl_rc_), " (", \
                   ncclGetLastError(nullptr), ") at ", __FILE__, ":", __LINE__);                    \
  } while (0)

namespace bcos::dist::detail::nccl {

namespace {
ncclComm_t g_comm = nullptr;
int g_device = -1;
cudaStream_t g_stream = nullptr;  // the side stream the collectives run on

ncclDataType_t nccl_type(const char* op, const Tensor& t) {
  switch (t.dtype()) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::f16: return ncclFloat16;
    case DType::bf16: return ncclBfloat16;
    case DType::i64: return ncclInt64;
    case DType::u8:
    case DType::boolean: return ncclUint8;
  }
  fail("dist::", op, ": NCCL has no ", t.dtype());
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  return ncclSum;
}

// The communicator's device current on this thread while a collective is queued or polled: events
// and streams belong to a device, and stream 0 means the current device's. The previous device is
// restored only where this thread had one set, so a thread that never chose a device does not
// wake a context on GPU 0 (cudaSetDevice creates the device's context).
class OnCommDevice {
 public:
  OnCommDevice() {
    BCOS_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != g_device) BCOS_CUDA_CHECK(cudaSetDevice(g_device));
  }
  ~OnCommDevice() {
    if (previous_ != g_device && cuda::device_in_use(previous_)) cudaSetDevice(previous_);
  }
  OnCommDevice(const OnCommDevice&) = delete;
  OnCommDevice& operator=(const OnCommDevice&) = delete;

 private:
  int previous_ = 0;
};

// Raises, after aborting the communicator (which ends its kernels), when NCCL reports a failure.
void check_async_error(const std::string& what) {
  BCOS_CHECK(g_comm != nullptr, "dist: ", what, ": the NCCL communicator was aborted");
  ncclResult_t async_error = ncclSuccess;  // a peer's failure shows up here
  BCOS_NCCL_CHECK(ncclCommGetAsyncError(g_comm, &async_error));
  if (async_error == ncclSuccess) return;
  const std::string detail = ncclGetLastError(g_comm);
  bcos::dist::detail::nccl::abort();
  fail("dist: ", what, ": NCCL failed: ", ncclGetErrorString(async_error), " (", detail, ")");
}

void check_device(const char* op, const Tensor& t) {
  BCOS_CHECK(t.is_cuda() && t.device().index == g_device, "dist::", op, ": ", t.shape(), " is on ", t.device(),
             " but this rank's NCCL communicator is on cuda:", g_device, " (one GPU per rank)");
}

// Runs `call(stream)` on the side stream after the caller's stream's work so far; the Work
// polls its completion event and, when done, orders the caller's stream after it.
template <class Call>
std::shared_ptr<Work::Impl> start(std::string what, std::vector<Tensor> keep, Call call) {
  const OnCommDevice on_device;
  const auto caller = static_cast<cudaStream_t>(cuda::current_stream(g_device));
  cudaEvent_t ready = nullptr, done = nullptr;
  BCOS_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  BCOS_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  std::shared_ptr<CUevent_st> ready_owner(ready, cudaEventDestroy), done_owner(done, cudaEventDestroy);
  BCOS_CUDA_CHECK(cudaEventRecord(ready, caller));
  BCOS_CUDA_CHECK(cudaStreamWaitEvent(g_stream, ready, 0));
  call(g_stream);
  BCOS_CUDA_CHECK(cudaEventRecord(done, g_stream));
  auto impl = std::make_shared<Work::Impl>();
  impl->what = what;
  impl->test = [done_owner, what] {
    const OnCommDevice on_device;
    const cudaError_t rc = cudaEventQuery(done_owner.get());
    check_async_error(what);  // pending or not: a failed collective never completes
    if (rc == cudaErrorNotReady) return false;
    BCOS_CUDA_CHECK(rc);
    return true;
  };
  impl->give_up = [] { bcos::dist::detail::nccl::abort(); };
  impl->finish = [done_owner, caller, keep = std::move(keep)] {
    const OnCommDevice on_device;
    BCOS_CUDA_CHECK(cudaStreamWaitEvent(caller, done_owner.get(), 0));
    for (const Tensor& t : keep) t.bump_version();
  };
  return impl;
}
}  // namespace

void init(int rank, int world_size, int device, const std::function<void(void* id, int bytes)>& share_id) {
  g_device = device;
  BCOS_CUDA_CHECK(cudaSetDevice(device));  // NCCL binds the communicator to the current device
  ncclUniqueId id{};
  if (rank == 0) BCOS_NCCL_CHECK(ncclGetUniqueId(&id));
  share_id(&id, int(sizeof id));
  BCOS_NCCL_CHECK(ncclCommInitRank(&g_comm, world_size, id, rank));
  BCOS_CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
}

bool active() { return g_comm != nullptr; }

void finalize() {
  if (!g_comm) return;
  const OnCommDevice on_device;
  // The side stream's collectives finish first -- unless one waits on a peer that failed or left,
  // which would never end: that, or the job's deadline passing, aborts the communicator instead.
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(timeout_seconds()));
  for (;;) {
    const cudaError_t rc = cudaStreamQuery(g_stream);
    ncclResult_t async_error = ncclSuccess;
    ncclCommGetAsyncError(g_comm, &async_error);
    if (rc == cudaSuccess && async_error == ncclSuccess) break;
    if ((rc != cudaSuccess && rc != cudaErrorNotReady) || async_error != ncclSuccess || Clock::now() > deadline) {
      std::fprintf(stderr, "dist: finalize: NCCL's last collectives did not finish (%s); aborting the communicator\n",
                   async_error != ncclSuccess ? ncclGetErrorString(async_error)
                   : rc == cudaErrorNotReady  ? "the deadline passed"
                                              : cudaGetErrorString(rc));
      bcos::dist::detail::nccl::abort();
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ncclCommDestroy(g_comm);
  cudaStreamDestroy(g_stream);
  g_comm = nullptr;
  g_stream = nullptr;
}

void abort() {
  if (!g_comm) return;
  const OnCommDevice on_device;
  ncclCommAbort(g_comm);  // unblocks kernels waiting for a dead peer
  g_comm = nullptr;
  if (g_stream) cudaStreamDestroy(g_stream);  // its work has ended with the communicator
  g_stream = nullptr;
}

std::shared_ptr<Work::Impl> all_reduce(const Tensor& t, ReduceOp op) {
  check_device("all_reduce", t);
  const ncclDataType_t type = nccl_type("all_reduce", t);
  return start(describe("all_reduce", t), {t}, [&](cudaStream_t s) {
    BCOS_NCCL_CHECK(ncclAllReduce(t.raw_data(), t.raw_data(), size_t(t.numel()), type, nccl_op(op), g_comm, s));
  });
}

std::shared_ptr<Work::Impl> broadcast(const Tensor& t, int root) {
  check_device("broadcast", t);
  const ncclDataType_t type = nccl_type("broadcast", t);
  return start(describe("broadcast", t), {t}, [&](cudaStream_t s) {
    BCOS_NCCL_CHECK(ncclBroadcast(t.raw_data(), t.raw_data(), size_t(t.numel()), type, root, g_comm, s));
  });
}

std::shared_ptr<Work::Impl> all_gather(const Tensor& t, const Tensor& out) {
  check_device("all_gather", t);
  const ncclDataType_t type = nccl_type("all_gather", t);
  return start(describe("all_gather", t), {t, out}, [&](cudaStream_t s) {
    BCOS_NCCL_CHECK(ncclAllGather(t.raw_data(), out.raw_data(), size_t(t.numel()), type, g_comm, s));
  });
}

}  // namespace bcos::dist::detail::nccl
