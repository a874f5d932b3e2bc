// The CUDA emulator's stream capture and graphs (tensor/cuda/emulator/runtime.cpp), which the
// backend's CudaGraph (tensor/cuda/graph.cu) is tested on in CI: captured work runs only when the
// graph is launched, once per launch; the calls CUDA forbids while capturing fail and spoil the
// capture as they do there; and the backend's refusals leave no graph behind.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "autograd/ops.h"
#include "tensor/cuda_graph.h"
#include "tensor/cuda/emulator/device.h"
#include "tensor/cuda/emulator/runtime.h"
#include "tests/cuda/emulator_test.h"
#include "tests/golden.h"

using bcos::emu_test::DeviceArray;
namespace runtime = bcos::emu::runtime;

namespace {
// x[i] += 1 for i < n, as a launch on `stream`.
void add_one(int* x, int n, cudaStream_t stream) {
  bcos::emu::launch("add_one", [&](auto&&... a) {
    auto body = [](int* p, int count) {
      const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
      if (i < count) p[i] += 1;
    };
    body(a...);
  }, 1, 64, 0, stream)(x, n);
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess); }
  ~Stream() { cudaStreamDestroy(s); }
};
}  // namespace

TEST_CASE("emulator: a captured launch runs only when its graph is launched, once per launch") {
  DeviceArray<int> x(size_t(16), 0);
  Stream stream;
  const int64_t graphs = runtime::graphs_alive();
  REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  cudaStreamCaptureStatus status{};
  REQUIRE(cudaStreamIsCapturing(stream.s, &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusActive);
  add_one(x.p, 16, stream.s);
  add_one(x.p, 16, stream.s);
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamEndCapture(stream.s, &graph) == cudaSuccess);
  REQUIRE(cudaStreamIsCapturing(stream.s, &status) == cudaSuccess);
  CHECK(status == cudaStreamCaptureStatusNone);
  CHECK(x.host() == std::vector<int>(16, 0));  // nothing ran
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  CHECK(cudaGraphDestroy(graph) == cudaSuccess);  // the executable graph keeps what it runs
  for (int launch = 1; launch <= 3; ++launch) {
    REQUIRE(cudaGraphLaunch(exec, stream.s) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream.s) == cudaSuccess);
    CHECK(x.host() == std::vector<int>(16, 2 * launch));
  }
  CHECK(runtime::graphs_alive() == graphs + 1);
  CHECK(cudaGraphExecDestroy(exec) == cudaSuccess);
  CHECK(runtime::graphs_alive() == graphs);
}

TEST_CASE("emulator: the calls a capture forbids fail and spoil it, as CUDA's rules say") {
  Stream stream;
  auto spoiled_by = [&](const char* what, cudaStreamCaptureMode mode, auto&& call, cudaError_t expected) {
    CAPTURE(what);
    REQUIRE(cudaStreamBeginCapture(stream.s, mode) == cudaSuccess);
    CHECK(call() == expected);
    cudaGetLastError();
    cudaStreamCaptureStatus status{};
    REQUIRE(cudaStreamIsCapturing(stream.s, &status) == cudaSuccess);
    CHECK(status == cudaStreamCaptureStatusInvalidated);
    cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(1);
    CHECK(cudaStreamEndCapture(stream.s, &graph) == cudaErrorStreamCaptureInvalidated);
    CHECK(graph == nullptr);
    cudaGetLastError();
  };
  void* p = nullptr;
  int host = 0;
  DeviceArray<int> d(size_t(4), 0);
  spoiled_by("cudaMalloc", cudaStreamCaptureModeThreadLocal, [&] { return cudaMalloc(&p, 64); },
             cudaErrorStreamCaptureUnsupported);
  spoiled_by("cudaFree", cudaStreamCaptureModeThreadLocal, [&] { return cudaFree(d.p); }, cudaErrorStreamCaptureUnsupported);
  spoiled_by("synchronising the capturing stream", cudaStreamCaptureModeThreadLocal,
             [&] { return cudaStreamSynchronize(stream.s); }, cudaErrorStreamCaptureUnsupported);
  spoiled_by("synchronising the device", cudaStreamCaptureModeRelaxed, [&] { return cudaDeviceSynchronize(); },
             cudaErrorStreamCaptureUnsupported);
  spoiled_by("a copy into pageable memory", cudaStreamCaptureModeThreadLocal,
             [&] { return cudaMemcpyAsync(&host, d.p, sizeof host, cudaMemcpyDeviceToHost, stream.s); },
             cudaErrorStreamCaptureUnsupported);
  spoiled_by("a synchronous copy", cudaStreamCaptureModeGlobal,
             [&] { return cudaMemcpy(d.p, &host, sizeof host, cudaMemcpyHostToDevice); },
             cudaErrorStreamCaptureUnsupported);
  cudaEvent_t outside = nullptr;
  REQUIRE(cudaEventCreateWithFlags(&outside, cudaEventDisableTiming) == cudaSuccess);
  REQUIRE(cudaEventRecord(outside, nullptr) == cudaSuccess);
  spoiled_by("waiting on work outside the capture", cudaStreamCaptureModeThreadLocal,
             [&] { return cudaStreamWaitEvent(stream.s, outside, 0); }, cudaErrorStreamCaptureIsolation);
  CHECK(cudaEventDestroy(outside) == cudaSuccess);

  // Relaxed mode for the thread lets cudaMalloc through (the allocator's way); another thread is
  // free meanwhile in thread-local mode, and held back by a global-mode capture.
  REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  CHECK(cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess);
  CHECK(mode == cudaStreamCaptureModeGlobal);
  CHECK(cudaMalloc(&p, 64) == cudaSuccess);
  CHECK(cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess);
  cudaError_t other = cudaErrorUnknown;
  void* q = nullptr;
  std::thread([&] { other = cudaMalloc(&q, 64); }).join();
  CHECK(other == cudaSuccess);
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamEndCapture(stream.s, &graph) == cudaSuccess);
  CHECK(cudaGraphDestroy(graph) == cudaSuccess);
  CHECK(cudaFree(q) == cudaSuccess);
  REQUIRE(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  std::thread([&] { other = cudaMalloc(&q, 64); }).join();
  CHECK(other == cudaErrorStreamCaptureUnsupported);
  CHECK(cudaStreamEndCapture(stream.s, &graph) == cudaErrorStreamCaptureInvalidated);
  cudaGetLastError();
  CHECK(cudaFree(p) == cudaSuccess);
  CHECK(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal) == cudaErrorStreamCaptureUnsupported);
  cudaGetLastError();
}

TEST_CASE("emulator: CUDA graph refusals and destruction leave no graph behind") {
  using namespace bcos;
  const Device gpu = Device::cuda(0);
  const int64_t graphs = runtime::graphs_alive();
  const Tensor x = randn({32}).to(gpu);
  {
    CudaGraph graph;
    graph.capture(gpu, [&] { (void)(x * 2.0); });
    CHECK(runtime::graphs_alive() == graphs + 1);  // the executable one (the captured one is destroyed)
    graph.capture(gpu, [&] { (void)(x * 3.0); });  // replaces the first
    CHECK(runtime::graphs_alive() == graphs + 1);
    CHECK_THROWS_AS(graph.capture(gpu, [&] { (void)sum(x).item(); }), Error);
    CHECK(graph.captured());  // a failed capture keeps the graph there was
    CHECK(runtime::graphs_alive() == graphs + 1);
  }
  CHECK(runtime::graphs_alive() == graphs);
}

TEST_CASE("emulator: without the allocator's cache a capture is refused, clearly") {
  // (Run where BCOS_CUDA_NO_CACHING=1 is set: tests/meson.build's "cuda emulated (the rest)".)
  using namespace bcos;
  const char* v = std::getenv("BCOS_CUDA_NO_CACHING");
  if (v == nullptr || std::string(v) != "1") {
    MESSAGE("BCOS_CUDA_NO_CACHING is not 1: skipped");
    return;
  }
  const Tensor x = randn({8}).to(Device::cuda(0));
  CudaGraph graph;
  CHECK_THROWS_WITH_AS(graph.capture(Device::cuda(0), [&] { (void)(x * 2.0); }),
                       doctest::Contains("CudaGraph.capture: needs the caching allocator"), Error);
  CHECK_FALSE(graph.captured());
  CHECK_FALSE(cuda_graph_capturing());
}
