// Optimizers with PyTorch's update rules, step for step: SGD (momentum, dampening, Nesterov,
// weight decay), Adam (L2 weight decay, AMSGrad) and AdamW (decoupled decay); gradient clipping
// by global norm. Their state (momentum buffers, moments, step counts) is a StateDict plus a few
// numbers, so a training checkpoint can hold it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nn/state_dict.h"
#include "tensor/tensor.h"

namespace bcos::nn {

class Optimizer {
 public:
  Optimizer(std::vector<Tensor> params, double lr, const char* name);
  virtual ~Optimizer();
  // (A CUDA graph that captured a step holds on to its optimizer: neither copied nor moved.)
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  virtual void step() = 0;
  void zero_grad();  // drops the gradients (PyTorch's set_to_none=True)
  // Raises when no parameter has a gradient: backward was not called, or the tensors the
  // optimizer holds are no longer the model's (Module::to() replaces them: build the optimizer
  // after moving the model).

  double lr;  // schedules set this
  const std::vector<Tensor>& params() const { return params_; }
  int64_t steps_taken() const { return steps_; }
  const char* type_name() const { return name_; }

  // Tensors by "<param index>.<name>" (e.g. "3.exp_avg", "3.step"), and the step count.
  virtual StateDict state_dict() const = 0;
  virtual void load_state_dict(const StateDict& state, int64_t steps) = 0;

 protected:
  void check_some_gradient() const;
  std::vector<Tensor> params_;
  int64_t steps_ = 0;
  const char* name_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // false once destroyed (a graph's hooks ask)
  // GPU memory a captured step's kernels read their scalars from, rewritten before each replay.
  // Made by an eager step, outside any capture: memory allocated inside one may be a temporary's
  // that the replay writes before the step reads it.
  Tensor replay_scalars_;
  uint64_t captured_in_ = 0;  // the capture that took a step last (cuda_graph_capture().serial)
  void make_replay_scalars(const Tensor& first, size_t bytes);  // (an eager step on a GPU)
  // A captured step's checks (every stepped parameter on the capture's device, one step per
  // capture, an eager step taken before); returns replay_scalars_.
  const Tensor& begin_captured_step(size_t bytes);
};

struct SGDOptions {
  double lr = 0.1, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
};

// A CUDA graph may capture an optimizer's step (PyTorch's whole-network capture): each replay is
// then a step, counted, with the learning rate and options of that moment -- a schedule that sets
// `lr` between replays works, as with PyTorch's capturable=True and a tensor lr. The state must
// exist before the capture (warm up with an eager step); load_state_dict copies into it, so a
// graph steps a loaded state. One step per optimizer per capture. What decides which kernels the
// capture holds (momentum on or off, AMSGrad) cannot change afterwards: a replay after it did raises.
class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, SGDOptions options);
  void step() override;
  StateDict state_dict() const override;
  void load_state_dict(const StateDict& state, int64_t steps) override;
  SGDOptions options;

 private:
  std::vector<Tensor> momentum_;  // undefined until the first step (PyTorch starts it at the gradient)
};

struct AdamOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool amsgrad = false;
};

// decoupled = false: Adam (decay added to the gradient); true: AdamW (params shrink by lr * wd).
// A captured step (see SGD) steps, at each replay, the parameters that had gradients at the
// capture, each with its own step count's bias corrections.
class Adam : public Optimizer {
 public:
  Adam(std::vector<Tensor> params, AdamOptions options, bool decoupled = false);
  void step() override;
  StateDict state_dict() const override;
  void load_state_dict(const StateDict& state, int64_t steps) override;
  AdamOptions options;

 private:
  bool decoupled_;
  std::vector<Tensor> exp_avg_, exp_avg_sq_, max_exp_avg_sq_;
  std::vector<int64_t> param_steps_;  // per parameter, as PyTorch: steps in which it had a gradient
};

// AdamW with PyTorch's default weight decay (0.01).
class AdamW : public Adam {
 public:
  AdamW(std::vector<Tensor> params, AdamOptions options = {.weight_decay = 1e-2}) : Adam(std::move(params), options, true) {}
};

// Scales all gradients so their global norm is at most max_norm; returns the norm before, as a
// 0-dim tensor on the first gradient's device (as torch.nn.utils.clip_grad_norm_: no host round trip).
Tensor clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0);

}  // namespace bcos::nn
