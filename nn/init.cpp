// Initialisers (see init.h). They write in place without recording a graph.
#include "nn/init.h"

#include <algorithm>
#include <cmath>

#include "autograd/autograd.h"
#include "autograd/ops.h"

namespace bcos::nn::init {

namespace {
void assign(Tensor& t, const Tensor& values) {
  NoGradGuard no_grad;
  t.data_alias().copy_(values.to(t.dtype()).to(t.device()));
}
// t = draw(n) written chunk by chunk, where draw(n) gives the next n values of a float64 draw.
// The generator is counter-based, so consecutive draws continue one stream and the values are
// those of a single whole draw; but only one chunk's float64 temporaries exist at a time (for
// CLIP's 49408 x 512 token embedding they were 600 MB of peak memory).
template <class Draw>
void assign_drawn(Tensor& t, Draw&& draw) {
  NoGradGuard no_grad;
  constexpr int64_t kChunk = int64_t(1) << 20;  // even: normal draws use the generator's words in pairs
  const int64_t n = t.numel();
  Tensor flat = t.data_alias();
  // One chunk or a strided target: one draw, as before (writing small tensors through the flat
  // slices below raised ResNet-50's peak RSS in bench/models from 273 to 441 MB -- not understood).
  if (n <= kChunk || !flat.is_contiguous()) return assign(t, draw(n).reshape(t.shape()));
  flat = flat.reshape({n});
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t len = std::min(kChunk, n - i);
    flat.slice(0, i, i + len).copy_(draw(len).to(t.dtype()).to(t.device()));
  }
}
}  // namespace

std::pair<int64_t, int64_t> fans(const Tensor& weight) {
  BCOS_CHECK(weight.dim() >= 2, "init: fan in/out needs a weight with 2 or more dims, got ", weight.shape());
  int64_t field = 1;
  for (int64_t d = 2; d < weight.dim(); ++d) field *= weight.size(d);
  return {weight.size(1) * field, weight.size(0) * field};
}

void uniform_(Tensor& t, double low, double high) {
  assign_drawn(t, [&](int64_t n) { return rand({n}, DType::f64) * (high - low) + low; });
}

void normal_(Tensor& t, double mean, double std) {
  assign_drawn(t, [&](int64_t n) { return randn({n}, DType::f64) * std + mean; });
}

void trunc_normal_(Tensor& t, double mean, double std, double a, double b) {
  BCOS_CHECK(a < b, "trunc_normal_: empty interval [", a, ", ", b, "]");
  // Rejection: redraw the out-of-range values until none is left (fast unless [a, b] is narrow).
  std::vector<double> v = (randn(t.shape(), DType::f64) * std + mean).to_vector<double>();
  for (int round = 0; round < 1000; ++round) {
    std::vector<size_t> bad;
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] < a || v[i] > b) bad.push_back(i);
    if (bad.empty()) break;
    std::vector<double> fresh = (randn({int64_t(bad.size())}, DType::f64) * std + mean).to_vector<double>();
    for (size_t k = 0; k < bad.size(); ++k) v[bad[k]] = fresh[k];
  }
  for (double& x : v) x = std::min(std::max(x, a), b);
  assign(t, from_vector(v, t.shape()));
}

void constant_(Tensor& t, double value) {
  NoGradGuard no_grad;
  t.data_alias().fill_(value);
}

void kaiming_uniform_(Tensor& t, double a, bool fan_in) {
  const auto [in, out] = fans(t);
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  const double bound = gain * std::sqrt(3.0 / double(fan_in ? in : out));
  uniform_(t, -bound, bound);
}

void kaiming_normal_(Tensor& t, bool fan_in) {
  const auto [in, out] = fans(t);
  normal_(t, 0.0, std::sqrt(2.0) / std::sqrt(double(fan_in ? in : out)));
}

void xavier_uniform_(Tensor& t, double gain) {
  const auto [in, out] = fans(t);
  const double bound = gain * std::sqrt(6.0 / double(in + out));
  uniform_(t, -bound, bound);
}

}  // namespace bcos::nn::init
