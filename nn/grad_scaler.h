// Dynamic loss scaling for float16 autocast (as torch.amp.GradScaler): float16's smallest
// normal number is 6e-5, so small gradients of a float16 product vanish unless the loss is
// scaled up first; the scale then has to come down whenever a gradient overflows to Inf.
//   scaler.scale(loss).backward();  scaler.step(optimizer);  scaler.update();
// step() divides the gradients by the scale (unscale_(), also callable first, e.g. to clip) and
// skips the optimizer's step when any gradient is Inf or NaN; update() halves the scale after
// such a step and doubles it after growth_interval clean steps in a row. bf16 has float32's
// range and needs none of this.
#pragma once

#include "nn/checkpoint.h"
#include "nn/optim.h"

namespace bcos::nn {

struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  bool enabled = true;  // disabled: scale() returns the loss, step() just steps
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});
  Tensor scale(const Tensor& loss) const;  // loss · scale (the loss unchanged when disabled)
  void unscale_(Optimizer& optimizer);     // gradients / scale, and notes whether all are finite
  bool step(Optimizer& optimizer);         // false: skipped (a gradient was not finite)
  void update();
  double get_scale() const { return enabled_ ? scale_ : 1.0; }
  bool enabled() const { return enabled_; }
  int64_t skipped_steps() const { return skipped_; }

  // For checkpoints: "scale" and "growth_tracker" (PyTorch's names, less the underscore).
  StateDict state_dict() const;
  void load_state_dict(const StateDict& state);
  // The same two numbers in a training checkpoint's extra entries ("grad_scaler.scale",
  // "grad_scaler.growth_tracker"), so a resumed float16 run goes on with its scale. save_to
  // writes nothing when disabled; load_from keeps the current state when the entries are absent.
  void save_to(TrainingState& state) const;
  void load_from(const TrainingState& state);

 private:
  GradScalerOptions options_;
  bool enabled_;
  double scale_;
  int64_t growth_tracker_ = 0, skipped_ = 0;
  enum class Stage { ready, unscaled, stepped } stage_ = Stage::ready;
  bool found_inf_ = false;
};

}  // namespace bcos::nn
