// CudaGraph's device-independent side (tensor/cuda_graph.h); the capture itself is the CUDA
// backend's (tensor/cuda/graph.cu).
#include "tensor/cuda_graph.h"

#include <atomic>
#include <utility>

#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#endif

namespace bcos {

namespace {
// The replay hooks of the capture the calling thread is making (null when it makes none), and
// that capture's device and number.
thread_local std::vector<std::function<void(ReplayPhase)>>* t_capture_hooks = nullptr;
thread_local CudaGraphCapture t_capture;
std::atomic<uint64_t> g_captures{0};
}  // namespace

CudaGraph::~CudaGraph() {
#ifdef BCOS_WITH_CUDA
  cuda::destroy_graph(handle_);
#endif
}

CudaGraph::CudaGraph(CudaGraph&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)), device_(other.device_), on_replay_(std::move(other.on_replay_)) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& other) noexcept {
  if (this != &other) {
#ifdef BCOS_WITH_CUDA
    cuda::destroy_graph(handle_);
#endif
    handle_ = std::exchange(other.handle_, nullptr);
    device_ = other.device_;
    on_replay_ = std::move(other.on_replay_);
  }
  return *this;
}

void CudaGraph::capture(Device device, const std::function<void()>& work) {
  BCOS_CHECK(device.is_cuda(), "CudaGraph.capture: graphs are CUDA's; got device ", device);
  BCOS_CHECK(work != nullptr, "CudaGraph.capture: no work to capture");
#ifdef BCOS_WITH_CUDA
  std::vector<std::function<void(ReplayPhase)>> hooks;
  void* fresh = cuda::capture_graph(device.index, [&] {
    struct Collect {  // (reset however the work ends)
      Collect(std::vector<std::function<void(ReplayPhase)>>* h, Device d) {
        t_capture_hooks = h;
        t_capture = {d, ++g_captures};
      }
      ~Collect() {
        t_capture_hooks = nullptr;
        t_capture = {};
      }
    } collect(&hooks, device);
    work();
  });
  cuda::destroy_graph(handle_);
  handle_ = fresh;
  device_ = device;
  on_replay_ = std::move(hooks);
#else
  fail("CudaGraph.capture on ", device, ": bcos was built without CUDA");
#endif
}

void CudaGraph::replay() {
  BCOS_CHECK(handle_ != nullptr, "CudaGraph.replay: nothing captured (call capture first)");
  // (Before the hooks: what they queue would be captured.)
  BCOS_CHECK(!cuda_graph_capturing(), "CudaGraph.replay: not while capturing a graph");
  for (const auto& hook : on_replay_) hook(ReplayPhase::check);
  for (const auto& hook : on_replay_) hook(ReplayPhase::queue);
#ifdef BCOS_WITH_CUDA
  cuda::replay_graph(handle_);
#endif
  for (const auto& hook : on_replay_) hook(ReplayPhase::done);
}

bool cuda_graph_capturing() {
#ifdef BCOS_WITH_CUDA
  return cuda::capturing();
#else
  return false;
#endif
}

CudaGraphCapture cuda_graph_capture() { return t_capture; }

void cuda_graph_on_replay(std::function<void(ReplayPhase)> hook) {
  BCOS_CHECK(t_capture_hooks != nullptr, "cuda_graph_on_replay: this thread is not capturing a CUDA graph");
  t_capture_hooks->push_back(std::move(hook));
}

void store_for_replay(Device device, void* device_address, const void* bytes, size_t count) {
  BCOS_CHECK(device.is_cuda(), "store_for_replay: device memory of a GPU; got device ", device);
#ifdef BCOS_WITH_CUDA
  cuda::store_bytes(device.index, device_address, bytes, count);
#else
  (void)device_address, (void)bytes, (void)count;
  fail("store_for_replay on ", device, ": bcos was built without CUDA");
#endif
}
}  // namespace bcos
