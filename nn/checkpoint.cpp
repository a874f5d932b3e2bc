// Training checkpoints (see checkpoint.h).
#include "nn/checkpoint.h"

#include <cstdlib>

#include "nn/safetensors.h"

namespace bcos::nn {

namespace {

constexpr const char* kFormat = "bcos.training-checkpoint.v1";  // under the key "bcos.format"

std::string exact(double v) {  // round-trips through strtod
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

int64_t integer(const std::map<std::string, std::string>& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  BCOS_CHECK(it != meta.end(), "load_training_checkpoint: ", path, " lacks '", key, "'");
  char* end = nullptr;
  const long long v = std::strtoll(it->second.c_str(), &end, 10);
  BCOS_CHECK(end && *end == '\0' && !it->second.empty(), "load_training_checkpoint: ", path, ": '", key, "' is '",
             it->second, "', not an integer");
  return v;
}

uint64_t unsigned_integer(const std::map<std::string, std::string>& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  BCOS_CHECK(it != meta.end(), "load_training_checkpoint: ", path, " lacks '", key, "'");
  char* end = nullptr;
  const unsigned long long v = std::strtoull(it->second.c_str(), &end, 10);
  BCOS_CHECK(end && *end == '\0' && !it->second.empty(), "load_training_checkpoint: ", path, ": '", key, "' is '",
             it->second, "', not an integer");
  return v;
}

}  // namespace

void save_training_checkpoint(const std::string& path, const Module& model, const Optimizer& optimizer,
                              const Scheduler* scheduler, const TrainingState& state) {
  StateDict tensors;
  for (auto& [k, t] : model.state_dict()) tensors.emplace_back("model." + k, t);
  for (auto& [k, t] : optimizer.state_dict()) tensors.emplace_back("optimizer." + k, t);
  const GeneratorState rng = get_rng_state();
  std::map<std::string, std::string> meta = {
      {"bcos.format", kFormat},
      {"epoch", std::to_string(state.epoch)},
      {"step", std::to_string(state.step)},
      {"rng.seed", std::to_string(rng.seed)},
      {"rng.counter", std::to_string(rng.counter)},
      {"optimizer.type", optimizer.type_name()},
      {"optimizer.steps", std::to_string(optimizer.steps_taken())},
      {"optimizer.lr", exact(optimizer.lr)},
  };
  if (scheduler) meta["scheduler.step"] = std::to_string(scheduler->last_step());
  for (const auto& [k, v] : state.extra) meta["extra." + k] = v;
  save_safetensors(path, tensors, meta);
}

TrainingState load_training_checkpoint(const std::string& path, Module& model, Optimizer& optimizer, Scheduler* scheduler) {
  std::map<std::string, std::string> meta;
  const StateDict tensors = load_safetensors(path, &meta);
  BCOS_CHECK(meta.count("bcos.format") && meta["bcos.format"] == kFormat, "load_training_checkpoint: ", path,
             " is not a bcos.cpp training checkpoint (no bcos.format '", kFormat, "' in its metadata)");
  BCOS_CHECK(meta["optimizer.type"] == optimizer.type_name(), "load_training_checkpoint: ", path, " holds a ",
             meta["optimizer.type"], " state but the optimizer is ", optimizer.type_name());
  StateDict model_state, optimizer_state;
  for (const auto& [k, t] : tensors) {
    if (k.rfind("model.", 0) == 0) model_state.emplace_back(k.substr(6), t);
    else if (k.rfind("optimizer.", 0) == 0) optimizer_state.emplace_back(k.substr(10), t);
  }
  char* end = nullptr;
  const std::string& lr_text = meta["optimizer.lr"];
  const double lr = std::strtod(lr_text.c_str(), &end);
  BCOS_CHECK(!lr_text.empty() && end && *end == '\0', "load_training_checkpoint: ", path, ": optimizer.lr is '",
             lr_text, "', not a number");
  optimizer.load_state_dict(optimizer_state, integer(meta, "optimizer.steps", path));  // validates first
  model.load_state_dict(model_state);
  optimizer.lr = lr;
  if (scheduler) scheduler->set_step(integer(meta, "scheduler.step", path));
  set_rng_state({unsigned_integer(meta, "rng.seed", path), unsigned_integer(meta, "rng.counter", path)});
  TrainingState state{integer(meta, "epoch", path), integer(meta, "step", path), {}};
  for (const auto& [k, v] : meta)
    if (k.rfind("extra.", 0) == 0) state.extra[k.substr(6)] = v;
  return state;
}

}  // namespace bcos::nn
