// GraphedStep: a training step's forward and backward run eagerly, or captured once in a CUDA
// graph and replayed (the examples' --cuda-graph): the pattern of tensor/cuda_graph.h, once.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "tensor/cuda_graph.h"
#include "tensor/tensor.h"

namespace examples {

class GraphedStep {
  using Tensor = bcos::Tensor;

 public:
  using Step = std::function<void(const std::vector<Tensor>& inputs)>;
  // step(inputs), eagerly until `capture` is first true; then captured once, reading copies of the
  // inputs that the graph keeps, and replayed at that call and every later one (the inputs copied
  // into those copies first). What step leaves behind (loss, gradients) holds each replay's values.
  void run(const std::vector<Tensor>& inputs, bool capture, const Step& step) {
    if (graph_.captured()) {
      for (size_t i = 0; i < inputs.size(); ++i) kept_[i].copy_(inputs[i]);
    } else if (capture) {
      kept_.clear();
      for (const Tensor& t : inputs) kept_.push_back(t.clone());
      graph_.capture(kept_.at(0).device(), [&] { step(kept_); });
    } else {
      step(inputs);
      return;
    }
    graph_.replay();
    ++replays_;
  }
  int64_t replays() const { return replays_; }
  // The graph and its memory (a whole step's activations) given back: before evaluating.
  void release() {
    graph_ = bcos::CudaGraph();
    kept_.clear();
  }

 private:
  bcos::CudaGraph graph_;
  std::vector<Tensor> kept_;
  int64_t replays_ = 0;
};

}  // namespace examples
