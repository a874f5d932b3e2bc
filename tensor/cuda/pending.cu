// The kernels of tensor/kernels.inc that the CUDA backend does not have yet. Each raises the
// error the op files gave before the kernel list existed, naming the kernel and the tensor, so
// a model that reaches one on the GPU stops with a clear message. The CUDA backend issue moves
// them, one family at a time, into real kernels; this file shrinks to nothing.
#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

[[noreturn]] void no_kernel_yet(const char* kernel, const Tensor& t) {
  fail(kernel, ": no CUDA kernel yet (input of shape ", t.shape(), " on ", t.device(),
       "); move it to the CPU with .to(\"cpu\")");
}

}  // namespace

void topk(const Tensor& x, int64_t, bool, bool, const Tensor&, const Tensor&) {
  no_kernel_yet("topk", x);
}

}  // namespace bcos::cuda
