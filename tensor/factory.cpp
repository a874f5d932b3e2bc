// Creation functions. Random tensors reserve a range of the one seeded counter-based generator
// and compute its values where they live, so a seed gives the same numbers on every device and
// thread count.
#include <cmath>

#include "tensor/copy.h"
#include "tensor/dispatch.h"
#include "tensor/random_math.h"
#include "tensor/tensor.h"

namespace bcos {

namespace {
void check_device_available(Device d, const char* op) {
  if (d.is_cuda()) {
    BCOS_CHECK(cuda_compiled(), op, ": cannot create a tensor on ", d,
               ": bcos was built without CUDA");
    int n = cuda_device_count();
    BCOS_CHECK(d.index >= 0 && d.index < n, op, ": no device ", d, " (", n,
               " CUDA devices visible)");
  }
}

// Fills a fresh host tensor through `gen(i)` then moves it to the requested device.
template <class Gen>
Tensor host_generate(const Shape& shape, TensorOptions opts, const char* op, Gen&& gen) {
  check_device_available(opts.device, op);
  Tensor host = empty(shape, opts.dtype);
  dispatch_all(opts.dtype, [&]<class T>() {
    T* p = host.data<T>();
    for (int64_t i = 0; i < host.numel(); ++i) {
      double v = gen(i);
      if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>)
        p[i] = T(float(v));
      else
        p[i] = static_cast<T>(v);
    }
  });
  return raw_to(host, opts.dtype, opts.device);
}
}  // namespace

Tensor empty(const Shape& shape, TensorOptions opts) {
  check_device_available(opts.device, "empty");
  for (int64_t d : shape) BCOS_CHECK(d >= 0, "empty: negative size in shape ", shape);
  int64_t n = shape.numel();
  size_t nbytes = 0;
  BCOS_CHECK(!__builtin_mul_overflow(size_t(n), dtype_size(opts.dtype), &nbytes) &&
                 nbytes < (size_t(1) << 62),
             "empty: shape ", shape, " of ", opts.dtype, " needs more bytes than can be addressed");
  auto storage = Storage::allocate(nbytes, opts.device);
  return Tensor(std::move(storage), shape, contiguous_strides(shape), 0, opts.dtype);
}

Tensor full(const Shape& shape, double value, TensorOptions opts) {
  Tensor t = empty(shape, opts);
  fill_into(t, value);
  return t;
}
Tensor zeros(const Shape& shape, TensorOptions opts) { return full(shape, 0.0, opts); }
Tensor ones(const Shape& shape, TensorOptions opts) { return full(shape, 1.0, opts); }
Tensor empty_like(const Tensor& t) { return empty(t.shape(), {t.dtype(), t.device()}); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), {t.dtype(), t.device()}); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), {t.dtype(), t.device()}); }
Tensor full_like(const Tensor& t, double v) { return full(t.shape(), v, {t.dtype(), t.device()}); }
Tensor scalar_tensor(double value, TensorOptions opts) { return full(Shape{}, value, opts); }

Tensor arange(double end, TensorOptions opts) { return arange(0, end, 1, opts); }
Tensor arange(double start, double end, double step, TensorOptions opts) {
  BCOS_CHECK(step != 0, "arange: step must be nonzero");
  BCOS_CHECK((end - start) * step >= 0, "arange: the range [", start, ", ", end,
             ") is not reachable with step ", step);
  auto n = int64_t(std::ceil((end - start) / step));
  check_device_available(opts.device, "arange");
  Tensor t = empty({n}, opts);
  kernel::arange_fill(t, start, step);  // (on a GPU, made there)
  return t;
}

Tensor linspace(double start, double end, int64_t steps, TensorOptions opts) {
  BCOS_CHECK(steps >= 0, "linspace: steps must be non-negative, got ", steps);
  double step = steps > 1 ? (end - start) / double(steps - 1) : 0.0;
  // Like PyTorch: the second half counts back from `end` so both ends are exact.
  int64_t half = steps == 1 ? 1 : steps / 2;
  return host_generate({steps}, opts, "linspace", [&](int64_t i) {
    return i < half ? start + step * double(i) : end - step * double(steps - 1 - i);
  });
}

Tensor eye(int64_t n, int64_t m, TensorOptions opts) {
  BCOS_CHECK(n >= 0 && m >= -1, "eye: sizes must be non-negative, got ", n, " x ", m);
  if (m < 0) m = n;
  // Zeros, then ones along the diagonal (a strided view): made where it lives, on a GPU too.
  Tensor t = zeros({n, m}, opts);
  if (n > 0 && m > 0) kernel::fill(t.alias({std::min(n, m)}, {m + 1}, 0), 1.0);
  return t;
}

namespace {
Tensor random_tensor(const Shape& shape, TensorOptions opts, RandomDist dist, double p0 = 0, double p1 = 0) {
  Tensor out = empty(shape, opts);
  const GeneratorState s = reserve_random_words(math::random_words_used(dist, out.numel()));
  kernel::random_fill(out, dist, s.seed, s.counter, p0, p1);
  return out;
}
}  // namespace

Tensor rand(const Shape& shape, TensorOptions opts) {
  BCOS_CHECK(is_floating(opts.dtype), "rand: needs a floating dtype, got ", opts.dtype);
  return random_tensor(shape, opts, RandomDist::uniform);
}

Tensor randn(const Shape& shape, TensorOptions opts) {
  BCOS_CHECK(is_floating(opts.dtype), "randn: needs a floating dtype, got ", opts.dtype);
  return random_tensor(shape, opts, RandomDist::normal);
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts) {
  BCOS_CHECK(high > low, "randint: empty range [", low, ", ", high, ")");
  return random_tensor(shape, opts, RandomDist::integer, double(low), double(high));
}

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opts) {
  BCOS_CHECK(int64_t(values.size()) == shape.numel(), "from_vector: ", values.size(),
             " values do not fill shape ", shape);
  if constexpr (!std::is_same_v<T, bool> && !std::is_same_v<T, int>) {
    if (dtype_of<T>::value == opts.dtype) {  // a straight copy: exact for int64 beyond 2^53
      check_device_available(opts.device, "from_vector");
      Tensor host = empty(shape, opts.dtype);
      std::copy(values.begin(), values.end(), host.data<T>());
      return raw_to(host, opts.dtype, opts.device);
    }
  }
  return host_generate(shape, opts, "from_vector",
                       [&](int64_t i) { return double(values[size_t(i)]); });
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&, TensorOptions);
template Tensor from_vector<int>(const std::vector<int>&, const Shape&, TensorOptions);
template Tensor from_vector<uint8_t>(const std::vector<uint8_t>&, const Shape&, TensorOptions);
template Tensor from_vector<bool>(const std::vector<bool>&, const Shape&, TensorOptions);

Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device,
                 std::shared_ptr<void> keep_alive) {
  BCOS_CHECK(data != nullptr || shape.numel() == 0, "from_blob: null pointer");
  for (int64_t d : shape) BCOS_CHECK(d >= 0, "from_blob: negative size in shape ", shape);
  auto storage = Storage::borrow(data, size_t(shape.numel()) * dtype_size(dtype), device,
                                 std::move(keep_alive));
  return Tensor(std::move(storage), shape, contiguous_strides(shape), 0, dtype);
}

}  // namespace bcos
