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
             ": parameters must be float32 or float64, got ", dtype_name(param.dtype()));
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

}  // namespace

void sgd_step_(const Tensor& param, const Tensor& grad, const Tensor& momentum, const SgdStepParams& p) {
  const char* op = "sgd_step_";
  check_param(op, param);
  check_like(op, param, grad, "gradient");
  if (p.momentum != 0) check_like(op, param, momentum, "momentum buffer");
  const Tensor g = grad.contiguous();
  on_contiguous({param, momentum}, [&](const std::vector<Tensor>& t) { kernel::sgd_step(t[0], g, t[1], p); });
}

void adam_step_(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const Tensor& max_exp_avg_sq, const AdamStepParams& p) {
  const char* op = "adam_step_";
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
}

}  // namespace bcos
