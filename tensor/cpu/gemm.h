// General matrix product on the CPU, used by matmul and convolution:
//   C[m, n] = A[m, k] · B[k, n]          (accumulate: C += A · B)
// Element (i, j) of each matrix sits at ptr[i * row_stride + j * col_stride], so transposed and
// strided operands are read in place. float32 runs a packed, cache-blocked kernel with an
// AVX-512 or AVX2 / FMA micro-kernel, whichever the CPU has (Eigen's GEMM when it has neither;
// BCOS_GEMM=avx2 or eigen in the environment forces a narrower path); float64 runs Eigen's GEMM.
#pragma once

#include <cstdint>

#include "tensor/parallel.h"
#include "tensor/tensor.h"

namespace bcos::cpu {

// Threads over the whole product unless called from inside a parallel region.
void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
          const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc,
          bool accumulate);
void gemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t rsa, int64_t csa,
          const double* b, int64_t rsb, int64_t csb, double* c, int64_t rsc, int64_t csc,
          bool accumulate);

// C[m, n] = A[m, k] · B[k, n] with A row-major (row stride lda) and row p of B the floats
// b[b_rows[p] + j], j < n rounded up to 32 (so each row must have that many readable floats):
// B's rows are shifted windows of one zero-padded image, the column matrix of a convolution
// that is never built (tensor/cpu/conv.cpp). One thread. False, doing nothing, where the CPU has
// neither the AVX-512 nor the AVX2 kernel.
bool gemm_offset_rows(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                      const int64_t* b_rows, float* c, int64_t ldc);

// C[m, n] (+)= A · Bᵀ: C[i, j] = Σ_{q < len} a[i * lda + q] · b[b_rows[j] + q]. Both operands run
// along q (a convolution's weight gradient: grad_out rows against shifted windows of the padded
// input). One thread. False, doing nothing, where the CPU lacks the AVX-512 kernel.
bool gemm_nt_offset_rows(int64_t m, int64_t n, int64_t len, const float* a, int64_t lda, const float* b,
                         const int64_t* b_rows, float* c, int64_t ldc, bool accumulate);

// The float32 product with bfloat16 operands (tensor/cpu/gemm_bf16.cpp): A and B rounded to bf16,
// products summed in float32. Threads as gemm. False, doing nothing, where the CPU has neither AMX
// nor AVX-512 BF16. An operand is float32 (rounded while packed) or bfloat16 already (its bits:
// autocast keeps a linear layer's input so for the weight gradient); rs, cs: strides in elements.
struct Bf16Operand {
  const void* data = nullptr;
  int64_t rs = 0, cs = 0;
  bool is_bf16 = false;
};
bool gemm_bf16(int64_t m, int64_t n, int64_t k, const Bf16Operand& a, const Bf16Operand& b, float* c, int64_t rsc,
               int64_t csc, bool accumulate);
bool gemm_bf16(int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa, const float* b,
               int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc, bool accumulate);
// The same with a named kernel ("amx", "avx512bf16"), for tests and benchmarks: false where the
// CPU lacks it. gemm_bf16_kernel_name: the one gemm_bf16 runs ("none" without either;
// BCOS_GEMM_BF16=avx512bf16 picks vdpbf16ps on a CPU with AMX).
bool gemm_bf16_with(const char* kernel, int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
                    const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc, bool accumulate);
bool gemm_bf16_with(const char* kernel, int64_t m, int64_t n, int64_t k, const Bf16Operand& a,
                    const Bf16Operand& b, float* c, int64_t rsc, int64_t csc, bool accumulate);
const char* gemm_bf16_kernel_name();
// Whether gemm() runs an m x n x k float32 product in bf16: the option is on (set_cpu_bf16) and
// both sides are 64 or more. AMX against the float32 kernel, one thread: 16 x 1024 x 144 0.42x,
// 32 x 256 x 288 0.86x, 64 x 64 x 576 1.06x, 128 x 196 x 1152 1.71x, 768 x 197 x 768 3.0x (packing
// B for few rows of A costs more than the tiles save). AVX-512 BF16 (Zen 5): 1.04x, 1.17x, 1.17x,
// 1.64x, 1.78x there, but letting 16- or 32-row products in cost the CIFAR ResNet-20 under
// autocast (its convolutions then give up the implicit column matrix for im2col): training
// 582 -> 552 img/s from 16 rows.
bool bf16_product(int64_t m, int64_t n, int64_t k);

// Autocast on the CPU (tensor/op_kinds.h): a dense float32 copy of x whose values are rounded to
// `operands` (bfloat16 or float16). Products of two such values are exact in float32, so any
// float32 GEMM or convolution path then computes "rounded operands, float32 sums" exactly.
Tensor rounded_operand(const Tensor& x, DType operands);
// While one lives on this thread, gemm() also takes the bf16 GEMM (same sizes as bf16_product),
// which rounds while it packs: for operands already rounded (Bf16Operands::rounded) that changes
// nothing. With Bf16Operands::unrounded the operands are still float32, and a product too small
// for the bf16 GEMM rounds copies of them before the float32 kernel (tensor/parallel.h).
class Bf16OperandsScope {
 public:
  explicit Bf16OperandsScope(Bf16Operands mode);
  ~Bf16OperandsScope();
  Bf16OperandsScope(const Bf16OperandsScope&) = delete;
  Bf16OperandsScope& operator=(const Bf16OperandsScope&) = delete;

 private:
  Bf16Operands previous_;
};

// Whether the bf16 GEMM takes an m x n x k product (the sizes of bf16_product) on this CPU.
bool bf16_gemm_fits(int64_t m, int64_t n, int64_t k);
// dst (rows x cols, row-major) = src (strides rs, cs) rounded to bfloat16, kept as floats.
void round_to_bf16(int64_t rows, int64_t cols, const float* src, int64_t rs, int64_t cs, float* dst);

// The float32 product through one path ("avx512", "avx2" or "eigen"); false (nothing done) when
// this CPU cannot run it. For tests and benchmarks of each path.
bool gemm_with(const char* kernel, int64_t m, int64_t n, int64_t k, const float* a, int64_t rsa, int64_t csa,
               const float* b, int64_t rsb, int64_t csb, float* c, int64_t rsc, int64_t csc, bool accumulate);
// The float32 path chosen for this CPU: "avx512 8x32", "avx2 6x16" or "eigen".
const char* gemm_kernel_name();

}  // namespace bcos::cpu
