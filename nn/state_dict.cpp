// Key helpers for state dicts (see state_dict.h).
#include "nn/state_dict.h"

namespace bcos::nn {

const Tensor* find(const StateDict& state, const std::string& key) {
  for (const auto& [k, t] : state)
    if (k == key) return &t;
  return nullptr;
}

StateDict strip_prefix(StateDict state, const std::string& prefix) {
  for (auto& [k, t] : state)
    if (k.compare(0, prefix.size(), prefix) == 0) k.erase(0, prefix.size());
  return state;
}

StateDict rename_keys(StateDict state, const std::vector<std::pair<std::string, std::string>>& from_to) {
  for (auto& [k, t] : state)
    for (const auto& [from, to] : from_to)
      if (k.compare(0, from.size(), from) == 0) {
        k = to + k.substr(from.size());
        break;
      }
  return state;
}

}  // namespace bcos::nn
