// The random source of the data pipeline. Each sample gets its own generator, seeded from
// (seed, epoch, position in the epoch), so random augmentations are the same whichever worker
// thread happens to process the sample, and whatever the number of workers.
#pragma once

#include <cmath>
#include <cstdint>

#include "tensor/error.h"

namespace bcos::data {

// SplitMix64's output function: a bijective 64-bit mix with good avalanche.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t state;

  explicit Rng(uint64_t seed) : state(mix64(seed)) {}
  Rng(uint64_t seed, uint64_t stream, uint64_t index)
      : state(mix64(mix64(mix64(seed) ^ stream) + index)) {}

  uint64_t next() { return mix64(state += 0x9E3779B97F4A7C15ull); }

  // U[0, 1) with 53 random bits.
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Uniform integer in [lo, hi), unbiased (rejection).
  int64_t randint(int64_t lo, int64_t hi) {
    BCOS_CHECK(hi > lo, "Rng::randint: empty range [", lo, ", ", hi, ")");
    const uint64_t span = uint64_t(hi - lo);
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t r;
    do r = next();
    while (r >= limit);
    return lo + int64_t(r % span);
  }

  bool bernoulli(double p) { return uniform() < p; }
};

}  // namespace bcos::data
