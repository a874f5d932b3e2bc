// The generator's numbers, written once for both backends. The generator is counter-based: word
// n of a stream is a SplitMix64 finaliser of (seed, n), so any element can be computed on its
// own -- the CPU and every GPU thread draw exactly the same values for a seed, in any order.
//   uniform: 24 (f32 and narrower) or 53 (f64) random bits scaled into [0, 1);
//   normal:  Box-Muller on words 2k and 2k + 1, cos for the even element of the pair, sin for
//            the odd one (so a draw of n normals advances the counter by n rounded up to even);
//   integer: low + (word · range) >> 64, which maps onto [low, high) without a modulo's bias.
#pragma once

#include <cmath>
#include <cstdint>

#include "tensor/elementwise_math.h"  // BCOS_HD
#include "tensor/op_kinds.h"

namespace bcos::math {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

BCOS_HD uint64_t splitmix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Word `counter` of the stream of `seed`.
BCOS_HD uint64_t random_word(uint64_t seed, uint64_t counter) {
  return splitmix(splitmix(seed ^ kGolden) + counter * kGolden);
}

BCOS_HD uint64_t mul_high(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return uint64_t((unsigned __int128)a * b >> 64);
#endif
}

// How many words a draw of n values of `dist` consumes.
BCOS_HD uint64_t random_words_used(RandomDist dist, int64_t n) {
  return dist == RandomDist::normal ? uint64_t(n + 1) / 2 * 2 : uint64_t(n);
}

// Element i of a draw that starts at word `start`. narrow: the output has at most f32 precision.
// p0, p1: [low, high) for integer draws.
BCOS_HD double random_value(RandomDist dist, uint64_t seed, uint64_t start, int64_t i, bool narrow,
                            double p0, double p1) {
  switch (dist) {
    case RandomDist::uniform: {
      const uint64_t w = random_word(seed, start + uint64_t(i));
      return narrow ? double(w >> 40) * 0x1.0p-24 : double(w >> 11) * 0x1.0p-53;
    }
    case RandomDist::normal: {
      const uint64_t pair = start + uint64_t(i / 2) * 2;
      const double u1 = (double(random_word(seed, pair) >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
      const double u2 = double(random_word(seed, pair + 1) >> 11) * 0x1.0p-53;
      const double r = ::sqrt(-2.0 * ::log(u1));
      const double angle = 6.283185307179586476925 * u2;
      return r * (i % 2 == 0 ? ::cos(angle) : ::sin(angle));
    }
    case RandomDist::integer: {
      const auto low = int64_t(p0);
      const auto range = uint64_t(int64_t(p1) - low);
      return double(low + int64_t(mul_high(random_word(seed, start + uint64_t(i)), range)));
    }
  }
  return 0;
}

}  // namespace bcos::math
