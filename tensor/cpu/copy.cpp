// Strided copy with dtype conversion, and fill: the kernels behind contiguous(), clone(),
// to(dtype), copy_() and the creation functions; random fills from the counter-based generator.
#include <cstring>

#include "tensor/cpu/kernels.h"
#include "tensor/cpu/loops.h"
#include "tensor/parallel.h"
#include "tensor/random_math.h"

namespace bcos::cpu {

namespace {
template <class To, class From>
inline To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, Half> || std::is_same_v<From, BFloat16>) {
    return convert<To>(float(v));
  } else if constexpr (std::is_same_v<To, Half> || std::is_same_v<To, BFloat16>) {
    return To(float(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else {
    return static_cast<To>(v);
  }
}
}  // namespace

void copy(const Tensor& dst, const Tensor& src) {
  BCOS_CHECK(dst.shape() == src.shape(), "copy: shapes ", dst.shape(), " and ", src.shape(),
             " differ");
  // Same dtype and both contiguous: one memcpy.
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    if (dst.raw_data() != src.raw_data())
      std::memmove(dst.raw_data(), src.raw_data(), size_t(dst.numel()) * dst.element_size());
    return;
  }
  dispatch_all(dst.dtype(), [&]<class To>() {
    dispatch_all(src.dtype(), [&]<class From>() {
      To* d = static_cast<To*>(dst.raw_data());
      const From* s = static_cast<const From*>(src.raw_data());
      for_each_row<2>(dst.shape(), {&dst, &src}, 1,
                      [&](const int64_t* off, int64_t n, const int64_t* st) {
                        To* o = d + off[0];
                        const From* i = s + off[1];
                        if (st[0] == 1 && st[1] == 1) {
                          for (int64_t k = 0; k < n; ++k) o[k] = convert<To>(i[k]);
                        } else {
                          for (int64_t k = 0; k < n; ++k)
                            o[k * st[0]] = convert<To>(i[k * st[1]]);
                        }
                      });
    });
  });
}

void fill(const Tensor& dst, double value) {
  dispatch_all(dst.dtype(), [&]<class T>() {
    T v = convert<T>(value);
    T* d = static_cast<T*>(dst.raw_data());
    for_each_row<1>(dst.shape(), {&dst}, 1, [&](const int64_t* off, int64_t n, const int64_t* st) {
      T* o = d + off[0];
      for (int64_t k = 0; k < n; ++k) o[k * st[0]] = v;
    });
  });
}

void arange_fill(const Tensor& dst, double start, double step) {
  dispatch_all(dst.dtype(), [&]<class T>() {
    T* d = static_cast<T*>(dst.raw_data());
    for (int64_t i = 0; i < dst.numel(); ++i) d[i] = convert<T>(start + double(i) * step);
  });
}

void random_fill(const Tensor& dst, RandomDist dist, uint64_t seed, uint64_t start, double p0, double p1) {
  const bool narrow = dst.dtype() != DType::f64;
  dispatch_all(dst.dtype(), [&]<class T>() {
    T* d = static_cast<T*>(dst.raw_data());
    parallel_for(dst.numel(), 32, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) d[i] = convert<T>(math::random_value(dist, seed, start, i, narrow, p0, p1));
    });
  });
}

}  // namespace bcos::cpu
