// float e^x and the normal CDF as branch-free arithmetic the compiler vectorises. A call into
// libm per element keeps a loop scalar: erff and expf were 7 % of a ViT-B/16 forward (GELU,
// softmax). Accuracy, measured against double precision by tests/tensor/test_kernels.cpp
// ("kernels: vectorised exp and normal CDF"): exp within 2 ulp over its whole range (denormal
// results included), the CDF within 6e-7 relative where it is above 1e-30 and 2.5e-7 absolute.
#pragma once

#include <bit>
#include <cstdint>

// Forced inline: a call per element would keep the caller's loop scalar.
#define BCOS_VEC_INLINE inline __attribute__((always_inline))
#define BCOS_VEC_INLINE_LAMBDA __attribute__((always_inline))

namespace bcos::cpu::vec {

// a·b + c, fused where the CPU has FMA. The accuracy above is that of fused steps; left to the
// compiler, contraction changes with the optimisation level (at -O1, exp was off by 1.18 ulp).
// Without FMA hardware, fmaf would be a libm call per element and keep loops scalar.
BCOS_VEC_INLINE float madd(float a, float b, float c) {
#ifdef __FMA__
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// e^x = 2^n · e^r with n = round(x / ln 2), r = x − n ln 2 (ln 2 split in two so r is exact to
// float precision), |r| ≤ 0.35; e^r by its Taylor series through r^7 (truncation < 6e-9).
// 2^n is built in the exponent bits as two factors 2^(n/2) · 2^(n − n/2), each a normal float for
// every n that matters, so results in the denormal range (x down to −104) and overflow to inf
// (x above 88.72) come out of the same multiplication.
BCOS_VEC_INLINE float exp(float x) {
  const float xc = x != x ? 0.0f : (x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x));
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23: adding it rounds to an integer
  const float n = madd(xc, 1.44269504088896341f, kRound) - kRound;
  float r = xc - n * 0.693145751953125f;  // ln 2's leading 16 bits: n · it is exact
  r = madd(-n, 1.42860682030941723e-6f, r);  // the rest of ln 2
  float p = 1.0f / 5040.0f;
  p = madd(p, r, 1.0f / 720.0f);
  p = madd(p, r, 1.0f / 120.0f);
  p = madd(p, r, 1.0f / 24.0f);
  p = madd(p, r, 1.0f / 6.0f);
  p = madd(p, r, 0.5f);
  p = madd(p, r, 1.0f);
  p = madd(p, r, 1.0f);
  const int32_t ni = int32_t(n), half = ni >> 1;
  const float s1 = std::bit_cast<float>((half + 127) << 23);
  const float s2 = std::bit_cast<float>((ni - half + 127) << 23);
  const float y = p * s1 * s2;
  return x != x ? x : y;  // NaN stays NaN
}

// erfc(z) for z ≥ 0 as t · e^(−z² + P(t)) with t = 1 / (1 + z/2), P the degree-9 Chebyshev fit
// of Numerical Recipes (erfcc; fractional error < 1.2e-7). z² comes in as hi + lo, an unevaluated
// sum, so that its rounding does not enter the exponent: e^(x−lo) = e^x · (1 − lo).
// Beyond z = 10 erfc is below float's smallest denormal.
BCOS_VEC_INLINE float erfc_nonnegative(float z, float z2_hi, float z2_lo) {
  const bool beyond = z > 10.0f;
  z = beyond ? 10.0f : z;
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = madd(p, t, -0.82215223f);
  p = madd(p, t, 1.48851587f);
  p = madd(p, t, -1.13520398f);
  p = madd(p, t, 0.27886807f);
  p = madd(p, t, -0.18628806f);
  p = madd(p, t, 0.09678418f);
  p = madd(p, t, 0.37409196f);
  p = madd(p, t, 1.00002368f);
  p = madd(p, t, -1.26551223f);
  // The exponent p − hi and its rounding error (a two-sum): near z = 8 an ulp of hi alone would
  // be a relative 4e-6 of the result.
  const float e = p - z2_hi, back = e - p;
  const float e_err = (p - (e - back)) + (-z2_hi - back);
  const float y = t * exp(e) * (1.0f + e_err - z2_lo);
  return beyond ? 0.0f : y;
}

// x² / 2 as hi + lo (the fma recovers the product's rounding error; halving is exact).
BCOS_VEC_INLINE void half_square(float x, float& hi, float& lo) {
  const float sq = x * x;
  hi = 0.5f * sq;
  lo = 0.5f * __builtin_fmaf(x, x, -sq);
}

// Φ(x) = P(N(0,1) ≤ x) = erfc(−x/√2) / 2, accurate in relative terms in the lower tail (where
// the usual (1 + erf(x/√2)) / 2 cancels) and in absolute terms above. z² = x²/2 is formed from x,
// not from the rounded z = x/√2, whose error e^(−z²) would magnify in the tail.
BCOS_VEC_INLINE float normal_cdf(float x) {
  const float z = (x < 0.0f ? -x : x) * 0.70710678118654752f;
  float hi, lo;
  half_square(x, hi, lo);
  const float half_tail = 0.5f * erfc_nonnegative(z, hi, lo);
  return x < 0.0f ? half_tail : 1.0f - half_tail;
}

// φ(x) = e^(−x²/2) / √(2π)
BCOS_VEC_INLINE float normal_pdf(float x) {
  float hi, lo;
  half_square(x, hi, lo);
  return 0.39894228040143268f * exp(-hi) * (1.0f - lo);
}

}  // namespace bcos::cpu::vec
