// Helpers of the raw-kernel CUDA tests (test_cuda.cpp, test_cuda_math.cpp): a skip without a GPU,
// deterministic test data, a strided copy, and an elementwise comparison that names the first
// mismatch. They use only tensor/ (no autograd).
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <iomanip>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tensor/copy.h"
#include "tensor/tensor.h"
#include "tensor/transfer.h"

namespace raw_test {

using namespace bcos;


#define SKIP_WITHOUT_GPU()                        \
  do {                                            \
    if (bcos::cuda_device_count() == 0) {         \
      MESSAGE("no CUDA device: skipped");         \
      return;                                     \
    }                                             \
  } while (0)

inline const Device kGpu = Device::cuda(0);
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
inline constexpr double kInf = std::numeric_limits<double>::infinity();

inline Tensor on_gpu(const Tensor& t) { return raw_to(t, t.dtype(), kGpu); }

// The same values as `t` (same device) in a non-contiguous layout: the last two dims are
// stored transposed.
inline Tensor strided_copy(const Tensor& t) {
  REQUIRE(t.dim() >= 2);
  int a = t.dim() - 2, b = t.dim() - 1;
  Shape stored = t.shape();
  std::swap(stored[a], stored[b]);
  Tensor base = empty(stored, {t.dtype(), t.device()});
  Strides st = base.strides();
  std::swap(st[a], st[b]);
  Tensor view = base.alias(t.shape(), st, 0);
  copy_into(view, t);
  return view;
}

// Deterministic test data: values produced by `gen` from a fixed-seed engine.
template <class Gen>
Tensor make(const Shape& shape, DType dt, Gen gen, uint32_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::vector<double> v(size_t(shape.numel()));
  for (double& x : v) x = gen(rng);
  return from_vector<double>(v, shape, dt);
}
inline auto normal(double scale = 1.0) {
  return [scale](std::mt19937_64& r) { return std::normal_distribution<double>(0, scale)(r); };
}
inline auto positive() {  // away from 0 for log, sqrt, reciprocal, fractional powers
  return [](std::mt19937_64& r) { return 0.1 + std::abs(std::normal_distribution<double>(0, 1.5)(r)); };
}
inline auto integers(int lo, int hi) {
  return [lo, hi](std::mt19937_64& r) { return double(std::uniform_int_distribution<int>(lo, hi)(r)); };
}
inline auto quantised(double step) {  // plenty of ties for comparisons, max / min
  return [step](std::mt19937_64& r) {
    return std::round(std::normal_distribution<double>(0, 1.5)(r) / step) * step;
  };
}

// "" when got and want agree elementwise (|got - want| <= atol + rtol |want|, NaN matches NaN,
// infinities match exactly), else a description of the first mismatch.
inline std::string mismatch(const Tensor& got, const Tensor& want, double rtol, double atol) {
  if (got.shape() != want.shape()) return str("shapes differ: ", got.shape(), " vs ", want.shape());
  std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < g.size(); ++i) {
    double a = g[i], b = w[i];
    bool ok;
    if (std::isnan(a) || std::isnan(b)) ok = std::isnan(a) && std::isnan(b);
    else if (std::isinf(a) || std::isinf(b)) ok = a == b;
    else ok = std::abs(a - b) <= atol + rtol * std::abs(b);
    if (!ok && bad++ == 0) first = int64_t(i);
  }
  if (bad == 0) return "";
  std::ostringstream os;
  os << std::setprecision(17) << bad << " of " << g.size() << " elements differ; first at flat index "
     << first << ": got " << g[size_t(first)] << ", expected " << w[size_t(first)];
  return os.str();
}

#define CHECK_CLOSE(got, want, rtol, atol)                        \
  do {                                                            \
    std::string mismatch_ = mismatch((got), (want), (rtol), (atol)); \
    CHECK_MESSAGE(mismatch_.empty(), mismatch_);                  \
  } while (0)

inline double rtol_for(DType dt) { return dt == DType::f64 ? 1e-12 : 1e-6; }

inline const std::vector<DType> kAllDTypes = {DType::f32, DType::f64, DType::f16, DType::bf16,
                                       DType::i64, DType::u8,  DType::boolean};

}  // namespace raw_test
