// Batched matrix products: one GEMM (tensor/cpu/gemm.h) per batch entry, reading every operand
// in place through its strides (transposed, sliced or broadcast with batch stride 0). Many
// small products run in parallel over the batch; large ones are threaded inside the GEMM.
#include "tensor/copy.h"
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {

// Runs product(i) for every batch entry. Small products, or many of them: parallel over the
// batch, each product single-threaded (one parallel region for all of them; ViT-B/16's 96
// attention products of 197 x 197 x 64 per image batch of 8 ran at 100-140 GFLOP/s threaded one at
// a time). Otherwise one after another, each threaded inside its GEMM.
template <class Product>
void for_each_product(const Tensor& a, const Tensor& out, const Product& product) {
  const int64_t batch = out.size(0), work = out.size(1) * out.size(2) * a.size(2);
  if (batch > 1 && (work < (1 << 21) || batch >= 8 * num_threads())) {
    parallel_for(batch, work, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) product(i);
    });
  } else {
    for (int64_t i = 0; i < batch; ++i) product(i);
  }
}

template <class T>
void bmm_typed(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
  const int64_t m = out.size(1), n = out.size(2), k = a.size(2);
  const T* pa = static_cast<const T*>(a.raw_data());
  const T* pb = static_cast<const T*>(b.raw_data());
  T* po = out.data<T>();
  for_each_product(a, out, [&](int64_t i) {
    gemm(m, n, k, pa + i * a.stride(0), a.stride(1), a.stride(2), pb + i * b.stride(0), b.stride(1), b.stride(2),
         po + i * m * n, n, 1, accumulate);
  });
}

// The bf16 GEMM on float32 or bfloat16 operands (those it reads as they are).
void bmm_bf16(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
  const int64_t m = out.size(1), n = out.size(2), k = a.size(2);
  auto operand = [](const Tensor& x, int64_t i) {
    const bool narrow = x.dtype() == DType::bf16;
    const int64_t offset = i * x.stride(0);
    const void* p = narrow ? static_cast<const void*>(static_cast<const uint16_t*>(x.raw_data()) + offset)
                           : static_cast<const void*>(static_cast<const float*>(x.raw_data()) + offset);
    return Bf16Operand{p, x.stride(1), x.stride(2), narrow};
  };
  float* po = out.data<float>();
  for_each_product(a, out, [&](int64_t i) {
    BCOS_CHECK(gemm_bf16(m, n, k, operand(a, i), operand(b, i), po + i * m * n, n, 1, accumulate),
               "matmul: the bf16 GEMM refused a product it was chosen for");
  });
}

}  // namespace

void bmm(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate, DType operands) {
  if (is_half_float(out.dtype())) {
    // float16 / bfloat16 tensors: their product as autocast's (16-bit values summed in float32,
    // out's old values among them when accumulating), rounded once into out.
    const Tensor wide = accumulate ? raw_to(out, DType::f32, out.device()) : empty(out.shape(), {DType::f32, out.device()});
    bmm(a, b, wide, accumulate, out.dtype());
    copy(out, wide);
    return;
  }
  const bool narrow_a = a.dtype() != out.dtype(), narrow_b = b.dtype() != out.dtype();
  if (narrow_a || narrow_b) {  // autocast, with an operand already in the operand type
    BCOS_CHECK(out.dtype() == DType::f32 && (operands == DType::bf16 || operands == DType::f16) &&
                   (!narrow_a || a.dtype() == operands) && (!narrow_b || b.dtype() == operands),
               "matmul: operands ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()), " into ",
               dtype_name(out.dtype()), " need autocast to ", dtype_name(operands));
    if (operands == DType::bf16 && bf16_gemm_fits(out.size(1), out.size(2), a.size(2))) {
      bmm_bf16(a, b, out, accumulate);
      return;
    }
    // No bf16 GEMM for it: float32 copies (exact), then the path below, whose rounding keeps them.
    auto widened = [](const Tensor& x) { return x.dtype() == DType::f32 ? x : raw_to(x, DType::f32, x.device()); };
    bmm(widened(a), widened(b), out, accumulate, operands);
    return;
  }
  if (operands != DType::f32 && a.dtype() == DType::f32) {  // autocast
    if (operands == DType::bf16 && bf16_gemm_fits(out.size(1), out.size(2), a.size(2))) {
      bmm_bf16(a, b, out, accumulate);  // the bf16 GEMM rounds float32 operands while it packs them
      return;
    }
    bmm_typed<float>(rounded_operand(a, operands), rounded_operand(b, operands), out, accumulate);
    return;
  }
  dispatch_float(a.dtype(), "matmul", [&]<class T>() { bmm_typed<T>(a, b, out, accumulate); });
}

// The bias written into out, the product accumulated onto it: the GEMM adds it where it stores.
void linear_bias(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, DType operands) {
  copy(out, bias.unsqueeze(0).expand(out.shape()));
  bmm(a.unsqueeze(0), b.unsqueeze(0), out.unsqueeze(0), true, operands);
}

}  // namespace bcos::cpu
