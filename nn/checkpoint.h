// Training checkpoints: everything needed to resume a run bit for bit -- the model's state
// dict, the optimizer's state, the schedule's position, epoch / step counters and the global
// random generator -- in one safetensors file (tensors under "model." and "optimizer.", the rest
// as string metadata in its JSON header). Written to a temporary file and renamed, so an
// interrupted save never destroys the previous checkpoint.
#pragma once

#include <map>
#include <string>

#include "nn/module.h"
#include "nn/optim.h"
#include "nn/schedule.h"

namespace bcos::nn {

struct TrainingState {
  int64_t epoch = 0;  // epochs completed
  int64_t step = 0;   // optimizer steps taken
  std::map<std::string, std::string> extra;  // the caller's own entries (best accuracy, arguments, ...)
};

void save_training_checkpoint(const std::string& path, const Module& model, const Optimizer& optimizer,
                              const Scheduler* scheduler, const TrainingState& state);
// Restores model, optimizer, scheduler and the global generator in place; returns the counters.
// Raises bcos::Error when the file is not a training checkpoint or does not fit the model /
// optimizer (missing keys, other shapes, another optimizer type).
TrainingState load_training_checkpoint(const std::string& path, Module& model, Optimizer& optimizer,
                                       Scheduler* scheduler);

}  // namespace bcos::nn
