// What the CPU and CUDA kernels share, so the public op can switch on the device and hand the
// same description to either backend: the op kinds, the parameter structs of the kernel list
// (tensor/kernels.inc), and the ops' names for messages.
#pragma once

#include <cstdint>

#include "tensor/dtype.h"

namespace bcos {

enum class UnaryOp {
  neg, abs, sign, exp, log, log1p, sqrt, rsqrt, square, reciprocal, sin, cos, tanh, sigmoid,
  relu, gelu_erf, gelu_tanh, silu,
  quick_gelu,  // CLIP's x · σ(1.702 x), with its composed ops' roundings (elementwise_math.h)
  pow_scalar,  // x ^ p0
  clamp,       // clamp(x, p0, p1); a NaN bound means "no bound"
};

enum class BinaryOp {
  add, sub, mul, div, pow, minimum, maximum,
  add_relu,                // max(x + y, 0): a residual sum and its ReLU in one pass
  eq, ne, lt, le, gt, ge,  // produce bool
};

constexpr bool is_comparison(BinaryOp op) { return op >= BinaryOp::eq; }

enum class ReduceOp {
  sum, mean, prod, max, min, all, any,
  norm1, norm2, logsumexp,
  var,  // with a correction (0: population, 1: sample)
};

// The generator's distributions (tensor/random_math.h).
enum class RandomDist { uniform, normal, integer };

// ---- kernel parameters --------------------------------------------------------------------------
// Autocast (autograd/autocast.h) hands the products of matmul and convolution an operand type:
// float32 (none), bfloat16 or float16. Both operands are rounded to it (to nearest even), the
// products are summed in float32 and the result is float32 (on CUDA a convolution's result
// passes through the operand type, as cuDNN writes it). Ignored for float64 tensors.

// Convolution: stride, padding, dilation per spatial dim (h, w) and groups.
struct Conv2dParams {
  int64_t stride[2] = {1, 1}, padding[2] = {0, 0}, dilation[2] = {1, 1}, groups = 1;
  DType operands = DType::f32;  // autocast's operand type (above)
};

// Pooling windows; also the B-cos patch norms, whose window is their convolution's.
struct Pool2dParams {
  int64_t kernel[2] = {1, 1}, stride[2] = {1, 1}, padding[2] = {0, 0}, dilation[2] = {1, 1};
  bool ceil_mode = false, count_include_pad = true;
  int64_t divisor_override = 0;  // 0: none
};

// Fused attention: logits = q kᵀ · scale (+ bias), key j hidden from query i when causal and j > i.
struct AttentionParams {
  double scale = 1;
  bool causal = false;
  // Under bf16 autocast (float32 q, k, v): every product multiplies bf16 roundings of its two
  // operands (q, k, v, dO, the probabilities and dS) and sums in float32, as a matmul does. CUDA's
  // tensor-core kernels also take bf16 q, k, v (and dO) as they are, with bf16 outputs and
  // gradients and a float32 lse and bias.
  bool bf16_operands = false;
  // float32 products may run on TF32 tensor cores (CUDA; allow_tf32() when the forward ran, so
  // the backward recomputes the same probabilities). The CPU kernels multiply in float32.
  bool tf32 = false;
};

// The B-cos scale |cos|^(b-1) of a max-out group of M units.
struct BcosScaleParams {
  double b = 2;
  int64_t max_out = 1;
  double eps_in = 0, eps_out = 0;  // n = sqrt(sumsq + eps_in) + eps_out
  // Epilogue (the kernels' post_scale / post_shift, per output channel): y -> y · a + c, then
  // max(·, 0) when relu — an evaluation-mode batch norm (+ ReLU) after the B-cos layer.
  bool relu = false;
};

// One optimizer step (tensor/optim_math.h), PyTorch's single-tensor update rules.
// on_device (CUDA only): the kernel reads its scalars from this device copy when it runs, not
// from the launch's arguments -- how a step inside a CUDA graph takes a new learning rate and step
// count at each replay (nn/optim.cpp rewrites the copy before each; tensor/cuda_graph.h).
struct SgdStepParams {
  double lr = 0, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  bool first_step = false;  // the momentum buffer starts at the gradient
  const SgdStepParams* on_device = nullptr;
};
struct AdamStepParams {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  double step_size = 0;   // lr / (1 − beta1^t)
  double bias2_sqrt = 1;  // sqrt(1 − beta2^t)
  bool decoupled = false, amsgrad = false;
  const AdamStepParams* on_device = nullptr;
};

// ---- names for messages ---------------------------------------------------------------------------
constexpr const char* op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::neg: return "neg";
    case UnaryOp::abs: return "abs";
    case UnaryOp::sign: return "sign";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::log1p: return "log1p";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::rsqrt: return "rsqrt";
    case UnaryOp::square: return "square";
    case UnaryOp::reciprocal: return "reciprocal";
    case UnaryOp::sin: return "sin";
    case UnaryOp::cos: return "cos";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::relu: return "relu";
    case UnaryOp::gelu_erf: return "gelu_erf";
    case UnaryOp::gelu_tanh: return "gelu_tanh";
    case UnaryOp::quick_gelu: return "quick_gelu";
    case UnaryOp::silu: return "silu";
    case UnaryOp::pow_scalar: return "pow_scalar";
    case UnaryOp::clamp: return "clamp";
  }
  return "?";
}

constexpr const char* op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::pow: return "pow";
    case BinaryOp::minimum: return "minimum";
    case BinaryOp::maximum: return "maximum";
    case BinaryOp::add_relu: return "add_relu";
    case BinaryOp::eq: return "eq";
    case BinaryOp::ne: return "ne";
    case BinaryOp::lt: return "lt";
    case BinaryOp::le: return "le";
    case BinaryOp::gt: return "gt";
    case BinaryOp::ge: return "ge";
  }
  return "?";
}

constexpr const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::mean: return "mean";
    case ReduceOp::prod: return "prod";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
    case ReduceOp::all: return "all";
    case ReduceOp::any: return "any";
    case ReduceOp::norm1: return "norm1";
    case ReduceOp::norm2: return "norm2";
    case ReduceOp::logsumexp: return "logsumexp";
    case ReduceOp::var: return "var";
  }
  return "?";
}

}  // namespace bcos
