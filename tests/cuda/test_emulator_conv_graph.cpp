// The graph API's fallbacks, which a healthy GPU rarely shows and the emulator can stage
// (tensor/cuda/emulator/cudnn_graph.cpp): an engine refused at execution, one whose workspace the
// device cannot hold, a kept plan failing later, and heuristics that offer nothing (the shape
// then takes the legacy API).
#include <doctest/doctest.h>

#include <vector>

#include "autograd/ops.h"
#include "tensor/cuda/backend.h"
#include "tensor/cuda/emulator/runtime.h"
#include "tests/golden.h"

using namespace bcos;
namespace rt = bcos::emu::runtime;

namespace {

struct Restore {
  bool was = cudnn_graph_api();
  Restore() { set_cudnn_graph_api(true); }
  ~Restore() {
    set_cudnn_graph_api(was);
    rt::set_fast_algorithms(rt::FastAlgorithms::run);
    rt::set_cudnn_graph_engines(true);
  }
};

// conv2d and the gradients of sum(y * y) on `dev`, in float64: [y, dx, dw] on the CPU.
std::vector<Tensor> convolve(const Tensor& x, const Tensor& w, Device dev) {
  Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_();
  Tensor y = conv2d(xd, wd, Tensor(), 1, 1, 1, 1);
  sum(y * y).backward();
  return {y.to(Device()), xd.grad().to(Device()), wd.grad().to(Device())};
}
void same(const std::vector<Tensor>& gpu, const std::vector<Tensor>& cpu) {
  for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-10);
}

}  // namespace

TEST_CASE("emulator conv graph: an engine refused at execution, or whose workspace does not fit, gives way to "
          "the next; a kept plan failing later sends the shape back through the list") {
  Restore restore;
  manual_seed(81);
  const Device cuda = Device::cuda(0);
  {
    INFO("the fast engine refused (NOT_SUPPORTED_SHAPE) when executed");
    const Tensor x = randn({2, 3, 12, 13}, kFloat64), w = randn({5, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    rt::set_fast_algorithms(rt::FastAlgorithms::refused);
    const int64_t refusals = rt::fast_refusals(), built = cuda::conv_graph_plans_built();
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 3);  // once per direction
    CHECK(cuda::conv_graph_plans_built() - built == 3);
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 3);  // straight to the kept plans
  }
  {
    INFO("the fast engine asking for 32 TiB of workspace");
    const Tensor x = randn({2, 3, 13, 12}, kFloat64), w = randn({5, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    rt::set_fast_algorithms(rt::FastAlgorithms::oversized);
    same(convolve(x, w, cuda), cpu);
    CHECK(full({4}, 2.0, {kFloat64, cuda}).to_vector<double>()[3] == 2.0);  // the device still serves
  }
  {
    INFO("the kept plans failing later (MISALIGNED_POINTER)");
    const Tensor x = randn({2, 3, 9, 15}, kFloat64), w = randn({5, 3, 3, 3}, kFloat64);
    const auto cpu = convolve(x, w, Device());
    rt::set_fast_algorithms(rt::FastAlgorithms::run);
    same(convolve(x, w, cuda), cpu);  // the fast engine's plans are kept
    rt::set_fast_algorithms(rt::FastAlgorithms::misaligned);
    const int64_t refusals = rt::fast_refusals();
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 6);  // each direction: the kept plan, then the list's fast one
    same(convolve(x, w, cuda), cpu);
    CHECK(rt::fast_refusals() - refusals == 6);  // the plain engine's plans are kept now
  }
}

TEST_CASE("emulator conv graph: heuristics that offer no engine decline the shape to the legacy API, once") {
  Restore restore;
  manual_seed(82);
  const Tensor x = randn({2, 3, 10, 11}, kFloat64), w = randn({4, 3, 3, 3}, kFloat64);
  const auto cpu = convolve(x, w, Device());
  rt::set_cudnn_graph_engines(false);
  const int64_t declined = cuda::conv_graph_declined(), built = cuda::conv_graph_plans_built();
  same(convolve(x, w, Device::cuda(0)), cpu);
  CHECK(cuda::conv_graph_declined() - declined == 3);
  CHECK(cuda::conv_graph_plans_built() == built);
  CHECK(cuda::conv_graph_last_declined().find("the heuristics offer no engine") != std::string::npos);
  rt::set_cudnn_graph_engines(true);
  same(convolve(x, w, Device::cuda(0)), cpu);
  CHECK(cuda::conv_graph_declined() - declined == 3);  // remembered: the legacy API, not asked again
  CHECK(cuda::conv_graph_plans_built() == built);
}
