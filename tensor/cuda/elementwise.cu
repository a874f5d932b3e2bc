// Elementwise CUDA kernels: unary maps with their fused derivatives and binary ops over
// broadcast (stride-0) operands, comparisons included: the kernels, around the per-element
// formulas of tensor/elementwise_math.h, which the CPU loops run too, so the two backends differ
// only by the last-bit rounding of the math library.
#include "tensor/cuda/internal.h"
#include "tensor/elementwise_math.h"

namespace bcos::cuda {

namespace {

using math::UnaryParams;

// ---- functors handed to the map kernels --------------------------------------------------------

template <UnaryOp OP, class T>
struct UnaryForwardFn {
  UnaryParams<T> p;
  __device__ T operator()(T v) const { return math::unary_forward<OP>(v, p); }
};

template <UnaryOp OP, class T>
struct UnaryBackwardFn {
  UnaryParams<T> p;
  __device__ T operator()(T g, T s) const { return math::unary_backward<OP>(g, s, p); }
};

template <BinaryOp OP, class T>
struct BinaryFn {
  __device__ auto operator()(T x, T y) const { return math::binary<OP>(x, y); }
};

// Rounds a float to S and back: QuickGELU's intermediates on 16-bit tensors (elementwise_math.h).
template <class S>
struct RoundThrough {
  static constexpr bool kKeeps = false;
  __device__ float operator()(float v) const { return convert_value<float>(convert_value<S>(v)); }
};

// float16 / bfloat16 (S, CUDA's __half / __nv_bfloat16): widened to float, computed by the float
// formulas, the result rounded once -- as PyTorch's opmath kernels and the CPU's (cpu/elementwise.cpp);
// QuickGELU rounds its intermediates too, as its composed ops do.
template <UnaryOp OP, class S>
struct UnaryHalfFn {
  UnaryParams<float> p;
  __device__ S operator()(S v) const {
    const float x = convert_value<float>(v);
    if constexpr (OP == UnaryOp::quick_gelu)
      return convert_value<S>(math::quick_gelu_forward(x, RoundThrough<S>{}, math::PlainSigmoid{}));
    else
      return convert_value<S>(math::unary_forward<OP>(x, p));
  }
};

template <UnaryOp OP, class S>
struct UnaryBackwardHalfFn {
  UnaryParams<float> p;
  __device__ S operator()(S g, S s) const {
    const float gf = convert_value<float>(g), sf = convert_value<float>(s);
    if constexpr (OP == UnaryOp::quick_gelu)
      return convert_value<S>(math::quick_gelu_backward(gf, sf, RoundThrough<S>{}, math::PlainSigmoid{}));
    else
      return convert_value<S>(math::unary_backward<OP>(gf, sf, p));
  }
};

// Operands A and B each S or float (a float32 scalar beside a 16-bit tensor keeps its value); with
// S = float, a float32 op widening its one 16-bit operand.
template <BinaryOp OP, class S, class A, class B>
struct BinaryHalfFn {
  __device__ auto operator()(A x, B y) const {
    if constexpr (is_comparison(OP)) return math::binary<OP>(convert_value<float>(x), convert_value<float>(y));
    else return convert_value<S>(math::binary<OP>(convert_value<float>(x), convert_value<float>(y)));
  }
};

// ---- dense operands in 16-byte packs (internal.h: Pack) ------------------------------------------
// Returns how many leading elements went in packs (0 where the operands do not allow it).
template <class Out, class In, class F>
__device__ __forceinline__ int64_t map1_packed(Out* out, const In* x, int64_t n, int64_t first, int64_t step, F f) {
  if constexpr (sizeof(Out) == sizeof(In) && sizeof(In) <= 8) {
    if (!aligned16(out, x)) return 0;
    constexpr int P = Pack<In>::kSize;
    const int64_t packs = n / P;
    for (int64_t p = first; p < packs; p += step) {
      const Pack<In> xp = pack_at(x, p);
      Pack<Out> o;
BCOS_UNROLL
      for (int j = 0; j < P; ++j) o.v[j] = f(xp.v[j]);
      pack_at(out, p) = o;
    }
    return packs * P;
  }
  return 0;
}

template <class Out, class In, class F, class InB = In>
__device__ __forceinline__ int64_t map2_packed(Out* out, const In* a, const InB* b, int64_t n, int64_t first,
                                               int64_t step, F f) {
  if constexpr (sizeof(Out) == sizeof(In) && sizeof(InB) == sizeof(In) && sizeof(In) <= 8) {
    if (!aligned16(out, a, b)) return 0;
    constexpr int P = Pack<In>::kSize;
    const int64_t packs = n / P;
    for (int64_t p = first; p < packs; p += step) {
      const Pack<In> ap = pack_at(a, p);
      const Pack<InB> bp = pack_at(b, p);
      Pack<Out> o;
BCOS_UNROLL
      for (int j = 0; j < P; ++j) o.v[j] = f(ap.v[j], bp.v[j]);
      pack_at(out, p) = o;
    }
    return packs * P;
  }
  return 0;
}

// The grid for a map: a thread per pack where the operands may go in packs, else per element
// (either way the grid-stride loops cover every element).
template <class Out, class In, int N, class InB = In>
unsigned map_blocks(const Geometry<N>& g) {
  constexpr bool packable = sizeof(Out) == sizeof(In) && sizeof(InB) == sizeof(In) && sizeof(In) <= 8;
  return blocks_for(packable && g.contiguous ? (g.numel + Pack<In>::kSize - 1) / Pack<In>::kSize : g.numel);
}

// out = f(x) over a Geometry<2> of (out, x): dense, one strided dim, or fully general.
template <class Out, class In, class F>
__global__ void map1_kernel(Out* out, const In* x, Geometry<2> g, F f) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g.contiguous) {
    const int64_t done = map1_packed(out, x, g.numel, first, step, f);
    for (int64_t i = done + first; i < g.numel; i += step) out[i] = f(x[i]);
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
template <class Out, class In, class F, class InB = In>
__global__ void map2_kernel(Out* out, const In* a, const InB* b, Geometry<3> g, F f) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g.contiguous) {
    const int64_t done = map2_packed(out, a, b, g.numel, first, step, f);
    for (int64_t i = done + first; i < g.numel; i += step) out[i] = f(a[i], b[i]);
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
  BCOS_CHECK(is_floating(dt), "cuda unary ", op_name(op), ": expected a floating-point tensor, got ", dtype_name(dt));
  BCOS_CHECK(out.dtype() == dt, "cuda unary ", op_name(op), ": output is ",
             dtype_name(out.dtype()), ", input is ", dtype_name(dt));
  if (out.numel() == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  Geometry<2> g = make_geometry<2>(out.shape(), {&out.strides(), &x.strides()});
  if (is_half_float(dt)) {
    const UnaryParams<float> params = math::make_unary_params<float>(p0, p1);
    return dispatch_half(dt, [&]<class S>() {
      math::with_unary_op(op, [&]<UnaryOp OP>() {
        map1_kernel<<<map_blocks<S, S>(g), kThreads, 0, stream>>>(
            static_cast<S*>(out.raw_data()), static_cast<const S*>(x.raw_data()), g, UnaryHalfFn<OP, S>{params});
        BCOS_CUDA_CHECK_LAUNCH();
      });
    });
  }
  dispatch_float(dt, "cuda unary", [&]<class T>() {
    UnaryParams<T> params = math::make_unary_params<T>(p0, p1);
    math::with_unary_op(op, [&]<UnaryOp OP>() {
      map1_kernel<<<map_blocks<T, T>(g), kThreads, 0, stream>>>(
          static_cast<T*>(out.raw_data()), static_cast<const T*>(x.raw_data()), g,
          UnaryForwardFn<OP, T>{params});
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y,
                    const Tensor& grad_x, double p0, double p1) {
  const bool on_output = math::derivative_uses_output(op);
  const Tensor& s = on_output ? y : x;
  BCOS_CHECK(s.defined(), "cuda unary_backward ", op_name(op), ": needs ",
             on_output ? "the forward output y" : "the input x");
  int device = common_device({&grad, &s, &grad_x}, "cuda::unary_backward");
  check_same_shape(grad_x, grad, "cuda::unary_backward");
  check_same_shape(grad_x, s, "cuda::unary_backward");
  const DType dt = s.dtype();
  BCOS_CHECK(is_floating(dt), "cuda unary_backward ", op_name(op), ": expected a floating-point tensor, got ",
             dtype_name(dt));
  BCOS_CHECK(grad.dtype() == dt && grad_x.dtype() == dt, "cuda unary_backward ",
             op_name(op), ": grad ", dtype_name(grad.dtype()), ", grad_x ",
             dtype_name(grad_x.dtype()), " and input ", dtype_name(dt), " must agree");
  if (grad_x.numel() == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  Geometry<3> g =
      make_geometry<3>(grad_x.shape(), {&grad_x.strides(), &grad.strides(), &s.strides()});
  if (is_half_float(dt)) {
    const UnaryParams<float> params = math::make_unary_params<float>(p0, p1);
    return dispatch_half(dt, [&]<class S>() {
      math::with_unary_op(op, [&]<UnaryOp OP>() {
        map2_kernel<<<map_blocks<S, S>(g), kThreads, 0, stream>>>(
            static_cast<S*>(grad_x.raw_data()), static_cast<const S*>(grad.raw_data()),
            static_cast<const S*>(s.raw_data()), g, UnaryBackwardHalfFn<OP, S>{params});
        BCOS_CUDA_CHECK_LAUNCH();
      });
    });
  }
  dispatch_float(dt, "cuda unary_backward", [&]<class T>() {
    UnaryParams<T> params = math::make_unary_params<T>(p0, p1);
    math::with_unary_op(op, [&]<UnaryOp OP>() {
      map2_kernel<<<map_blocks<T, T>(g), kThreads, 0, stream>>>(
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
  const char* name = op_name(op);
  const bool comparison = is_comparison(op);
  // A float32 result of a float32 and a 16-bit operand: widened as it is read (one pass, not a
  // widened copy and then the op; as PyTorch's kernels cast their operands on the fly).
  if (!comparison && out.dtype() == DType::f32 && is_half_float(a.dtype()) != is_half_float(b.dtype())) {
    const DType half = is_half_float(a.dtype()) ? a.dtype() : b.dtype(), wide = is_half_float(a.dtype()) ? b.dtype() : a.dtype();
    BCOS_CHECK(wide == DType::f32, "cuda binary ", name, ": operands are ", dtype_name(a.dtype()), " and ",
               dtype_name(b.dtype()), " into ", dtype_name(out.dtype()),
               " (a float32 op takes float32 and at most one 16-bit operand)");
    if (out.numel() == 0) return;
    DeviceGuard guard(device);
    cudaStream_t stream = stream_of(device);
    Geometry<3> g = make_geometry<3>(out.shape(), {&out.strides(), &a.strides(), &b.strides()});
    auto run = [&]<class A, class B>() {
      math::with_binary_op(op, [&]<BinaryOp OP>() {
        if constexpr (!is_comparison(OP)) {
          map2_kernel<<<map_blocks<float, A, 3, B>(g), kThreads, 0, stream>>>(
              static_cast<float*>(out.raw_data()), static_cast<const A*>(a.raw_data()),
              static_cast<const B*>(b.raw_data()), g, BinaryHalfFn<OP, float, A, B>{});
          BCOS_CUDA_CHECK_LAUNCH();
        }
      });
    };
    return dispatch_half(half, [&]<class S>() {
      if (a.dtype() == DType::f32) return run.template operator()<float, S>();
      return run.template operator()<S, float>();
    });
  }
  // 16-bit floats: both operands of that type, or one a float32 scalar beside it (kept in float32).
  const DType dt = a.dtype() == DType::f32 && is_half_float(b.dtype()) ? b.dtype() : a.dtype();
  const bool half = is_half_float(dt);
  auto operand_ok = [&](DType t) { return t == dt || (half && t == DType::f32); };
  BCOS_CHECK(operand_ok(a.dtype()) && operand_ok(b.dtype()) && (!half || a.dtype() == dt || b.dtype() == dt),
             "cuda binary ", name, ": operands are ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()));
  if (comparison) {
    BCOS_CHECK(out.dtype() == DType::boolean, "cuda binary ", name,
               ": a comparison writes bool, output is ", dtype_name(out.dtype()));
  } else {
    BCOS_CHECK(out.dtype() == dt, "cuda binary ", name, ": output is ",
               dtype_name(out.dtype()), ", operands are ", dtype_name(dt));
  }
  const bool arithmetic_type = dt == DType::f32 || dt == DType::f64 || dt == DType::i64 || half;
  const bool comparable_type = arithmetic_type || dt == DType::u8 || dt == DType::boolean;
  BCOS_CHECK(comparison ? comparable_type : arithmetic_type, "cuda binary ", name,
             ": unsupported dtype ", dtype_name(dt),
             comparison ? " (comparisons take floating-point, int64, uint8 or bool tensors)"
                        : " (arithmetic takes floating-point or int64 tensors)");
  if (out.numel() == 0) return;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  Geometry<3> g = make_geometry<3>(out.shape(), {&out.strides(), &a.strides(), &b.strides()});

  if (half) {
    auto run_half = [&]<class S, class A, class B>() {
      math::with_binary_op(op, [&]<BinaryOp OP>() {
        using Out = std::conditional_t<is_comparison(OP), bool, S>;
        map2_kernel<<<map_blocks<Out, A, 3, B>(g), kThreads, 0, stream>>>(
            static_cast<Out*>(out.raw_data()), static_cast<const A*>(a.raw_data()),
            static_cast<const B*>(b.raw_data()), g, BinaryHalfFn<OP, S, A, B>{});
        BCOS_CUDA_CHECK_LAUNCH();
      });
    };
    return dispatch_half(dt, [&]<class S>() {
      if (a.dtype() == DType::f32) return run_half.template operator()<S, float, S>();
      if (b.dtype() == DType::f32) return run_half.template operator()<S, S, float>();
      return run_half.template operator()<S, S, S>();
    });
  }

  auto run = [&]<class T>() {
    math::with_binary_op(op, [&]<BinaryOp OP>() {
      // uint8 / bool reach here only for comparisons (checked above): instantiate nothing else.
      if constexpr (is_comparison(OP) || !(std::is_same_v<T, uint8_t> || std::is_same_v<T, bool>)) {
        using Out = std::conditional_t<is_comparison(OP), bool, T>;
        map2_kernel<<<map_blocks<Out, T>(g), kThreads, 0, stream>>>(
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
