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

void take(const StateDict& in, std::vector<Tensor>& state, const std::vector<Tensor>& params, const char* name,
          const char* op) {
  state.assign(params.size(), Tensor());
  for (size_t i = 0; i < params.size(); ++i)
    if (const Tensor* t = find(in, std::to_string(i) + "." + name)) {
      BCOS_CHECK(t->shape() == params[i].shape(), op, ": state ", i, ".", name, " has shape ", t->shape(),
                 " but parameter ", i, " has ", params[i].shape());
      state[i] = t->to(params[i].dtype()).to(params[i].device()).clone();
    }
}

}  // namespace

// ---- SGD -----------------------------------------------------------------------------------
SGD::SGD(std::vector<Tensor> params, SGDOptions o) : Optimizer(std::move(params), o.lr, "SGD"), options(o) {
  BCOS_CHECK(o.momentum >= 0 && o.weight_decay >= 0, "SGD: momentum ", o.momentum, " and weight_decay ",
             o.weight_decay, " must be non-negative");
  BCOS_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0), "SGD: Nesterov needs momentum > 0 and dampening 0");
  momentum_.resize(params_.size());
}

// Every parameter with a gradient in one list op (a launch per 32 parameters on a GPU); those
// whose momentum buffer starts this step form a list of their own (their p.first_step).
void SGD::step() {
  check_some_gradient();
  const bool capturing = cuda_graph_capturing();
  if (capturing)  // (before any state is made: a failed capture leaves the tensors it made unfilled)
    for (size_t i = 0; i < params_.size(); ++i)
      BCOS_CHECK(!params_[i].grad().defined() || options.momentum == 0 || momentum_[i].defined(),
                 "SGD.step inside a CUDA graph capture: parameter ", i, " ", params_[i].shape(),
                 " has no momentum buffer yet, and a replay would start it afresh each time; "
                 "take an eager step first");
  NoGradGuard no_grad;
  std::vector<Tensor> params[2], grads[2], bufs[2];  // [first_step]
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& g = params_[i].grad();
    if (!g.defined()) continue;
    Tensor& buf = momentum_[i];
    const bool first = options.momentum != 0 && !buf.defined();
    if (first) buf = empty_like(params_[i]);
    params[first].push_back(params_[i].data_alias());
    grads[first].push_back(g);
    bufs[first].push_back(buf);
  }
  for (const bool first : {false, true})
    sgd_step_(params[first], grads[first], bufs[first],
              {.lr = lr, .momentum = options.momentum, .dampening = options.dampening,
               .weight_decay = options.weight_decay, .nesterov = options.nesterov, .first_step = first});
  if (!capturing) {
    ++steps_;
    return;
  }
  // The step happens at each replay, with this learning rate; the hook keeps the tensors the
  // graph writes alive with it.
  cuda_graph_on_replay([this, alive = alive_, captured_lr = lr, keep = std::move(params[0]), bufs = std::move(bufs[0])] {
    BCOS_CHECK(*alive, "CudaGraph.replay: the SGD optimizer whose step the graph captured was destroyed");
    BCOS_CHECK(lr == captured_lr, "CudaGraph.replay: the graph's SGD step was captured with learning rate ",
               captured_lr, " but lr is now ", lr, " (a replay cannot change it: capture the step again, or "
               "step the optimizer outside the graph)");
    ++steps_;
  });
}

StateDict SGD::state_dict() const {
  StateDict out;
  put(out, momentum_, "momentum_buffer");
  return out;
}

void SGD::load_state_dict(const StateDict& state, int64_t steps) {
  take(state, momentum_, params_, "momentum_buffer", "SGD::load_state_dict");
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

// Parameters stepped as many times before share their bias corrections, so each such set is one
// list op (usually all of them: one set).
void Adam::step() {
  // (As torch.optim.Adam without capturable: its bias corrections come from the host's step count.)
  BCOS_CHECK(!cuda_graph_capturing(), name_, ".step: not inside a CUDA graph capture (a replay would repeat the "
             "captured step count's bias corrections and learning rate); step it after each replay");
  check_some_gradient();
  NoGradGuard no_grad;
  ++steps_;
  struct Set {
    std::vector<Tensor> params, grads, m, v, vmax;
  };
  std::map<int64_t, Set> by_step;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& g = params_[i].grad();
    if (!g.defined()) continue;
    if (!exp_avg_[i].defined()) {
      exp_avg_[i] = zeros_like(params_[i]);
      exp_avg_sq_[i] = zeros_like(params_[i]);
      if (options.amsgrad) max_exp_avg_sq_[i] = zeros_like(params_[i]);
    }
    Set& set = by_step[++param_steps_[i]];
    set.params.push_back(params_[i].data_alias());
    set.grads.push_back(g);
    set.m.push_back(exp_avg_[i]);
    set.v.push_back(exp_avg_sq_[i]);
    set.vmax.push_back(max_exp_avg_sq_[i]);
  }
  for (const auto& [t, set] : by_step) {
    const AdamStepParams step{.lr = lr, .beta1 = options.beta1, .beta2 = options.beta2, .eps = options.eps,
                              .weight_decay = options.weight_decay,
                              .step_size = lr / (1 - std::pow(options.beta1, double(t))),
                              .bias2_sqrt = std::sqrt(1 - std::pow(options.beta2, double(t))),
                              .decoupled = decoupled_, .amsgrad = options.amsgrad};
    adam_step_(set.params, set.grads, set.m, set.v, set.vmax, step);
  }
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
  std::vector<Tensor> m, v, vmax;
  take(state, m, params_, "exp_avg", name_);
  take(state, v, params_, "exp_avg_sq", name_);
  take(state, vmax, params_, "max_exp_avg_sq", name_);
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
  exp_avg_ = std::move(m), exp_avg_sq_ = std::move(v), max_exp_avg_sq_ = std::move(vmax);
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
