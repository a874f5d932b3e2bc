// CUDA graphs: a stretch of GPU work recorded once by stream capture and replayed with one
// launch, so that a training step's hundreds of kernel launches cost the host one call. Capture
// runs the host code as usual but the GPU runs nothing: each launch becomes a node, with the
// addresses and scalars it was given. A replay therefore reads and writes exactly the tensors
// the capture saw -- inputs are refreshed by copying into them -- and every allocation made while
// capturing comes from a pool of the graph's own (allocator.cu), so later work cannot take memory
// that a replay still writes. What a graph cannot hold (a host round trip, a copy through
// pageable memory, a random draw, an optimizer step's scalars passed by value) refuses with an
// error while capturing; the ops that would have made one ask capturing(). What must change per
// replay is written to device memory the captured kernels read, before the replay (store_bytes).
#include <cstring>
#include <memory>
#include <vector>

#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {
thread_local int t_capturing_device = -1;

struct Graph {
  int device = 0;
  void* pool = nullptr;  // the allocator's pool for what the capture allocated
  cudaGraphExec_t exec = nullptr;
  // The cuBLAS workspace its GEMMs were captured with: the capturing thread's for the capture
  // stream, made before the capture (outside the graph's pool) and held here, so that a replay
  // after that thread has ended never writes memory the allocator has handed on.
  std::shared_ptr<void> gemm_workspace;
  // What keep_with_capture handed it (each once), and an event recorded after each replay: the
  // graph lets go of them only once its last replay has run.
  std::vector<std::shared_ptr<const void>> kept;
  cudaEvent_t replayed = nullptr;
};
thread_local Graph* t_capturing_graph = nullptr;

// The stream a thread captures on, one per device, kept for the process (as PyTorch's default
// capture stream): the per-stream caches (cuBLAS's workspace, gemm_workspace_for) then hold one entry
// for all of a thread's graphs instead of one per graph.
cudaStream_t capture_stream(int device) {
  thread_local std::vector<cudaStream_t> streams;
  if (streams.size() <= size_t(device)) streams.resize(size_t(device) + 1, nullptr);
  if (streams[size_t(device)] == nullptr)
    BCOS_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[size_t(device)], cudaStreamNonBlocking));
  return streams[size_t(device)];
}

// Up to kStoreBytes bytes travel as a kernel's argument: copied at the launch, so the host's copy
// may change or go at once, and nothing waits (a copy from pageable memory might).
constexpr size_t kStoreBytes = 256;
struct StoreBytes {
  unsigned char bytes[kStoreBytes];
};
__global__ void store_kernel(StoreBytes values, size_t count, unsigned char* dst) {
  for (size_t i = threadIdx.x; i < count; i += blockDim.x) dst[i] = values.bytes[i];
}

// Ends a capture that failed (its graph, if any, discarded) and leaves no error behind.
void abandon_capture(cudaStream_t stream) {
  cudaGraph_t partial = nullptr;
  if (cudaStreamEndCapture(stream, &partial) == cudaSuccess && partial != nullptr) cudaGraphDestroy(partial);
  cudaGetLastError();
}
}  // namespace

bool capturing() { return t_capturing_device >= 0; }

void keep_with_capture(std::shared_ptr<const void> resource) {
  BCOS_CHECK(t_capturing_graph != nullptr, "cuda keep_with_capture: this thread is not capturing a graph");
  auto& kept = t_capturing_graph->kept;
  for (const auto& k : kept)
    if (k == resource) return;
  kept.push_back(std::move(resource));
}

GraphHandle capture_graph(int device, const std::function<void()>& work) {
  check_device_index(device, "CudaGraph.capture");
  BCOS_CHECK(!capturing(), "CudaGraph.capture: this thread is capturing a graph already (captures do not nest)");
  DeviceGuard guard(device);
  auto graph = std::make_unique<Graph>();
  graph->device = device;
  const cudaStream_t stream = capture_stream(device), previous = stream_of(device);
  make_fault_report(device);  // (index checks inside the capture write to it)
  graph->gemm_workspace = gemm_workspace_for(device, stream);
  graph->pool = begin_capture_pool(device, stream);  // (refuses while another thread captures)
  // Work queued before the capture runs before it (PyTorch synchronises here too).
  if (const cudaError_t synced = cudaDeviceSynchronize(); synced != cudaSuccess) {
    end_capture_pool();
    release_capture_pool(device, graph->pool);
    BCOS_CUDA_CHECK(synced);
  }
  set_current_stream(device, stream);
  t_capturing_device = device;
  t_capturing_graph = graph.get();
  auto restore = [&] {
    t_capturing_device = -1;
    t_capturing_graph = nullptr;
    set_current_stream(device, previous);
    end_capture_pool();
  };
  // Thread-local mode: other threads (a loader's copies) may allocate and synchronise meanwhile.
  cudaError_t err = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
  if (err == cudaSuccess) {
    try {
      work();
    } catch (...) {
      abandon_capture(stream);
      restore();
      release_capture_pool(device, graph->pool);
      try {
        throw;
      } catch (const OutOfMemoryError& e) {
        throw OutOfMemoryError(str("CudaGraph.capture on cuda:", device, ": the captured work failed: ", e.what()));
      } catch (const std::exception& e) {
        fail("CudaGraph.capture on cuda:", device, ": the captured work failed: ", e.what());
      }
    }
    cudaGraph_t captured = nullptr;
    err = cudaStreamEndCapture(stream, &captured);
    if (err == cudaSuccess) {
      err = cudaGraphInstantiate(&graph->exec, captured, 0);
      cudaGraphDestroy(captured);
    }
  }
  restore();
  if (err != cudaSuccess) {
    cudaGetLastError();
    release_capture_pool(device, graph->pool);
    fail("CudaGraph.capture on cuda:", device, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err),
         "): the captured work made a call a capture forbids (a synchronisation, a copy to or from pageable "
         "host memory, work waiting on another stream)");
  }
  return graph.release();
}

void replay_graph(GraphHandle handle) {
  BCOS_CHECK(handle != nullptr, "CudaGraph.replay: nothing captured");
  BCOS_CHECK(!capturing(), "CudaGraph.replay: not while capturing a graph");
  Graph& graph = *static_cast<Graph*>(handle);
  DeviceGuard guard(graph.device);
  const cudaStream_t stream = stream_of(graph.device);
  BCOS_CUDA_CHECK(cudaGraphLaunch(graph.exec, stream));
  if (!graph.kept.empty()) {
    if (graph.replayed == nullptr) BCOS_CUDA_CHECK(cudaEventCreateWithFlags(&graph.replayed, cudaEventDisableTiming));
    BCOS_CUDA_CHECK(cudaEventRecord(graph.replayed, stream));
  }
}

void store_bytes(int device, void* dst, const void* src, size_t nbytes) {
  BCOS_CHECK(nbytes <= kStoreBytes, "cuda store_bytes: ", nbytes, " bytes, more than the ", kStoreBytes,
             " a launch carries");
  BCOS_CHECK(!capturing(), "cuda store_bytes: not while capturing a graph (the write would be replayed)");
  if (nbytes == 0) return;
  DeviceGuard guard(device);
  StoreBytes values{};
  std::memcpy(values.bytes, src, nbytes);
  store_kernel<<<1, 64, 0, stream_of(device)>>>(values, nbytes, static_cast<unsigned char*>(dst));
  BCOS_CUDA_CHECK_LAUNCH();
}

void destroy_graph(GraphHandle handle) noexcept {
  if (handle == nullptr) return;
  std::unique_ptr<Graph> graph(static_cast<Graph*>(handle));
  try {
    DeviceGuard guard(graph->device);
    // A replay still queued finishes first (CUDA frees an executable graph in flight once it has
    // run), and the pool's segments go back to the driver only after a device-wide synchronisation.
    if (cudaGraphExecDestroy(graph->exec) != cudaSuccess) cudaGetLastError();
    release_capture_pool(graph->device, graph->pool);
    if (graph->replayed != nullptr) {  // what it keeps alive, once the last replay has run
      if (cudaEventSynchronize(graph->replayed) != cudaSuccess || cudaEventDestroy(graph->replayed) != cudaSuccess)
        cudaGetLastError();
    }
  } catch (...) {
    // At program exit the runtime may be gone; the memory goes with the process.
  }
}

}  // namespace bcos::cuda
