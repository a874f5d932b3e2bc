// Printing as PyTorch prints: nested brackets, 4 decimals (scientific when the magnitudes call
// for it), "..." beyond 1000 elements (3 edge items per dim), and dtype / device / grad suffixes.
#include <cmath>
#include <cstdio>
#include <sstream>

#include "tensor/copy.h"
#include "tensor/tensor.h"

namespace bcos {

namespace {
constexpr int64_t kSummarizeAbove = 1000;
constexpr int64_t kEdgeItems = 3;

struct Formatter {
  enum Mode { integer_valued, fixed, scientific, ints, bools } mode = fixed;
  int width = 1;

  std::string format(double v) const {
    char buf[64];
    switch (mode) {
      case bools: return v != 0 ? "True" : "False";
      case ints: std::snprintf(buf, sizeof buf, "%lld", (long long)v); break;
      case integer_valued:
        if (std::isfinite(v)) std::snprintf(buf, sizeof buf, "%.0f.", v);
        else std::snprintf(buf, sizeof buf, "%s", std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
        break;
      case fixed:
        if (std::isfinite(v)) std::snprintf(buf, sizeof buf, "%.4f", v);
        else std::snprintf(buf, sizeof buf, "%s", std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
        break;
      case scientific:
        if (std::isfinite(v)) std::snprintf(buf, sizeof buf, "%.4e", v);
        else std::snprintf(buf, sizeof buf, "%s", std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
        break;
    }
    return buf;
  }
};

// Indices kept along one dim: all, or the first and last kEdgeItems when summarising.
std::vector<int64_t> kept(int64_t n, bool summarize) {
  std::vector<int64_t> idx;
  if (!summarize || n <= 2 * kEdgeItems) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    for (int64_t i = 0; i < kEdgeItems; ++i) idx.push_back(i);
    idx.push_back(-1);  // the "..." marker
    for (int64_t i = n - kEdgeItems; i < n; ++i) idx.push_back(i);
  }
  return idx;
}

void collect(const Tensor& t, const double* vals, int dim, int64_t offset, bool summarize,
             std::vector<double>& out) {
  if (dim == t.dim()) {
    out.push_back(vals[offset]);
    return;
  }
  int64_t stride = t.dim() ? contiguous_strides(t.shape())[dim] : 1;
  for (int64_t i : kept(t.shape()[dim], summarize))
    if (i >= 0) collect(t, vals, dim + 1, offset + i * stride, summarize, out);
}

void emit(std::ostringstream& os, const Tensor& t, const double* vals, const Formatter& f,
          int dim, int64_t offset, int indent, bool summarize) {
  constexpr int kLineWidth = 80;
  int64_t stride = contiguous_strides(t.shape())[dim];
  os << '[';
  std::vector<int64_t> idx = kept(t.shape()[dim], summarize);
  if (dim == t.dim() - 1) {  // a row of numbers, wrapped at 80 columns as PyTorch does
    int per_line = std::max(1, (kLineWidth - indent) / (f.width + 2));
    for (size_t k = 0; k < idx.size(); ++k) {
      if (k > 0) os << (k % size_t(per_line) == 0 ? ",\n" + std::string(size_t(indent + 1), ' ') : ", ");
      if (idx[k] < 0) {
        os << " ...";
        continue;
      }
      std::string s = f.format(vals[offset + idx[k] * stride]);
      os << std::string(size_t(std::max<int>(0, f.width - int(s.size()))), ' ') << s;
    }
  } else {
    for (size_t k = 0; k < idx.size(); ++k) {
      if (k > 0)
        os << ',' << std::string(size_t(t.dim() - dim - 1), '\n') << std::string(size_t(indent + 1), ' ');
      if (idx[k] < 0) {
        os << "...";
        continue;
      }
      emit(os, t, vals, f, dim + 1, offset + idx[k] * stride, indent + 1, summarize);
    }
  }
  os << ']';
}
}  // namespace

std::string Tensor::to_string() const {
  if (!defined()) return "tensor(undefined)";
  Tensor host = to_cpu_contiguous(*this);
  std::vector<double> values = host.to_vector<double>();
  bool summarize = numel() > kSummarizeAbove;

  Formatter f;
  if (dtype() == DType::boolean) {
    f.mode = Formatter::bools;
  } else if (!is_floating_point()) {
    f.mode = Formatter::ints;
  } else {
    std::vector<double> shown;
    collect(host, values.data(), 0, 0, summarize, shown);
    double max_abs = 0, min_abs = INFINITY;
    bool all_int = true;
    for (double v : shown) {
      if (!std::isfinite(v)) continue;
      double a = std::fabs(v);
      max_abs = std::max(max_abs, a);
      if (a > 0) min_abs = std::min(min_abs, a);
      if (v != std::floor(v)) all_int = false;
    }
    bool wide = max_abs >= 1e8 || (min_abs < INFINITY && max_abs / min_abs > 1000);
    if (all_int) {
      f.mode = wide ? Formatter::scientific : Formatter::integer_valued;
    } else {
      f.mode = wide || min_abs < 1e-4 ? Formatter::scientific : Formatter::fixed;
    }
    for (double v : shown) f.width = std::max<int>(f.width, int(f.format(v).size()));
  }
  if (f.mode == Formatter::ints || f.mode == Formatter::bools) {
    std::vector<double> shown;
    collect(host, values.data(), 0, 0, summarize, shown);
    for (double v : shown) f.width = std::max<int>(f.width, int(f.format(v).size()));
  }

  std::ostringstream os;
  os << "tensor(";
  if (numel() == 0) {
    os << "[]";
  } else {
    if (dim() == 0) os << f.format(values[0]);
    else emit(os, host, values.data(), f, 0, 0, 7, summarize);
  }
  if (numel() == 0 || summarize) os << ", size=" << shape();
  if (dtype() != DType::f32 && dtype() != DType::i64 && dtype() != DType::boolean)
    os << ", dtype=torch." << dtype_name(dtype());
  if (is_cuda()) os << ", device='" << device() << "'";
  std::string fn = grad_fn_name();
  if (!fn.empty()) os << ", grad_fn=<" << fn << ">";
  else if (requires_grad()) os << ", requires_grad=True";
  os << ')';
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.to_string(); }

}  // namespace bcos
