// Learning-rate schedules (see schedule.h).
#include "nn/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "tensor/error.h"

namespace bcos::nn {

Schedule cosine_schedule(double base_lr, int64_t total_steps, double min_lr, int64_t warmup_steps,
                         double warmup_start_factor) {
  BCOS_CHECK(total_steps > 0 && warmup_steps >= 0 && warmup_steps < total_steps,
             "cosine_schedule: need 0 <= warmup_steps (", warmup_steps, ") < total_steps (", total_steps, ")");
  BCOS_CHECK(warmup_start_factor > 0 && warmup_start_factor <= 1, "cosine_schedule: warmup_start_factor ",
             warmup_start_factor, " must be in (0, 1]");
  return [=](int64_t t) {
    if (t < warmup_steps)
      return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * double(t) / double(warmup_steps));
    const double T = double(total_steps - warmup_steps), s = double(std::min(t - warmup_steps, total_steps - warmup_steps));
    return min_lr + (base_lr - min_lr) * (1.0 + std::cos(std::numbers::pi * s / T)) / 2.0;
  };
}

Schedule step_schedule(double base_lr, int64_t step_size, double gamma) {
  BCOS_CHECK(step_size > 0, "step_schedule: step_size ", step_size, " must be positive");
  return [=](int64_t t) { return base_lr * std::pow(gamma, double(t / step_size)); };
}

Schedule multistep_schedule(double base_lr, std::vector<int64_t> milestones, double gamma) {
  std::sort(milestones.begin(), milestones.end());
  return [=](int64_t t) {
    const auto passed = std::upper_bound(milestones.begin(), milestones.end(), t) - milestones.begin();
    return base_lr * std::pow(gamma, double(passed));
  };
}

Scheduler::Scheduler(Optimizer& optimizer, Schedule schedule) : optimizer_(optimizer), schedule_(std::move(schedule)) {
  BCOS_CHECK(schedule_, "Scheduler: no schedule");
  optimizer_.lr = schedule_(0);
}

void Scheduler::step() { optimizer_.lr = schedule_(++step_); }

void Scheduler::set_step(int64_t step) {
  BCOS_CHECK(step >= 0, "Scheduler::set_step: negative step ", step);
  step_ = step;
  optimizer_.lr = schedule_(step_);
}

}  // namespace bcos::nn
