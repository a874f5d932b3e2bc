// What the CUDA emulator's library stand-ins (libraries.cpp: cuBLAS, cuDNN; cublaslt.cpp) share:
// elements of each CUDA data type read and written as double, TF32 rounding, and the column-major
// product op(A) · op(B) that both cuBLAS entry points compute (Eigen, in double precision).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <library_types.h>

// GCC 12 misreads Eigen's AVX-512 products as reading uninitialised registers (as in tensor/cpu/gemm.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Dense>
#pragma GCC diagnostic pop

#include <cmath>
#include <cstdint>
#include <cstring>

namespace bcos::emu::blas {

inline double tf32(double v) {  // float32 rounded to TF32's 10 mantissa bits, to nearest even
  float f = float(v);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0xfffu + ((bits >> 13) & 1u)) & ~0x1fffu;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline size_t cuda_type_bytes(cudaDataType t) {
  switch (t) {
    case CUDA_R_64F: return 8;
    case CUDA_R_32F: return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF: return 2;
    default: return 0;
  }
}
inline double load(const void* base, cudaDataType t, int64_t i) {
  switch (t) {
    case CUDA_R_64F: return static_cast<const double*>(base)[i];
    case CUDA_R_32F: return static_cast<const float*>(base)[i];
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(base)[i]);
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default: return NAN;
  }
}
inline void store(void* base, cudaDataType t, int64_t i, double v) {
  switch (t) {
    case CUDA_R_64F: static_cast<double*>(base)[i] = v; break;
    case CUDA_R_32F: static_cast<float*>(base)[i] = float(v); break;
    case CUDA_R_16F: static_cast<__half*>(base)[i] = __float2half_rn(float(v)); break;
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(float(v)); break;
    default: break;
  }
}

// op(A) [m, k] · op(B) [k, n] for column-major A (lda) and B (ldb), transposed where ta / tb;
// operands rounded to TF32 first where round_tf32.
inline Eigen::MatrixXd product(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* A, cudaDataType a_type,
                               int64_t lda, const void* B, cudaDataType b_type, int64_t ldb, bool round_tf32) {
  Eigen::MatrixXd op_a(m, k), op_b(k, n);
  for (int64_t q = 0; q < k; ++q)
    for (int64_t i = 0; i < m; ++i) {
      const double v = load(A, a_type, ta ? q + i * lda : i + q * lda);
      op_a(i, q) = round_tf32 ? tf32(v) : v;
    }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t q = 0; q < k; ++q) {
      const double v = load(B, b_type, tb ? j + q * ldb : q + j * ldb);
      op_b(q, j) = round_tf32 ? tf32(v) : v;
    }
  return op_a * op_b;
}

}  // namespace bcos::emu::blas
