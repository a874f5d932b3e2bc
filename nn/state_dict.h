// A state dict: parameter and buffer names to tensors, in order, as PyTorch's OrderedDict keeps
// them (the order is what checkpoints and safetensors files are written and compared in). The
// helpers adapt keys written by other code: DataParallel's "module." prefix, renamed submodules.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace bcos::nn {

using StateDict = std::vector<std::pair<std::string, Tensor>>;

// The tensor stored under `key`, or nullptr.
const Tensor* find(const StateDict& dict, const std::string& key);

// Removes `prefix` from every key that starts with it (others are kept as they are). Raises
// when two entries end up with the same key.
StateDict strip_prefix(StateDict dict, const std::string& prefix);

// Training wrappers prefix every key (DataParallel's "module.", Lightning's "model."): removes
// any of `prefixes` that all keys start with, until none is left ("model.module.x" -> "x").
StateDict strip_wrapper_prefixes(StateDict dict, const std::vector<std::string>& prefixes = {"module.", "model."});

// For each key, the first (from, to) pair whose `from` is a prefix of the key replaces that
// prefix with `to`; keys no pair matches are kept. Raises when two entries end up with the
// same key.
StateDict rename_keys(StateDict dict,
                      const std::vector<std::pair<std::string, std::string>>& from_to_prefixes);

}  // namespace bcos::nn
