// CUDA-vs-CPU parity of the raw math kernels: every unary op and its derivative, every binary op
// (broadcast, strided), every reduction, bmm (dense, transposed, broadcast, strided, edge cases),
// and the errors for unsupported dtypes. They use only tensor/ (factories, raw copies, cpu::
// kernels); every test skips, with a message, when no GPU is visible.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
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

// ---- elementwise parity --------------------------------------------------------------------------

namespace {

const std::vector<UnaryOp> kUnaryOps = {
    UnaryOp::neg,     UnaryOp::abs,        UnaryOp::sign,     UnaryOp::exp,   UnaryOp::log,
    UnaryOp::log1p,   UnaryOp::sqrt,       UnaryOp::rsqrt,    UnaryOp::square, UnaryOp::reciprocal,
    UnaryOp::sin,     UnaryOp::cos,        UnaryOp::tanh,     UnaryOp::sigmoid, UnaryOp::relu,
    UnaryOp::gelu_erf, UnaryOp::gelu_tanh, UnaryOp::silu,     UnaryOp::quick_gelu, UnaryOp::pow_scalar,
    UnaryOp::clamp};

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

TEST_CASE("cuda: bmm gives cuBLAS a workspace of NVIDIA's size per thread and stream, kept until the thread ends") {
  SKIP_WITHOUT_GPU();
  // 32 MiB from Hopper on, 4 MiB before (cuBLAS's documented recommendation, PyTorch's sizes):
  // taken on a thread's first GEMM on a stream, reused by its later ones there, one more for a
  // side stream (GEMMs on two streams may overlap), all returned when the thread ends. Each GEMM
  // runs with it (the emulator's cuBLAS checks the buffer is device memory and writes into it).
  const size_t bytes = size_t(cuda::device_info(0).major >= 9 ? 32 : 4) << 20;
  const Tensor a = on_gpu(make({2, 40, 24}, DType::f32, normal())), b = on_gpu(make({2, 24, 16}, DType::f32, normal()));
  Tensor want = empty({2, 40, 16}, DType::f32);
  cpu::bmm(to_cpu_contiguous(a), to_cpu_contiguous(b), want);
  const size_t before = cuda::memory_stats(0).in_use;
  std::vector<size_t> growth;
  std::thread([&] {
    auto gemm = [&] {
      Tensor out = empty({2, 40, 16}, {DType::f32, kGpu});
      const size_t start = cuda::memory_stats(0).in_use;
      cuda::bmm(a, b, out);
      growth.push_back(cuda::memory_stats(0).in_use - start);
      CHECK_CLOSE(to_cpu_contiguous(out), want, 1e-2, 1e-2);  // (TF32)
    };
    gemm();
    gemm();
    const cuda::StreamHandle side = cuda::create_stream(0);
    cuda::set_current_stream(0, side);
    gemm();
    gemm();
    cuda::set_current_stream(0, nullptr);
    cuda::stream_synchronize(0, side);
    cuda::destroy_stream(0, side);
  }).join();
  CHECK(growth == std::vector<size_t>{bytes, 0, bytes, 0});
  CHECK(cuda::memory_stats(0).in_use == before);
}
