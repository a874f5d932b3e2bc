// Explanations and their visualisations (see explain.h).
#include "models/explain.h"

#include <algorithm>
#include <cmath>

#include "autograd/ops.h"
#include "tensor/index_errors.h"

namespace bcos::models {

namespace {
// Runs `fn` with the model in eval mode and its parameters not requiring grad (only input
// gradients are wanted: no weight gradients are computed or left in .grad), then restores both.
template <class F>
auto with_frozen_eval(nn::Module& model, F&& fn) {
  const bool was_training = model.is_training();
  std::vector<Tensor> frozen;
  for (auto& [name, p] : model.named_parameters())
    if (p.requires_grad()) {
      frozen.push_back(p);
      p.requires_grad_(false);
    }
  struct Restore {
    nn::Module& m;
    bool training;
    std::vector<Tensor>& params;
    ~Restore() {
      for (Tensor& p : params) p.requires_grad_(true);
      m.train(training);
    }
  } restore{model, was_training, frozen};
  model.eval();
  return fn();
}

Tensor logits_of(nn::Module& model, const Tensor& x, const char* op) {
  Tensor logits = model(x);
  BCOS_CHECK(logits.dim() == 2 && logits.size(0) == x.size(0), op, ": the model returned ", logits.shape(),
             " for inputs ", x.shape(), "; expected logits [N, classes]");
  return logits;
}
}  // namespace

Explanation explain(nn::Module& model, const Tensor& inputs, const Tensor& targets) {
  BCOS_CHECK(inputs.dim() == 4, "explain: expected inputs [N, C, H, W], got ", inputs.shape());
  BCOS_CHECK(!targets.defined() ||
                 (targets.dim() == 1 && targets.size(0) == inputs.size(0) && targets.dtype() == DType::i64),
             "explain: expected int64 targets [", inputs.size(0), "], got ", targets.dtype(), " ", targets.shape());
  return with_frozen_eval(model, [&] {
    Tensor x = inputs.detach().clone().requires_grad_(true);
    ExplanationModeGuard explaining;
    Tensor logits = logits_of(model, x, "explain");
    Tensor t = targets.defined() ? targets.to(logits.device()) : argmax(logits.detach(), 1);
    // Samples are independent in eval mode, so one backward of the sum gives every W(x) at once.
    // (A target out of range: the gather's own check, in explain's words; on a GPU it is raised
    // at the next synchronisation, without the host waiting here.)
    {
      const IndexRole role("explain: target", "classes");
      sum(gather(logits, 1, t.reshape({-1, 1}))).backward();
    }
    Explanation e;
    e.targets = t;
    e.logits = logits.detach();
    e.weights = x.grad();
    e.contributions = sum(x.detach() * e.weights, {1});
    return e;
  });
}

Tensor contribution_maps(nn::Module& model, const Tensor& inputs, const Tensor& targets) {
  BCOS_CHECK(inputs.dim() == 4, "contribution_maps: expected inputs [N, C, H, W], got ", inputs.shape());
  BCOS_CHECK(targets.dim() == 2 && targets.size(0) == inputs.size(0) && targets.dtype() == DType::i64,
             "contribution_maps: expected int64 targets [", inputs.size(0), ", K], got ", targets.dtype(), " ",
             targets.shape());
  return with_frozen_eval(model, [&] {
    Tensor x = inputs.detach().clone().requires_grad_(true);
    ExplanationModeGuard explaining;
    Tensor logits = logits_of(model, x, "contribution_maps");
    Tensor t = targets.to(logits.device());
    const IndexRole role("contribution_maps: target", "classes");  // (as explain's)
    std::vector<Tensor> maps;
    const int64_t k = targets.size(1);
    for (int64_t j = 0; j < k; ++j) {
      x.zero_grad();
      sum(gather(logits, 1, t.slice(1, j, j + 1).contiguous())).backward(Tensor(), j + 1 < k);
      maps.push_back(sum(x.detach() * x.grad(), {1}));
    }
    return stack(maps, 1);  // [N, K, H, W]
  });
}

double percentile(const Tensor& values, double p) {
  BCOS_CHECK(values.numel() > 0 && p >= 0 && p <= 100, "percentile: need values and p in [0, 100], got ",
             values.numel(), " values, p = ", p);
  std::vector<double> v = values.to(DType::f64).contiguous().to_vector<double>();
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(std::floor(rank)), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (rank - double(lo)) * (v[hi] - v[lo]);
}

Tensor explanation_rgba(const Tensor& weights, const Tensor& contributions, int64_t smooth, double alpha_percentile) {
  BCOS_CHECK(weights.dim() == 3 && weights.size(0) == 6, "explanation_rgba: expected weights [6, H, W], got ",
             weights.shape());
  BCOS_CHECK(contributions.dim() == 2 && contributions.size(0) == weights.size(1) &&
                 contributions.size(1) == weights.size(2),
             "explanation_rgba: contributions ", contributions.shape(), " do not match weights ", weights.shape());
  BCOS_CHECK(smooth >= 0 && (smooth <= 1 || smooth % 2 == 1), "explanation_rgba: smooth must be odd, got ", smooth);
  NoGradGuard no_grad;
  Tensor w = weights.detach().to(DType::f32);
  Tensor scaled = clamp_min(w / (amax(abs(w), {0}, true) + 1e-12), 0.0);  // [6, H, W]
  Tensor pos = scaled.slice(0, 0, 3), neg = scaled.slice(0, 3, 6);
  Tensor rgb = pos / (pos + neg + 1e-12);  // [3, H, W]
  Tensor alpha = norm(w, 2, {0}, true);   // [1, H, W]
  alpha = where(ge(contributions.detach().to(DType::f32).unsqueeze(0), 0.0), alpha, 1e-12);
  if (smooth > 1) alpha = avg_pool2d(alpha.unsqueeze(0), smooth, 1, smooth / 2).squeeze(0);
  const double top = percentile(alpha, alpha_percentile);
  alpha = clamp(alpha / (top > 0 ? top : 1.0), 0.0, 1.0);
  return cat({rgb, alpha}, 0).permute({1, 2, 0}).contiguous();  // [H, W, 4]
}

Tensor contribution_heatmap(const Tensor& map, double percentile_clip) {
  BCOS_CHECK(map.dim() == 2, "contribution_heatmap: expected a map [H, W], got ", map.shape());
  NoGradGuard no_grad;
  Tensor m = map.detach().to(DType::f32);
  const double top = percentile(abs(m), percentile_clip);
  Tensor t = clamp(m / (top > 0 ? top : 1.0), -1.0, 1.0);
  Tensor p = clamp_min(t, 0.0), n = clamp_min(-t, 0.0);
  // positive: white -> red (1, 1 − t, 1 − t); negative: white -> blue (1 − |t|, 1 − |t|, 1)
  return stack({1.0 - n, 1.0 - p - n, 1.0 - p}, 2).contiguous();
}

Tensor to_u8_image(const Tensor& image, int64_t scale) {
  BCOS_CHECK(image.dim() == 3 && scale >= 1, "to_u8_image: expected [H, W, C] and scale >= 1, got ", image.shape(),
             " and ", scale);
  NoGradGuard no_grad;
  Tensor x = clamp(image.detach().to(DType::f32), 0.0, 1.0) * 255.0;
  const int64_t h = x.size(0), w = x.size(1), c = x.size(2);
  std::vector<float> v = x.contiguous().to_vector<float>();
  std::vector<uint8_t> out(static_cast<size_t>(h * scale * w * scale * c));
  for (int64_t i = 0; i < h * scale; ++i)
    for (int64_t j = 0; j < w * scale; ++j)
      for (int64_t k = 0; k < c; ++k)
        out[size_t((i * w * scale + j) * c + k)] = uint8_t(std::lround(v[size_t(((i / scale) * w + j / scale) * c + k)]));
  return from_vector(out, {h * scale, w * scale, c});
}

}  // namespace bcos::models
