// Batched matrix products: one GEMM (tensor/cpu/gemm.h) per batch entry, reading every operand
// in place through its strides (transposed, sliced or broadcast with batch stride 0). Many
// small products run in parallel over the batch; large ones are threaded inside the GEMM.
#include "tensor/cpu/gemm.h"
#include "tensor/cpu/kernels.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {

template <class T>
void bmm_typed(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate) {
  const int64_t batch = out.size(0), m = out.size(1), n = out.size(2), k = a.size(2);
  const T* pa = static_cast<const T*>(a.raw_data());
  const T* pb = static_cast<const T*>(b.raw_data());
  T* po = out.data<T>();
  auto run = [&](int64_t i) {
    gemm(m, n, k, pa + i * a.stride(0), a.stride(1), a.stride(2), pb + i * b.stride(0),
         b.stride(1), b.stride(2), po + i * m * n, n, 1, accumulate);
  };
  // Small products, or many of them: parallel over the batch, each product single-threaded (one
  // parallel region for all of them; ViT-B/16's 96 attention products of 197 x 197 x 64 per
  // image batch of 8 ran at 100-140 GFLOP/s threaded one at a time).
  if (batch > 1 && (m * n * k < (1 << 21) || batch >= 8 * num_threads())) {
    parallel_for(batch, m * n * k, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) run(i);
    });
  } else {
    for (int64_t i = 0; i < batch; ++i) run(i);
  }
}

}  // namespace

void bmm(const Tensor& a, const Tensor& b, const Tensor& out, bool accumulate, DType operands) {
  if (operands != DType::f32 && a.dtype() == DType::f32) {  // autocast
    if (operands == DType::bf16 && bf16_gemm_fits(out.size(1), out.size(2), a.size(2))) {
      const Bf16OperandsScope unrounded(Bf16Operands::unrounded);
      bmm_typed<float>(a, b, out, accumulate);  // the bf16 GEMM rounds the operands while it packs them
      return;
    }
    bmm_typed<float>(rounded_operand(a, operands), rounded_operand(b, operands), out, accumulate);
    return;
  }
  dispatch_float(a.dtype(), "matmul", [&]<class T>() { bmm_typed<T>(a, b, out, accumulate); });
}

}  // namespace bcos::cpu
