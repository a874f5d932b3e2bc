// Dynamic loss scaling (see grad_scaler.h), with PyTorch's rules and defaults.
#include "nn/grad_scaler.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "autograd/ops.h"

namespace bcos::nn {

GradScaler::GradScaler(GradScalerOptions options)
    : options_(options), enabled_(options.enabled), scale_(options.init_scale) {
  BCOS_CHECK(options.init_scale > 0 && std::isfinite(options.init_scale), "GradScaler: init_scale must be positive, got ",
             options.init_scale);
  BCOS_CHECK(options.growth_factor > 1, "GradScaler: growth_factor must be > 1, got ", options.growth_factor);
  BCOS_CHECK(options.backoff_factor > 0 && options.backoff_factor < 1,
             "GradScaler: backoff_factor must be in (0, 1), got ", options.backoff_factor);
  BCOS_CHECK(options.growth_interval > 0, "GradScaler: growth_interval must be positive, got ",
             options.growth_interval);
}

Tensor GradScaler::scale(const Tensor& loss) const {
  BCOS_CHECK(loss.defined() && loss.is_floating_point(), "GradScaler::scale: expected a floating-point loss");
  return enabled_ ? loss * scale_ : loss;
}

void GradScaler::unscale_(Optimizer& optimizer) {
  if (!enabled_) return;
  BCOS_CHECK(stage_ == Stage::ready, "GradScaler::unscale_: already ",
             stage_ == Stage::unscaled ? "unscaled" : "stepped", " since the last update()");
  NoGradGuard no_grad;
  const double inverse = 1.0 / scale_;
  found_inf_ = false;
  for (const Tensor& p : optimizer.params()) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    // As PyTorch: the scaler keeps float32 master weights' gradients finite; a float16 gradient
    // would underflow at the inverse of a large scale (2^-24 and below round to 0).
    BCOS_CHECK(g.dtype() != DType::f16, "GradScaler::unscale_: a float16 gradient (parameter ", p.shape(),
               "): keep the parameters float32 and use autocast for float16 products");
    g.mul_(inverse);
    if (!all_finite(g)) found_inf_ = true;
  }
  stage_ = Stage::unscaled;
}

bool GradScaler::step(Optimizer& optimizer) {
  if (!enabled_) {
    optimizer.step();
    return true;
  }
  BCOS_CHECK(stage_ != Stage::stepped, "GradScaler::step: already stepped since the last update()");
  if (stage_ == Stage::ready) unscale_(optimizer);
  stage_ = Stage::stepped;
  if (found_inf_) {
    ++skipped_;
    return false;
  }
  optimizer.step();
  return true;
}

void GradScaler::update() {
  if (!enabled_) return;
  BCOS_CHECK(stage_ == Stage::stepped, "GradScaler::update: call step() (or at least unscale_()) first");
  if (found_inf_) {
    scale_ *= options_.backoff_factor;
    growth_tracker_ = 0;
  } else if (++growth_tracker_ == options_.growth_interval) {
    scale_ *= options_.growth_factor;
    growth_tracker_ = 0;
  }
  stage_ = Stage::ready;
  found_inf_ = false;
}

StateDict GradScaler::state_dict() const {
  StateDict s;
  s.emplace_back("scale", full(Shape{}, scale_, {DType::f64}));
  s.emplace_back("growth_tracker", full(Shape{}, double(growth_tracker_), {DType::i64}));
  return s;
}

void GradScaler::load_state_dict(const StateDict& state) {
  const Tensor* found[2] = {find(state, "scale"), find(state, "growth_tracker")};
  for (int i = 0; i < 2; ++i)
    BCOS_CHECK(found[i] && found[i]->numel() == 1, "GradScaler::load_state_dict: missing or malformed '",
               i == 0 ? "scale" : "growth_tracker", "'");
  const double scale = found[0]->to(DType::f64).item<double>();
  BCOS_CHECK(scale > 0 && std::isfinite(scale), "GradScaler::load_state_dict: scale must be positive, got ", scale);
  scale_ = scale;
  growth_tracker_ = int64_t(found[1]->to(DType::f64).item<double>());
  stage_ = Stage::ready;
  found_inf_ = false;
}

void GradScaler::save_to(TrainingState& state) const {
  if (!enabled_) return;
  char scale[40];
  std::snprintf(scale, sizeof scale, "%.17g", scale_);  // round-trips the double exactly
  state.extra.insert_or_assign("grad_scaler.scale", scale);
  state.extra.insert_or_assign("grad_scaler.growth_tracker", std::to_string(growth_tracker_));
}

void GradScaler::load_from(const TrainingState& state) {
  const auto scale = state.extra.find("grad_scaler.scale"), tracker = state.extra.find("grad_scaler.growth_tracker");
  if (scale == state.extra.end() && tracker == state.extra.end()) return;
  BCOS_CHECK(scale != state.extra.end() && tracker != state.extra.end(),
             "GradScaler::load_from: the checkpoint has only one of grad_scaler.scale and grad_scaler.growth_tracker");
  double value = 0;
  long long count = -1;
  try {
    value = std::stod(scale->second);
    count = std::stoll(tracker->second);
  } catch (const std::exception&) {
    fail("GradScaler::load_from: unreadable grad_scaler entries '", scale->second, "', '", tracker->second, "'");
  }
  BCOS_CHECK(value > 0 && std::isfinite(value) && count >= 0, "GradScaler::load_from: bad grad_scaler entries (scale ",
             value, ", growth_tracker ", count, ")");
  scale_ = value;
  growth_tracker_ = count;
  stage_ = Stage::ready;
  found_inf_ = false;
}

}  // namespace bcos::nn
