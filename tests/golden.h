// A small safetensors reader for the test fixtures (the full, validating reader comes with
// nn/), plus the comparison the golden tests use: the norm-wise relative error
//   max|a − b| / max(max|b|, 1e-6)
// which is what "relative error <= 1e-5" means throughout the tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace golden {

inline std::string golden_dir() {
  if (const char* env = std::getenv("BCOS_GOLDEN_DIR")) return env;
  return BCOS_GOLDEN_DIR;
}

class Fixtures {
 public:
  explicit Fixtures(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    BCOS_CHECK(f.good(), "golden: cannot open ", path, " (run tools/golden/*.py)");
    uint64_t header_len = 0;
    f.read(reinterpret_cast<char*>(&header_len), 8);
    std::string header(header_len, '\0');
    f.read(header.data(), std::streamsize(header_len));
    std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    parse(header, data, path);
  }

  bool has(const std::string& key) const { return tensors_.count(key) > 0; }
  const bcos::Tensor& operator[](const std::string& key) const {
    auto it = tensors_.find(key);
    BCOS_CHECK(it != tensors_.end(), "golden: missing fixture ", key);
    return it->second;
  }
  const std::string& metadata(const std::string& key) const {
    auto it = metadata_.find(key);
    BCOS_CHECK(it != metadata_.end(), "golden: missing metadata ", key);
    return it->second;
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> k;
    for (const auto& [name, t] : tensors_) k.push_back(name);
    return k;
  }

 private:
  // The header is flat JSON: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [a, b]}, ...}
  void parse(const std::string& h, const std::vector<char>& data, const std::string& path) {
    size_t pos = 0;
    auto skip_ws = [&] { while (pos < h.size() && std::isspace(static_cast<unsigned char>(h[pos]))) ++pos; };
    auto expect = [&](char c) {
      skip_ws();
      BCOS_CHECK(pos < h.size() && h[pos] == c, "golden: bad header in ", path, " at ", pos);
      ++pos;
    };
    auto read_string = [&] {
      expect('"');
      size_t end = h.find('"', pos);
      std::string s = h.substr(pos, end - pos);
      pos = end + 1;
      return s;
    };
    auto read_ints = [&] {
      std::vector<int64_t> v;
      expect('[');
      skip_ws();
      while (h[pos] != ']') {
        char* end = nullptr;
        v.push_back(std::strtoll(h.c_str() + pos, &end, 10));
        pos = size_t(end - h.c_str());
        skip_ws();
        if (h[pos] == ',') ++pos;
        skip_ws();
      }
      ++pos;
      return v;
    };
    expect('{');
    while (true) {
      skip_ws();
      if (h[pos] == '}') break;
      std::string name = read_string();
      expect(':');
      skip_ws();
      if (name == "__metadata__") {  // {"key": "value", ...}: plain strings (no escapes in ours)
        expect('{');
        while (true) {
          skip_ws();
          if (h[pos] == '}') { ++pos; break; }
          std::string key = read_string();
          expect(':');
          metadata_[key] = read_string();
          skip_ws();
          if (h[pos] == ',') ++pos;
        }
      } else {
        std::string dtype;
        std::vector<int64_t> shape, offsets;
        expect('{');
        while (true) {
          skip_ws();
          if (h[pos] == '}') { ++pos; break; }
          std::string field = read_string();
          expect(':');
          skip_ws();
          if (field == "dtype") dtype = read_string();
          else if (field == "shape") shape = read_ints();
          else offsets = read_ints();
          skip_ws();
          if (h[pos] == ',') ++pos;
        }
        static const std::map<std::string, bcos::DType> dtypes = {
            {"F32", bcos::kFloat32}, {"F64", bcos::kFloat64}, {"F16", bcos::kFloat16}, {"BF16", bcos::kBFloat16},
            {"I64", bcos::kInt64},   {"BOOL", bcos::kBool},   {"U8", bcos::kUInt8}};
        auto found = dtypes.find(dtype);
        BCOS_CHECK(found != dtypes.end(), "golden: ", name, " in ", path, " has dtype '", dtype,
                   "', which the fixture reader does not take (F32, F64, F16, BF16, I64, BOOL, U8)");
        const bcos::DType dt = found->second;
        bcos::Tensor t = bcos::empty(bcos::Shape(shape), dt);
        size_t nbytes = size_t(offsets[1] - offsets[0]);
        BCOS_CHECK(nbytes == size_t(t.numel()) * t.element_size() && size_t(offsets[1]) <= data.size(),
                   "golden: bad byte range for ", name, " in ", path);
        if (nbytes) std::memcpy(t.raw_data(), data.data() + offsets[0], nbytes);
        tensors_[name] = t;
      }
      skip_ws();
      if (h[pos] == ',') ++pos;
    }
  }
  std::map<std::string, bcos::Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// max|a − b| / max(max|b|, 1e-6) over the finite values, in double; NaN and ±inf must sit in
// the same places in both (else infinity). Shapes must agree.
inline double relative_error(const bcos::Tensor& a, const bcos::Tensor& b) {
  BCOS_CHECK(a.shape() == b.shape(), "relative_error: shapes ", a.shape(), " and ", b.shape(),
             " differ");
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double diff = 0, scale = 1e-6;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) != std::isnan(y[i])) return INFINITY;
    if (std::isnan(x[i])) continue;
    // Infinities must match exactly; in the scale they would hide every other difference.
    if (std::isinf(x[i]) || std::isinf(y[i])) {
      if (x[i] != y[i]) return INFINITY;
      continue;
    }
    diff = std::max(diff, std::abs(x[i] - y[i]));
    scale = std::max(scale, std::abs(y[i]));
  }
  return diff / scale;
}

// Exact equality (for indices and booleans).
inline bool equal(const bcos::Tensor& a, const bcos::Tensor& b) {
  return a.shape() == b.shape() && a.to_vector<double>() == b.to_vector<double>();
}

// The largest |got − want| in units in the last place of want (of its 16-bit type); values much
// smaller than the tensor's largest count in units of 2^-16 of that instead: near zero (a gradient
// that is a difference of terms) a float32 difference between two formulas is no longer small
// against the result's own ulp. NaN matches only NaN. As tools/golden/half.py measures; for float16 /
// bfloat16 tensors (tests/autograd/test_half.cpp, tests/cuda).
// floor: that fraction of the largest |want| (2^-16 by default).
inline double max_ulps(const bcos::Tensor& got_in, const bcos::Tensor& want_in, double floor = 0x1p-16) {
  BCOS_CHECK(got_in.dtype() == want_in.dtype() && got_in.shape() == want_in.shape(), "max_ulps: ", got_in.dtype(), " ",
             got_in.shape(), " against ", want_in.dtype(), " ", want_in.shape());
  const int bits = want_in.dtype() == bcos::DType::bf16 ? 7 : 10, low = want_in.dtype() == bcos::DType::bf16 ? -126 : -14;
  const bcos::Tensor got = got_in.to(bcos::Device::cpu()).to(bcos::DType::f64).contiguous(), want = want_in.to(bcos::DType::f64).contiguous();
  const double* g = got.data<double>();
  const double* w = want.data<double>();
  double largest = 0;
  for (int64_t i = 0; i < want.numel(); ++i) largest = std::max(largest, std::abs(w[i]));
  double worst = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    if (std::isnan(g[i]) || std::isnan(w[i])) {
      if (!(std::isnan(g[i]) && std::isnan(w[i]))) return INFINITY;
      continue;
    }
    if (std::isinf(g[i]) || std::isinf(w[i])) {  // infinities match exactly
      if (g[i] != w[i]) return INFINITY;
      continue;
    }
    const int exponent = std::max(w[i] == 0 ? low : int(std::floor(std::log2(std::abs(w[i])))), low);
    const double unit = std::max(std::ldexp(1.0, exponent - bits), floor * largest);
    worst = std::max(worst, std::abs(g[i] - w[i]) / unit);
  }
  return worst;
}

}  // namespace golden
