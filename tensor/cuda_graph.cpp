// CudaGraph's device-independent side (tensor/cuda_graph.h); the capture itself is the CUDA
// backend's (tensor/cuda/graph.cu).
#include "tensor/cuda_graph.h"

#include <utility>

#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#endif

namespace bcos {

CudaGraph::~CudaGraph() {
#ifdef BCOS_WITH_CUDA
  cuda::destroy_graph(handle_);
#endif
}

CudaGraph::CudaGraph(CudaGraph&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)), device_(other.device_) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& other) noexcept {
  if (this != &other) {
#ifdef BCOS_WITH_CUDA
    cuda::destroy_graph(handle_);
#endif
    handle_ = std::exchange(other.handle_, nullptr);
    device_ = other.device_;
  }
  return *this;
}

void CudaGraph::capture(Device device, const std::function<void()>& work) {
  BCOS_CHECK(device.is_cuda(), "CudaGraph.capture: graphs are CUDA's; got device ", device);
  BCOS_CHECK(work != nullptr, "CudaGraph.capture: no work to capture");
#ifdef BCOS_WITH_CUDA
  void* fresh = cuda::capture_graph(device.index, work);
  cuda::destroy_graph(handle_);
  handle_ = fresh;
  device_ = device;
#else
  fail("CudaGraph.capture on ", device, ": bcos was built without CUDA");
#endif
}

void CudaGraph::replay() {
  BCOS_CHECK(handle_ != nullptr, "CudaGraph.replay: nothing captured (call capture first)");
#ifdef BCOS_WITH_CUDA
  cuda::replay_graph(handle_);
#endif
}

bool cuda_graph_capturing() {
#ifdef BCOS_WITH_CUDA
  return cuda::capturing();
#else
  return false;
#endif
}

}  // namespace bcos
