// The optimizers: their state and bookkeeping here, the per-element update in one fused op over
// all parameters (autograd/optim.cpp -> tensor/optim_math.h), written as PyTorch's single-tensor
// implementations write it, operation for operation, so float32 results agree to rounding.
#include "nn/optim.h"

#include <cmath>
#include <map>

#include "autograd/autograd.h"
#include "autograd/ops.h"
#include "tensor/cuda_graph.h"

namespace bcos::nn {

Optimizer::Optimizer(std::vector<Tensor> params, double lr_, const char* name) : lr(lr_), params_(std::move(params)), name_(name) {
  BCOS_CHECK(lr_ >= 0, name, ": learning rate ", lr_, " must be non-negative");
  for (size_t i = 0; i < params_.size(); ++i) {
    BCOS_CHECK(params_[i].defined(), name, ": parameter ", i, " is an undefined tensor");
    BCOS_CHECK(params_[i].is_floating_point(), name, ": parameter ", i, " is ", dtype_name(params_[i].dtype()),
               ", not floating point");
    BCOS_CHECK(params_[i].is_leaf(), name, ": parameter ", i, " is not a leaf (it was computed; detach it)");
  }
}

Optimizer::~Optimizer() { *alive_ = false; }

void Optimizer::zero_grad() {
  for (Tensor& p : params_) p.zero_grad();
}

void Optimizer::make_replay_scalars(const Tensor& first, size_t bytes) {
  if (first.is_cuda() && (!replay_scalars_.defined() || replay_scalars_.device() != first.device() ||
                          replay_scalars_.numel() < int64_t(bytes)))
    replay_scalars_ = empty({int64_t(bytes)}, {DType::u8, first.device()});
}

const Tensor& Optimizer::begin_captured_step(size_t bytes) {
  const CudaGraphCapture capture = cuda_graph_capture();
  for (size_t i = 0; i < params_.size(); ++i)
    BCOS_CHECK(!params_[i].grad().defined() || params_[i].device() == capture.device, name_, ".step inside a CUDA "
               "graph capture on ", capture.device, ": parameter ", i, " ", params_[i].shape(), " is on ",
               params_[i].device(), " (a graph steps the parameters of its own device)");
  BCOS_CHECK(captured_in_ != capture.serial, name_, ".step: a second step of this optimizer inside one CUDA graph "
             "capture (each replay hands the optimizer's captured step its scalars in one place); capture one step "
             "per graph");
  BCOS_CHECK(replay_scalars_.defined() && replay_scalars_.device() == capture.device &&
                 replay_scalars_.numel() >= int64_t(bytes),
             name_, ".step inside a CUDA graph capture: take an eager step on ", capture.device, " first (it makes the "
             "device memory the captured step reads its learning rate from at each replay)");
  captured_in_ = capture.serial;
  return replay_scalars_;
}

void Optimizer::check_some_gradient() const {
  for (const Tensor& p : params_)
    if (p.grad().defined()) return;
  fail(name_, ".step: none of the ", params_.size(), " parameters has a gradient (call backward() first; if the "
       "model was moved with to() after the optimizer was built, build the optimizer after moving it)");
}

namespace {

// state[i] as a StateDict entry, when defined.
void put(StateDict& out, const std::vector<Tensor>& state, const char* name) {
  for (size_t i = 0; i < state.size(); ++i)
    if (state[i].defined()) out.emplace_back(std::to_string(i) + "." + name, state[i]);
}

// The loaded value of each parameter's `name` state (undefined where the dict has none).
std::vector<Tensor> take(const StateDict& in, const std::vector<Tensor>& params, const char* name, const char* op) {
  std::vector<Tensor> loaded(params.size());
  for (size_t i = 0; i < params.size(); ++i)
    if (const Tensor* t = find(in, std::to_string(i) + "." + name)) {
      BCOS_CHECK(t->shape() == params[i].shape(), op, ": state ", i, ".", name, " has shape ", t->shape(),
                 " but parameter ", i, " has ", params[i].shape());
      loaded[i] = t->to(params[i].dtype()).to(params[i].device());
    }
  return loaded;
}

// Makes `loaded` the state: copied into the tensors already there (so a CUDA graph that captured a
// step goes on stepping the loaded state), else as tensors of its own.
void adopt(std::vector<Tensor>& state, const std::vector<Tensor>& loaded) {
  NoGradGuard no_grad;
  for (size_t i = 0; i < state.size(); ++i) {
    if (!loaded[i].defined()) state[i] = Tensor();
    else if (state[i].defined() && state[i].shape() == loaded[i].shape() && state[i].dtype() == loaded[i].dtype() &&
             state[i].device() == loaded[i].device())
      state[i].copy_(loaded[i]);
    else
      state[i] = loaded[i].clone();
  }
}

// Whether state[i] is still the tensor a captured step writes (not dropped or replaced).
bool same_state(const Tensor& now, const Tensor& captured) {
  return now.defined() == captured.defined() && (!now.defined() || now.raw_data() == captured.raw_data());
}

}  // namespace

// ---- SGD -----------------------------------------------------------------------------------
SGD::SGD(std::vector<Tensor> params, SGDOptions o) : Optimizer(std::move(params), o.lr, "SGD"), options(o) {
  BCOS_CHECK(o.momentum >= 0 && o.weight_decay >= 0, "SGD: momentum ", o.momentum, " and weight_decay ",
             o.weight_decay, " must be non-negative");
  BCOS_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0), "SGD: Nesterov needs momentum > 0 and dampening 0");
  momentum_.resize(params_.size());
}

namespace {
SgdStepParams sgd_params(const SGDOptions& o, double lr, bool first_step) {
  return {.lr = lr, .momentum = o.momentum, .dampening = o.dampening, .weight_decay = o.weight_decay,
          .nesterov = o.nesterov, .first_step = first_step};
}
}  // namespace

// Every parameter with a gradient in one list op (a launch per 32 parameters on a GPU); those
// whose momentum buffer starts this step form a list of their own (their p.first_step).
void SGD::step() {
  check_some_gradient();
  const bool capturing = cuda_graph_capturing();
  Tensor scalars;
  if (capturing) {  // (before any state is made: a failed capture leaves the tensors it made unfilled)
    for (size_t i = 0; i < params_.size(); ++i)
      BCOS_CHECK(!params_[i].grad().defined() || options.momentum == 0 || momentum_[i].defined(),
                 "SGD.step inside a CUDA graph capture: parameter ", i, " ", params_[i].shape(),
                 " has no momentum buffer yet, and a replay would start it afresh each time; "
                 "take an eager step first");
    scalars = begin_captured_step(sizeof(SgdStepParams));
  }
  NoGradGuard no_grad;
  std::vector<size_t> index;                         // (captured: the parameters stepped)
  std::vector<Tensor> params[2], grads[2], bufs[2];  // [first_step]
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& g = params_[i].grad();
    if (!g.defined()) continue;
    Tensor& buf = momentum_[i];
    const bool first = options.momentum != 0 && !buf.defined();
    if (first) buf = empty_like(params_[i]);
    if (capturing) index.push_back(i);
    params[first].push_back(params_[i].data_alias());
    grads[first].push_back(g);
    bufs[first].push_back(buf);
  }
  if (!capturing) {
    for (const bool first : {false, true}) sgd_step_(params[first], grads[first], bufs[first], sgd_params(options, lr, first));
    make_replay_scalars(params[0].empty() ? params[1][0] : params[0][0], sizeof(SgdStepParams));
    ++steps_;
    return;
  }
  // Captured (one list: every buffer exists), the step happens at each replay with the learning
  // rate and options of that moment, which its hook writes where the kernels read them. The hook
  // keeps the tensors the graph writes alive with it.
  SgdStepParams captured = sgd_params(options, lr, false);
  captured.on_device = static_cast<const SgdStepParams*>(scalars.raw_data());
  sgd_step_(params[0], grads[0], bufs[0], captured);
  cuda_graph_on_replay([this, alive = alive_, with_momentum = options.momentum != 0, scalars, index = std::move(index),
                        keep = std::move(params[0]), bufs = std::move(bufs[0])](ReplayPhase phase) {
    if (phase == ReplayPhase::check) {  // (nothing of *this is read before it is known to be alive)
      BCOS_CHECK(*alive, "CudaGraph.replay: the SGD optimizer whose step the graph captured was destroyed");
      BCOS_CHECK((options.momentum != 0) == with_momentum, "CudaGraph.replay: the graph's SGD step was captured ",
                 with_momentum ? "with" : "without", " momentum buffers, but momentum is now ", options.momentum,
                 " (capture the step again)");
      for (size_t k = 0; k < index.size(); ++k)
        BCOS_CHECK(!with_momentum || same_state(momentum_[index[k]], bufs[k]), "CudaGraph.replay: the momentum buffer "
                   "of parameter ", index[k], " was dropped since the graph captured its SGD step (capture it again)");
    } else if (phase == ReplayPhase::queue) {
      const SgdStepParams now = sgd_params(options, lr, false);
      store_for_replay(scalars.device(), scalars.raw_data(), &now, sizeof now);
    } else {
      ++steps_;
    }
  });
}

StateDict SGD::state_dict() const {
  StateDict out;
  put(out, momentum_, "momentum_buffer");
  return out;
}

void SGD::load_state_dict(const StateDict& state, int64_t steps) {
  adopt(momentum_, take(state, params_, "momentum_buffer", "SGD::load_state_dict"));
  steps_ = steps;
}

// ---- Adam / AdamW --------------------------------------------------------------------------
Adam::Adam(std::vector<Tensor> params, AdamOptions o, bool decoupled)
    : Optimizer(std::move(params), o.lr, decoupled ? "AdamW" : "Adam"), options(o), decoupled_(decoupled) {
  BCOS_CHECK(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1 && o.eps >= 0 && o.weight_decay >= 0, name_,
             ": betas must be in [0, 1), eps and weight_decay non-negative");
  exp_avg_.resize(params_.size());
  exp_avg_sq_.resize(params_.size());
  max_exp_avg_sq_.resize(params_.size());
  param_steps_.assign(params_.size(), 0);
}

namespace {
// The scalars of a parameter's t-th step (t >= 1).
AdamStepParams adam_params(const AdamOptions& o, double lr, bool decoupled, int64_t t) {
  return {.lr = lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = o.eps, .weight_decay = o.weight_decay,
          .step_size = lr / (1 - std::pow(o.beta1, double(t))), .bias2_sqrt = std::sqrt(1 - std::pow(o.beta2, double(t))),
          .decoupled = decoupled, .amsgrad = o.amsgrad};
}
}  // namespace

// Parameters stepped as many times before share their bias corrections, so each such set is one
// list op (usually all of them: one set). Inside a CUDA graph capture the sets are fixed and each
// replay steps them with the step counts, learning rate and options of that moment (as PyTorch's
// capturable=True, with the counts kept on the host and handed to the kernels before each replay).
void Adam::step() {
  check_some_gradient();
  const bool capturing = cuda_graph_capturing();
  // (Room for a set per parameter: each set's scalars at its own offset.)
  const size_t bytes = params_.size() * sizeof(AdamStepParams);
  Tensor all_scalars;
  if (capturing) {  // (before any state is made, as SGD's)
    for (size_t i = 0; i < params_.size(); ++i)
      BCOS_CHECK(!params_[i].grad().defined() || exp_avg_[i].defined(), name_, ".step inside a CUDA graph capture: "
                 "parameter ", i, " ", params_[i].shape(), " has no moments yet, and a replay would start them afresh "
                 "each time; take an eager step first");
    all_scalars = begin_captured_step(bytes);
  }
  NoGradGuard no_grad;
  struct Set {
    std::vector<size_t> index;
    std::vector<Tensor> params, grads, m, v, vmax;
  };
  std::map<int64_t, Set> by_step;  // eager: by the step each takes now; captured: by the steps taken so far
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& g = params_[i].grad();
    if (!g.defined()) continue;
    if (!exp_avg_[i].defined()) {
      exp_avg_[i] = zeros_like(params_[i]);
      exp_avg_sq_[i] = zeros_like(params_[i]);
      if (options.amsgrad) max_exp_avg_sq_[i] = zeros_like(params_[i]);
    }
    Set& set = by_step[capturing ? param_steps_[i] : ++param_steps_[i]];
    if (capturing) set.index.push_back(i);
    set.params.push_back(params_[i].data_alias());
    set.grads.push_back(g);
    set.m.push_back(exp_avg_[i]);
    set.v.push_back(exp_avg_sq_[i]);
    set.vmax.push_back(max_exp_avg_sq_[i]);
  }
  if (!capturing) {
    ++steps_;
    for (const auto& [t, set] : by_step)
      adam_step_(set.params, set.grads, set.m, set.v, set.vmax, adam_params(options, lr, decoupled_, t));
    make_replay_scalars(by_step.begin()->second.params[0], bytes);
    return;
  }
  struct Captured {
    std::vector<size_t> index;  // the set's parameters
    Tensor scalars;             // where its kernels read their scalars
    std::vector<Tensor> m, v, vmax;
  };
  std::vector<Captured> sets;
  std::vector<Tensor> keep{all_scalars};  // (the parameters the graph writes)
  for (auto& [t, set] : by_step) {
    const Tensor scalars = all_scalars.narrow(0, int64_t(sets.size() * sizeof(AdamStepParams)),
                                              int64_t(sizeof(AdamStepParams)));
    AdamStepParams captured = adam_params(options, lr, decoupled_, t + 1);
    captured.on_device = static_cast<const AdamStepParams*>(scalars.raw_data());
    adam_step_(set.params, set.grads, set.m, set.v, set.vmax, captured);
    keep.insert(keep.end(), set.params.begin(), set.params.end());
    sets.push_back({std::move(set.index), scalars, std::move(set.m), std::move(set.v), std::move(set.vmax)});
  }
  cuda_graph_on_replay([this, alive = alive_, name = name_, amsgrad = options.amsgrad, sets = std::move(sets),
                        keep = std::move(keep)](ReplayPhase phase) {
    if (phase == ReplayPhase::check) {  // (nothing of *this is read before it is known to be alive)
      BCOS_CHECK(*alive, "CudaGraph.replay: the ", name, " optimizer whose step the graph captured was destroyed");
      BCOS_CHECK(options.amsgrad == amsgrad, "CudaGraph.replay: the graph's ", name, " step was captured with AMSGrad ",
                 amsgrad ? "on" : "off", ", but it is ", options.amsgrad ? "on" : "off", " now (capture the step again)");
      for (const Captured& set : sets)
        for (size_t k = 0; k < set.index.size(); ++k) {
          const size_t i = set.index[k], i0 = set.index[0];
          BCOS_CHECK(same_state(exp_avg_[i], set.m[k]) && same_state(exp_avg_sq_[i], set.v[k]) &&
                         (!amsgrad || same_state(max_exp_avg_sq_[i], set.vmax[k])),
                     "CudaGraph.replay: the moments of parameter ", i, " were dropped since the graph captured its ",
                     name, " step (capture it again)");
          BCOS_CHECK(param_steps_[i] == param_steps_[i0], "CudaGraph.replay: parameters ", i0, " and ", i, " of the "
                     "graph's ", name, " step have taken ", param_steps_[i0], " and ", param_steps_[i], " steps (eager "
                     "steps without one's gradient, or a loaded state, since the capture), but the graph steps them "
                     "with one bias correction (capture the step again)");
        }
    } else if (phase == ReplayPhase::queue) {
      for (const Captured& set : sets) {
        const AdamStepParams now = adam_params(options, lr, decoupled_, param_steps_[set.index[0]] + 1);
        store_for_replay(set.scalars.device(), set.scalars.raw_data(), &now, sizeof now);
      }
    } else {
      for (const Captured& set : sets)
        for (size_t i : set.index) ++param_steps_[i];
      ++steps_;
    }
  });
}

StateDict Adam::state_dict() const {
  StateDict out;
  put(out, exp_avg_, "exp_avg");
  put(out, exp_avg_sq_, "exp_avg_sq");
  put(out, max_exp_avg_sq_, "max_exp_avg_sq");
  for (size_t i = 0; i < params_.size(); ++i)
    if (exp_avg_[i].defined()) out.emplace_back(std::to_string(i) + ".step", scalar_tensor(double(param_steps_[i]), DType::i64));
  return out;
}

void Adam::load_state_dict(const StateDict& state, int64_t steps) {
  const std::vector<Tensor> m = take(state, params_, "exp_avg", name_), v = take(state, params_, "exp_avg_sq", name_),
                            vmax = take(state, params_, "max_exp_avg_sq", name_);
  std::vector<int64_t> counts(params_.size(), 0);
  for (size_t i = 0; i < params_.size(); ++i) {
    // Every parameter's moments come together; AMSGrad needs its running maximum too.
    BCOS_CHECK(m[i].defined() == v[i].defined() && (!options.amsgrad || m[i].defined() == vmax[i].defined()), name_,
               ".load_state_dict: the state of parameter ", i, " is incomplete (exp_avg ",
               m[i].defined() ? "present" : "missing", ", exp_avg_sq ", v[i].defined() ? "present" : "missing",
               options.amsgrad ? (vmax[i].defined() ? ", max_exp_avg_sq present" : ", max_exp_avg_sq missing") : "", ")");
    if (!m[i].defined()) continue;
    const Tensor* t = find(state, std::to_string(i) + ".step");
    counts[i] = t ? t->item<int64_t>() : steps;
  }
  adopt(exp_avg_, m), adopt(exp_avg_sq_, v), adopt(max_exp_avg_sq_, vmax);  // (all checked first)
  param_steps_ = std::move(counts);
  steps_ = steps;
}

// ---- clipping ------------------------------------------------------------------------------
Tensor clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type) {
  BCOS_CHECK(max_norm > 0 && norm_type > 0, "clip_grad_norm_: max_norm ", max_norm, " and norm_type ", norm_type,
             " must be positive");
  NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const Tensor& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return zeros(Shape{});
  // As torch: the norm of the per-tensor norms (gathered on the first gradient's device), and
  // every gradient multiplied by min(1, max_norm / (total + 1e-6)) computed there -- no value
  // goes through the host, so a GPU step does not wait here.
  const Device device = grads[0].device();
  std::vector<Tensor> norms;
  bool mixed = false, any_f64 = false;
  for (const Tensor& g : grads) {
    norms.push_back((std::isinf(norm_type) ? amax(abs(g)) : norm(g, norm_type)).to(device));
    mixed |= g.dtype() != grads[0].dtype(), any_f64 |= g.dtype() == DType::f64;
  }
  if (mixed)  // (torch.stack promotes: float64 if any, else float32)
    for (Tensor& n : norms) n = n.to(any_f64 ? DType::f64 : DType::f32);
  const Tensor total = std::isinf(norm_type) ? amax(stack(norms)) : norm(stack(norms), norm_type);
  const Tensor coef = clamp_max(max_norm / (total + 1e-6), 1.0);
  // Each gradient times the factor in its own dtype (as torch's g.mul_(coef): a 0-dim factor does
  // not promote).
  for (const Tensor& g : grads) g.data_alias().mul_(coef.to(g.dtype()).to(g.device()));
  return total;
}

}  // namespace bcos::nn
