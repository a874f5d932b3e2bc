// Moving bytes to, from and within GPUs: host <-> device transfers, copies between GPUs, and
// the strided copy-with-conversion and fill kernels behind contiguous(), clone(), to(dtype),
// copy_() and the creation functions. Conversions follow the CPU's copy kernel exactly so a
// tensor converted on either device holds the same values.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>
#include <map>
#include <mutex>
#include <optional>

#include "tensor/cuda/internal.h"
#include "tensor/random_math.h"

namespace bcos::cuda {

namespace {

bool is_pageable_host_memory(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();
    return true;
  }
  return attr.type == cudaMemoryTypeUnregistered;
}

template <class To, class From>
__global__ void convert_copy_kernel(To* dst, const From* src, Geometry<2> g) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g.contiguous) {
    for (int64_t i = first; i < g.numel; i += step) dst[i] = convert_value<To>(src[i]);
  } else {
    for (int64_t i = first; i < g.numel; i += step) {
      int64_t off[2];
      g.offsets(i, off);
      dst[off[0]] = convert_value<To>(src[off[1]]);
    }
  }
}

template <class T>
__global__ void fill_kernel(T* dst, T value, Geometry<1> g) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g.contiguous) {
    for (int64_t i = first; i < g.numel; i += step) dst[i] = value;
  } else {
    for (int64_t i = first; i < g.numel; i += step) {
      int64_t off[1];
      g.offsets(i, off);
      dst[off[0]] = value;
    }
  }
}

// The host-side value a fill writes, converted exactly as the CPU's fill converts it.
template <class T>
T host_fill_value(double v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    return T(float(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    return v != 0.0;
  } else {
    return static_cast<T>(v);
  }
}

int same_cuda_device(const Tensor& dst, const Tensor& src, const char* op) {
  BCOS_CHECK(dst.is_cuda() && src.is_cuda() && dst.device() == src.device(), op,
             ": both tensors must be on one CUDA device, got ", dst.device(), " and ",
             src.device());
  return dst.device().index;
}

}  // namespace

namespace {
void note_pinned_read(const void* src, int device, cudaStream_t stream);  // below, with the pinned blocks
}  // namespace

void copy_host_to_device(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  check_device_index(device, "cuda::copy_host_to_device");
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  BCOS_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream));
  // A pageable source may be freed or rewritten as soon as we return; wait until the copy
  // has consumed it. A pinned one from allocate_pinned is not reused before the copy has run.
  if (is_pageable_host_memory(src))
    BCOS_CUDA_CHECK(cudaStreamSynchronize(stream));
  else
    note_pinned_read(src, device, stream);
}

// ---- pinned memory and events ----------------------------------------------------------------
// Pinned blocks are kept for reuse. A copy from one to a GPU runs when its stream gets to it, after
// the host has gone on -- and may have dropped the block (`pin_memory(x).to(gpu)`) -- so each such
// copy leaves an event on its block, and a freed block is handed out again only once its events
// have completed (PyTorch's caching host allocator does the same). Otherwise the next same-sized
// pin_memory() would write into memory a queued copy has yet to read.
namespace {
struct PinnedBlock {
  size_t bytes = 0;
  std::vector<std::pair<int, cudaEvent_t>> reads;  // (device, event) of copies queued from it
};
std::mutex g_pinned_mutex;
std::map<uintptr_t, PinnedBlock> g_pinned_blocks;  // every block, by address
std::multimap<size_t, void*> g_pinned_free;        // size -> freed block

// Whether every copy queued from the block has run (then its events go). Caller holds the lock.
bool reads_done(PinnedBlock& block) {
  for (const auto& [device, event] : block.reads) {
    DeviceGuard guard(device);
    const cudaError_t rc = cudaEventQuery(event);
    if (rc == cudaErrorNotReady) return false;
    BCOS_CUDA_CHECK(rc);
  }
  for (const auto& [device, event] : block.reads) {
    DeviceGuard guard(device);
    BCOS_CUDA_CHECK(cudaEventDestroy(event));
  }
  block.reads.clear();
  return true;
}

// Notes a copy queued on `stream` (of the current device `device`) that reads pinned memory at src.
// Not a copy captured into a CUDA graph: it runs at every replay, whenever that is (the buffer is
// the graph's input, kept by its owner), and an event recorded in a capture cannot be queried.
void note_pinned_read(const void* src, int device, cudaStream_t stream) {
  if (capturing()) return;
  const auto address = reinterpret_cast<uintptr_t>(src);
  std::lock_guard<std::mutex> lock(g_pinned_mutex);
  auto it = g_pinned_blocks.upper_bound(address);
  if (it == g_pinned_blocks.begin()) return;
  --it;
  if (address >= it->first + std::max<size_t>(it->second.bytes, 1)) return;  // pinned elsewhere (not ours)
  // Copies that have run need no event any more: a block held and copied every step keeps only
  // the events of copies still queued.
  std::erase_if(it->second.reads, [](const std::pair<int, cudaEvent_t>& read) {
    DeviceGuard guard(read.first);
    const cudaError_t rc = cudaEventQuery(read.second);
    if (rc == cudaErrorNotReady) return false;
    BCOS_CUDA_CHECK(rc);
    BCOS_CUDA_CHECK(cudaEventDestroy(read.second));
    return true;
  });
  cudaEvent_t event = nullptr;
  BCOS_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  BCOS_CUDA_CHECK(cudaEventRecord(event, stream));
  it->second.reads.emplace_back(device, event);
}
}  // namespace

std::shared_ptr<void> allocate_pinned(size_t nbytes, int device) {
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_pinned_mutex);
    auto [first, last] = g_pinned_free.equal_range(nbytes);
    for (auto it = first; it != last; ++it)
      if (reads_done(g_pinned_blocks.at(reinterpret_cast<uintptr_t>(it->second)))) {
        p = it->second;
        g_pinned_free.erase(it);
        break;
      }
  }
  if (p == nullptr) {
    // Pinning belongs to the current device's context: the one the memory is for, where known (a
    // loader's worker thread has none chosen, and would wake GPU 0's). With unified addressing
    // it serves every device.
    std::optional<DeviceGuard> guard;
    if (device >= 0) guard.emplace(device);
    BCOS_CUDA_CHECK(cudaHostAlloc(&p, std::max<size_t>(nbytes, 1), cudaHostAllocDefault));
    std::lock_guard<std::mutex> lock(g_pinned_mutex);
    g_pinned_blocks[reinterpret_cast<uintptr_t>(p)].bytes = nbytes;
  }
  return std::shared_ptr<void>(p, [nbytes](void* q) {
    std::lock_guard<std::mutex> lock(g_pinned_mutex);
    g_pinned_free.emplace(nbytes, q);
  });
}

EventHandle create_event(int device, bool timing) {
  check_device_index(device, "cuda::create_event");
  DeviceGuard guard(device);
  cudaEvent_t e = nullptr;
  BCOS_CUDA_CHECK(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  return e;
}

float event_elapsed_ms(int device, EventHandle start, EventHandle end) {
  DeviceGuard guard(device);
  float ms = 0;
  BCOS_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
  return ms;
}

void destroy_event(int device, EventHandle event) {
  if (event == nullptr) return;
  DeviceGuard guard(device);
  BCOS_CUDA_CHECK(cudaEventDestroy(static_cast<cudaEvent_t>(event)));
}

void record_event(int device, EventHandle event, StreamHandle stream) {
  DeviceGuard guard(device);
  BCOS_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}

void stream_wait_event(int device, StreamHandle stream, EventHandle event) {
  DeviceGuard guard(device);
  BCOS_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0));
}

void event_synchronize(int device, EventHandle event) {
  DeviceGuard guard(device);
  BCOS_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event)));
}

void copy_device_to_host(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  check_device_index(device, "cuda::copy_device_to_host");
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  BCOS_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream));
  BCOS_CUDA_CHECK(cudaStreamSynchronize(stream));  // the caller reads dst next
  raise_device_fault(device);                      // ... unless it was computed from a bad index
}

void copy_peer(void* dst, int dst_device, const void* src, int src_device, size_t nbytes) {
  if (nbytes == 0) return;
  check_device_index(dst_device, "cuda::copy_peer");
  check_device_index(src_device, "cuda::copy_peer");
  {
    // dst may be a recycled block that work queued on its device still reads.
    DeviceGuard guard(dst_device);
    BCOS_CUDA_CHECK(cudaStreamSynchronize(stream_of(dst_device)));
  }
  DeviceGuard guard(src_device);
  cudaStream_t stream = stream_of(src_device);
  BCOS_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, nbytes, stream));
  // The destination device's streams know nothing of this one: finish before they read dst.
  BCOS_CUDA_CHECK(cudaStreamSynchronize(stream));
  raise_device_fault(src_device);  // (dst must not carry a bad index's result on unreported)
}

void copy(const Tensor& dst, const Tensor& src) {
  int device = same_cuda_device(dst, src, "cuda::copy");
  BCOS_CHECK(dst.shape() == src.shape(), "cuda::copy: shapes ", dst.shape(), " and ",
             src.shape(), " differ");
  if (dst.numel() == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    if (dst.raw_data() != src.raw_data())
      BCOS_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(),
                                      size_t(dst.numel()) * dst.element_size(),
                                      cudaMemcpyDeviceToDevice, stream));
    return;
  }
  Geometry<2> g = make_geometry<2>(dst.shape(), {&dst.strides(), &src.strides()});
  dispatch_all(dst.dtype(), [&]<class To>() {
    dispatch_all(src.dtype(), [&]<class From>() {
      using DTo = device_t<To>;
      using DFrom = device_t<From>;
      convert_copy_kernel<DTo, DFrom><<<blocks_for(g.numel), kThreads, 0, stream>>>(
          static_cast<DTo*>(dst.raw_data()), static_cast<const DFrom*>(src.raw_data()), g);
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void fill(const Tensor& dst, double value) {
  BCOS_CHECK(dst.is_cuda(), "cuda::fill: tensor is on ", dst.device());
  if (dst.numel() == 0) return;
  int device = dst.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  Geometry<1> g = make_geometry<1>(dst.shape(), {&dst.strides()});
  dispatch_all(dst.dtype(), [&]<class T>() {
    using D = device_t<T>;
    static_assert(sizeof(D) == sizeof(T));
    T host_value = host_fill_value<T>(value);
    D device_value;
    std::memcpy(static_cast<void*>(&device_value), &host_value, sizeof(D));
    unsigned char zero[sizeof(T)] = {};
    if (g.contiguous && std::memcmp(&host_value, zero, sizeof(T)) == 0) {
      BCOS_CUDA_CHECK(
          cudaMemsetAsync(dst.raw_data(), 0, size_t(g.numel) * sizeof(T), stream));
      return;
    }
    fill_kernel<D><<<blocks_for(g.numel), kThreads, 0, stream>>>(
        static_cast<D*>(dst.raw_data()), device_value, g);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

namespace {
template <class T>
__global__ void arange_kernel(T* dst, int64_t n, double start, double step) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = convert_value<T>(start + double(i) * step);
}
}  // namespace

// Made on the device: no host buffer and copy (which a CUDA graph capture could not hold).
void arange_fill(const Tensor& dst, double start, double step) {
  BCOS_CHECK(dst.is_cuda() && dst.is_contiguous(), "cuda::arange_fill: needs a contiguous tensor on a GPU");
  if (dst.numel() == 0) return;
  const int device = dst.device().index;
  DeviceGuard guard(device);
  dispatch_all(dst.dtype(), [&]<class T>() {
    using D = device_t<T>;
    arange_kernel<D><<<blocks_for(dst.numel()), kThreads, 0, stream_of(device)>>>(static_cast<D*>(dst.raw_data()),
                                                                                 dst.numel(), start, step);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

namespace {
template <class T>
__global__ void random_fill_kernel(T* dst, int64_t n, RandomDist dist, uint64_t seed, uint64_t start, bool narrow,
                                   double p0, double p1) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step)
    dst[i] = convert_value<T>(math::random_value(dist, seed, start, i, narrow, p0, p1));
}
}  // namespace

void random_fill(const Tensor& dst, RandomDist dist, uint64_t seed, uint64_t start, double p0, double p1) {
  BCOS_CHECK(dst.is_cuda() && dst.is_contiguous(), "cuda::random_fill: needs a contiguous tensor on a GPU");
  // The seed and counter are the launch's scalars: every replay of a graph would draw these numbers again.
  BCOS_CHECK(!capturing(), "random_fill (rand, randn, dropout, ...) of a ", dst.shape(), " tensor: not inside a CUDA "
             "graph capture: each replay would repeat the captured draw; draw outside the graph and copy in");
  if (dst.numel() == 0) return;
  const int device = dst.device().index;
  DeviceGuard guard(device);
  const bool narrow = dst.dtype() != DType::f64;
  dispatch_any_dtype(dst.dtype(), "random_fill", [&]<class T>() {
    random_fill_kernel<T><<<blocks_for(dst.numel()), kThreads, 0, stream_of(device)>>>(
        static_cast<T*>(dst.raw_data()), dst.numel(), dist, seed, start, narrow, p0, p1);
  });
  BCOS_CUDA_CHECK_LAUNCH();
}

}  // namespace bcos::cuda
