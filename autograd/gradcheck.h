// gradcheck: compares the analytic Jacobian (one backward pass per output element) with
// central finite differences, in float64, for every input that requires grad. Inputs may be
// non-contiguous views and of different (broadcastable) shapes, on the CPU or a GPU (as
// torch.autograd.gradcheck: each perturbation is written into the input where it lives).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace bcos {

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;  // largest |analytic - numeric| over all Jacobian entries
  std::string message;       // where and by how much the first mismatch is, when not ok
};

// Passes when |analytic - numeric| <= atol + rtol * |numeric| for every Jacobian entry.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                          const std::vector<Tensor>& inputs, double eps = 1e-6,
                          double atol = 1e-5, double rtol = 1e-3);

}  // namespace bcos
