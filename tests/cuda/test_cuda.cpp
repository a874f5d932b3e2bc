// CUDA backend tests: devices, streams, the caching allocator, copies, and CUDA-vs-CPU parity
// of every raw kernel (unary forward and backward, binary, reduce, bmm) on contiguous,
// strided and broadcast operands. They use only tensor/ (factories, raw copies, cpu:: kernels)
// so they do not depend on the autograd layer. Every test skips, with a message, when no GPU
// is visible; only CUDA builds compile this file (tests/meson.build).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tensor/copy.h"
#include "tensor/cpu/kernels.h"
#include "tensor/cuda/backend.h"
#include "tensor/profile.h"
#include "tensor/cuda/internal.h"
#include "tensor/dispatch.h"
#include "tensor/tensor.h"
#include "tensor/transfer.h"

namespace {

using namespace bcos;

#define SKIP_WITHOUT_GPU()                        \
  do {                                            \
    if (bcos::cuda_device_count() == 0) {         \
      MESSAGE("no CUDA device: skipped");         \
      return;                                     \
    }                                             \
  } while (0)

const Device kGpu = Device::cuda(0);
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

Tensor on_gpu(const Tensor& t) { return raw_to(t, t.dtype(), kGpu); }

// The same values as `t` (same device) in a non-contiguous layout: the last two dims are
// stored transposed.
Tensor strided_copy(const Tensor& t) {
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
auto normal(double scale = 1.0) {
  return [scale](std::mt19937_64& r) { return std::normal_distribution<double>(0, scale)(r); };
}
auto positive() {  // away from 0 for log, sqrt, reciprocal, fractional powers
  return [](std::mt19937_64& r) { return 0.1 + std::abs(std::normal_distribution<double>(0, 1.5)(r)); };
}
auto integers(int lo, int hi) {
  return [lo, hi](std::mt19937_64& r) { return double(std::uniform_int_distribution<int>(lo, hi)(r)); };
}
auto quantised(double step) {  // plenty of ties for comparisons, max / min
  return [step](std::mt19937_64& r) {
    return std::round(std::normal_distribution<double>(0, 1.5)(r) / step) * step;
  };
}

// "" when got and want agree elementwise (|got - want| <= atol + rtol |want|, NaN matches NaN,
// infinities match exactly), else a description of the first mismatch.
std::string mismatch(const Tensor& got, const Tensor& want, double rtol, double atol) {
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

double rtol_for(DType dt) { return dt == DType::f64 ? 1e-12 : 1e-6; }

const std::vector<DType> kAllDTypes = {DType::f32, DType::f64, DType::f16, DType::bf16,
                                       DType::i64, DType::u8,  DType::boolean};

}  // namespace

// ---- index arithmetic (no GPU needed) ------------------------------------------------------------

TEST_CASE("cuda: Divisor<uint32_t>'s multiply-and-shift quotient is n / d for every n < 2^31") {
  // The kernels split flat indices with it (internal.h); a wrong quotient would misplace elements.
  // Every divisor up to 5,000 and ones near powers of two and the top of the range, each against
  // n at and around its multiples, random n, and the largest n allowed.
  std::mt19937_64 rng(7);
  std::vector<int64_t> divisors;
  for (int64_t d = 1; d <= 5000; ++d) divisors.push_back(d);
  for (int k = 12; k <= 31; ++k)
    for (int64_t delta : {-3, -1, 0, 1, 3}) {
      const int64_t d = (int64_t(1) << k) + delta;
      if (d >= 1 && d <= int64_t(INT32_MAX)) divisors.push_back(d);
    }
  for (int i = 0; i < 200; ++i) divisors.push_back(1 + int64_t(rng() % uint64_t(INT32_MAX)));
  const uint32_t top = uint32_t(INT32_MAX);
  int64_t wrong = 0, checked = 0;
  for (int64_t d64 : divisors) {
    const cuda::Divisor<uint32_t> div(d64);
    const uint32_t d = uint32_t(d64);
    std::vector<uint32_t> ns = {0, 1, d - 1, d, top, top - 1, top - top % d, top - top % d - 1};
    for (uint32_t k : {1u, 2u, 3u, 1000u, top / d, top / d - 1})
      if (k > 0 && uint64_t(k) * d <= top) ns.push_back(k * d), ns.push_back(k * d - 1);
    for (int i = 0; i < 64; ++i) ns.push_back(uint32_t(rng() % (uint64_t(top) + 1)));
    for (uint32_t n : ns) {
      if (n > top) continue;
      ++checked;
      if (div.div(n) != n / d || div.mod(n) != n % d) {
        if (++wrong <= 5) MESSAGE(n << " / " << d << ": got " << div.div(n) << " rem " << div.mod(n));
      }
    }
  }
  CHECK(wrong == 0);
  CHECK(checked > 300000);
  const cuda::Divisor<int64_t> wide(int64_t(3) << 33);
  CHECK(wide.div((int64_t(7) << 35) + 5) == ((int64_t(7) << 35) + 5) / (int64_t(3) << 33));
  CHECK_THROWS_WITH_AS(cuda::Divisor<uint32_t>(0), doctest::Contains("out of range"), Error);
  CHECK_THROWS_WITH_AS(cuda::Divisor<uint32_t>(int64_t(1) << 31), doctest::Contains("out of range"), Error);
}

// ---- devices, streams, memory ----------------------------------------------------------------

TEST_CASE("cuda: device info and library versions") {
  SKIP_WITHOUT_GPU();
  CHECK(cuda_compiled());
  cuda::DeviceInfo info = cuda::device_info(0);
  CHECK(!info.name.empty());
  CHECK(info.major >= 5);
  CHECK(info.multiprocessors > 0);
  CHECK(info.total_memory > 0);
  CHECK(cuda::runtime_version() > 0);
  CHECK(cuda::cublas_version() > 0);
  CHECK(cuda::cudnn_version() > 0);
  cuda::set_device(0);
  CHECK(cuda::current_device() == 0);
  cuda::synchronize(0);
  CHECK_THROWS_AS(cuda::set_device(cuda::device_count()), Error);
  // scripts/gpu_check picks this line out of the test log for its summary.
  std::printf("bcos-cuda-info: device=\"%s\" cc=%d.%d sms=%d memory=%zu runtime=%d cublas=%d cudnn=%zu\n",
              info.name.c_str(), info.major, info.minor, info.multiprocessors, info.total_memory,
              cuda::runtime_version(), cuda::cublas_version(), cuda::cudnn_version());
  std::fflush(stdout);
}

TEST_CASE("cuda: the profiler times GPU kernels by events, by name, in batches past 8,192 calls") {
  SKIP_WITHOUT_GPU();
  const Tensor a = on_gpu(randn({1, 128, 128})), b = on_gpu(randn({1, 128, 128}));
  const Tensor sum_out = empty({1, 128, 128}, {DType::f32, kGpu}), product = empty({1, 128, 128}, {DType::f32, kGpu});
  synchronize(kGpu);
  profile::start();
  for (int i = 0; i < 4; ++i) kernel::binary(BinaryOp::add, a, b, sum_out);
  kernel::bmm(a, b, product);
  const profile::Report r = profile::stop();
  REQUIRE(r.rows.size() == 2);
  double total = 0;
  for (const profile::Row& row : r.rows) {
    CAPTURE(row.kernel);
    CHECK(row.device == "cuda:0");
    CHECK(row.ms >= 0);
    CHECK(row.calls == (row.kernel == "binary add" ? 4 : 1));
    total += row.ms;
  }
  CHECK(r.rows[0].kernel != r.rows[1].kernel);
  // One stream: the calls' event intervals follow each other inside the events' span.
  CHECK(r.gpu_span_ms > 0);
  CHECK(total <= r.gpu_span_ms * 1.001 + 1e-3);
  CHECK(r.format().find("cuda:0: kernels") != std::string::npos);
  // Nothing ran in between: nothing to report.
  profile::start();
  CHECK(profile::stop().rows.empty());
  // Past 8,192 pending calls the events are read and reused: every call still counted once.
  profile::start();
  for (int i = 0; i < 9000; ++i) kernel::binary(BinaryOp::add, a, b, sum_out);
  const profile::Report many = profile::stop();
  REQUIRE(many.rows.size() == 1);
  CHECK(many.rows[0].calls == 9000);
}

TEST_CASE("cuda: streams order work and can be made current") {
  SKIP_WITHOUT_GPU();
  CHECK(cuda::current_stream(0) == nullptr);
  cuda::StreamHandle s = cuda::create_stream(0);
  REQUIRE(s != nullptr);
  cuda::set_current_stream(0, s);
  CHECK(cuda::current_stream(0) == s);
  Tensor x = on_gpu(make({64, 33}, DType::f32, normal()));
  Tensor y = empty({64, 33}, {DType::f32, kGpu});
  cuda::unary(UnaryOp::neg, x, y);
  cuda::stream_synchronize(0, s);
  Tensor want = empty({64, 33}, DType::f32);
  cpu::unary(UnaryOp::neg, to_cpu_contiguous(x), want);
  CHECK_CLOSE(to_cpu_contiguous(y), want, 0, 0);
  x = Tensor();
  y = Tensor();
  cuda::set_current_stream(0, nullptr);
  cuda::destroy_stream(0, s);
  CHECK(cuda::current_stream(0) == nullptr);
}

// Between devices: the bytes go by peer copy, then the destination reshapes and converts them.
// A peer copy into a block that its device's queued work still reads (a tensor just freed and
// handed out again by the cache) must wait for that work: copy_peer synchronises the
// destination's stream first. (On the emulator: BCOS_CUDA_EMULATOR_DEVICES=2, tests/meson.build.)
TEST_CASE("cuda: copies between two GPUs, and a peer copy into a recycled block waits for its readers") {
  if (cuda_device_count() < 2) {
    MESSAGE("fewer than two CUDA devices: skipped");
    return;
  }
  const Device second = Device::cuda(1);
  const Tensor a = make({37, 29}, DType::f32, normal(), 3);
  const Tensor on_first = on_gpu(a);
  const Tensor on_second = raw_to(on_first, DType::f32, second);
  CHECK(on_second.device() == second);
  CHECK_CLOSE(to_cpu_contiguous(on_second), a, 0, 0);
  const Tensor converted = raw_to(strided_copy(on_first), DType::f64, second);  // strided source, new dtype
  CHECK_CLOSE(to_cpu_contiguous(converted), raw_to(a, DType::f64, Device()), 0, 0);

  Tensor z = raw_to(a, DType::f32, second);
  Tensor negated = empty(z.shape(), {DType::f32, second});
  cuda::unary(UnaryOp::neg, z, negated);  // queued on the second device's stream, reading z
  void* const z_block = z.raw_data();
  z = Tensor();  // its block goes back to the cache while the negation may not have run
  const Tensor target = empty(a.shape(), {DType::f32, second});
  const Tensor b = on_gpu(make({37, 29}, DType::f32, normal(), 4));
  cuda::copy_peer(target.raw_data(), 1, b.raw_data(), 0, size_t(a.numel()) * sizeof(float));
  Tensor want = empty(a.shape(), DType::f32);
  cpu::unary(UnaryOp::neg, a, want);
  CHECK_CLOSE(to_cpu_contiguous(negated), want, 0, 0);
  CHECK_CLOSE(to_cpu_contiguous(target), to_cpu_contiguous(b), 0, 0);
  if (target.raw_data() != z_block) MESSAGE("the cache handed out another block: the recycling case did not arise");
}

TEST_CASE("cuda: allocator hands a freed block back out") {
  SKIP_WITHOUT_GPU();
  cuda::empty_cache();
  const size_t before = cuda::memory_stats(0).in_use;
  std::shared_ptr<void> a = cuda::allocate(1000, 0);
  REQUIRE(a != nullptr);
  void* first = a.get();
  CHECK(cuda::memory_stats(0).in_use == before + 1024);  // rounded to 512-byte units
  a.reset();
  CHECK(cuda::memory_stats(0).in_use == before);
  CHECK(cuda::memory_stats(0).cached > 0);
  std::shared_ptr<void> b = cuda::allocate(1000, 0);
  CHECK(b.get() == first);

  // A large request gets its own segment and is reused whole.
  std::shared_ptr<void> big = cuda::allocate(size_t(64) << 20, 0);
  void* big_ptr = big.get();
  size_t peak = cuda::memory_stats(0).peak_in_use;
  CHECK(peak >= (size_t(64) << 20));
  big.reset();
  big = cuda::allocate(size_t(64) << 20, 0);
  CHECK(big.get() == big_ptr);
  big.reset();
  b.reset();
  size_t cached = cuda::memory_stats(0).cached;
  cuda::empty_cache();
  CHECK(cuda::memory_stats(0).cached < cached);
  CHECK(cuda::allocate(0, 0) == nullptr);
}

// Sets an environment variable for one scope, then puts back what was there.
struct ScopedEnv {
  std::string name, old;
  bool had = false;
  ScopedEnv(const char* n, const char* value) : name(n) {
    if (const char* v = std::getenv(n)) had = true, old = v;
    setenv(n, value, 1);
  }
  ~ScopedEnv() {
    if (had)
      setenv(name.c_str(), old.c_str(), 1);
    else
      unsetenv(name.c_str());
  }
};

TEST_CASE("cuda: allocator without caching (BCOS_CUDA_NO_CACHING) gives each tensor exactly its size") {
  SKIP_WITHOUT_GPU();
  cuda::empty_cache();
  const cuda::MemoryStats before = cuda::memory_stats(0);
  std::shared_ptr<void> a, b;
  {
    ScopedEnv no_caching("BCOS_CUDA_NO_CACHING", "1");
    a = cuda::allocate(1000, 0);
    b = cuda::allocate(1000, 0);
    Tensor t = full({5}, 3.0, {DType::f32, kGpu});  // tensors work as ever
    CHECK(t.to_vector<float>() == std::vector<float>(5, 3.0f));
  }
  cuda::MemoryStats now = cuda::memory_stats(0);
  CHECK(now.in_use == before.in_use + 2000);  // not rounded to 512-byte units
  CHECK(now.cached == before.cached + 2000);  // nothing kept beyond the tensors
  CHECK(now.segments == before.segments + 2);
  a.reset();
  now = cuda::memory_stats(0);
  CHECK(now.in_use == before.in_use + 1000);
  CHECK(now.cached == before.cached + 1000);  // returned to the driver at once
  b.reset();
  CHECK(cuda::memory_stats(0).cached == before.cached);
  CHECK(cuda::memory_stats(0).segments == before.segments);
}

TEST_CASE("cuda: allocator splits segments and merges neighbours") {
  SKIP_WITHOUT_GPU();
  cuda::empty_cache();
  const size_t segments = cuda::memory_stats(0).segments;
  std::shared_ptr<void> a = cuda::allocate(1024, 0);
  std::shared_ptr<void> b = cuda::allocate(1024, 0);
  CHECK(static_cast<char*>(b.get()) == static_cast<char*>(a.get()) + 1024);  // one segment, split
  CHECK(cuda::memory_stats(0).segments == segments + 1);
  void* start = a.get();
  a.reset();
  b.reset();
  // Both halves merged back with the rest of the segment: a larger block fits at the start.
  std::shared_ptr<void> c = cuda::allocate(4096, 0);
  CHECK(c.get() == start);
  CHECK(cuda::memory_stats(0).segments == segments + 1);
}

TEST_CASE("cuda: allocator reuses blocks only on their own stream") {
  SKIP_WITHOUT_GPU();
  cuda::empty_cache();
  std::shared_ptr<void> a = cuda::allocate(4096, 0);
  void* on_default = a.get();
  a.reset();
  cuda::StreamHandle s = cuda::create_stream(0);
  cuda::set_current_stream(0, s);
  std::shared_ptr<void> b = cuda::allocate(4096, 0);
  CHECK(b.get() != on_default);
  b.reset();
  cuda::set_current_stream(0, nullptr);
  std::shared_ptr<void> c = cuda::allocate(4096, 0);
  CHECK(c.get() == on_default);
  c.reset();
  cuda::synchronize(0);
  cuda::destroy_stream(0, s);
}

TEST_CASE("cuda: out of memory raises an error naming the sizes") {
  SKIP_WITHOUT_GPU();
  std::string message;
  try {
    cuda::allocate(size_t(1) << 50, 0);
  } catch (const Error& e) {
    message = e.what();
  }
  REQUIRE(!message.empty());
  CHECK(message.find("out of memory") != std::string::npos);
  CHECK(message.find("bytes") != std::string::npos);
  CHECK(message.find(std::to_string(size_t(1) << 50)) != std::string::npos);
  CHECK_THROWS_AS(cuda::allocate(size_t(1) << 50, 0), OutOfMemoryError);  // a caller can tell it from other errors
  // The failure left no error behind: ordinary work goes on.
  Tensor t = full({16}, 3.0, {DType::f32, kGpu});
  CHECK(t.to_vector<float>()[15] == 3.0f);
}

// ---- copies ------------------------------------------------------------------------------------

TEST_CASE("cuda: host <-> device round trip of every dtype") {
  SKIP_WITHOUT_GPU();
  const std::vector<double> values = {0, 1, 2, 3.5, 7, 0.25, 100, 1, 0, 255, 12, 64};
  for (DType dt : kAllDTypes) {
    INFO("dtype ", dtype_name(dt));
    std::vector<double> v = values;
    if (dt == DType::boolean)
      for (double& x : v) x = x != 0 ? 1 : 0;
    if (dt == DType::i64 || dt == DType::u8)
      for (double& x : v) x = std::floor(x);
    Tensor host = from_vector<double>(v, {3, 4}, dt);
    Tensor dev = on_gpu(host);
    CHECK(dev.is_cuda());
    CHECK_CLOSE(to_cpu_contiguous(dev), host, 0, 0);
  }
}

TEST_CASE("cuda: a pinned buffer dropped right after its copy to the GPU is not handed out again before the copy "
          "has read it") {
  SKIP_WITHOUT_GPU();
  // pin_memory(x).to(gpu) returns at once; its copy waits behind the stream's queued work. The
  // next same-sized pin_memory() must not write into the block that copy is still to read.
  const Tensor busy = on_gpu(full({1, 1024, 1024}, 0.5));
  const Tensor product = empty({1, 1024, 1024}, {DType::f32, kGpu});
  for (int i = 0; i < 4; ++i) kernel::bmm(busy, busy, product);  // keeps a GPU's stream busy a while
  std::vector<Tensor> copies;
  for (int i = 0; i < 6; ++i) copies.push_back(on_gpu(pin_memory(full({3000}, double(i)))));
  for (int i = 0; i < 6; ++i) {
    INFO("copy ", i);
    CHECK_CLOSE(to_cpu_contiguous(copies[size_t(i)]), full({3000}, double(i)), 0, 0);
  }
}

TEST_CASE("cuda: conversions between every pair of dtypes match the CPU") {
  SKIP_WITHOUT_GPU();
  // Values every dtype holds exactly, so each of the 49 kernels is checked on its own.
  const std::vector<double> values = {0, 1, 2, 3, 0, 1, 5, 1};
  for (DType from : kAllDTypes) {
    std::vector<double> v = values;
    if (from == DType::boolean)
      for (double& x : v) x = x != 0 ? 1 : 0;
    Tensor src_host = from_vector<double>(v, {2, 4}, from);
    Tensor src_dev = strided_copy(on_gpu(src_host));
    for (DType to : kAllDTypes) {
      INFO("from ", dtype_name(from), " to ", dtype_name(to));
      Tensor want = empty({2, 4}, to);
      cpu::copy(want, src_host);
      Tensor got = empty({2, 4}, {to, kGpu});
      cuda::copy(got, src_dev);
      CHECK_CLOSE(to_cpu_contiguous(got), want, 0, 0);
    }
  }
}

TEST_CASE("cuda: rounding to float16 / bfloat16 and special values match the CPU") {
  SKIP_WITHOUT_GPU();
  const double h = std::ldexp(1.0, -11), b = std::ldexp(1.0, -8);  // half-ulps at 1.0
  const std::vector<double> values = {1 + h,     1 + 3 * h, 1 + b,   1 + 3 * b,  65504, 65520,
                                      1e-8,      -3e-8,     -0.0,    kNaN,       kInf,  -kInf,
                                      0.1,       -2.7,      1e30,    6.1e-5,     3.3e-39, 1e-45};
  for (DType from : {DType::f32, DType::f64}) {
    Tensor src_host = from_vector<double>(values, {int64_t(values.size())}, from);
    Tensor src_dev = on_gpu(src_host);
    for (DType to : {DType::f16, DType::bf16, DType::f32, DType::boolean}) {
      INFO("from ", dtype_name(from), " to ", dtype_name(to));
      Tensor want = empty(src_host.shape(), to);
      cpu::copy(want, src_host);
      Tensor got = empty(src_host.shape(), {to, kGpu});
      cuda::copy(got, src_dev);
      CHECK_CLOSE(to_cpu_contiguous(got), want, 0, 0);
    }
  }
  // Fractions and negatives to integers (uint8 only from non-negative values).
  Tensor frac = on_gpu(from_vector<double>({-2.75, -0.5, 0.5, 2.5, 3.99, 1e6}, {6}, DType::f32));
  Tensor want_i64 = empty({6}, DType::i64);
  cpu::copy(want_i64, to_cpu_contiguous(frac));
  Tensor got_i64 = empty({6}, {DType::i64, kGpu});
  cuda::copy(got_i64, frac);
  CHECK_CLOSE(to_cpu_contiguous(got_i64), want_i64, 0, 0);
  Tensor pos = on_gpu(from_vector<double>({0.5, 2.5, 3.99, 254.9}, {4}, DType::f64));
  Tensor want_u8 = empty({4}, DType::u8);
  cpu::copy(want_u8, to_cpu_contiguous(pos));
  Tensor got_u8 = empty({4}, {DType::u8, kGpu});
  cuda::copy(got_u8, pos);
  CHECK_CLOSE(to_cpu_contiguous(got_u8), want_u8, 0, 0);
}

TEST_CASE("cuda: strided copies and fills") {
  SKIP_WITHOUT_GPU();
  Tensor host = make({5, 7, 3}, DType::f32, normal());
  Tensor dev = on_gpu(host);
  // A permuted view made contiguous.
  Tensor permuted = dev.alias({3, 5, 7}, {dev.strides()[2], dev.strides()[0], dev.strides()[1]}, 0);
  Tensor dense = empty({3, 5, 7}, {DType::f32, kGpu});
  cuda::copy(dense, permuted);
  Tensor host_permuted = host.alias({3, 5, 7}, {host.strides()[2], host.strides()[0], host.strides()[1]}, 0);
  Tensor want = empty({3, 5, 7}, DType::f32);
  cpu::copy(want, host_permuted);
  CHECK_CLOSE(to_cpu_contiguous(dense), want, 0, 0);

  // Strided destination with conversion: every other column of a [4, 10] f64 tensor.
  Tensor wide = zeros({4, 10}, {DType::f64, kGpu});
  Tensor columns = wide.alias({4, 5}, {10, 2}, 1);
  Tensor src = on_gpu(make({4, 5}, DType::f32, normal()));
  cuda::copy(columns, src);
  std::vector<double> w = wide.to_vector<double>();
  std::vector<double> s = src.to_vector<double>();
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 10; ++c)
      CHECK(w[size_t(r * 10 + c)] == (c % 2 == 1 ? s[size_t(r * 5 + c / 2)] : 0.0));

  // Fills: a strided view, the zero (memset) path, and 16-bit / bool dtypes.
  cuda::fill(columns, 2.5);
  w = wide.to_vector<double>();
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 10; ++c) CHECK(w[size_t(r * 10 + c)] == (c % 2 == 1 ? 2.5 : 0.0));
  cuda::fill(wide, 0.0);
  for (double x : wide.to_vector<double>()) CHECK(x == 0.0);
  for (DType dt : kAllDTypes) {
    INFO("dtype ", dtype_name(dt));
    Tensor t = empty({3, 3}, {dt, kGpu});
    cuda::fill(t, 0.1);
    Tensor ref = empty({3, 3}, dt);
    cpu::fill(ref, 0.1);
    CHECK_CLOSE(to_cpu_contiguous(t), ref, 0, 0);
  }
}

// ---- elementwise parity --------------------------------------------------------------------------

namespace {

const std::vector<UnaryOp> kUnaryOps = {
    UnaryOp::neg,     UnaryOp::abs,        UnaryOp::sign,     UnaryOp::exp,   UnaryOp::log,
    UnaryOp::log1p,   UnaryOp::sqrt,       UnaryOp::rsqrt,    UnaryOp::square, UnaryOp::reciprocal,
    UnaryOp::sin,     UnaryOp::cos,        UnaryOp::tanh,     UnaryOp::sigmoid, UnaryOp::relu,
    UnaryOp::gelu_erf, UnaryOp::gelu_tanh, UnaryOp::silu,     UnaryOp::pow_scalar, UnaryOp::clamp};

struct UnaryCase {
  UnaryOp op;
  double p0 = 0, p1 = 0;
  bool positive_input = false;
};

std::vector<UnaryCase> unary_cases() {
  std::vector<UnaryCase> cases;
  for (UnaryOp op : kUnaryOps) {
    bool pos = op == UnaryOp::log || op == UnaryOp::log1p || op == UnaryOp::sqrt ||
               op == UnaryOp::rsqrt || op == UnaryOp::reciprocal;
    if (op == UnaryOp::pow_scalar) {
      cases.push_back({op, 2.0, 0, false});
      cases.push_back({op, 3.0, 0, false});
      cases.push_back({op, 0.0, 0, false});
      cases.push_back({op, 0.5, 0, true});
      cases.push_back({op, -1.5, 0, true});
    } else if (op == UnaryOp::clamp) {
      cases.push_back({op, -0.5, 0.7, false});
      cases.push_back({op, kNaN, 0.3, false});
      cases.push_back({op, -0.2, kNaN, false});
    } else {
      cases.push_back({op, 0, 0, pos});
    }
  }
  return cases;
}

}  // namespace

TEST_CASE("cuda: every unary op and its derivative match the CPU") {
  SKIP_WITHOUT_GPU();
  const Shape shape{9, 13};
  for (DType dt : {DType::f32, DType::f64}) {
    const double rtol = rtol_for(dt), atol = rtol;
    uint32_t seed = 10;
    for (const UnaryCase& c : unary_cases()) {
      INFO("op ", op_name(c.op), " p0 ", c.p0, " p1 ", c.p1, " dtype ", dtype_name(dt));
      Tensor x = c.positive_input ? make(shape, dt, positive(), seed++)
                                  : make(shape, dt, normal(1.5), seed++);
      Tensor y = empty(shape, dt);
      cpu::unary(c.op, x, y, c.p0, c.p1);
      Tensor x_dev = on_gpu(x);
      for (bool strided : {false, true}) {
        const char* layout = strided ? "strided input" : "contiguous input";
        INFO(layout);
        Tensor in = strided ? strided_copy(x_dev) : x_dev;
        Tensor out = empty(shape, {dt, kGpu});
        cuda::unary(c.op, in, out, c.p0, c.p1);
        CHECK_CLOSE(to_cpu_contiguous(out), y, rtol, atol);
      }
      Tensor g = make(shape, dt, normal(), seed++);
      Tensor gx = empty(shape, dt);
      cpu::unary_backward(c.op, g, x, y, gx, c.p0, c.p1);
      Tensor gx_dev = empty(shape, {dt, kGpu});
      cuda::unary_backward(c.op, strided_copy(on_gpu(g)), strided_copy(x_dev), on_gpu(y), gx_dev,
                           c.p0, c.p1);
      CHECK_CLOSE(to_cpu_contiguous(gx_dev), gx, rtol, atol);
    }
  }
}

TEST_CASE("cuda: NaN and infinity handling of relu, clamp, minimum and maximum") {
  SKIP_WITHOUT_GPU();
  const std::vector<double> v = {kNaN, -1, 0, 2, kInf, -kInf, 0.25, kNaN};
  const std::vector<double> u = {1, kNaN, 0, -3, 1, kNaN, 0.5, kNaN};
  for (DType dt : {DType::f32, DType::f64}) {
    INFO("dtype ", dtype_name(dt));
    Tensor x = from_vector<double>(v, {8}, dt), z = from_vector<double>(u, {8}, dt);
    auto check_unary = [&](UnaryOp op, double p0, double p1) {
      Tensor want = empty({8}, dt), got = empty({8}, {dt, kGpu});
      cpu::unary(op, x, want, p0, p1);
      cuda::unary(op, on_gpu(x), got, p0, p1);
      CHECK_CLOSE(to_cpu_contiguous(got), want, 0, 0);
    };
    check_unary(UnaryOp::relu, 0, 0);
    check_unary(UnaryOp::clamp, -0.5, 1.0);
    check_unary(UnaryOp::clamp, kNaN, 1.0);
    for (BinaryOp op : {BinaryOp::minimum, BinaryOp::maximum, BinaryOp::eq, BinaryOp::ne,
                        BinaryOp::lt, BinaryOp::ge}) {
      INFO("op ", op_name(op));
      DType out_dt = is_comparison(op) ? DType::boolean : dt;
      Tensor want = empty({8}, out_dt), got = empty({8}, {out_dt, kGpu});
      cpu::binary(op, x, z, want);
      cuda::binary(op, on_gpu(x), on_gpu(z), got);
      CHECK_CLOSE(to_cpu_contiguous(got), want, 0, 0);
    }
  }
}

TEST_CASE("cuda: every binary op matches the CPU with broadcasting and strides") {
  SKIP_WITHOUT_GPU();
  const std::vector<BinaryOp> ops = {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div,
                                     BinaryOp::pow, BinaryOp::minimum, BinaryOp::maximum, BinaryOp::add_relu,
                                     BinaryOp::eq, BinaryOp::ne, BinaryOp::lt, BinaryOp::le,
                                     BinaryOp::gt, BinaryOp::ge};
  const Shape out_shape{3, 4, 5};
  for (DType dt : {DType::f32, DType::f64, DType::i64, DType::u8, DType::boolean}) {
    const bool integral = dt == DType::i64 || dt == DType::u8 || dt == DType::boolean;
    for (BinaryOp op : ops) {
      if ((dt == DType::u8 || dt == DType::boolean) && !is_comparison(op)) continue;
      // Integer pow goes through the device's double pow, which is not promised bit-equal.
      if (dt == DType::i64 && op == BinaryOp::pow) continue;
      INFO("op ", op_name(op), " dtype ", dtype_name(dt));
      auto gen_a = [&]() {
        if (dt == DType::boolean) return make({3, 1, 5}, dt, integers(0, 1), 3);
        if (integral) return make({3, 1, 5}, dt, integers(dt == DType::u8 ? 0 : -4, 4), 3);
        if (op == BinaryOp::pow) return make({3, 1, 5}, dt, positive(), 3);
        return make({3, 1, 5}, dt, quantised(0.5), 3);
      };
      auto gen_b = [&](const Shape& s) {
        if (dt == DType::boolean) return make(s, dt, integers(0, 1), 4);
        if (dt == DType::u8) return make(s, dt, integers(0, 4), 4);
        if (integral) return make(s, dt, integers(1, 4), 4);  // a divisor: never zero
        return make(s, dt, quantised(0.5), 4);
      };
      Tensor a = gen_a();       // broadcast over dim 1
      Tensor b = gen_b({5, 4});  // stored [5, 4], used transposed as [4, 5], broadcast over dim 0
      DType out_dt = is_comparison(op) ? DType::boolean : dt;

      Tensor a_cpu = raw_expand(a, out_shape, "test");
      Tensor bt_cpu = b.alias({4, 5}, {1, 4}, 0);
      Tensor b_cpu = raw_expand(bt_cpu, out_shape, "test");
      Tensor want = empty(out_shape, out_dt);
      cpu::binary(op, a_cpu, b_cpu, want);

      Tensor a_dev = raw_expand(on_gpu(a), out_shape, "test");
      Tensor b_dev_base = on_gpu(b);
      Tensor b_dev = raw_expand(b_dev_base.alias({4, 5}, {1, 4}, 0), out_shape, "test");
      Tensor got = empty(out_shape, {out_dt, kGpu});
      cuda::binary(op, a_dev, b_dev, got);
      CHECK_CLOSE(to_cpu_contiguous(got), want, rtol_for(dt), rtol_for(dt));

      // Dense operands take the contiguous fast path.
      Tensor a_dense = raw_contiguous(a_dev), b_dense = raw_contiguous(b_dev);
      Tensor got_dense = empty(out_shape, {out_dt, kGpu});
      cuda::binary(op, a_dense, b_dense, got_dense);
      CHECK_CLOSE(to_cpu_contiguous(got_dense), want, rtol_for(dt), rtol_for(dt));
    }
  }
}

TEST_CASE("cuda: unsupported dtypes raise errors naming the op") {
  SKIP_WITHOUT_GPU();
  Tensor i = zeros({4}, {DType::i64, kGpu});
  Tensor o = empty({4}, {DType::i64, kGpu});
  try {
    cuda::unary(UnaryOp::gelu_erf, i, o);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("gelu_erf") != std::string::npos);
  }
  Tensor u = zeros({4}, {DType::u8, kGpu});
  Tensor uo = empty({4}, {DType::u8, kGpu});
  try {
    cuda::binary(BinaryOp::add, u, u, uo);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("add") != std::string::npos);
  }
}

// ---- reductions ----------------------------------------------------------------------------------

namespace {

struct ReduceCase {
  Shape shape;
  std::vector<bool> dims;
  bool strided;  // input stored with its last two dims transposed
};

// Shapes chosen so every launch shape runs: one thread per output (few reduced elements, or
// many coalesced outputs), one block per output, the split into partial sums, and columns
// (an outer dim reduced into fewer coalesced outputs than the GPU has threads -- the emulator
// has 4 SMs, so under 1024 -- in one slice or several; tiles of 32 left partly empty; kept dims
// that do not merge, so a tile spans two of them).
std::vector<ReduceCase> reduce_cases() {
  return {
      {{100, 700}, {true, false}, false},        {{1000, 70}, {true, false}, false},
      {{3, 500, 40}, {false, true, false}, false}, {{70, 30, 5, 7}, {true, false, true, false}, false},
      {{90, 500}, {false, true}, true},
      {{4, 5, 6}, {true, false, false}, false},  {{4, 5, 6}, {false, true, false}, true},
      {{4, 5, 6}, {false, false, true}, false},  {{4, 5, 6}, {true, false, true}, true},
      {{4, 5, 6}, {false, true, true}, false},   {{4, 5, 6}, {true, true, true}, true},
      {{3, 5000}, {false, true}, false},         {{2000, 300}, {false, true}, false},
      {{300, 2000}, {true, false}, true},        {{40000, 3}, {true, false}, false},
      {{70, 40000}, {true, false}, false},       {{50000, 8}, {false, true}, false},
      {{200000}, {true}, false},
  };
}

Shape keepdim_shape(const Shape& s, const std::vector<bool>& dims) {
  Shape out = s;
  for (int d = 0; d < s.size(); ++d)
    if (dims[size_t(d)]) out[d] = 1;
  return out;
}

}  // namespace

TEST_CASE("cuda: every reduce op matches the CPU over several dim sets") {
  SKIP_WITHOUT_GPU();
  const std::vector<ReduceOp> ops = {ReduceOp::sum,   ReduceOp::mean,  ReduceOp::prod,
                                     ReduceOp::max,   ReduceOp::min,   ReduceOp::norm1,
                                     ReduceOp::norm2, ReduceOp::logsumexp, ReduceOp::var};
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f64 ? 1e-10 : 1e-5;
    uint32_t seed = 100;
    for (const ReduceCase& c : reduce_cases()) {
      Tensor x_general = make(c.shape, dt, normal(), seed++);
      Tensor x_ties = make(c.shape, dt, quantised(0.25), seed++);  // max / min: first of ties
      Tensor x_prod = make(c.shape, dt, [](std::mt19937_64& r) {
        return 1.0 + 0.001 * std::normal_distribution<double>(0, 1)(r);
      }, seed++);
      const Shape out_shape = keepdim_shape(c.shape, c.dims);
      for (ReduceOp op : ops) {
        const bool extreme = op == ReduceOp::max || op == ReduceOp::min;
        const Tensor& x = extreme ? x_ties : op == ReduceOp::prod ? x_prod : x_general;
        Tensor x_dev = on_gpu(x);
        if (c.strided && c.shape.size() >= 2) x_dev = strided_copy(x_dev);
        for (int64_t correction : (op == ReduceOp::var ? std::vector<int64_t>{0, 1}
                                                       : std::vector<int64_t>{0})) {
          INFO("op ", op_name(op), " dtype ", dtype_name(dt), " shape ", c.shape,
               " strided ", c.strided, " correction ", correction);
          Tensor want = empty(out_shape, dt), got = empty(out_shape, {dt, kGpu});
          Tensor want_idx, got_idx;
          if (extreme) {
            want_idx = empty(out_shape, DType::i64);
            got_idx = empty(out_shape, {DType::i64, kGpu});
          }
          cpu::reduce(op, x, c.dims, want, want_idx, correction);
          cuda::reduce(op, x_dev, c.dims, got, got_idx, correction);
          CHECK_CLOSE(to_cpu_contiguous(got), want, tol, tol);
          if (extreme) CHECK_CLOSE(to_cpu_contiguous(got_idx), want_idx, 0, 0);
        }
      }
    }
  }
}

TEST_CASE("cuda: all / any, int64 reductions and NaN extremes match the CPU") {
  SKIP_WITHOUT_GPU();
  for (const ReduceCase& c : reduce_cases()) {
    INFO("shape ", c.shape);
    const Shape out_shape = keepdim_shape(c.shape, c.dims);
    // Mostly-true / mostly-false inputs so that results vary across outputs.
    Tensor mostly_true = make(c.shape, DType::boolean, [](std::mt19937_64& r) {
      return std::bernoulli_distribution(0.9)(r) ? 1.0 : 0.0;
    }, 7);
    Tensor mostly_false = make(c.shape, DType::boolean, [](std::mt19937_64& r) {
      return std::bernoulli_distribution(0.1)(r) ? 1.0 : 0.0;
    }, 8);
    for (ReduceOp op : {ReduceOp::all, ReduceOp::any}) {
      const Tensor& x = op == ReduceOp::all ? mostly_true : mostly_false;
      Tensor want = empty(out_shape, DType::boolean), got = empty(out_shape, {DType::boolean, kGpu});
      cpu::reduce(op, x, c.dims, want);
      cuda::reduce(op, on_gpu(x), c.dims, got);
      CHECK_CLOSE(to_cpu_contiguous(got), want, 0, 0);
    }
    Tensor xi = make(c.shape, DType::i64, integers(-50, 50), 9);
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
      INFO("int64 op ", op_name(op));
      Tensor want = empty(out_shape, DType::i64), got = empty(out_shape, {DType::i64, kGpu});
      Tensor want_idx, got_idx;
      if (op != ReduceOp::sum) {
        want_idx = empty(out_shape, DType::i64);
        got_idx = empty(out_shape, {DType::i64, kGpu});
      }
      cpu::reduce(op, xi, c.dims, want, want_idx);
      cuda::reduce(op, on_gpu(xi), c.dims, got, got_idx);
      CHECK_CLOSE(to_cpu_contiguous(got), want, 0, 0);
      if (op != ReduceOp::sum) CHECK_CLOSE(to_cpu_contiguous(got_idx), want_idx, 0, 0);
    }
  }
  // NaN counts as the extreme (first one wins); logsumexp and sum propagate it.
  const std::vector<double> v = {1, kNaN, 3, kNaN, -kInf, 2, 5, 0, -kInf, -kInf, -kInf, -kInf};
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = from_vector<double>(v, {3, 4}, dt);
    for (ReduceOp op : {ReduceOp::max, ReduceOp::min, ReduceOp::logsumexp, ReduceOp::sum}) {
      INFO("op ", op_name(op), " dtype ", dtype_name(dt));
      const bool extreme = op == ReduceOp::max || op == ReduceOp::min;
      Tensor want = empty({3, 1}, dt), got = empty({3, 1}, {dt, kGpu});
      Tensor want_idx = extreme ? empty({3, 1}, DType::i64) : Tensor();
      Tensor got_idx = extreme ? empty({3, 1}, {DType::i64, kGpu}) : Tensor();
      cpu::reduce(op, x, {false, true}, want, want_idx);
      cuda::reduce(op, on_gpu(x), {false, true}, got, got_idx);
      CHECK_CLOSE(to_cpu_contiguous(got), want, 1e-6, 1e-6);
      if (extreme) CHECK_CLOSE(to_cpu_contiguous(got_idx), want_idx, 0, 0);
    }
  }
}

// ---- bmm -------------------------------------------------------------------------------------

namespace {

// Elementwise |got - want| <= tol * scale (+ a tiny floor), where scale = |a| @ |b| bounds the
// rounding error of any summation order (and of TF32's shortened inputs).
std::string bmm_mismatch(const Tensor& got, const Tensor& want, const Tensor& scale, double tol) {
  std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>(),
                      s = scale.to_vector<double>();
  for (size_t i = 0; i < g.size(); ++i) {
    if (!(std::abs(g[i] - w[i]) <= tol * s[i] + 1e-30)) {
      std::ostringstream os;
      os << std::setprecision(17) << "element " << i << ": got " << g[i] << ", expected " << w[i]
         << " (error bound " << tol * s[i] << ")";
      return os.str();
    }
  }
  return "";
}

}  // namespace

TEST_CASE("cuda: bmm matches the CPU for dense, transposed, broadcast and strided operands") {
  SKIP_WITHOUT_GPU();
  const int64_t B = 3, M = 17, K = 33, N = 9;
  struct Mode {
    DType dt;
    bool tf32;
    double tol;
  };
  for (Mode mode : {Mode{DType::f32, true, 5e-3}, Mode{DType::f32, false, 1e-5},
                    Mode{DType::f64, false, 1e-12}}) {
    set_allow_tf32(mode.tf32);
    const DType dt = mode.dt;
    Tensor a = make({B, M, K}, dt, normal(), 21);
    Tensor b = make({B, K, N}, dt, normal(), 22);
    Tensor a0 = make({1, M, K}, dt, normal(), 23);
    Tensor c0 = make({B, M, N}, dt, normal(), 24);
    Tensor a_dev = on_gpu(a), b_dev = on_gpu(b);

    Tensor b_wide = on_gpu(make({B, K, 2 * N}, dt, normal(), 25));
    Tensor b_every_other = b_wide.alias({B, K, N}, {K * 2 * N, 2 * N, 2}, 1);  // needs a copy
    struct Case {
      const char* name;
      Tensor a, b;
      bool accumulate;
    };
    std::vector<Case> cases = {
        {"dense", a_dev, b_dev, false},
        {"transposed a", strided_copy(a_dev), b_dev, false},
        {"transposed b", a_dev, strided_copy(b_dev), false},
        {"both transposed", strided_copy(a_dev), strided_copy(b_dev), false},
        {"broadcast batch of a", raw_expand(on_gpu(a0), {B, M, K}, "test"), b_dev, false},
        {"strided b (copied)", a_dev, b_every_other, false},
        {"accumulate", a_dev, strided_copy(b_dev), true},
    };
    for (const Case& c : cases) {
      INFO("case ", c.name, " dtype ", dtype_name(dt), " tf32 ", mode.tf32);
      Tensor a_host = to_cpu_contiguous(c.a), b_host = to_cpu_contiguous(c.b);
      Tensor want = empty({B, M, N}, dt);
      Tensor got = empty({B, M, N}, {dt, kGpu});
      if (c.accumulate) {
        copy_into(want, c0);
        copy_into(got, c0);
      }
      cpu::bmm(a_host, b_host, want, c.accumulate);
      cuda::bmm(c.a, c.b, got, c.accumulate);
      Tensor abs_a = empty(a_host.shape(), dt), abs_b = empty(b_host.shape(), dt);
      cpu::unary(UnaryOp::abs, a_host, abs_a);
      cpu::unary(UnaryOp::abs, b_host, abs_b);
      Tensor scale = empty({B, M, N}, dt);
      cpu::bmm(abs_a, abs_b, scale);
      std::string m = bmm_mismatch(to_cpu_contiguous(got), want, scale, mode.tol);
      CHECK_MESSAGE(m.empty(), m);
    }
  }
  set_allow_tf32(true);
}

TEST_CASE("cuda: bmm edge cases") {
  SKIP_WITHOUT_GPU();
  // K = 0: zeros, or out unchanged when accumulating.
  Tensor a = empty({2, 3, 0}, {DType::f32, kGpu}), b = empty({2, 0, 4}, {DType::f32, kGpu});
  Tensor out = full({2, 3, 4}, 7.0, {DType::f32, kGpu});
  cuda::bmm(a, b, out, true);
  for (float v : out.to_vector<float>()) CHECK(v == 7.0f);
  cuda::bmm(a, b, out, false);
  for (float v : out.to_vector<float>()) CHECK(v == 0.0f);
  // Mismatched shapes and dtypes are errors, not wrong answers.
  Tensor x = zeros({2, 3, 5}, {DType::f32, kGpu}), y = zeros({2, 4, 6}, {DType::f32, kGpu});
  Tensor z = empty({2, 3, 6}, {DType::f32, kGpu});
  CHECK_THROWS_AS(cuda::bmm(x, y, z), Error);
  Tensor xi = zeros({2, 3, 4}, {DType::i64, kGpu}), yi = zeros({2, 4, 6}, {DType::i64, kGpu});
  Tensor zi = empty({2, 3, 6}, {DType::i64, kGpu});
  CHECK_THROWS_AS(cuda::bmm(xi, yi, zi), Error);
}
