// Devices, streams and library handles for the CUDA backend: what the rest of tensor/cuda/ asks
// for before it queues work (which device, which stream, which cuBLAS handle), plus the version
// queries that the GPU check prints.
#include <cudnn.h>

#include <atomic>
#include <mutex>
#include <vector>

#include "tensor/cuda/internal.h"

namespace bcos::cuda {

// ---- devices --------------------------------------------------------------------------------

int device_count() {
  // Asked once: the answer cannot change within a process (CUDA_VISIBLE_DEVICES is read at
  // initialisation), and a machine without a driver must cost nothing after the first call.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // no driver / no device: not an error for us
      return 0;
    }
    return n;
  }();
  return count;
}

void check_device_index(int device, const char* op) {
  int n = device_count();
  BCOS_CHECK(device >= 0 && device < n, op, ": no CUDA device ", device, " (", n,
             " visible)");
}

namespace {
std::atomic<uint64_t> g_devices_in_use{0};
}  // namespace

bool device_in_use(int device) {
  return device >= 0 && device < 64 && (g_devices_in_use.load() >> device & 1u) != 0;
}
void mark_device_in_use(int device) {
  if (device >= 0 && device < 64) g_devices_in_use.fetch_or(uint64_t(1) << device);
}

void set_device(int index) {
  check_device_index(index, "cuda::set_device");
  BCOS_CUDA_CHECK(cudaSetDevice(index));
  mark_device_in_use(index);
}

int current_device() {
  int index = 0;
  BCOS_CUDA_CHECK(cudaGetDevice(&index));
  return index;
}

DeviceInfo device_info(int index) {
  check_device_index(index, "cuda::device_info");
  cudaDeviceProp prop{};
  BCOS_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  DeviceInfo info;
  info.name = prop.name;
  info.major = prop.major;
  info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_memory = prop.totalGlobalMem;
  return info;
}

int multiprocessor_count(int device) {
  static std::mutex mu;
  static std::vector<int> cached;
  std::lock_guard<std::mutex> lock(mu);
  if (cached.empty()) cached.assign(size_t(device_count()), 0);
  check_device_index(device, "cuda::multiprocessor_count");
  if (cached[size_t(device)] == 0) {
    int n = 0;
    BCOS_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cached[size_t(device)] = n;
  }
  return cached[size_t(device)];
}

void synchronize(int index) {
  check_device_index(index, "cuda::synchronize");
  DeviceGuard guard(index);
  BCOS_CUDA_CHECK(cudaDeviceSynchronize());
  raise_device_fault(index);
}

int runtime_version() {
  int v = 0;
  BCOS_CUDA_CHECK(cudaRuntimeGetVersion(&v));
  return v;
}

int cublas_version() {
  // Encoded like CUBLAS_VERSION (major * 10000 + minor * 100 + patch); asking the library
  // itself reports the one loaded at run time rather than the header we compiled against.
  int major = 0, minor = 0, patch = 0;
  BCOS_CUBLAS_CHECK(cublasGetProperty(MAJOR_VERSION, &major));
  BCOS_CUBLAS_CHECK(cublasGetProperty(MINOR_VERSION, &minor));
  BCOS_CUBLAS_CHECK(cublasGetProperty(PATCH_LEVEL, &patch));
  return major * 10000 + minor * 100 + patch;
}

size_t cudnn_version() { return cudnnGetVersion(); }

// ---- streams --------------------------------------------------------------------------------

namespace {
// Current stream per device for this thread; nullptr is the legacy default stream.
thread_local std::vector<cudaStream_t> t_current_streams;
}  // namespace

cudaStream_t stream_of(int device) {
  if (device < 0 || size_t(device) >= t_current_streams.size()) return nullptr;
  return t_current_streams[size_t(device)];
}

StreamHandle current_stream(int device) {
  check_device_index(device, "cuda::current_stream");
  return stream_of(device);
}

void set_current_stream(int device, StreamHandle stream) {
  check_device_index(device, "cuda::set_current_stream");
  if (t_current_streams.size() <= size_t(device))
    t_current_streams.resize(size_t(device_count()), nullptr);
  t_current_streams[size_t(device)] = static_cast<cudaStream_t>(stream);
}

StreamHandle create_stream(int device) {
  check_device_index(device, "cuda::create_stream");
  DeviceGuard guard(device);
  cudaStream_t stream = nullptr;
  // Non-blocking: our streams must not serialise against work on the legacy default stream.
  BCOS_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void destroy_stream(int device, StreamHandle stream) {
  check_device_index(device, "cuda::destroy_stream");
  if (stream == nullptr) return;  // the default stream is not ours to destroy
  if (stream_of(device) == static_cast<cudaStream_t>(stream)) set_current_stream(device, nullptr);
  DeviceGuard guard(device);
  // Its queued work finishes first: cudaStreamDestroy returns at once, and a stream created later
  // may get the same handle, while the caching allocator's free blocks and the cuBLAS workspaces
  // are kept per stream handle (reused only behind that stream's earlier work).
  BCOS_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  BCOS_CUDA_CHECK(cudaStreamDestroy(static_cast<cudaStream_t>(stream)));
}

void stream_synchronize(int device, StreamHandle stream) {
  check_device_index(device, "cuda::stream_synchronize");
  DeviceGuard guard(device);
  BCOS_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  raise_device_fault(device);
}

// ---- cuBLAS handles ---------------------------------------------------------------------------
// A handle must not be used by two threads at once, so each thread keeps its own per device.
// When a thread ends its handles go back to a shared pool for the next thread instead of being
// destroyed (creating one costs milliseconds). The pool is leaked on purpose: handles may be
// returned by thread-exit destructors that run after static destruction has begun.

namespace {
struct HandlePool {
  std::mutex mu;
  std::vector<std::vector<cublasHandle_t>> idle_by_device;
};
HandlePool& handle_pool() {
  static HandlePool* pool = new HandlePool();
  return *pool;
}

struct ThreadHandles {
  std::vector<cublasHandle_t> by_device;
  ~ThreadHandles() {
    HandlePool& pool = handle_pool();
    std::lock_guard<std::mutex> lock(pool.mu);
    for (size_t d = 0; d < by_device.size(); ++d) {
      if (by_device[d] == nullptr) continue;
      if (pool.idle_by_device.size() <= d) pool.idle_by_device.resize(d + 1);
      pool.idle_by_device[d].push_back(by_device[d]);
    }
  }
};
thread_local ThreadHandles t_handles;
}  // namespace

cublasHandle_t cublas_handle(int device) {
  check_device_index(device, "cuda::cublas_handle");
  if (t_handles.by_device.size() <= size_t(device))
    t_handles.by_device.resize(size_t(device_count()), nullptr);
  cublasHandle_t& handle = t_handles.by_device[size_t(device)];
  if (handle == nullptr) {
    HandlePool& pool = handle_pool();
    {
      std::lock_guard<std::mutex> lock(pool.mu);
      if (pool.idle_by_device.size() > size_t(device) && !pool.idle_by_device[device].empty()) {
        handle = pool.idle_by_device[device].back();
        pool.idle_by_device[device].pop_back();
      }
    }
    if (handle == nullptr) {
      DeviceGuard guard(device);  // a handle belongs to the device current at creation
      BCOS_CUBLAS_CHECK(cublasCreate(&handle));
    }
  }
  BCOS_CUBLAS_CHECK(cublasSetStream(handle, stream_of(device)));
  return handle;
}

}  // namespace bcos::cuda
