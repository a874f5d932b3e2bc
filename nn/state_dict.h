// StateDict: named tensors in order, as PyTorch's state_dict(). Also the helpers that adapt the
// keys of checkpoints saved from wrapped models ("module." from DataParallel, "model." from
// Lightning).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace bcos::nn {

using StateDict = std::vector<std::pair<std::string, Tensor>>;

// The tensor under `key`, or nullptr.
const Tensor* find(const StateDict& state, const std::string& key);
// Removes `prefix` from the keys that start with it (the others are kept as they are).
StateDict strip_prefix(StateDict state, const std::string& prefix);
// Rewrites key prefixes: each key starting with `from` gets `to` instead (the first rule that
// matches applies).
StateDict rename_keys(StateDict state, const std::vector<std::pair<std::string, std::string>>& from_to);

}  // namespace bcos::nn
