// CUDA backend tests: devices, streams, the caching allocator, copies and conversions (the raw
// elementwise, reduce and bmm kernels' CUDA-vs-CPU parity is in test_cuda_math.cpp). They use
// only tensor/ (factories, raw copies, cpu:: kernels), so they do not depend on the autograd
// layer. Every test skips, with a message, when no GPU is visible; only CUDA builds compile this
// file (tests/meson.build).
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
#include "tests/cuda/raw_test.h"

using namespace raw_test;

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

  // A result of a bad index on the second GPU copied to the first raises there, at the copy.
  const Tensor rows = empty({2, 1}, {DType::f32, second});
  kernel::gather(full({2, 3}, 1.0, {DType::f32, second}), 1, raw_to(from_vector(std::vector<int64_t>{0, 5}, {2, 1}), DType::i64, second),
                 rows);
  CHECK_THROWS_WITH_AS(raw_to(rows, DType::f32, Device::cuda(0)),
                       doctest::Contains("gather: index 5 is out of range for size 3 (found on cuda:1"), Error);
  CHECK_NOTHROW(synchronize(second));
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
