// The op kinds that CPU and CUDA kernels share, so the public op can switch on the device and
// hand the same description to either backend.
#pragma once

namespace bcos {

enum class UnaryOp {
  neg, abs, sign, exp, log, log1p, sqrt, rsqrt, square, reciprocal, sin, cos, tanh, sigmoid,
  relu, gelu_erf, gelu_tanh, silu,
  pow_scalar,  // x ^ p0
  clamp,       // clamp(x, p0, p1); a NaN bound means "no bound"
};

enum class BinaryOp {
  add, sub, mul, div, pow, minimum, maximum,
  eq, ne, lt, le, gt, ge,  // produce bool
};

inline bool is_comparison(BinaryOp op) { return op >= BinaryOp::eq; }

enum class ReduceOp {
  sum, mean, prod, max, min, all, any,
  norm1, norm2, logsumexp,
  var,  // with a correction (0: population, 1: sample)
};

}  // namespace bcos
