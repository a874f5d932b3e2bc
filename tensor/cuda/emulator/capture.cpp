// The CUDA emulator's stream capture and graphs (cudaStreamBeginCapture ... cudaGraphLaunch), over
// the runtime's queues (runtime.cpp): while a stream captures, the work queued on it goes to the
// capture's list instead of the stream's queue; a graph launch queues that list again, as one item,
// each time. The calls CUDA forbids while a capture is on -- a synchronisation that covers it,
// cudaMalloc / cudaFree outside relaxed mode, a copy through pageable host memory, a wait on work
// outside the capture -- fail and spoil the capture, whose end then fails, as on a GPU. Not
// emulated: captures across several streams (an event joining another stream), child graphs,
// graph editing and updates.
#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "tensor/cuda/emulator/runtime.h"
#include "tensor/cuda/emulator/runtime_state.h"

namespace bcos::emu::runtime {
namespace internal {

// The capture in progress on a stream (by its queue key), or nullptr. Caller holds the lock.
Capture* capture_of(void* key) {
  auto it = state().captures.find(key);
  return it == state().captures.end() ? nullptr : &it->second;
}
// CUDA's rule for a "potentially unsafe" call (cudaMalloc, cudaFree, a synchronous copy) while
// captures are on: refused unless the thread is in relaxed mode, when the thread itself captures
// (not relaxed), or, in global mode, when another thread captures in global mode. A refused call
// spoils the captures that forbade it. Caller holds the lock.
bool unsafe_call_refused() {
  if (t_capture_mode == cudaStreamCaptureModeRelaxed) return false;
  bool refused = false;
  for (auto& [key, c] : state().captures) {
    const bool mine = c.thread == std::this_thread::get_id();
    if ((mine && c.mode != cudaStreamCaptureModeRelaxed) ||
        (!mine && c.mode == cudaStreamCaptureModeGlobal && t_capture_mode == cudaStreamCaptureModeGlobal)) {
      c.invalid = true;
      refused = true;
    }
  }
  return refused;
}
// Synchronising a device (cudaDeviceSynchronize, or cudaFree's implied one) is invalid while any
// of its streams captures, in every mode: it spoils those captures. Caller holds the lock.
bool device_capturing(int device) {
  bool any = false;
  for (auto& [key, c] : state().captures)
    if (c.device == device) c.invalid = any = true;
  return any;
}

}  // namespace internal

int64_t graphs_alive() {
  std::lock_guard<std::mutex> lock(internal::state().mutex);
  return internal::state().graphs_alive;
}

}  // namespace bcos::emu::runtime

using namespace bcos::emu::runtime::internal;

// ---- stream capture and graphs -------------------------------------------------------------------------
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (stream == nullptr) return record(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot capture
  if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
  if (capture_of(stream) != nullptr) return record(cudaErrorIllegalState);
  Capture& c = state().captures[stream];
  c.thread = std::this_thread::get_id();
  c.mode = mode;
  c.device = queue_of(stream).device;
  c.id = ++state().captures_begun;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  std::lock_guard<std::mutex> lock(state().mutex);
  *graph = nullptr;
  Capture* c = capture_of(stream);
  if (c == nullptr) return record(cudaErrorIllegalState);
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return record(cudaErrorStreamCaptureWrongThread);
  Capture done = std::move(*c);
  state().captures.erase(stream);
  if (done.invalid) return record(cudaErrorStreamCaptureInvalidated);
  auto* g = new Graph{std::make_shared<const std::vector<std::function<void()>>>(std::move(done.items)), done.device};
  ++state().graphs_alive;
  *graph = reinterpret_cast<cudaGraph_t>(g);
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
  const Capture* c = capture_of(key_of(stream));
  *status = c == nullptr ? cudaStreamCaptureStatusNone
            : c->invalid ? cudaStreamCaptureStatusInvalidated
                         : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  std::swap(*mode, t_capture_mode);
  return cudaSuccess;
}
// An executable graph shares the captured list (the emulator has nothing to compile).
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (exec == nullptr || graph == nullptr) return record(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(state().mutex);
  *exec = reinterpret_cast<cudaGraphExec_t>(new Graph(*reinterpret_cast<Graph*>(graph)));
  ++state().graphs_alive;
  return cudaSuccess;
}
// The graph's work, in capture order, as one item of the stream's queue.
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return record(cudaErrorInvalidValue);
  const Graph& g = *reinterpret_cast<Graph*>(exec);
  void* key = key_of(stream);
  {
    std::lock_guard<std::mutex> lock(state().mutex);
    if (!valid_stream(stream)) return record(cudaErrorInvalidResourceHandle);
    if (queue_of(key).device != g.device) return record(cudaErrorInvalidValue);
    if (Capture* c = capture_of(key)) {  // a graph inside a capture (a child graph): not emulated
      c->invalid = true;
      return record(cudaErrorStreamCaptureUnsupported);
    }
    wake_context(g.device);
    order_with_default_stream(key);
    push(key, [key, items = g.items] {
      std::shared_future<void> tail;
      {
        std::lock_guard<std::mutex> lock(state().mutex);
        tail = pending_tail(key);
      }
      wait_for(tail);
      for (const auto& item : *items) item();
    });
  }
  if (run_at_once()) {
    finish(key);
    if (device_error() != cudaSuccess) return record(cudaErrorLaunchFailure);
  }
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (exec == nullptr) return record(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(state().mutex);
  delete reinterpret_cast<Graph*>(exec);  // a launch already queued keeps the list it runs
  --state().graphs_alive;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  if (graph == nullptr) return record(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(state().mutex);
  delete reinterpret_cast<Graph*>(graph);
  --state().graphs_alive;
  return cudaSuccess;
}
