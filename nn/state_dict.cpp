// State-dict key helpers.
#include "nn/state_dict.h"

#include <unordered_map>

namespace bcos::nn {

namespace {

// Raises naming both original keys when renaming made two keys equal.
void check_unique(const StateDict& dict, const std::vector<std::string>& original_keys,
                  const char* op) {
  std::unordered_map<std::string, size_t> seen;
  for (size_t i = 0; i < dict.size(); ++i) {
    auto [it, fresh] = seen.emplace(dict[i].first, i);
    if (!fresh)
      fail(op, ": keys '", original_keys[it->second], "' and '", original_keys[i],
           "' would both become '", dict[i].first, "'");
  }
}

}  // namespace

const Tensor* find(const StateDict& dict, const std::string& key) {
  for (const auto& [name, tensor] : dict)
    if (name == key) return &tensor;
  return nullptr;
}

StateDict strip_prefix(StateDict dict, const std::string& prefix) {
  std::vector<std::string> original;
  original.reserve(dict.size());
  for (auto& [name, tensor] : dict) {
    original.push_back(name);
    if (name.compare(0, prefix.size(), prefix) == 0) name.erase(0, prefix.size());
  }
  check_unique(dict, original, "strip_prefix");
  return dict;
}

StateDict strip_wrapper_prefixes(StateDict dict, const std::vector<std::string>& prefixes) {
  for (bool changed = true; changed;) {  // until no prefix is on every key ("model.module.x" -> "x")
    changed = false;
    for (const std::string& prefix : prefixes) {
      bool all = !dict.empty() && !prefix.empty();
      for (const auto& [name, t] : dict) all = all && name.compare(0, prefix.size(), prefix) == 0;
      if (all) dict = strip_prefix(std::move(dict), prefix), changed = true;
    }
  }
  return dict;
}

StateDict rename_keys(StateDict dict,
                      const std::vector<std::pair<std::string, std::string>>& from_to_prefixes) {
  std::vector<std::string> original;
  original.reserve(dict.size());
  for (auto& [name, tensor] : dict) {
    original.push_back(name);
    for (const auto& [from, to] : from_to_prefixes) {
      if (name.compare(0, from.size(), from) != 0) continue;
      name = to + name.substr(from.size());
      break;
    }
  }
  check_unique(dict, original, "rename_keys");
  return dict;
}

}  // namespace bcos::nn
