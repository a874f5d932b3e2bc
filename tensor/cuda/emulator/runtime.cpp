// The CUDA emulator's runtime: the part of the CUDA runtime API (libcudart) the backend calls,
// over host memory. "Device" memory is ordinary heap memory that the emulator tracks, so copies
// and memsets are checked against the allocation they touch. Streams are queues, as on a GPU:
// a launch, a library call or an asynchronous copy is checked when it is issued and runs later,
// in its stream's order, when the host needs it done (a synchronisation, an event query, a
// synchronous copy, a free) or when work on another stream waits for an event recorded after it.
// A missing wait then reads stale data here too. Work that runs beside the host is what
// enqueue_beside_host queues (the NCCL stand-in's collectives): it starts in its stream's turn on
// a thread of its own, and the stream keeps its future ("tail"), which the stream's later work,
// events recorded after it and synchronisations wait for. Devices: one, or
// BCOS_CUDA_EMULATOR_DEVICES of them. A stream capture (capture.cpp) keeps the stream's
// work in a list instead of its queue; a graph launch queues that list again, as one item. The
// calls CUDA forbids while a capture is on (a synchronisation that covers it, cudaMalloc / cudaFree
// outside relaxed mode, a copy through pageable host memory) fail and spoil the capture, as there.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tensor/cuda/emulator/runtime.h"
#include "tensor/cuda/emulator/runtime_state.h"
#include "tensor/error.h"

namespace bcos::emu::runtime {
namespace internal {

State& state() {
  static State s;
  return s;
}

constexpr size_t kDeviceMemory = size_t(16) << 30;  // what cudaMemGetInfo reports as the total
thread_local int t_device = 0;
// The devices whose primary context is up: the real runtime creates one on cudaSetDevice (CUDA
// 12 on) and on any call that needs the current device's context (an allocation, pinned host
// memory, a stream, an event, queued work) -- ~0.5 GiB of a GPU's memory each, which a rank of a
// data-parallel job must not spend on another rank's GPU.
std::atomic<uint64_t> g_contexts{0};
std::atomic<int64_t> g_host_waits{0};
thread_local bool t_in_synchronous_copy = false;  // (cudaMemcpy's wait counts once)
void wake_context(int device) {
  if (device >= 0 && device < 64) g_contexts.fetch_or(uint64_t(1) << device);
}
thread_local cudaError_t t_last_error = cudaSuccess;
// The calling thread's interaction mode with captures (cudaThreadExchangeStreamCaptureMode).
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;

int device_count() {
  static const int n = [] {
    const char* env = std::getenv("BCOS_CUDA_EMULATOR_DEVICES");
    const int v = env ? std::atoi(env) : 1;
    return v < 0 ? 0 : v > 8 ? 8 : v;
  }();
  return n;
}

bool run_at_once() {
  static const bool v = [] {
    const char* env = std::getenv("BCOS_CUDA_EMULATOR_SYNC");
    return env != nullptr && std::string(env) == "1";
  }();
  return v;
}

// The allocation holding [p, p + bytes), or nullptr. Caller holds the lock.
const Allocation* find(const void* p, size_t bytes, uintptr_t* start = nullptr) {
  auto& allocations = state().allocations;
  const auto addr = reinterpret_cast<uintptr_t>(p);
  auto it = allocations.upper_bound(addr);
  if (it == allocations.begin()) return nullptr;
  --it;
  if (addr + bytes > it->first + it->second.bytes) return nullptr;
  if (start) *start = it->first;
  return &it->second;
}

bool is_device_memory(const void* p, size_t bytes) {
  const Allocation* a = find(p, bytes);
  return a != nullptr && a->kind == Kind::device;
}
bool is_pinned_memory(const void* p, size_t bytes) {
  const Allocation* a = find(p, bytes);
  return a != nullptr && a->kind == Kind::pinned;
}

cudaError_t record(cudaError_t err) {
  if (err != cudaSuccess) t_last_error = err;
  return err;
}

bool valid_stream(cudaStream_t s) { return s == nullptr || state().streams.count(s) != 0; }

// Stream handles are heap addresses, so small integers can name the default streams.
void* default_key(int device) { return reinterpret_cast<void*>(uintptr_t(device) + 1); }
// The queue a stream names: nullptr is the calling thread's device's default stream.
void* key_of(cudaStream_t s) { return s == nullptr ? default_key(t_device) : static_cast<void*>(s); }
// Caller holds the lock.
Queue& queue_of(void* key) {
  auto [it, fresh] = state().queues.try_emplace(key);
  if (fresh && reinterpret_cast<uintptr_t>(key) <= 8) it->second.device = int(reinterpret_cast<uintptr_t>(key) - 1);
  return it->second;
}

bool finished(const std::shared_future<void>& f) {
  return !f.valid() || f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}
// The beside-host work pending on a queue, or an invalid future. Caller holds the lock.
std::shared_future<void> pending_tail(void* key) {
  Queue& q = queue_of(key);
  if (finished(q.tail)) q.tail = {};
  return q.tail;
}

// Runs the items of queue `key` before `through` that have not started.
void run_until(void* key, uint64_t through) {
  std::lock_guard<std::recursive_mutex> exec(state().exec);
  for (;;) {
    std::function<void()> item;
    {
      std::lock_guard<std::mutex> lock(state().mutex);
      Queue& q = queue_of(key);
      if (q.started >= through || q.items.empty()) return;
      item = std::move(q.items.front());
      q.items.pop_front();
      ++q.started;
    }
    // A failure is the device's, as a faulting kernel on a GPU: the next synchronising call
    // returns cudaErrorLaunchFailure, whose text then says what failed.
    try {
      item();
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(state().mutex);
      if (!state().device_error) state().device_error_text = e.what();
      state().device_error = true;
    }
  }
}
// cudaErrorLaunchFailure once after queued work failed, else cudaSuccess.
cudaError_t device_error() {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().device_error) return cudaSuccess;
  state().device_error = false;
  return record(cudaErrorLaunchFailure);
}
void wait_for(std::shared_future<void> f) {
  if (f.valid()) f.wait();
}
// Runs everything queued on `key` and waits for the beside-host work it started.
void finish(void* key) {
  run_until(key, UINT64_MAX);
  std::shared_future<void> tail;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    tail = pending_tail(key);
  }
  wait_for(tail);
}
void finish_all() {
  std::vector<void*> keys;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    for (auto& [key, q] : state().queues) keys.push_back(key);
  }
  for (void* key : keys) finish(key);
}

// Appends an item as it is (no waiting added). Caller holds the lock.
uint64_t push(void* key, std::function<void()> item) {
  Queue& q = queue_of(key);
  q.items.push_back(std::move(item));
  return ++q.queued;
}

// An event-style record at the end of queue `key`: the item, when it runs, notes the beside-host
// work still pending there. Caller holds the lock.
std::shared_ptr<Record> push_record(void* key) {
  auto rec = std::make_shared<Record>();
  rec->queue = key;
  rec->through = push(key, [rec] {
    std::lock_guard<std::mutex> lock(state().mutex);
    rec->tail = pending_tail(rec->queue);
    rec->at = std::chrono::steady_clock::now();
    rec->reached = true;
  });
  return rec;
}
// Queue `key`'s later work waits for `rec`: its item runs the recorded queue that far and chains
// the recorded beside-host work onto this queue's tail (the host does not wait). Caller holds the lock.
void push_wait(void* key, std::shared_ptr<Record> rec) {
  push(key, [key, rec] {
    run_until(rec->queue, rec->through);
    std::lock_guard<std::mutex> lock(state().mutex);
    std::shared_future<void> awaited = rec->tail, before = pending_tail(key);
    if (finished(awaited)) return;
    queue_of(key).tail = std::async(std::launch::async, [before, awaited] {
                           wait_for(before);
                           awaited.wait();
                         }).share();
  });
}
// The legacy default stream and blocking streams of one device are ordered with each other: work
// queued on one of them waits for what the others hold. Caller holds the lock.
void order_with_default_stream(void* key) {
  Queue& q = queue_of(key);
  if (q.blocking) {
    void* d = default_key(q.device);
    if (queue_of(d).queued > queue_of(d).started) push_wait(key, push_record(d));
  } else if (key == default_key(q.device)) {
    for (auto& [other, o] : state().queues)
      if (o.blocking && o.device == q.device && o.queued > o.started) push_wait(key, push_record(other));
  }
}

// Checks the two ends of a copy against its kind; host memory that is not pinned is not tracked.
cudaError_t check_copy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  const bool dst_dev = is_device_memory(dst, n), src_dev = is_device_memory(src, n);
  switch (kind) {
    case cudaMemcpyHostToDevice: return dst_dev ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToHost: return src_dev ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToDevice: return dst_dev && src_dev ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyHostToHost: return cudaSuccess;
    case cudaMemcpyDefault: return cudaSuccess;
  }
  return cudaErrorInvalidMemcpyDirection;
}

}  // namespace internal
using namespace internal;

void set_launch_error(cudaError_t err) { t_last_error = err; }

void enqueue(cudaStream_t stream, const char* what, std::function<void()> work) {
  void* key = key_of(stream);
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    BCOS_CHECK(valid_stream(stream), "CUDA emulator: ", what, " on a stream that does not exist (destroyed?)");
    wake_context(queue_of(key).device);
    if (Capture* c = capture_of(key)) {  // a node of the graph, run when the graph is launched
      c->items.push_back(std::move(work));
      return;
    }
    order_with_default_stream(key);
    // Work waits for the beside-host work queued before it on the stream.
    push(key, [key, work = std::move(work)] {
      std::shared_future<void> tail;
      {
        std::lock_guard<std::mutex> lock(state().mutex);
        tail = pending_tail(key);
      }
      wait_for(tail);
      work();
    });
  }
  if (run_at_once()) {
    finish(key);
    if (device_error() != cudaSuccess) fail(state().device_error_text);  // at the launch site
  }
}

void enqueue_beside_host(cudaStream_t stream, std::function<void()> work) {
  void* key = key_of(stream);
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    BCOS_CHECK(valid_stream(stream), "CUDA emulator: work queued on a stream that does not exist (destroyed?)");
    BCOS_CHECK(capture_of(key) == nullptr, "CUDA emulator: an NCCL collective inside a stream capture is not emulated");
    order_with_default_stream(key);
    push(key, [key, work = std::move(work)] {
      std::lock_guard<std::mutex> lock(state().mutex);
      std::shared_future<void> before = pending_tail(key);
      queue_of(key).tail = std::async(std::launch::async, [before, work] {
                             wait_for(before);
                             work();
                           }).share();
    });
  }
  if (run_at_once()) run_until(key, UINT64_MAX);  // started, not waited for: it runs beside the host
}

void synchronize_all() { finish_all(); }

void check_device_range(const void* p, size_t bytes, const char* what) {
  if (bytes == 0) return;
  std::lock_guard<std::mutex> lock(state().mutex);
  BCOS_CHECK(is_device_memory(p, bytes), "CUDA emulator: ", what, ": ", bytes,
             " bytes that are not inside one device allocation");
}

uint64_t contexts() { return g_contexts.load(); }
int64_t host_waits() { return g_host_waits.load(); }
int64_t events_alive() {
  std::lock_guard<std::mutex> lock(state().mutex);
  return int64_t(state().events.size());
}

}  // namespace bcos::emu::runtime

using namespace bcos::emu::runtime;
using namespace bcos::emu::runtime::internal;

// ---- errors ---------------------------------------------------------------------------------------
cudaError_t cudaGetLastError(void) {
  const cudaError_t err = t_last_error;
  t_last_error = cudaSuccess;
  return err;
}
cudaError_t cudaPeekAtLastError(void) { return t_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureIsolation: return "cudaErrorStreamCaptureIsolation";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureIsolation: return "dependency created on uncaptured work in another stream";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    case cudaErrorLaunchFailure: {  // what failed (the text stays until another failure replaces it)
      std::lock_guard<std::mutex> lock(state().mutex);
      return state().device_error_text.c_str();
    }
    default: return "unknown error";
  }
}

// ---- devices ------------------------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count) {
  *count = device_count();
  return record(*count == 0 ? cudaErrorNoDevice : cudaSuccess);
}
cudaError_t cudaGetDevice(int* device) {
  *device = t_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= device_count()) return record(cudaErrorInvalidDevice);
  t_device = device;
  wake_context(device);
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= device_count()) return record(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof *prop);
  std::strncpy(prop->name, "bcos.cpp CUDA emulator", sizeof prop->name - 1);
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 4;  // few, so that grids sized by SM count stay small
  prop->totalGlobalMem = kDeviceMemory;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->sharedMemPerBlock = 48 * 1024;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= device_count()) return record(cudaErrorInvalidDevice);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, device);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = prop.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: *value = prop.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = prop.minor; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = prop.maxThreadsPerBlock; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    default: *value = 0;
  }
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (device_capturing(t_device)) return record(cudaErrorStreamCaptureUnsupported);
  }
  ++g_host_waits;
  finish_all();
  return device_error();
}

// ---- memory ------------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** p, size_t size) {
  *p = nullptr;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (unsafe_call_refused()) return record(cudaErrorStreamCaptureUnsupported);
  if (s.device_bytes_in_use + size > kDeviceMemory) return record(cudaErrorMemoryAllocation);
  // 256-byte alignment, as cudaMalloc's; at least one byte so that every allocation has an
  // address. Exactly `size` bytes, so that AddressSanitizer sees the same bound as the checks here.
  void* q = nullptr;
  if (posix_memalign(&q, 256, std::max<size_t>(size, 1)) != 0) return record(cudaErrorMemoryAllocation);
  // Fresh memory holds 0xFF bytes (NaN in every float type, -1 in every integer one), where the C
  // library would hand out large blocks as zeroed pages: a kernel that forgets to clear an
  // accumulator or to write part of its output then shows it, even in a tensor of its own.
  std::memset(q, 0xFF, size);
  wake_context(t_device);
  s.allocations[reinterpret_cast<uintptr_t>(q)] = {size, t_device, Kind::device};
  s.device_bytes_in_use += size;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    const bool refused = unsafe_call_refused();
    if (device_capturing(t_device) || refused) return record(cudaErrorStreamCaptureUnsupported);
  }
  ++g_host_waits;
  finish_all();  // cudaFree synchronises the device: no queued work still uses p
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.allocations.find(reinterpret_cast<uintptr_t>(p));
  if (it == s.allocations.end() || it->second.kind != Kind::device) return record(cudaErrorInvalidValue);
  s.device_bytes_in_use -= it->second.bytes;
  s.allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaHostAlloc(void** p, size_t size, unsigned int) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (unsafe_call_refused()) return record(cudaErrorStreamCaptureUnsupported);
  void* q = nullptr;
  if (posix_memalign(&q, 256, std::max<size_t>(size, 1)) != 0) return record(cudaErrorMemoryAllocation);
  std::memset(q, 0xFF, size);  // as cudaMalloc's
  wake_context(t_device);       // pinned memory belongs to the current device's context
  s.allocations[reinterpret_cast<uintptr_t>(q)] = {size, -1, Kind::pinned};
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* p) {
  if (p == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    const bool refused = unsafe_call_refused();
    if (device_capturing(t_device) || refused) return record(cudaErrorStreamCaptureUnsupported);
  }
  ++g_host_waits;
  finish_all();  // as cudaFree: no queued copy still reads or writes p
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.allocations.find(reinterpret_cast<uintptr_t>(p));
  if (it == s.allocations.end() || it->second.kind != Kind::pinned) return record(cudaErrorInvalidValue);
  s.allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  std::lock_guard<std::mutex> lock(state().mutex);
  *total = kDeviceMemory;
  *free_bytes = kDeviceMemory - state().device_bytes_in_use;
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  std::lock_guard<std::mutex> lock(state().mutex);
  std::memset(attr, 0, sizeof *attr);
  const Allocation* a = find(p, 1);
  attr->type = a == nullptr ? cudaMemoryTypeUnregistered : a->kind == Kind::device ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
  attr->device = a == nullptr ? -2 : a->device;
  attr->devicePointer = a != nullptr && a->kind == Kind::device ? const_cast<void*>(p) : nullptr;
  attr->hostPointer = a == nullptr || a->kind == Kind::pinned ? const_cast<void*>(p) : nullptr;
  return cudaSuccess;
}

// Asynchronous copies queue on their stream, except where the host is involved through pageable
// (unpinned) memory, as CUDA stages such copies: a pageable source is read at the call, and a
// copy into pageable memory is done when the call returns. Pinned memory is read or written when
// the copy runs, so a pinned buffer rewritten or read before its copy is waited for shows it.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  bool pageable_src = false, pageable_dst = false;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (count == 0) return cudaSuccess;
    if (cudaError_t err = check_copy(dst, src, count, kind); err != cudaSuccess) return record(err);
    pageable_src = !is_device_memory(src, count) && !is_pinned_memory(src, count);
    pageable_dst = !is_device_memory(dst, count) && !is_pinned_memory(dst, count);
    // A graph cannot replay a copy staged through pageable memory (it is done at the call).
    if (Capture* c = capture_of(key_of(stream)); c != nullptr && (pageable_src || pageable_dst)) {
      c->invalid = true;
      return record(cudaErrorStreamCaptureUnsupported);
    }
  }
  if (pageable_dst) {
    if (!t_in_synchronous_copy) ++g_host_waits;
    finish(key_of(stream));
    if (cudaError_t err = device_error(); err != cudaSuccess) return err;
    std::memmove(dst, src, count);
  } else if (pageable_src) {
    const char* from = static_cast<const char*>(src);
    auto staged = std::make_shared<std::vector<char>>(from, from + count);
    enqueue(stream, "cudaMemcpyAsync", [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
  } else {
    enqueue(stream, "cudaMemcpyAsync", [dst, src, count] { std::memmove(dst, src, count); });
  }
  return cudaSuccess;
}
// On the default stream, done when it returns (the device's earlier work first).
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (unsafe_call_refused()) return record(cudaErrorStreamCaptureUnsupported);
  }
  ++g_host_waits;
  t_in_synchronous_copy = true;
  const cudaError_t err = cudaMemcpyAsync(dst, src, count, kind, nullptr);
  t_in_synchronous_copy = false;
  if (err != cudaSuccess) return err;
  finish(key_of(nullptr));
  return device_error();
}
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device, size_t count,
                                cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (count == 0) return cudaSuccess;
    const Allocation* d = find(dst, count);
    const Allocation* s = find(src, count);
    if (d == nullptr || s == nullptr || d->kind != Kind::device || s->kind != Kind::device ||
        d->device != dst_device || s->device != src_device)
      return record(cudaErrorInvalidValue);
  }
  enqueue(stream, "cudaMemcpyPeerAsync", [dst, src, count] { std::memmove(dst, src, count); });
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t count, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (count == 0) return cudaSuccess;
    if (!is_device_memory(p, count)) return record(cudaErrorInvalidValue);
  }
  enqueue(stream, "cudaMemsetAsync", [p, value, count] { std::memset(p, value, count); });
  return cudaSuccess;
}

// ---- streams and events -------------------------------------------------------------------------------
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  std::lock_guard<std::mutex> lock(state().mutex);
  *stream = reinterpret_cast<cudaStream_t>(new char);
  state().streams.insert(*stream);
  Queue& q = state().queues[*stream] = Queue{};  // fresh, should a stale wait have named this address
  q.device = t_device;
  q.blocking = (flags & cudaStreamNonBlocking) == 0;
  wake_context(t_device);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (stream == nullptr || !valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (Capture* c = capture_of(stream)) {
      c->invalid = true;
      return record(cudaErrorStreamCaptureUnsupported);
    }
  }
  finish(stream);  // the stream's work still finishes (here, before its handle goes)
  std::lock_guard<std::mutex> lock(state().mutex);
  if (state().streams.erase(stream) == 0) return record(cudaErrorInvalidResourceHandle);
  state().queues.erase(stream);
  delete reinterpret_cast<char*>(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (Capture* c = capture_of(key_of(stream))) {  // its work is not queued: there is nothing to wait for
      c->invalid = true;
      return record(cudaErrorStreamCaptureUnsupported);
    }
  }
  ++g_host_waits;
  finish(key_of(stream));
  return device_error();
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  std::lock_guard<std::mutex> lock(state().mutex);
  *event = reinterpret_cast<cudaEvent_t>(new char);
  state().events.insert(*event);
  if ((flags & cudaEventDisableTiming) == 0) state().timing_events.insert(*event);
  wake_context(t_device);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (state().events.erase(event) == 0) return record(cudaErrorInvalidResourceHandle);
  state().timing_events.erase(event);
  state().records.erase(event);  // a wait already queued keeps the record it waits for
  delete reinterpret_cast<char*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().events.count(event) || !valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
  void* key = key_of(stream);
  if (Capture* c = capture_of(key)) {  // a node of the graph: queued nowhere
    auto rec = std::make_shared<Record>();
    rec->queue = key;
    rec->capture = c->id;
    state().records[event] = rec;
    return cudaSuccess;
  }
  order_with_default_stream(key);
  state().records[event] = push_record(key);
  return cudaSuccess;
}
// The event's last record, run as far as its own item; nullptr when never recorded (or invalid).
static std::shared_ptr<Record> reached_record(cudaEvent_t event, cudaError_t* err) {
  std::shared_ptr<Record> rec;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!state().events.count(event)) {
      *err = record(cudaErrorInvalidResourceHandle);
      return nullptr;
    }
    auto it = state().records.find(event);
    if (it != state().records.end()) rec = it->second;
    if (rec && rec->capture != 0) {  // a captured event stands for no work that will run
      for (auto& [key, c] : state().captures)
        if (c.id == rec->capture) c.invalid = true;
      *err = record(cudaErrorStreamCaptureUnsupported);
      return nullptr;
    }
  }
  if (rec) run_until(rec->queue, rec->through);
  return rec;
}
// The queued work an event waits for runs here (the host asked); beside-host work may still be
// pending, and then the event is not ready.
// Starts what is queued on the stream (as the event query runs work up to its record), then
// answers whether all of it, beside-host work included, has finished.
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (Capture* c = capture_of(key_of(stream))) {
      c->invalid = true;
      return record(cudaErrorStreamCaptureUnsupported);
    }
  }
  void* key = key_of(stream);
  run_until(key, UINT64_MAX);
  if (cudaError_t failed = device_error(); failed != cudaSuccess) return failed;
  std::lock_guard<std::mutex> lock(state().mutex);
  return finished(pending_tail(key)) ? cudaSuccess : cudaErrorNotReady;  // not ready is not an error
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  cudaError_t err = cudaSuccess;
  std::shared_ptr<Record> rec = reached_record(event, &err);
  if (err != cudaSuccess) return err;
  if (cudaError_t failed = device_error(); failed != cudaSuccess) return failed;
  std::lock_guard<std::mutex> lock(state().mutex);
  return rec && !finished(rec->tail) ? cudaErrorNotReady : cudaSuccess;  // not ready is not an error
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  cudaError_t err = cudaSuccess;
  std::shared_ptr<Record> rec = reached_record(event, &err);
  if (err != cudaSuccess) return err;
  std::shared_future<void> tail;
  if (rec) {
    std::lock_guard<std::mutex> lock(state().mutex);
    tail = rec->tail;
  }
  ++g_host_waits;
  wait_for(tail);
  return device_error();
}
// Milliseconds between the two events' last records, by the host clock when each queue reached
// them. As CUDA: both must time (no cudaEventDisableTiming) and be recorded, and both records reached.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr) return record(cudaErrorInvalidValue);
  std::shared_ptr<Record> a, b;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!state().events.count(start) || !state().events.count(end)) return record(cudaErrorInvalidResourceHandle);
    if (!state().timing_events.count(start) || !state().timing_events.count(end))
      return record(cudaErrorInvalidResourceHandle);
    auto ia = state().records.find(start), ib = state().records.find(end);
    if (ia == state().records.end() || ib == state().records.end()) return record(cudaErrorInvalidResourceHandle);
    a = ia->second;
    b = ib->second;
  }
  std::lock_guard<std::mutex> lock(state().mutex);
  // Not yet completed (cudaEventQuery would say so too): the caller should have synchronised.
  if (!a->reached || !b->reached || !finished(a->tail) || !finished(b->tail)) return cudaErrorNotReady;
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}
// The stream's later work waits for the event's last record (as CUDA: the one before this call).
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().events.count(event) || !valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
  auto it = state().records.find(event);
  void* key = key_of(stream);
  Capture* c = capture_of(key);
  if (it == state().records.end()) return cudaSuccess;  // never recorded: nothing to wait for
  if (c != nullptr || it->second->capture != 0) {
    // Within one capture a stream is in order already. A capture waiting on work outside it, or
    // another stream joining a capture (which CUDA allows: multi-stream capture), is not emulated.
    if (c != nullptr && it->second->capture == c->id) return cudaSuccess;
    if (c != nullptr) c->invalid = true;
    return record(cudaErrorStreamCaptureIsolation);
  }
  order_with_default_stream(key);
  push_wait(key, it->second);
  return cudaSuccess;
}
