// Fused attention on CUDA against the CPU: the tensor-core kernels (float32 with TF32 allowed,
// heads up to 64; tensor/cuda/attention.cu) and the CUDA-core ones (float64, float32 without
// TF32, heads up to 256), through scaled_dot_product_attention and packed_self_attention, with
// masks, causality, strided rows, hidden rows and shapes that end inside the kernels' tiles.
// Skipped (with a message) without a GPU.
#include <doctest/doctest.h>

#include <array>
#include <vector>

#include "autograd/ops.h"
#include "tensor/dispatch.h"
#include "tests/cuda/gpu_test.h"
#include "tests/golden.h"

using namespace bcos;

namespace {
using gpu_test::have_gpu;
using gpu_test::Tf32;

// Float32 on the GPU against the CPU: without TF32 both sum float32 products (1e-5); with it the
// GPU's products take inputs rounded to TF32's 10 mantissa bits (5e-3, as every TF32 case).
double f32_tolerance(bool tf32) { return tf32 ? 5e-3 : 1e-5; }

bool all_nan(const Tensor& t) { return all(ne(t, t)).item() != 0; }
bool any_nan(const Tensor& t) { return any(ne(t, t)).item() != 0; }
}  // namespace

TEST_CASE("cuda ops: fused attention (masks, causal, head sizes 16 / 64 / 160 / 300, strided rows; with and without TF32) matches the CPU") {
  if (!have_gpu()) return;
  manual_seed(41);
  for (bool tf32 : {false, true})  // float32 with TF32: tensor cores for d = 16, 64
  for (DType dt : {kFloat32, kFloat64})
  for (int64_t d : {16, 64, 160, 300}) {  // 300: over the fused kernel's 256, composed on the GPU
    CAPTURE(tf32);
    CAPTURE(dt);
    CAPTURE(d);
    const Tf32 mode(tf32);
    const Tensor q = randn({2, 9, 3, d}, dt), k = randn({2, 11, 3, d}, dt), v = randn({2, 11, 3, d / 2}, dt);
    const Tensor g = randn({2, 3, 9, d / 2}, dt);
    Tensor keep = ones({2, 1, 1, 11}, DType::boolean);
    keep.narrow(0, 1, 1).narrow(3, 8, 3).fill_(0);
    const Tensor bias = randn({9, 11}, dt);
    for (int variant = 0; variant < 4; ++variant) {
      CAPTURE(variant);
      auto run = [&](Device dev) {
        Tensor qd = q.to(dev).requires_grad_(), kd = k.to(dev).requires_grad_(), vd = v.to(dev).requires_grad_();
        const Tensor mask = variant == 1 ? keep.to(dev) : variant == 2 ? bias.to(dev) : Tensor();
        // [N, L, heads, D] read as [N, heads, L, D]: strided rows, as MultiheadAttention makes them
        const Tensor y = scaled_dot_product_attention(qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2), mask,
                                                      variant == 3);
        y.backward(g.to(dev).to(y.dtype()));  // (y is bf16, as torch's)
        return std::vector<Tensor>{y.to(Device()), qd.grad().to(Device()), kd.grad().to(Device()),
                                   vd.grad().to(Device())};
      };
      const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
      for (size_t i = 0; i < cpu.size(); ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-10 : f32_tolerance(tf32)));
      }
    }
  }
}

TEST_CASE("cuda ops: packed_self_attention (output and gradients written into the packed layouts; with and without TF32) matches the CPU") {
  if (!have_gpu()) return;
  manual_seed(45);
  for (bool tf32 : {false, true})
  for (DType dt : {kFloat32, kFloat64})
  for (int64_t d : {16, 64, 300}) {  // 300: over the fused kernel's 256, composed through views on the GPU
    CAPTURE(tf32);
    CAPTURE(dt);
    CAPTURE(d);
    const Tf32 mode(tf32);
    const int64_t heads = 3, len = 9;
    const Tensor qkv = randn({2, len, 3 * heads * d}, dt), g = randn({2, len, heads * d}, dt);
    const Tensor bias = randn({2, 1, len, len}, dt);
    for (int variant = 0; variant < 3; ++variant) {  // plain, float mask and causal, q and k constant
      CAPTURE(variant);
      auto run = [&](Device dev) {
        Tensor x = qkv.to(dev).requires_grad_();
        const Tensor y = packed_self_attention(x, heads, variant == 1 ? bias.to(dev) : Tensor(), variant == 1, 0, true,
                                               variant != 2);
        y.backward(g.to(dev));
        return std::vector<Tensor>{y.to(Device()), x.grad().to(Device())};
      };
      const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
      for (size_t i = 0; i < cpu.size(); ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-10 : f32_tolerance(tf32)));
      }
    }
  }
}

TEST_CASE("cuda ops: fused attention on TF32 tensor cores -- rows and keys ending inside tiles, hidden rows, causal -- matches the CPU") {
  if (!have_gpu()) return;
  // The tensor-core kernels own 64 rows a block and stream the other side 32 rows at a time;
  // 70 queries and 75 keys end inside both, 197 (ViT-B/16's sequence) inside several. A row
  // whose keys are all hidden is NaN, and so (as softmax's NaN row in the composed form) are
  // the key and value gradients of its batch: under causality also those of the keys past the
  // block where its query tile ends (the key pass scans the rows it skips).
  manual_seed(48);
  struct Shape {
    int64_t lq, lk, d, dv;
  };
  for (const Shape& s : {Shape{70, 75, 64, 64}, Shape{70, 75, 40, 24}, Shape{70, 75, 8, 64}, Shape{197, 197, 64, 64}}) {
    const int64_t n = 2, h = 3;
    const Tensor q = randn({n, s.lq, h, s.d}), k = randn({n, s.lk, h, s.d}), v = randn({n, s.lk, h, s.dv});
    const Tensor g = randn({n, h, s.lq, s.dv});
    const Tensor bias = randn({s.lq, s.lk});
    Tensor keep = gt(rand({n, 1, s.lq, s.lk}), 0.2);
    keep.narrow(0, 0, 1).narrow(2, 5, 1).fill_(0);  // query 5 of sample 0 sees no key
    for (int variant = 0; variant < (s.lq == 197 ? 1 : 5); ++variant) {  // plain, bias, mask, causal, both
      CAPTURE(s.lq);
      CAPTURE(s.d);
      CAPTURE(s.dv);
      CAPTURE(variant);
      const bool causal = variant >= 3;
      auto run = [&](Device dev) {
        Tensor qd = q.to(dev).requires_grad_(), kd = k.to(dev).requires_grad_(), vd = v.to(dev).requires_grad_();
        const Tensor mask = variant == 1 ? bias.to(dev) : variant == 2 || variant == 4 ? keep.to(dev) : Tensor();
        const Tensor y = scaled_dot_product_attention(qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2), mask,
                                                      causal);
        y.backward(g.to(dev).to(y.dtype()));  // (y is bf16, as torch's)
        return std::vector<Tensor>{y.to(Device()), qd.grad().to(Device()), kd.grad().to(Device()),
                                   vd.grad().to(Device())};
      };
      const std::vector<Tensor> cpu = run(Device());
      for (bool tf32 : {true, false}) {  // the tensor cores, then the CUDA cores on the same shapes
        CAPTURE(tf32);
        const Tf32 mode(tf32);
        const std::vector<Tensor> gpu = run(Device::cuda(0));
        for (size_t i = 0; i < cpu.size(); ++i) {
          CAPTURE(i);
          CHECK(golden::relative_error(gpu[i], cpu[i]) <= f32_tolerance(tf32));
        }
        if (variant == 2 || variant == 4) {  // the hidden row's NaN reached what it should, and no further
          CHECK(all_nan(gpu[0].select(0, 0).select(1, 5)));  // y [N, H, Lq, Dv]: row 5 of every head
          CHECK(all_nan(gpu[1].select(0, 0).select(0, 5)));  // dq [N, Lq, H, D]
          CHECK(all_nan(gpu[2].select(0, 0)));               // dk of sample 0
          CHECK(all_nan(gpu[3].select(0, 0)));
          CHECK_FALSE(any_nan(gpu[2].select(0, 1)));
          CHECK_FALSE(any_nan(gpu[0].select(0, 0).select(1, 4)));
        }
      }
    }
  }
}

TEST_CASE("cuda ops: fused attention under bf16 autocast (bf16 operands on the tensor cores) matches the CPU's autocast") {
  if (!have_gpu()) return;
  // Both devices round q, k, v, dO, the probabilities and dS to bf16 for the products and sum
  // in float32; D is rowsum(P ∘ dP) on both. What differs is the order of the float32 sums, and
  // so, now and then, which way a probability or a dS element rounds to bf16: 2^-8 relative for
  // that element, less than 2^-8 over a tensor (measured on the emulator: 2e-8 to 3e-4). The
  // output is rounded to bf16 on both (autocast's result type), which flips an element by 2^-8
  // as rarely.
  manual_seed(49);
  struct Shape {
    int64_t lq, lk, d, dv;
  };
  for (const Shape& s : {Shape{70, 75, 64, 64}, Shape{70, 75, 40, 24}, Shape{197, 197, 64, 64}}) {
    const int64_t n = 2, h = 3;
    const Tensor q = randn({n, s.lq, h, s.d}), k = randn({n, s.lk, h, s.d}), v = randn({n, s.lk, h, s.dv});
    const Tensor g = randn({n, h, s.lq, s.dv});
    const Tensor bias = randn({s.lq, s.lk});
    Tensor keep = gt(rand({n, 1, s.lq, s.lk}), 0.2);
    keep.narrow(0, 0, 1).narrow(2, 5, 1).fill_(0);  // query 5 of sample 0 sees no key
    for (int variant = 0; variant < (s.lq == 197 ? 1 : 5); ++variant) {  // plain, bias, mask, causal, both
      CAPTURE(s.lq);
      CAPTURE(s.d);
      CAPTURE(s.dv);
      CAPTURE(variant);
      auto run = [&](Device dev) {
        Tensor qd = q.to(dev).requires_grad_(), kd = k.to(dev).requires_grad_(), vd = v.to(dev).requires_grad_();
        const Tensor mask = variant == 1 ? bias.to(dev) : variant == 2 || variant == 4 ? keep.to(dev) : Tensor();
        Tensor y;
        {
          AutocastGuard guard(dev.type, kBFloat16);
          y = scaled_dot_product_attention(qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2), mask,
                                           variant >= 3);
        }
        y.backward(g.to(dev).to(y.dtype()));  // (y is bf16, as torch's)
        return std::vector<Tensor>{y.to(Device()), qd.grad().to(Device()), kd.grad().to(Device()),
                                   vd.grad().to(Device())};
      };
      const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
      for (size_t i = 0; i < cpu.size(); ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1.0 / 256);
      }
      if (variant == 2 || variant == 4) {
        CHECK(all_nan(gpu[0].select(0, 0).select(1, 5)));
        CHECK(all_nan(gpu[2].select(0, 0)));
        CHECK_FALSE(any_nan(gpu[2].select(0, 1)));
      }
    }
  }
}

TEST_CASE("cuda ops: the tensor-core kernels take bf16 q, k, v as they are: float32's results with bf16 operands, each rounded once") {
  // Autocast's attention on CUDA hands the kernels bf16 tensors (no float32 copies): staged, they
  // are the same operands as float32 tensors holding those values, the products and the softmax
  // the same float32 arithmetic, so each output and gradient is the float32 kernel's rounded to
  // bf16, bit for bit, and the log-sum-exp (float32 either way) the same bits. Shapes ending
  // inside the tiles, heads of 64 and 40 / 24, a mask, causal.
  if (!have_gpu()) return;
  manual_seed(51);
  const Device gpu = Device::cuda(0);
  for (const auto& [lq, lk, d, dv] : {std::array<int64_t, 4>{70, 75, 64, 64}, std::array<int64_t, 4>{33, 40, 40, 24}}) {
    for (bool causal : {false, true}) {
      CAPTURE(lq);
      CAPTURE(d);
      CAPTURE(causal);
      const int64_t n = 2, h = 2;
      auto bf16_values = [&](Shape s) { return randn(s).to(DType::bf16).to(gpu); };
      const Tensor q = bf16_values({n, h, lq, d}), k = bf16_values({n, h, lk, d}), v = bf16_values({n, h, lk, dv}),
                   g = bf16_values({n, h, lq, dv});
      const Tensor bias = randn({n, h, lq, lk}).to(gpu);
      AttentionParams p;
      p.scale = 0.125, p.causal = causal, p.bf16_operands = true;
      auto run = [&](DType t) {
        const Tensor qt = q.to(t), kt = k.to(t), vt = v.to(t), gt = g.to(t);
        Tensor out = empty({n, h, lq, dv}, {t, gpu}), lse = empty({n, h, lq}, {kFloat32, gpu});
        Tensor gq = empty(q.shape(), {t, gpu}), gk = empty(k.shape(), {t, gpu}), gv = empty(v.shape(), {t, gpu});
        kernel::attention_forward(qt, kt, vt, bias, p, out, lse);
        kernel::attention_backward(gt, qt, kt, vt, bias, out, lse, p, gq, gk, gv);
        return std::vector<Tensor>{out.to(Device()), lse.to(Device()), gq.to(Device()), gk.to(Device()), gv.to(Device())};
      };
      const std::vector<Tensor> wide = run(kFloat32), narrow = run(DType::bf16);
      for (size_t i = 0; i < wide.size(); ++i) {
        CAPTURE(i);
        CHECK(narrow[i].dtype() == (i == 1 ? kFloat32 : DType::bf16));
        CHECK(golden::equal(narrow[i], i == 1 ? wide[i] : wide[i].to(DType::bf16)));
      }
    }
  }
}
