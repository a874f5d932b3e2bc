// Finite-difference gradient checking (see gradcheck.h).
#include "autograd/gradcheck.h"

#include <cmath>

#include "autograd/ops.h"

namespace bcos {

namespace {
// A 0-dim view of the k-th element (row-major over the shape) of a possibly strided tensor on any
// device, to perturb in place.
Tensor element(const Tensor& t, int64_t k) {
  std::vector<int64_t> index(size_t(t.dim()));
  for (int d = t.dim() - 1; d >= 0; --d) {
    index[size_t(d)] = k % t.shape()[d];
    k /= t.shape()[d];
  }
  Tensor e = t.detach();
  for (int64_t i : index) e = e.select(0, i);
  return e;
}

std::vector<double> flat_values(const Tensor& t) { return t.detach().to_vector<double>(); }
}  // namespace

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, double eps, double atol,
                          double rtol) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (t.defined() && t.requires_grad())
      BCOS_CHECK(t.dtype() == DType::f64 && t.is_leaf(), "gradcheck: input ", i,
                 " must be a float64 leaf tensor, got ", t.dtype(), t.is_leaf() ? "" : " (not a leaf)", " on ",
                 t.device());
  }
  Tensor out = f(inputs);
  BCOS_CHECK(out.dtype() == DType::f64, "gradcheck: the function must return float64, got ", out.dtype());
  const int64_t n_out = out.numel();

  // Analytic Jacobians, one row per output element.
  std::vector<std::vector<double>> analytic(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].defined() && inputs[i].requires_grad())
      analytic[i].assign(size_t(n_out * inputs[i].numel()), 0.0);
  if (out.requires_grad()) {
    for (int64_t j = 0; j < n_out; ++j) {
      for (const Tensor& t : inputs)
        if (t.defined()) t.zero_grad();
      std::vector<double> onehot(static_cast<size_t>(n_out), 0.0);
      onehot[size_t(j)] = 1.0;
      out.backward(from_vector(onehot, out.shape(), DType::f64).to(out.device()), /*retain_graph=*/true);
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (analytic[i].empty() || !inputs[i].grad().defined()) continue;
        std::vector<double> g = flat_values(inputs[i].grad());
        std::copy(g.begin(), g.end(), analytic[i].begin() + j * inputs[i].numel());
      }
    }
  }

  GradcheckResult r;
  NoGradGuard no_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (analytic[i].empty()) continue;
    const Tensor& t = inputs[i];
    for (int64_t k = 0; k < t.numel(); ++k) {
      Tensor v = element(t, k);  // shares t's storage: f sees the perturbation
      const double orig = v.item();
      v.fill_(orig + eps);
      std::vector<double> plus = flat_values(f(inputs));
      v.fill_(orig - eps);
      std::vector<double> minus = flat_values(f(inputs));
      v.fill_(orig);
      for (int64_t j = 0; j < n_out; ++j) {
        double numeric = (plus[size_t(j)] - minus[size_t(j)]) / (2 * eps);
        double a = analytic[i][size_t(j * t.numel() + k)];
        double err = std::abs(a - numeric);
        r.max_abs_error = std::max(r.max_abs_error, err);
        if (r.ok && !(err <= atol + rtol * std::abs(numeric))) {
          r.ok = false;
          r.message = str("gradcheck: input ", i, " (shape ", t.shape(), ") element ", k,
                          ", output element ", j, ": analytic ", a, " vs numeric ", numeric);
        }
      }
    }
  }
  for (const Tensor& t : inputs)
    if (t.defined()) t.zero_grad();
  return r;
}

}  // namespace bcos
