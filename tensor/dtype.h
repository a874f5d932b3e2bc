// Element types. f32 is the default; f64 exists for gradchecks; f16 / bf16 are storage types
// (converted to f32 for arithmetic on the CPU); i64 for indices and labels; u8 for images;
// bool for masks and comparison results.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>

#include "tensor/error.h"

namespace bcos {

enum class DType : uint8_t { f32, f64, f16, bf16, i64, u8, boolean };

inline constexpr DType kFloat32 = DType::f32;
inline constexpr DType kFloat64 = DType::f64;
inline constexpr DType kFloat16 = DType::f16;
inline constexpr DType kBFloat16 = DType::bf16;
inline constexpr DType kInt64 = DType::i64;
inline constexpr DType kUInt8 = DType::u8;
inline constexpr DType kBool = DType::boolean;

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i64: return 8;
    case DType::u8: return 1;
    case DType::boolean: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    case DType::boolean: return "bool";
  }
  return "?";
}

inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

inline bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::f16 || t == DType::bf16;
}
// float16 / bfloat16: stored in 16 bits, computed in float32 (each result rounded once, as
// PyTorch's CPU and CUDA kernels do with their "opmath" type).
inline bool is_half_float(DType t) { return t == DType::f16 || t == DType::bf16; }

// PyTorch's promotion of two floating types: the wider wins; float16 with bfloat16 is float32
// (neither holds the other's values).
inline DType promote_floats(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::f64 || b == DType::f64) return DType::f64;
  return DType::f32;
}

// IEEE half and bfloat16 as plain 16-bit storage with exact conversions (round to nearest even).
struct Half {
  uint16_t bits = 0;
  Half() = default;
  explicit Half(float f) : bits(from_float(f)) {}
  operator float() const { return to_float(bits); }

  static uint16_t from_float(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff) return uint16_t(sign | 0x7c00u | (mant ? 0x200u : 0));  // inf / nan
    int e = int(exp) - 127 + 15;
    if (e >= 31) return uint16_t(sign | 0x7c00u);  // overflow -> inf
    if (e <= 0) {                                  // subnormal half (or zero)
      if (e < -10) return uint16_t(sign);
      mant |= 0x800000u;
      int shift = 14 - e;
      uint32_t half_mant = mant >> shift;
      uint32_t rest = mant & ((1u << shift) - 1);
      uint32_t halfway = 1u << (shift - 1);
      if (rest > halfway || (rest == halfway && (half_mant & 1))) half_mant++;
      return uint16_t(sign | half_mant);
    }
    uint32_t h = sign | (uint32_t(e) << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;  // may carry into exponent: fine
    return uint16_t(h);
  }
  static float to_float(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0) {
      if (mant == 0) {
        x = sign;
      } else {  // subnormal: normalise
        int e = -1;
        do {
          mant <<= 1;
          e++;
        } while (!(mant & 0x400u));
        x = sign | (uint32_t(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
      }
    } else if (exp == 31) {
      x = sign | 0x7f800000u | (mant << 13);
    } else {
      x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &x, 4);
    return f;
  }
};

struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  explicit BFloat16(float f) : bits(from_float(f)) {}
  operator float() const { return to_float(bits); }

  static uint16_t from_float(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    // Round to nearest even; NaN stays a (quiet) NaN. Branch-free, so conversion loops vectorise.
    const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16, quiet = (x >> 16) | 0x40u;
    return uint16_t((x & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
  }
  static float to_float(uint16_t b) {
    uint32_t x = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
  }
};

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<Half> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::boolean; };

// The dispatcher is a switch: dispatch_float(dt, "op", [&]<class T>() { ... }) runs the body
// with T = float or double and raises for any other dtype.
template <class F>
decltype(auto) dispatch_float(DType t, const char* op, F&& body) {
  switch (t) {
    case DType::f32: return body.template operator()<float>();
    case DType::f64: return body.template operator()<double>();
    default: fail(op, ": expected a float32 or float64 tensor, got ", dtype_name(t));
  }
}

// Every dtype (f16 / bf16 as their storage structs).
template <class F>
decltype(auto) dispatch_all(DType t, F&& body) {
  switch (t) {
    case DType::f32: return body.template operator()<float>();
    case DType::f64: return body.template operator()<double>();
    case DType::f16: return body.template operator()<Half>();
    case DType::bf16: return body.template operator()<BFloat16>();
    case DType::i64: return body.template operator()<int64_t>();
    case DType::u8: return body.template operator()<uint8_t>();
    case DType::boolean: return body.template operator()<bool>();
  }
  fail("dispatch: unknown dtype");
}

// Types that arithmetic kernels run in: f32, f64, i64 (f16 / bf16 / u8 / bool are converted).
template <class F>
decltype(auto) dispatch_arith(DType t, const char* op, F&& body) {
  switch (t) {
    case DType::f32: return body.template operator()<float>();
    case DType::f64: return body.template operator()<double>();
    case DType::i64: return body.template operator()<int64_t>();
    default: fail(op, ": expected a float32, float64 or int64 tensor, got ", dtype_name(t));
  }
}

}  // namespace bcos
