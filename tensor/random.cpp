// The process-wide random generator: counter-based (SplitMix64 over seed + counter), so its
// whole state is two integers that checkpoints can save and restore exactly.
#include <cstdlib>
#include <mutex>

#include "tensor/tensor.h"

namespace bcos {

namespace {
std::mutex g_mutex;
GeneratorState g_state{0x5eedULL, 0};

inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

void manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_state = {seed, 0};
}

GeneratorState get_rng_state() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_state;
}

void set_rng_state(const GeneratorState& s) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_state = s;
}

void random_bits(uint64_t* out, int64_t n) {
  uint64_t seed, start;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    seed = g_state.seed;
    start = g_state.counter;
    g_state.counter += uint64_t(n);
  }
  uint64_t base = mix(seed ^ 0x9e3779b97f4a7c15ULL);
  for (int64_t i = 0; i < n; ++i) out[i] = mix(base + (start + uint64_t(i)) * 0x9e3779b97f4a7c15ULL);
}

}  // namespace bcos
