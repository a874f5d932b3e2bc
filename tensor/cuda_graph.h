// CUDA graphs (as torch.cuda.CUDAGraph): record a stretch of GPU work once, then replay it with a
// single launch. For training steps whose host side -- hundreds of kernel launches, autograd's
// bookkeeping -- costs as much as the GPU's work (small batches, small models).
//
//   model->train();  step(x, y);                        // warm up first: cuDNN choices, optimizer state
//   CudaGraph graph;
//   Tensor loss;
//   graph.capture(Device::cuda(0), [&] {                // runs the host code; the GPU runs nothing yet
//     optimizer.zero_grad();
//     loss = cross_entropy(model->forward(static_x), static_y);
//     loss.backward();
//   });
//   for (auto& [x, y] : batches) {
//     static_x.copy_(x), static_y.copy_(y);            // a replay reads the tensors the capture saw
//     graph.replay();                                   // loss and every .grad hold this batch's values
//     optimizer.step();                                 // or inside the capture (after a warm-up step)
//   }
// (The optimizer's step may go inside the capture, as in PyTorch's whole-network capture: each
// replay then steps with the learning rate and step count of the moment -- nn/optim.h.)
//
// The rules are CUDA's and PyTorch's: a replay reuses the addresses and the scalars of the capture
// (shapes and random seeds are fixed), so inputs are refreshed by copying into the tensors the
// capture read, and what must change per replay either stays outside or is handed over by a
// replay hook (below: how a captured optimizer step gets its learning rate). Memory allocated while
// capturing belongs to the graph until it is destroyed; tensors made during the capture (loss,
// gradients) are overwritten by each replay. What cannot be captured raises while capturing: a
// host round trip (item(), a GradScaler's step, anomaly detection), a random draw (dropout), an
// optimizer step before its state exists, a copy through pageable host memory, collectives
// (DataParallel), a second capture while another thread captures. Graphs one thread captures
// share its capture stream's cuBLAS workspace (as PyTorch's default capture stream), and graphs
// that captured one optimizer's step share the memory its scalars are handed over in: replay
// them one after another, on one stream, from one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "tensor/device.h"

namespace bcos {

enum class ReplayPhase { check, queue, done };  // (cuda_graph_on_replay)

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  CudaGraph(CudaGraph&& other) noexcept;
  CudaGraph& operator=(CudaGraph&& other) noexcept;

  // Records the GPU work `work` queues on `device` (on a stream of the graph's own, current for
  // the calling thread meanwhile). Its host code runs once; the work runs at each replay. A graph
  // captured before is replaced. Raises (and keeps nothing) when the work does something a graph
  // cannot hold.
  void capture(Device device, const std::function<void()>& work);
  // Queues the captured work on the device's current stream (the host returns at once).
  void replay();
  bool captured() const { return handle_ != nullptr; }
  Device device() const { return device_; }

 private:
  void* handle_ = nullptr;
  Device device_;
  std::vector<std::function<void(ReplayPhase)>> on_replay_;  // host code each replay runs
};

// Whether the calling thread is capturing a CUDA graph now (ops that cannot be captured ask).
bool cuda_graph_capturing();
// The capture the calling thread is making: its device, and a number no other capture of the
// process has (serial 0: none).
struct CudaGraphCapture {
  Device device;
  uint64_t serial = 0;
};
CudaGraphCapture cuda_graph_capture();

// Host code each replay of the graph the calling thread is capturing runs, in three phases:
// `check` for every hook first (one that raises stops the replay: nothing is queued, nothing
// changed), then `queue` (work for the device queued before the graph's: store_for_replay), then
// the graph is queued, then `done` (host bookkeeping once the replay is queued). A captured
// optimizer step checks that its state is the captured one, writes the step's scalars where the
// captured kernels read them, and counts the step. Kept with the graph; dropped when its capture
// fails.
void cuda_graph_on_replay(std::function<void(ReplayPhase)> hook);

// Queues on the device's current stream a write of `count` (at most 256) host bytes to
// `device_address` on `device` -- the bytes are taken now, nothing waits. A hook's way to hand the
// graph's kernels what changes per replay: captured kernels that read their scalars from device
// memory (an optimizer step's learning rate and bias corrections) find the new ones there.
void store_for_replay(Device device, void* device_address, const void* bytes, size_t count);

}  // namespace bcos
