// Elementwise CUDA kernels: unary maps with their fused derivatives and binary ops over
// broadcast (stride-0) operands, comparisons included. Every formula mirrors
// tensor/cpu/elementwise.cpp term for term (NaN handling of relu, clamp, minimum and maximum
// too), so the two backends differ only by the last-bit rounding of the math library.
//
// Each op is a template parameter, so the kernel for one op is straight-line code; the host
// turns the runtime op into that parameter with one switch.
#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhC = 0.044715;

// The math library in the precision of T (CUDA's float functions carry an f suffix).
template <class T> struct Math;
template <> struct Math<float> {
  static __device__ float exp(float x) { return ::expf(x); }
  static __device__ float log(float x) { return ::logf(x); }
  static __device__ float log1p(float x) { return ::log1pf(x); }
  static __device__ float sqrt(float x) { return ::sqrtf(x); }
  static __device__ float sin(float x) { return ::sinf(x); }
  static __device__ float cos(float x) { return ::cosf(x); }
  static __device__ float tanh(float x) { return ::tanhf(x); }
  static __device__ float erf(float x) { return ::erff(x); }
  static __device__ float pow(float x, float y) { return ::powf(x, y); }
  static __device__ float abs(float x) { return ::fabsf(x); }
};
template <> struct Math<double> {
  static __device__ double exp(double x) { return ::exp(x); }
  static __device__ double log(double x) { return ::log(x); }
  static __device__ double log1p(double x) { return ::log1p(x); }
  static __device__ double sqrt(double x) { return ::sqrt(x); }
  static __device__ double sin(double x) { return ::sin(x); }
  static __device__ double cos(double x) { return ::cos(x); }
  static __device__ double tanh(double x) { return ::tanh(x); }
  static __device__ double erf(double x) { return ::erf(x); }
  static __device__ double pow(double x, double y) { return ::pow(x, y); }
  static __device__ double abs(double x) { return ::fabs(x); }
};

template <class T>
__device__ __forceinline__ bool is_nan(T v) {
  return v != v;
}

// Scalar parameters of a unary op, already in T. A NaN clamp bound means "no bound".
template <class T>
struct UnaryParams {
  T p0 = 0, p1 = 0;
  bool has_lo = false, has_hi = false;
};

template <UnaryOp OP, class T>
__device__ __forceinline__ T unary_forward(T v, const UnaryParams<T>& p) {
  using M = Math<T>;
  if constexpr (OP == UnaryOp::neg) return -v;
  else if constexpr (OP == UnaryOp::abs) return M::abs(v);
  else if constexpr (OP == UnaryOp::sign) return T((v > 0) - (v < 0));
  else if constexpr (OP == UnaryOp::exp) return M::exp(v);
  else if constexpr (OP == UnaryOp::log) return M::log(v);
  else if constexpr (OP == UnaryOp::log1p) return M::log1p(v);
  else if constexpr (OP == UnaryOp::sqrt) return M::sqrt(v);
  else if constexpr (OP == UnaryOp::rsqrt) return T(1) / M::sqrt(v);
  else if constexpr (OP == UnaryOp::square) return v * v;
  else if constexpr (OP == UnaryOp::reciprocal) return T(1) / v;
  else if constexpr (OP == UnaryOp::sin) return M::sin(v);
  else if constexpr (OP == UnaryOp::cos) return M::cos(v);
  else if constexpr (OP == UnaryOp::tanh) return M::tanh(v);
  else if constexpr (OP == UnaryOp::sigmoid) return T(1) / (T(1) + M::exp(-v));
  else if constexpr (OP == UnaryOp::relu) return v < T(0) ? T(0) : v;  // NaN stays NaN
  else if constexpr (OP == UnaryOp::gelu_erf)
    return T(0.5) * v * (T(1) + M::erf(v * T(kSqrt1_2)));
  else if constexpr (OP == UnaryOp::gelu_tanh) {
    T inner = T(kSqrt2OverPi) * (v + T(kGeluTanhC) * v * v * v);
    return T(0.5) * v * (T(1) + M::tanh(inner));
  } else if constexpr (OP == UnaryOp::silu) return v / (T(1) + M::exp(-v));
  else if constexpr (OP == UnaryOp::pow_scalar) return p.p0 == T(2) ? v * v : M::pow(v, p.p0);
  else if constexpr (OP == UnaryOp::clamp) {
    if (p.has_lo) v = is_nan(v) ? v : (v < p.p0 ? p.p0 : v);
    if (p.has_hi) v = is_nan(v) ? v : (v > p.p1 ? p.p1 : v);
    return v;
  }
}

// Ops whose derivative is cheaper in terms of the output y = f(x) than of x (as on the CPU).
constexpr bool derivative_uses_output(UnaryOp op) {
  return op == UnaryOp::exp || op == UnaryOp::sqrt || op == UnaryOp::rsqrt ||
         op == UnaryOp::reciprocal || op == UnaryOp::tanh || op == UnaryOp::sigmoid;
}

// g * f'(x), where s is x, or y for the ops flagged by derivative_uses_output.
template <UnaryOp OP, class T>
__device__ __forceinline__ T unary_backward_value(T g, T s, const UnaryParams<T>& p) {
  using M = Math<T>;
  if constexpr (OP == UnaryOp::neg) return -g;
  else if constexpr (OP == UnaryOp::abs) return g * T((s > 0) - (s < 0));
  else if constexpr (OP == UnaryOp::sign) return T(0);
  else if constexpr (OP == UnaryOp::exp) return g * s;
  else if constexpr (OP == UnaryOp::log) return g / s;
  else if constexpr (OP == UnaryOp::log1p) return g / (T(1) + s);
  else if constexpr (OP == UnaryOp::sqrt) return g / (T(2) * s);
  else if constexpr (OP == UnaryOp::rsqrt) return T(-0.5) * g * s * s * s;
  else if constexpr (OP == UnaryOp::square) return T(2) * g * s;
  else if constexpr (OP == UnaryOp::reciprocal) return -g * s * s;
  else if constexpr (OP == UnaryOp::sin) return g * M::cos(s);
  else if constexpr (OP == UnaryOp::cos) return -g * M::sin(s);
  else if constexpr (OP == UnaryOp::tanh) return g * (T(1) - s * s);
  else if constexpr (OP == UnaryOp::sigmoid) return g * s * (T(1) - s);
  else if constexpr (OP == UnaryOp::relu) return s > T(0) ? g : T(0);
  else if constexpr (OP == UnaryOp::gelu_erf) {
    T cdf = T(0.5) * (T(1) + M::erf(s * T(kSqrt1_2)));
    T pdf = T(kInvSqrt2Pi) * M::exp(T(-0.5) * s * s);
    return g * (cdf + s * pdf);
  } else if constexpr (OP == UnaryOp::gelu_tanh) {
    T inner = T(kSqrt2OverPi) * (s + T(kGeluTanhC) * s * s * s);
    T t = M::tanh(inner);
    T dinner = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhC) * s * s);
    return g * (T(0.5) * (T(1) + t) + T(0.5) * s * (T(1) - t * t) * dinner);
  } else if constexpr (OP == UnaryOp::silu) {
    T sig = T(1) / (T(1) + M::exp(-s));
    return g * sig * (T(1) + s * (T(1) - sig));
  } else if constexpr (OP == UnaryOp::pow_scalar) {
    return p.p0 == T(0) ? T(0) : g * p.p0 * M::pow(s, p.p0 - T(1));
  } else if constexpr (OP == UnaryOp::clamp) {
    bool inside = (!p.has_lo || s >= p.p0) && (!p.has_hi || s <= p.p1);
    return inside ? g : T(0);
  }
}

// op_kinds.h's is_comparison is not constexpr; kernels choose their output type at compile time.
constexpr bool writes_bool(BinaryOp op) { return op >= BinaryOp::eq; }

template <class T>
__device__ __forceinline__ T nan_propagating_min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (is_nan(a) || is_nan(b)) return a + b;  // NaN
  }
  return a < b ? a : b;
}
template <class T>
__device__ __forceinline__ T nan_propagating_max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (is_nan(a) || is_nan(b)) return a + b;
  }
  return a > b ? a : b;
}

template <BinaryOp OP, class T>
__device__ __forceinline__ auto binary_value(T x, T y) {
  if constexpr (OP == BinaryOp::add) return T(x + y);
  else if constexpr (OP == BinaryOp::sub) return T(x - y);
  else if constexpr (OP == BinaryOp::mul) return T(x * y);
  else if constexpr (OP == BinaryOp::div) return T(x / y);
  else if constexpr (OP == BinaryOp::pow) {
    if constexpr (std::is_floating_point_v<T>) return Math<T>::pow(x, y);
    else return T(::pow(double(x), double(y)));  // integer powers as the CPU: through double
  } else if constexpr (OP == BinaryOp::minimum) return nan_propagating_min(x, y);
  else if constexpr (OP == BinaryOp::maximum) return nan_propagating_max(x, y);
  else if constexpr (OP == BinaryOp::eq) return bool(x == y);
  else if constexpr (OP == BinaryOp::ne) return bool(x != y);
  else if constexpr (OP == BinaryOp::lt) return bool(x < y);
  else if constexpr (OP == BinaryOp::le) return bool(x <= y);
  else if constexpr (OP == BinaryOp::gt) return bool(x > y);
  else if constexpr (OP == BinaryOp::ge) return bool(x >= y);
}

// ---- functors handed to the map kernels --------------------------------------------------------

template <UnaryOp OP, class T>
struct UnaryForwardFn {
  UnaryParams<T> p;
  __device__ T operator()(T v) const { return unary_forward<OP>(v, p); }
};

template <UnaryOp OP, class T>
struct UnaryBackwardFn {
  UnaryParams<T> p;
  __device__ T operator()(T g, T s) const { return unary_backward_value<OP>(g, s, p); }
};

template <BinaryOp OP, class T>
struct BinaryFn {
  __device__ auto operator()(T x, T y) const { return binary_value<OP>(x, y); }
};

// out = f(x) over a Geometry<2> of (out, x): dense, one strided dim, or fully general.
template <class Out, class In, class F>
__global__ void map1_kernel(Out* out, const In* x, Geometry<2> g, F f) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g.contiguous) {
    for (int64_t i = first; i < g.numel; i += step) out[i] = f(x[i]);
  } else if (g.ndim == 1) {
    const int64_t so = g.strides[0][0], sx = g.strides[1][0];
    for (int64_t i = first; i < g.numel; i += step) out[i * so] = f(x[i * sx]);
  } else {
    for (int64_t i = first; i < g.numel; i += step) {
      int64_t off[2];
      g.offsets(i, off);
      out[off[0]] = f(x[off[1]]);
    }
  }
}

// out = f(a, b) over a Geometry<3> of (out, a, b).
template <class Out, class In, class F>
__global__ void map2_kernel(Out* out, const In* a, const In* b, Geometry<3> g, F f) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g.contiguous) {
    for (int64_t i = first; i < g.numel; i += step) out[i] = f(a[i], b[i]);
  } else if (g.ndim == 1) {
    const int64_t so = g.strides[0][0], sa = g.strides[1][0], sb = g.strides[2][0];
    for (int64_t i = first; i < g.numel; i += step) out[i * so] = f(a[i * sa], b[i * sb]);
  } else {
    for (int64_t i = first; i < g.numel; i += step) {
      int64_t off[3];
      g.offsets(i, off);
      out[off[0]] = f(a[off[1]], b[off[2]]);
    }
  }
}

// ---- runtime op -> template parameter ----------------------------------------------------------

template <class F>
void with_unary_op(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::neg: return f.template operator()<UnaryOp::neg>();
    case UnaryOp::abs: return f.template operator()<UnaryOp::abs>();
    case UnaryOp::sign: return f.template operator()<UnaryOp::sign>();
    case UnaryOp::exp: return f.template operator()<UnaryOp::exp>();
    case UnaryOp::log: return f.template operator()<UnaryOp::log>();
    case UnaryOp::log1p: return f.template operator()<UnaryOp::log1p>();
    case UnaryOp::sqrt: return f.template operator()<UnaryOp::sqrt>();
    case UnaryOp::rsqrt: return f.template operator()<UnaryOp::rsqrt>();
    case UnaryOp::square: return f.template operator()<UnaryOp::square>();
    case UnaryOp::reciprocal: return f.template operator()<UnaryOp::reciprocal>();
    case UnaryOp::sin: return f.template operator()<UnaryOp::sin>();
    case UnaryOp::cos: return f.template operator()<UnaryOp::cos>();
    case UnaryOp::tanh: return f.template operator()<UnaryOp::tanh>();
    case UnaryOp::sigmoid: return f.template operator()<UnaryOp::sigmoid>();
    case UnaryOp::relu: return f.template operator()<UnaryOp::relu>();
    case UnaryOp::gelu_erf: return f.template operator()<UnaryOp::gelu_erf>();
    case UnaryOp::gelu_tanh: return f.template operator()<UnaryOp::gelu_tanh>();
    case UnaryOp::silu: return f.template operator()<UnaryOp::silu>();
    case UnaryOp::pow_scalar: return f.template operator()<UnaryOp::pow_scalar>();
    case UnaryOp::clamp: return f.template operator()<UnaryOp::clamp>();
  }
  fail("cuda unary: unknown op ", int(op));
}

template <class F>
void with_binary_op(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::add: return f.template operator()<BinaryOp::add>();
    case BinaryOp::sub: return f.template operator()<BinaryOp::sub>();
    case BinaryOp::mul: return f.template operator()<BinaryOp::mul>();
    case BinaryOp::div: return f.template operator()<BinaryOp::div>();
    case BinaryOp::pow: return f.template operator()<BinaryOp::pow>();
    case BinaryOp::minimum: return f.template operator()<BinaryOp::minimum>();
    case BinaryOp::maximum: return f.template operator()<BinaryOp::maximum>();
    case BinaryOp::eq: return f.template operator()<BinaryOp::eq>();
    case BinaryOp::ne: return f.template operator()<BinaryOp::ne>();
    case BinaryOp::lt: return f.template operator()<BinaryOp::lt>();
    case BinaryOp::le: return f.template operator()<BinaryOp::le>();
    case BinaryOp::gt: return f.template operator()<BinaryOp::gt>();
    case BinaryOp::ge: return f.template operator()<BinaryOp::ge>();
  }
  fail("cuda binary: unknown op ", int(op));
}

template <class T>
UnaryParams<T> make_params(double p0, double p1) {
  UnaryParams<T> p;
  p.p0 = T(p0);
  p.p1 = T(p1);
  p.has_lo = !(p0 != p0);
  p.has_hi = !(p1 != p1);
  return p;
}

// Checks that every tensor is on one CUDA device and returns it.
int common_device(std::initializer_list<const Tensor*> tensors, const char* op) {
  const Tensor* first = *tensors.begin();
  BCOS_CHECK(first->defined() && first->is_cuda(), op, ": expected CUDA tensors");
  for (const Tensor* t : tensors)
    BCOS_CHECK(t->defined() && t->device() == first->device(), op,
               ": all tensors must be on ", first->device(), ", got one on ",
               t->defined() ? t->device().name() : std::string("(undefined)"));
  return first->device().index;
}

void check_same_shape(const Tensor& out, const Tensor& in, const char* op) {
  BCOS_CHECK(in.shape() == out.shape(), op, ": operand shape ", in.shape(),
             " differs from output shape ", out.shape(), " (broadcast inputs first)");
}

}  // namespace

void unary(UnaryOp op, const Tensor& x, const Tensor& out, double p0, double p1) {
  int device = common_device({&x, &out}, "cuda::unary");
  check_same_shape(out, x, "cuda::unary");
  const DType dt = x.dtype();
  BCOS_CHECK(dt == DType::f32 || dt == DType::f64, "cuda unary ", unary_op_name(op),
             ": expected a float32 or float64 tensor, got ", dtype_name(dt));
  BCOS_CHECK(out.dtype() == dt, "cuda unary ", unary_op_name(op), ": output is ",
             dtype_name(out.dtype()), ", input is ", dtype_name(dt));
  if (out.numel() == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  Geometry<2> g = make_geometry<2>(out.shape(), {&out.strides(), &x.strides()});
  dispatch_float(dt, "cuda unary", [&]<class T>() {
    UnaryParams<T> params = make_params<T>(p0, p1);
    with_unary_op(op, [&]<UnaryOp OP>() {
      map1_kernel<<<blocks_for(g.numel), kThreads, 0, stream>>>(
          static_cast<T*>(out.raw_data()), static_cast<const T*>(x.raw_data()), g,
          UnaryForwardFn<OP, T>{params});
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y,
                    const Tensor& grad_x, double p0, double p1) {
  const bool on_output = derivative_uses_output(op);
  const Tensor& s = on_output ? y : x;
  BCOS_CHECK(s.defined(), "cuda unary_backward ", unary_op_name(op), ": needs ",
             on_output ? "the forward output y" : "the input x");
  int device = common_device({&grad, &s, &grad_x}, "cuda::unary_backward");
  check_same_shape(grad_x, grad, "cuda::unary_backward");
  check_same_shape(grad_x, s, "cuda::unary_backward");
  const DType dt = s.dtype();
  BCOS_CHECK(dt == DType::f32 || dt == DType::f64, "cuda unary_backward ", unary_op_name(op),
             ": expected a float32 or float64 tensor, got ", dtype_name(dt));
  BCOS_CHECK(grad.dtype() == dt && grad_x.dtype() == dt, "cuda unary_backward ",
             unary_op_name(op), ": grad ", dtype_name(grad.dtype()), ", grad_x ",
             dtype_name(grad_x.dtype()), " and input ", dtype_name(dt), " must agree");
  if (grad_x.numel() == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  Geometry<3> g =
      make_geometry<3>(grad_x.shape(), {&grad_x.strides(), &grad.strides(), &s.strides()});
  dispatch_float(dt, "cuda unary_backward", [&]<class T>() {
    UnaryParams<T> params = make_params<T>(p0, p1);
    with_unary_op(op, [&]<UnaryOp OP>() {
      map2_kernel<<<blocks_for(g.numel), kThreads, 0, stream>>>(
          static_cast<T*>(grad_x.raw_data()), static_cast<const T*>(grad.raw_data()),
          static_cast<const T*>(s.raw_data()), g, UnaryBackwardFn<OP, T>{params});
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  int device = common_device({&a, &b, &out}, "cuda::binary");
  check_same_shape(out, a, "cuda::binary");
  check_same_shape(out, b, "cuda::binary");
  const DType dt = a.dtype();
  const char* name = binary_op_name(op);
  BCOS_CHECK(b.dtype() == dt, "cuda binary ", name, ": operands are ", dtype_name(dt), " and ",
             dtype_name(b.dtype()));
  const bool comparison = is_comparison(op);
  if (comparison) {
    BCOS_CHECK(out.dtype() == DType::boolean, "cuda binary ", name,
               ": a comparison writes bool, output is ", dtype_name(out.dtype()));
  } else {
    BCOS_CHECK(out.dtype() == dt, "cuda binary ", name, ": output is ",
               dtype_name(out.dtype()), ", operands are ", dtype_name(dt));
  }
  const bool arithmetic_type = dt == DType::f32 || dt == DType::f64 || dt == DType::i64;
  const bool comparable_type = arithmetic_type || dt == DType::u8 || dt == DType::boolean;
  BCOS_CHECK(comparison ? comparable_type : arithmetic_type, "cuda binary ", name,
             ": unsupported dtype ", dtype_name(dt),
             comparison ? " (comparisons take float32, float64, int64, uint8 or bool)"
                        : " (arithmetic takes float32, float64 or int64)");
  if (out.numel() == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  Geometry<3> g = make_geometry<3>(out.shape(), {&out.strides(), &a.strides(), &b.strides()});

  auto run = [&]<class T>() {
    with_binary_op(op, [&]<BinaryOp OP>() {
      // uint8 / bool reach here only for comparisons (checked above): instantiate nothing else.
      if constexpr (writes_bool(OP) || !(std::is_same_v<T, uint8_t> || std::is_same_v<T, bool>)) {
        using Out = std::conditional_t<writes_bool(OP), bool, T>;
        map2_kernel<<<blocks_for(g.numel), kThreads, 0, stream>>>(
            static_cast<Out*>(out.raw_data()), static_cast<const T*>(a.raw_data()),
            static_cast<const T*>(b.raw_data()), g, BinaryFn<OP, T>{});
        BCOS_CUDA_CHECK_LAUNCH();
      }
    });
  };
  switch (dt) {
    case DType::f32: return run.template operator()<float>();
    case DType::f64: return run.template operator()<double>();
    case DType::i64: return run.template operator()<int64_t>();
    case DType::u8: return run.template operator()<uint8_t>();
    case DType::boolean: return run.template operator()<bool>();
    default: fail("cuda binary ", name, ": unsupported dtype ", dtype_name(dt));
  }
}

}  // namespace bcos::cuda
