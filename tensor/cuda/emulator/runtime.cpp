// The CUDA emulator's runtime: the part of the CUDA runtime API (libcudart) the backend calls,
// over host memory. "Device" memory is ordinary heap memory that the emulator tracks, so copies
// and memsets are checked against the allocation they touch. Kernels, library calls and copies
// run at once, in order, which is one legal schedule of what the backend queues; the one kind of
// work that runs beside the host is what enqueue_beside_host queues (the NCCL stand-in's
// collectives): each stream keeps the future of its last such work ("tail"), which the stream's
// later work, events recorded on it and synchronisations wait for. Devices: one, or
// BCOS_CUDA_EMULATOR_DEVICES of them.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "tensor/cuda/emulator/runtime.h"
#include "tensor/error.h"

namespace bcos::emu::runtime {
namespace {

enum class Kind { device, pinned };
struct Allocation {
  size_t bytes;
  int device;
  Kind kind;
};

struct State {
  std::mutex mutex;
  std::map<uintptr_t, Allocation> allocations;  // by start address
  std::set<void*> streams, events;
  // Work running beside the host: per stream (nullptr: the default stream) the future of the last
  // work queued on it, and per event the future it was recorded after. Absent: nothing pending.
  std::map<void*, std::shared_future<void>> stream_tails, event_tails;
  size_t device_bytes_in_use = 0;
};
State& state() {
  static State s;
  return s;
}

constexpr size_t kDeviceMemory = size_t(16) << 30;  // what cudaMemGetInfo reports as the total
thread_local int t_device = 0;
thread_local cudaError_t t_last_error = cudaSuccess;

int device_count() {
  static const int n = [] {
    const char* env = std::getenv("BCOS_CUDA_EMULATOR_DEVICES");
    const int v = env ? std::atoi(env) : 1;
    return v < 0 ? 0 : v > 8 ? 8 : v;
  }();
  return n;
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

cudaError_t record(cudaError_t err) {
  if (err != cudaSuccess) t_last_error = err;
  return err;
}

bool valid_stream(cudaStream_t s) { return s == nullptr || state().streams.count(s) != 0; }

bool finished(const std::shared_future<void>& f) {
  return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

// The future of the work pending on `stream`, or an invalid one. Caller holds the lock.
std::shared_future<void> tail_of(cudaStream_t stream) {
  auto it = state().stream_tails.find(stream);
  if (it == state().stream_tails.end()) return {};
  if (finished(it->second)) {
    state().stream_tails.erase(it);
    return {};
  }
  return it->second;
}

// Waits (without the lock) for the work pending on `stream`, or on every stream.
void drain(cudaStream_t stream) {
  std::shared_future<void> tail;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    tail = tail_of(stream);
  }
  if (tail.valid()) tail.wait();
}
void drain_all() {
  std::vector<std::shared_future<void>> tails;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    for (auto& [stream, tail] : state().stream_tails) tails.push_back(tail);
  }
  for (auto& t : tails) t.wait();
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

}  // namespace

void set_launch_error(cudaError_t err) { t_last_error = err; }

void check_stream(cudaStream_t stream, const char* what) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    BCOS_CHECK(valid_stream(stream), "CUDA emulator: ", what, " on a stream that does not exist (destroyed?)");
  }
  drain(stream);
}

void enqueue_beside_host(cudaStream_t stream, std::function<void()> work) {
  std::lock_guard<std::mutex> lock(state().mutex);
  BCOS_CHECK(valid_stream(stream), "CUDA emulator: work queued on a stream that does not exist (destroyed?)");
  std::shared_future<void> before = tail_of(stream);
  state().stream_tails[stream] = std::async(std::launch::async, [before, work = std::move(work)] {
                                   if (before.valid()) before.wait();
                                   work();
                                 }).share();
}

void check_device_range(const void* p, size_t bytes, const char* what) {
  if (bytes == 0) return;
  std::lock_guard<std::mutex> lock(state().mutex);
  BCOS_CHECK(is_device_memory(p, bytes), "CUDA emulator: ", what, ": ", bytes,
             " bytes that are not inside one device allocation");
}

}  // namespace bcos::emu::runtime

using namespace bcos::emu::runtime;

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
  drain_all();
  return cudaSuccess;
}

// ---- memory ------------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** p, size_t size) {
  *p = nullptr;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.device_bytes_in_use + size > kDeviceMemory) return record(cudaErrorMemoryAllocation);
  // 256-byte alignment, as cudaMalloc's; at least one byte so that every allocation has an
  // address. Exactly `size` bytes, so that AddressSanitizer sees the same bound as the checks here.
  void* q = nullptr;
  if (posix_memalign(&q, 256, std::max<size_t>(size, 1)) != 0) return record(cudaErrorMemoryAllocation);
  s.allocations[reinterpret_cast<uintptr_t>(q)] = {size, t_device, Kind::device};
  s.device_bytes_in_use += size;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  drain_all();  // cudaFree synchronises the device: no work beside the host still uses p
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
  void* q = nullptr;
  if (posix_memalign(&q, 256, std::max<size_t>(size, 1)) != 0) return record(cudaErrorMemoryAllocation);
  s.allocations[reinterpret_cast<uintptr_t>(q)] = {size, -1, Kind::pinned};
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* p) {
  if (p == nullptr) return cudaSuccess;
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

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (count == 0) return cudaSuccess;
    if (cudaError_t err = check_copy(dst, src, count, kind); err != cudaSuccess) return record(err);
  }
  drain(stream);
  std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, count, kind, nullptr);
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
  drain(stream);
  std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t count, cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (count == 0) return cudaSuccess;
    if (!is_device_memory(p, count)) return record(cudaErrorInvalidValue);
  }
  drain(stream);
  std::memset(p, value, count);
  return cudaSuccess;
}

// ---- streams and events: handles, with the futures of the work queued beside the host -------------
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  std::lock_guard<std::mutex> lock(state().mutex);
  *stream = reinterpret_cast<cudaStream_t>(new char);
  state().streams.insert(*stream);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (stream == nullptr || !valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
  }
  drain(stream);  // the stream's work still finishes (here, before its handle goes)
  std::lock_guard<std::mutex> lock(state().mutex);
  if (state().streams.erase(stream) == 0) return record(cudaErrorInvalidResourceHandle);
  state().stream_tails.erase(stream);
  delete reinterpret_cast<char*>(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
  }
  drain(stream);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  std::lock_guard<std::mutex> lock(state().mutex);
  *event = reinterpret_cast<cudaEvent_t>(new char);
  state().events.insert(*event);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (state().events.erase(event) == 0) return record(cudaErrorInvalidResourceHandle);
  state().event_tails.erase(event);
  delete reinterpret_cast<char*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().events.count(event) || !valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
  std::shared_future<void> tail = tail_of(stream);
  if (tail.valid())
    state().event_tails[event] = tail;
  else
    state().event_tails.erase(event);
  return cudaSuccess;
}
// The future the event waits for, or an invalid one when it has happened. Caller holds the lock.
static std::shared_future<void> event_tail(cudaEvent_t event) {
  auto it = state().event_tails.find(event);
  if (it == state().event_tails.end()) return {};
  if (finished(it->second)) {
    state().event_tails.erase(it);
    return {};
  }
  return it->second;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().events.count(event)) return record(cudaErrorInvalidResourceHandle);
  return event_tail(event).valid() ? cudaErrorNotReady : cudaSuccess;  // not ready is not an error
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  std::shared_future<void> tail;
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!state().events.count(event)) return record(cudaErrorInvalidResourceHandle);
    tail = event_tail(event);
  }
  if (tail.valid()) tail.wait();
  return cudaSuccess;
}
// The stream's later work waits for the event: a pending event joins the stream's tail.
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().events.count(event) || !valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
  std::shared_future<void> awaited = event_tail(event);
  if (!awaited.valid()) return cudaSuccess;
  std::shared_future<void> before = tail_of(stream);
  state().stream_tails[stream] = std::async(std::launch::async, [before, awaited] {
                                   if (before.valid()) before.wait();
                                   awaited.wait();
                                 }).share();
  return cudaSuccess;
}
