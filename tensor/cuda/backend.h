// The CUDA backend's entry points, callable from plain C++ (implemented in tensor/cuda/*.cu and
// compiled only when the `cuda` Meson option is on, which defines BCOS_WITH_CUDA).
// Kernels take the same op descriptions as the CPU kernels (tensor/op_kinds.h), declared once in
// tensor/kernels.inc, so tensor/dispatch.h hands over the same arguments to either backend.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/op_kinds.h"
#include "tensor/tensor.h"

namespace bcos::cuda {

// ---- devices (cuda/device.cu) ---------------------------------------------------------------
int device_count();  // 0 when no driver or no GPU: never throws
void set_device(int index);
int current_device();
// Whether this process has used `device`: set it, or guarded work onto it. Setting a device
// creates its context (~0.5 GiB of its memory), so a DeviceGuard hands a thread back to its
// previous device only when that one is in use -- a rank of a data-parallel job that only ever
// works on cuda:3 must not wake cuda:0 on the way (PyTorch's MaybeSetDevice does the same).
bool device_in_use(int device);
void mark_device_in_use(int device);
struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0, multiprocessors = 0;
  size_t total_memory = 0;
};
DeviceInfo device_info(int index);
// Waits for all work on the device; raises an error its kernels found (an index out of range:
// cuda/fault.cu), as stream_synchronize and every copy to the host do.
void synchronize(int index);
int runtime_version();        // e.g. 13000
int cublas_version();
size_t cudnn_version();

// ---- streams (cuda/device.cu) ----------------------------------------------------------------
// Each thread has a current stream per device (the default stream until set). Kernels and
// copies are queued on it; the caching allocator tags blocks with it.
using StreamHandle = void*;  // a cudaStream_t
StreamHandle current_stream(int device);
void set_current_stream(int device, StreamHandle stream);
StreamHandle create_stream(int device);
void destroy_stream(int device, StreamHandle stream);
void stream_synchronize(int device, StreamHandle stream);

// ---- memory (cuda/allocator.cu) --------------------------------------------------------------
// Caching allocator: bins by size, best fit, split and merge, blocks reused only on the stream
// that freed them. On out-of-memory the cache is released and the allocation retried once.
std::shared_ptr<void> allocate(size_t nbytes, int device);
struct MemoryStats {
  size_t in_use = 0, cached = 0, peak_in_use = 0, segments = 0, device_total = 0;
};
MemoryStats memory_stats(int device);
void reset_peak_memory(int device);  // peak_in_use starts again from what is in use now
void empty_cache();  // returns unused cached segments to the driver

// Graph pools (tensor/cuda/graph.cu uses them): from begin_capture_pool until end_capture_pool
// the allocations made on `stream` come from a pool of the graph's own (its key is returned), kept
// apart until release_capture_pool. One capture at a time.
void* begin_capture_pool(int device, StreamHandle stream);
void end_capture_pool();
void release_capture_pool(int device, void* pool);

// ---- CUDA graphs (cuda/graph.cu) -------------------------------------------------------------
// capture_graph records what `work` queues on `device` (on a stream of the graph's own, made the
// thread's current one meanwhile) into a graph, without running it; replay_graph runs it on the
// device's current stream. Ops that cannot be captured ask capturing() and refuse.
using GraphHandle = void*;
GraphHandle capture_graph(int device, const std::function<void()>& work);
void replay_graph(GraphHandle graph);
void destroy_graph(GraphHandle graph) noexcept;
bool capturing();  // whether this thread is capturing a graph now
// Held by the graph this thread is capturing until that graph is destroyed (or its capture
// fails): what its kernels need that a cache might otherwise destroy meanwhile (a cuDNN plan).
void keep_with_capture(std::shared_ptr<const void> resource);
// Queues a write of nbytes (<= 256) host bytes to device memory on the device's current stream,
// carried by a kernel's argument (the host's bytes may change at once; nothing waits): how a
// replay hook hands a captured kernel its new scalars.
void store_bytes(int device, void* dst, const void* src, size_t nbytes);

// ---- copies (cuda/copy.cu) -------------------------------------------------------------------
void copy_host_to_device(void* dst, const void* src, size_t nbytes, int device);
void copy_device_to_host(void* dst, const void* src, size_t nbytes, int device);
void copy_peer(void* dst, int dst_device, const void* src, int src_device, size_t nbytes);
// ---- pinned host memory and events (cuda/copy.cu) ----------------------------------------------
// Page-locked host memory (copies from it run asynchronously); freed blocks are kept for reuse
// by the next request of the same size, so a loader's per-batch buffers cost one cudaHostAlloc.
std::shared_ptr<void> allocate_pinned(size_t nbytes, int device = -1);
using EventHandle = void*;  // a cudaEvent_t
// Timing disabled unless `timing` (for event_elapsed_ms: tensor/profile.h); untimed events are cheaper.
EventHandle create_event(int device, bool timing = false);
// Milliseconds between two recorded, completed timing events (of the same device).
float event_elapsed_ms(int device, EventHandle start, EventHandle end);
void destroy_event(int device, EventHandle event);
void record_event(int device, EventHandle event, StreamHandle stream);
void stream_wait_event(int device, StreamHandle stream, EventHandle event);  // on the device, host returns at once
void event_synchronize(int device, EventHandle event);

// ---- products (cuda/matmul.cu) ----------------------------------------------------------------
// How many linear_bias calls added their bias in cuBLASLt's epilogue, and how many fell back to
// writing it into out for the GEMM to accumulate onto (cuBLASLt offered no algorithm or refused
// the call; float64 and vectors never ask it). Tests and gpu_check read them.
int64_t linear_bias_epilogues();
int64_t linear_bias_fallbacks();
// How many convolution shapes (per direction) cudnn_benchmark() has timed, and how many times
// the legacy API's heuristics were asked for a shape's algorithms (a shape without a kept choice,
// or whose kept one stopped running) (cuda/conv.cu).
int64_t conv_algorithms_benchmarked();
int64_t conv_algorithm_searches();
// Under cudnn_graph_api() (cuda/conv_graph.cu): how many execution plans have been built and
// kept (per shape and direction), how many calls cuDNN's graph API declined (no engine ran, or
// the graph could not be built: those shapes take the legacy API), and the last reason.
int64_t conv_graph_plans_built();
int64_t conv_graph_declined();
std::string conv_graph_last_declined();
// The calling thread's plan cache (each thread keeps its own): its entries now (declined shapes
// included), and the bound of every thread's: the least recently used beyond it are dropped (0:
// no bound; negative: nothing kept; a thread's cache is trimmed at its next plan, the caller's at
// once). BCOS_CUDNN_PLAN_CACHE_LIMIT sets it at start (default 10,000, as PyTorch's
// TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT).
int64_t conv_graph_plans_kept();
void set_conv_graph_cache_limit(int64_t limit);
int64_t conv_graph_cache_limit();

// ---- kernels: the list every backend implements (tensor/kernels.inc) --------------------------
// Defined in cuda/copy.cu, elementwise.cu, reduce.cu, matmul.cu, softmax.cu, indexing.cu,
// topk.cu, norm.cu, batch_norm.cu, pool.cu, conv.cu (cuDNN) and bcos.cu.
#include "tensor/kernels.inc"

}  // namespace bcos::cuda
