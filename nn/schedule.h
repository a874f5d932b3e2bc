// Learning-rate schedules as closed-form functions of the step count, applied to an optimizer by
// Scheduler::step(): cosine annealing with an optional linear warmup, step decay, multistep.
// "Step" is whatever the caller counts (iterations or epochs): call step() once per unit.
// The values equal PyTorch's schedulers (LinearLR + CosineAnnealingLR in a SequentialLR, StepLR,
// MultiStepLR) at every step up to total_steps; after it the cosine stays at min_lr where
// PyTorch's CosineAnnealingLR would rise again.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "nn/optim.h"

namespace bcos::nn {

// lr(t) for t = 0, 1, 2, ...
using Schedule = std::function<double(int64_t step)>;

// Linear warmup from base_lr * warmup_start_factor to base_lr over warmup_steps, then cosine
// from base_lr down to min_lr over the remaining total_steps - warmup_steps; min_lr afterwards.
Schedule cosine_schedule(double base_lr, int64_t total_steps, double min_lr = 0.0, int64_t warmup_steps = 0,
                         double warmup_start_factor = 1.0 / 3.0);
// base_lr * gamma^(t / step_size)
Schedule step_schedule(double base_lr, int64_t step_size, double gamma = 0.1);
// base_lr * gamma^(number of milestones <= t)
Schedule multistep_schedule(double base_lr, std::vector<int64_t> milestones, double gamma = 0.1);

class Scheduler {
 public:
  Scheduler(Optimizer& optimizer, Schedule schedule);  // sets lr(0) now
  void step();                                         // advances to the next step's lr
  int64_t last_step() const { return step_; }
  void set_step(int64_t step);  // resuming
  double lr() const { return optimizer_.lr; }

 private:
  Optimizer& optimizer_;
  Schedule schedule_;
  int64_t step_ = 0;
};

}  // namespace bcos::nn
