// The process-wide random generator: counter-based (tensor/random_math.h), so its whole state is
// two integers that checkpoints can save and restore exactly, and a draw only reserves a range of
// counters -- the values are computed where the tensor lives, on the CPU or on a GPU.
#include <cstdlib>
#include <mutex>

#include "tensor/random_math.h"
#include "tensor/tensor.h"

namespace bcos {

namespace {
std::mutex g_mutex;
GeneratorState g_state{0x5eedULL, 0};
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

GeneratorState reserve_random_words(uint64_t n) {
  std::lock_guard<std::mutex> lock(g_mutex);
  GeneratorState taken = g_state;
  g_state.counter += n;
  return taken;
}

void random_bits(uint64_t* out, int64_t n) {
  const GeneratorState s = reserve_random_words(uint64_t(n));
  for (int64_t i = 0; i < n; ++i) out[i] = math::random_word(s.seed, s.counter + uint64_t(i));
}

}  // namespace bcos
