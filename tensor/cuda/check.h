// Checks for CUDA runtime, cuBLAS and cuDNN status codes. Every call into those libraries goes
// through one of these, so a failure surfaces as a bcos::Error that names the call, the
// library's own error text and where in our source it happened, instead of a silent bad result.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "tensor/error.h"

namespace bcos::cuda::detail {

[[noreturn]] inline void raise_cuda_error(const char* call, cudaError_t err, const char* file,
                                          int line) {
  // Clear the (non-sticky) error so that the next unrelated call does not report it again.
  cudaGetLastError();
  fail("CUDA error: ", call, " failed with ", cudaGetErrorName(err), " (",
       cudaGetErrorString(err), ") at ", file, ":", line);
}

[[noreturn]] inline void raise_cublas_error(const char* call, cublasStatus_t status,
                                            const char* file, int line) {
  fail("cuBLAS error: ", call, " failed with ", cublasGetStatusString(status), " (status ",
       int(status), ") at ", file, ":", line);
}

[[noreturn]] inline void raise_cudnn_error(const char* call, cudnnStatus_t status,
                                           const char* file, int line) {
  fail("cuDNN error: ", call, " failed with ", cudnnGetErrorString(status), " (status ",
       int(status), ") at ", file, ":", line);
}

}  // namespace bcos::cuda::detail

#define BCOS_CUDA_CHECK(expr)                                                        \
  do {                                                                               \
    cudaError_t bcos_cuda_err_ = (expr);                                             \
    if (bcos_cuda_err_ != cudaSuccess)                                               \
      ::bcos::cuda::detail::raise_cuda_error(#expr, bcos_cuda_err_, __FILE__, __LINE__); \
  } while (0)

#define BCOS_CUBLAS_CHECK(expr)                                                         \
  do {                                                                                  \
    cublasStatus_t bcos_cublas_status_ = (expr);                                        \
    if (bcos_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                   \
      ::bcos::cuda::detail::raise_cublas_error(#expr, bcos_cublas_status_, __FILE__, __LINE__); \
  } while (0)

#define BCOS_CUDNN_CHECK(expr)                                                        \
  do {                                                                                \
    cudnnStatus_t bcos_cudnn_status_ = (expr);                                        \
    if (bcos_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                   \
      ::bcos::cuda::detail::raise_cudnn_error(#expr, bcos_cudnn_status_, __FILE__, __LINE__); \
  } while (0)

// Checks the launch of the kernel just queued (bad configuration, missing device code).
#define BCOS_CUDA_CHECK_LAUNCH() BCOS_CUDA_CHECK(cudaGetLastError())
