// The optimizer steps as ops: argument checks, then one fused kernel per parameter on its
// device. They run outside the graph (no node, no backward), like PyTorch's in-place updates
// under no_grad; the kernels need contiguous operands, so a strided parameter or gradient is
// updated through a contiguous copy.
#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace bcos {

using namespace detail;

namespace {

// Raises unless t matches param's shape, dtype and device.
void check_like(const char* op, const Tensor& param, const Tensor& t, const char* what) {
  check_defined(op, t, what);
  BCOS_CHECK(t.shape() == param.shape(), op, ": ", what, " has shape ", t.shape(), " but the parameter has ",
             param.shape());
  check_same_dtype(op, param, t);
  check_same_device(op, param, t);
}

void check_param(const char* op, const Tensor& param) {
  check_defined(op, param, "parameter");
  BCOS_CHECK(param.dtype() == DType::f32 || param.dtype() == DType::f64, op,
             ": parameters must be floating-point, got ", dtype_name(param.dtype()));
}

// Runs update(p, s...) on contiguous views, copying back whatever had to be made contiguous.
template <class F>
void on_contiguous(std::initializer_list<Tensor> state, F&& update) {
  std::vector<Tensor> dense;
  for (const Tensor& t : state) dense.push_back(t.defined() && !t.is_contiguous() ? t.contiguous() : t);
  update(dense);
  size_t i = 0;
  for (const Tensor& t : state) {
    if (t.defined() && !t.is_contiguous()) kernel::copy(t, dense[i]);
    ++i;
  }
}

// A 16-bit parameter and its state step in float32 copies, written back rounded once (the
// gradient is only read): as PyTorch's kernels compute such steps.
template <class F>
void in_float32(std::initializer_list<Tensor> tensors, F&& step) {
  std::vector<Tensor> wide;
  for (const Tensor& t : tensors) wide.push_back(t.defined() ? raw_to(t, DType::f32, t.device()) : t);
  step(wide);
  size_t i = 0;
  for (const Tensor& t : tensors) {
    if (t.defined() && i != 1) kernel::copy(t, wide[i]);  // (index 1: the gradient)
    ++i;
  }
}

// The tensors a step wrote, marked changed (as PyTorch's in-place updates under no_grad): a graph
// that saved a parameter before the step refuses to run its backward with the new values.
void bump_versions(std::initializer_list<Tensor> written) {
  for (const Tensor& t : written)
    if (t.defined()) t.bump_version();
}

}  // namespace

void sgd_step_(const Tensor& param, const Tensor& grad, const Tensor& momentum, const SgdStepParams& p) {
  const char* op = "sgd_step_";
  check_defined(op, param, "parameter");
  if (is_half(param)) {
    check_like(op, param, grad, "gradient");
    if (p.momentum != 0) check_like(op, param, momentum, "momentum buffer");
    in_float32({param, grad, momentum}, [&](const std::vector<Tensor>& w) { sgd_step_(w[0], w[1], w[2], p); });
    return bump_versions({param, momentum});
  }
  check_param(op, param);
  check_like(op, param, grad, "gradient");
  if (p.momentum != 0) check_like(op, param, momentum, "momentum buffer");
  const Tensor g = grad.contiguous();
  on_contiguous({param, momentum}, [&](const std::vector<Tensor>& t) { kernel::sgd_step(t[0], g, t[1], p); });
  bump_versions({param, momentum});
}

void adam_step_(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const Tensor& max_exp_avg_sq, const AdamStepParams& p) {
  const char* op = "adam_step_";
  check_defined(op, param, "parameter");
  if (is_half(param)) {
    for (const auto& [t, what] : {std::pair{grad, "gradient"}, {exp_avg, "exp_avg"}, {exp_avg_sq, "exp_avg_sq"}})
      check_like(op, param, t, what);
    if (p.amsgrad) check_like(op, param, max_exp_avg_sq, "max_exp_avg_sq");
    in_float32({param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq}, [&](const std::vector<Tensor>& w) {
      adam_step_(w[0], w[1], w[2], w[3], w[4], p);
    });
    return bump_versions({param, exp_avg, exp_avg_sq, max_exp_avg_sq});
  }
  check_param(op, param);
  check_like(op, param, grad, "gradient");
  check_like(op, param, exp_avg, "exp_avg");
  check_like(op, param, exp_avg_sq, "exp_avg_sq");
  if (p.amsgrad) check_like(op, param, max_exp_avg_sq, "max_exp_avg_sq");
  BCOS_CHECK(p.bias2_sqrt > 0, op, ": bias correction sqrt(1 - beta2^t) must be positive (step count >= 1)");
  const Tensor g = grad.contiguous();
  on_contiguous({param, exp_avg, exp_avg_sq, max_exp_avg_sq}, [&](const std::vector<Tensor>& t) {
    kernel::adam_step(t[0], g, t[1], t[2], t[3], p);
  });
  bump_versions({param, exp_avg, exp_avg_sq, max_exp_avg_sq});
}

}  // namespace bcos
