// Deterministic model weights both sides compute -- tools/golden/models.py's fill_pattern:
// SplitMix64 of a counter seeded by fnv1a(state-dict key) -- so whole-model fixtures store only
// inputs, outputs and a few gradients, not the weights.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "nn/module.h"

namespace testnn {

using namespace bcos;

inline uint64_t fnv1a(const std::string& text) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : text) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// The same numbers as tools/golden/models.py's uniform(): SplitMix64 of a counter per key.
inline Tensor pattern(const std::string& key, const Shape& shape, double low, double high) {
  const uint64_t seed = fnv1a(key);
  std::vector<float> v(size_t(shape.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    uint64_t z = seed + (uint64_t(i) + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const double u = double(z >> 11) * 0x1.0p-53;
    v[i] = float(low + (high - low) * u);
  }
  return from_vector(v, shape);
}

inline void fill_pattern(nn::Module& model) {
  nn::StateDict state;
  for (const auto& [key, t] : model.state_dict()) {
    auto ends = [&](const std::string& s) { return key.size() >= s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0; };
    if (ends("num_batches_tracked")) continue;
    if (ends("running_mean") || ends("bias")) state.emplace_back(key, pattern(key, t.shape(), -0.1, 0.1));
    else if (ends("running_var")) state.emplace_back(key, pattern(key, t.shape(), 0.5, 1.5));
    else if (t.dim() >= 2) {
      const double b = std::sqrt(3.0 / double(t.numel() / t.size(0)));
      state.emplace_back(key, pattern(key, t.shape(), -b, b));
    } else {
      state.emplace_back(key, pattern(key, t.shape(), 0.5, 1.0));
    }
  }
  model.load_state_dict(state);
}

}  // namespace testnn
