// The B-cos kernels on CUDA against the CPU (tensor/cuda/bcos.cu): B-cos conv2d / linear through
// the public API, the patch norms over the shapes each launch takes, and the scale and the patch
// norms' backward over theirs -- no atomics, so two GPU runs must agree bit for bit; and a B-cos
// CLIP image tower as bcos_clip_zeroshot uses it. Skipped (with a message) without a GPU.
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "models/bcos_clip.h"
#include "models/clip.h"
#include "models/explain.h"
#include "nn/bcos.h"
#include "nn/optim.h"
#include "tests/cuda/gpu_test.h"
#include "tests/golden.h"

using namespace bcos;

using gpu_test::have_gpu;

TEST_CASE("cuda ops: B-cos conv2d / linear (patch norms, scale, max-out) and uncentred batch norm match the CPU") {
  if (!have_gpu()) return;
  // float32 without TF32: max-out picks the larger of two products, and TF32's ~1e-3 error
  // could pick the other unit of a near tie than the CPU does (a gradient sent elsewhere).
  const gpu_test::Tf32 exact_f32(false);
  manual_seed(19);
  // [2, 4, 7, 6] and linear rows of 5: the patch norms' backward element by element (float32);
  // [2, 4, 4, 6] and rows of 8: in 16-byte packs of pixels and of channels (internal.h).
  for (const Shape& shape : {Shape{2, 4, 7, 6}, Shape{2, 4, 4, 6}})
  for (DType dt : {kFloat32, kFloat64}) {
    for (bool explain : {false, true}) {
      CAPTURE(shape);
      CAPTURE(dt);
      CAPTURE(explain);
      const int64_t row = shape[2] == 7 ? 5 : 8;
      Tensor x = randn(shape, dt), w = randn({6, 2, 3, 3}, dt), w2 = randn({6, 4, 3, 3}, dt);
      Tensor wl = randn({8, row}, dt), xl = randn({3, row}, dt);
      Tensor bn_w = rand({4}, dt) + 0.5, bn_b = randn({4}, dt), rv0 = rand({4}, dt) + 0.5;
      auto run = [&](Device dev) {
        std::vector<Tensor> results;
        std::optional<ExplanationModeGuard> guard;
        if (explain) guard.emplace();
        for (double b : {2.0, 2.5}) {
          Tensor xd = x.to(dev).requires_grad_(), wd = w.to(dev).requires_grad_(), w2d = w2.to(dev).requires_grad_();
          Tensor y = bcos_conv2d(xd, wd, Tensor(), 1, 1, 1, /*groups=*/2, b, /*max_out=*/1);
          Tensor y2 = bcos_conv2d(xd, w2d, Tensor(), 2, 0, 1, 1, b, /*max_out=*/2);
          Tensor xld = xl.to(dev).requires_grad_(), wld = wl.to(dev).requires_grad_();
          Tensor y3 = bcos_linear(xld, wld, Tensor(), b, 2);
          // with an epilogue (a folded evaluation-mode batch norm + ReLU; nn::conv_bn), its scale
          // from the norm's statistics
          BcosEpilogue post;
          post.scale = batch_norm_eval_scale(rv0.narrow(0, 0, 3).to(dev), bn_w.narrow(0, 0, 3).to(dev), 1e-5);
          post.shift = bn_b.narrow(0, 0, 3).to(dev), post.relu = b == 2.0;
          results.push_back(post.scale.to(Device()));
          Tensor y4 = bcos_conv2d(xd, w2d, Tensor(), 1, 1, 1, 1, b, /*max_out=*/2, post);
          (sum(y * y) + sum(y2 * y2) + sum(y3 * y3) + sum(y4 * y4)).backward();
          for (const Tensor& t : {y, y2, y3, y4, xd.grad(), wd.grad(), w2d.grad(), xld.grad(), wld.grad()})
            results.push_back(t.to(Device()));
        }
        for (int variant = 0; variant < 4; ++variant) {
          const bool training = variant % 2 == 0, relu = variant >= 2;
          Tensor xd = x.to(dev).requires_grad_(), bw = bn_w.to(dev).requires_grad_(), bb = bn_b.to(dev).requires_grad_();
          Tensor rv = rv0.to(dev).clone();
          Tensor y = batch_norm_uncentered(xd, rv, bw, bb, training, 0.1, 1e-5, relu);
          sum(y * y * y).backward();
          for (const Tensor& t : {y, xd.grad(), bw.grad(), bb.grad(), rv}) results.push_back(t.to(Device()));
        }
        return results;
      };
      const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
      for (size_t i = 0; i < cpu.size(); ++i) {
        CAPTURE(i);
        CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-10 : 1e-4));  // f32: summation order
      }
      // The folded norm's scale: a division by a square root, correctly rounded on both devices.
      CHECK(gpu[0].to_vector<double>() == cpu[0].to_vector<double>());
    }
  }
}

TEST_CASE("cuda ops: B-cos patch norms (channels, then window) match the CPU over the shapes each launch takes") {
  if (!have_gpu()) return;
  manual_seed(23);
  struct Case {
    Shape x;
    IntPair kernel, stride, padding, dilation;
    int64_t groups;
  };
  const std::vector<Case> cases = {
      {{3, 40, 9, 11}, 3, 1, 1, 1, 1},   // more channels than a block's 8 rows, a partial 32-position block
      {{2, 24, 7, 7}, 1, 1, 0, 1, 1},    // pointwise: the channels' sums are the output
      {{2, 24, 7, 7}, 1, 2, 0, 1, 3},    // 1 x 1 with stride: through the window sum
      {{2, 36, 10, 8}, 3, 1, 2, 2, 4},   // dilation, padding, groups
      {{1, 9, 40, 37}, {5, 3}, {2, 1}, {2, 0}, 1, 1},  // several position blocks, uneven windows
      {{70, 300, 1, 1}, 1, 1, 0, 1, 1},  // a linear layer's rows: a warp each, K past 32
      {{20, 12, 1, 1}, 1, 1, 0, 1, 3},   // rows split in groups
      {{2, 5, 1, 1}, 3, 1, 1, 1, 1},     // a 1 x 1 plane under a padded 3 x 3 window
      {{2, 3, 0, 4}, 3, 1, 2, 1, 1},     // an empty plane under a padded window: zero sums
      {{70000, 8, 1, 2}, 1, 1, 0, 1, 1},  // more planes than a grid's 65,535 rows: blocks take several
  };
  for (DType dt : {kFloat32, kFloat64})
    for (const Case& c : cases) {
      CAPTURE(dt);
      CAPTURE(c.x);
      const Tensor x = randn(c.x, dt);
      const Tensor cpu = bcos_patch_sumsq(x, c.kernel, c.stride, c.padding, c.dilation, c.groups);
      const Tensor gpu = bcos_patch_sumsq(x.to(Device::cuda(0)), c.kernel, c.stride, c.padding, c.dilation, c.groups);
      CHECK(gpu.shape() == cpu.shape());
      // Sums of n squares (no cancellation) in two orders differ by at most 2 (n - 1) u of the
      // sum (u the unit roundoff; a fused multiply-add only lowers it).
      const int64_t n = c.x[1] / c.groups * c.kernel.h * c.kernel.w;
      const double u = dt == kFloat64 ? 0x1p-53 : 0x1p-24;
      CHECK(golden::relative_error(gpu.to(Device()), cpu) <= 2.0 * double(std::max<int64_t>(n - 1, 1)) * u);
    }
}

TEST_CASE("cuda ops: the B-cos scale and the patch norms' backward over each launch's shapes, the same bits every run") {
  if (!have_gpu()) return;
  // The scale walks each (sample, group, position)'s channels: 'wide' blocks of 32 positions for
  // S >= 16 (in chunks of channels, their norm gradients added in chunk order, when few planes
  // would leave the GPU idle), a warp per unit for S < 16 (linear layers: S = 1; without max-out
  // in 16-byte packs of channels where a group's channels are whole packs). The patch
  // norms' backward gathers each pixel's windows. No atomics: two runs (on the emulator, in
  // different drawn block and thread orders) must agree bit for bit.
  manual_seed(29);
  struct Case {
    const char* what;
    Shape x, w;  // w: the conv's weight [O·M, C / G, k, k]
    int64_t stride, padding, dilation, groups, max_out;
    double b;
    bool epilogue;
  };
  const std::vector<Case> cases = {
      {"wide, channel chunks", {1, 8, 6, 6}, {512, 8, 1, 1}, 1, 0, 1, 1, 1, 2.0, false},
      {"wide, chunks, max-out, b = 2.5", {1, 8, 5, 7}, {256, 8, 3, 3}, 1, 1, 1, 1, 2, 2.5, false},
      {"wide, groups, epilogue", {2, 6, 8, 5}, {12, 2, 3, 3}, 1, 1, 1, 3, 1, 2.0, true},
      {"wide, chunks over planes and groups, max-out, epilogue", {2, 8, 6, 6}, {384, 4, 1, 1}, 1, 0, 1, 2, 2, 2.0, true},
      {"narrow S = 9, stride 2, groups", {2, 6, 6, 5}, {40, 3, 3, 3}, 2, 1, 1, 2, 1, 2.0, false},
      {"narrow S = 1, max-out, epilogue", {3, 6, 3, 3}, {70, 6, 3, 3}, 1, 0, 1, 1, 2, 2.0, true},
      {"narrow S = 1 in 16-byte packs, groups, epilogue", {3, 8, 1, 1}, {32, 4, 1, 1}, 1, 0, 1, 2, 1, 2.5, true},
      {"1 x 1, stride 2 (pixels in no window)", {2, 8, 7, 5}, {33, 8, 1, 1}, 2, 0, 1, 1, 1, 2.0, false},
      {"dilated, padded", {1, 4, 9, 8}, {20, 4, 3, 3}, 1, 2, 2, 1, 1, 2.5, false},
  };
  for (DType dt : {kFloat32, kFloat64})
    for (bool explain : {false, true})
      for (const Case& c : cases) {
        CAPTURE(dt);
        CAPTURE(explain);
        const std::string what = c.what;
        CAPTURE(what);
        const Tensor x = randn(c.x, dt);
        const int64_t outputs = c.w[0] / c.max_out;
        BcosEpilogue post;
        if (c.epilogue) post.scale = rand({outputs}, dt) + 0.5, post.shift = randn({outputs}, dt) * 0.1, post.relu = true;
        // The two passes themselves, the linear part a leaf (no cuDNN, whose algorithms the
        // emulator draws nondeterministic ones of): the conv's sums and a linear layer's rows
        // (x's rows of its last dim).
        const int64_t rows = x.numel() / c.x[3];
        const Tensor probe = bcos_patch_sumsq(x, c.w[2], c.stride, c.padding, c.dilation, c.groups);
        const Tensor lin = randn({c.x[0], c.w[0], probe.size(2), probe.size(3)}, dt), lin_rows = randn({rows, c.w[0], 1}, dt);
        // x_grad false: the norms need no gradient (a frozen input), so the scale's backward skips them
        auto run = [&](Device dev, bool x_grad) {
          std::optional<ExplanationModeGuard> guard;
          if (explain) guard.emplace();
          BcosEpilogue p = post;
          if (c.epilogue) p.scale = post.scale.to(dev), p.shift = post.shift.to(dev);
          Tensor xd = x.to(dev).requires_grad_(x_grad), ld = lin.to(dev).requires_grad_(), lr = lin_rows.to(dev).requires_grad_();
          Tensor y = bcos_scale(ld, bcos_patch_sumsq(xd, c.w[2], c.stride, c.padding, c.dilation, c.groups), c.b, c.max_out,
                                1e-6, 0, p);
          Tensor q = bcos_patch_sumsq(xd.reshape({rows, c.x[3], 1, 1}), 1).reshape({rows, 1, 1});
          Tensor z = bcos_scale(lr, q, c.b, c.max_out, 0, 1e-12);
          (sum(y * y * y) + sum(z * z)).backward();
          CHECK(xd.grad().defined() == (x_grad && !explain));  // explaining, the norms are constants
          return std::vector<Tensor>{y.to(Device()), z.to(Device()), xd.grad().defined() ? xd.grad().to(Device()) : zeros({1}),
                                     ld.grad().to(Device()), lr.grad().to(Device())};
        };
        for (bool x_grad : {true, false}) {
          if (explain && !x_grad) continue;  // the same path as explaining
          CAPTURE(x_grad);
          const std::vector<Tensor> cpu = run(Device(), x_grad), gpu = run(Device::cuda(0), x_grad),
                                    again = run(Device::cuda(0), x_grad);
          for (size_t i = 0; i < cpu.size(); ++i) {
            CAPTURE(i);
            CHECK(gpu[i].shape() == cpu[i].shape());
            CHECK(golden::relative_error(gpu[i], cpu[i]) <= (dt == kFloat64 ? 1e-10 : 1e-4));  // f32: summation order
            CHECK(golden::equal(again[i], gpu[i]));
          }
        }
      }
}

TEST_CASE("cuda ops: a B-cos CLIP image tower -- distillation step, explanation, maps at 3x its resolution -- matches the CPU") {
  if (!have_gpu()) return;
  // What bcos_clip_zeroshot does with the student, on both devices in float64: a cosine
  // distillation step against fixed teacher embeddings, the explanation of cos(image, text), and
  // GridPG's contribution maps at three times the resolution (the positions resampled on the
  // CPU, then on the device: set_image_resolution once resized GPU positions with the CPU-only
  // image resize and stopped the example).
  manual_seed(61);
  const Tensor images = rand({2, 3, 32, 32}, kFloat64), big = rand({1, 3, 96, 96}, kFloat64);
  const Tensor teacher = randn({2, 16}, kFloat64), texts = randn({3, 16}, kFloat64);
  for (bool vit : {false, true}) {
    CAPTURE(vit);
    auto run = [&](Device dev) {
      manual_seed(62);
      std::shared_ptr<nn::Module> tower =
          vit ? std::shared_ptr<nn::Module>(std::make_shared<models::ClipVisionTransformer>(32, 8, 16, 2, 2, 16, true))
              : std::shared_ptr<nn::Module>(std::make_shared<models::ModifiedResNet>(std::vector<int64_t>{1, 1}, 16, 2, 32, 8));
      models::BcosClipOptions o;
      o.keep_position = true;  // (the ResNet's attention pool then has positions to resample too)
      auto student = models::bcosify_clip_visual(tower, o);
      student->to(kFloat64);
      student->to(dev);
      student->train();
      nn::SGD sgd(student->parameters(), {.lr = 0.1, .momentum = 0.9});
      const Tensor loss = models::cosine_distillation_loss((*student)(nn::add_inverse(images.to(dev))), teacher.to(dev));
      sgd.zero_grad();
      loss.backward();
      sgd.step();
      student->eval();
      auto similarity = std::make_shared<models::TextSimilarity>(
          std::shared_ptr<nn::Module>(student.get(), [](nn::Module*) {}), texts.to(dev));
      const models::Explanation e =
          models::explain(*similarity, nn::add_inverse(images.to(dev)), from_vector(std::vector<int64_t>{2, 0}, {2}).to(dev));
      models::set_image_resolution(*student, 96);
      const Tensor maps = models::contribution_maps(*similarity, nn::add_inverse(big.to(dev)),
                                                    from_vector(std::vector<int64_t>{0, 1, 2}, {1, 3}).to(dev));
      std::vector<Tensor> r{loss.detach().to(Device()), e.logits.to(Device()), e.weights.to(Device()),
                            e.contributions.to(Device()), maps.to(Device())};
      for (const Tensor& p : student->parameters()) r.push_back(p.detach().to(Device()));
      return r;
    };
    const std::vector<Tensor> cpu = run(Device()), gpu = run(Device::cuda(0));
    REQUIRE(cpu.size() == gpu.size());
    CHECK(gpu[4].shape() == Shape{1, 3, 96, 96});
    for (size_t i = 0; i < cpu.size(); ++i) {
      CAPTURE(i);
      CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-9);
    }
  }
}
