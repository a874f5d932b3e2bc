// The optimizer steps as ops: argument checks, then the fused update kernels (tensor/optim_math.h)
// on lists of parameters, in as few launches as the device allows. They run outside the graph (no
// node, no backward), like PyTorch's in-place updates under no_grad. The kernels take contiguous
// tensors of one dtype and device, so a strided tensor is stepped through a contiguous copy and a
// 16-bit parameter with its state through float32 copies (as PyTorch's kernels compute such
// steps: rounded once when written back; the gradient is only read); the rest reach the kernels
// as they are, grouped by device and dtype. Adaptive gradient clipping likewise, in place on the
// gradients (16-bit ones through the composed ops, rounded at each step as PyTorch rounds them).
#include <string>
#include <unordered_map>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace bcos {

using namespace detail;

namespace {

// Raises unless t matches param's shape, dtype and device. who: the op, and in a list of several
// the parameter's index.
void check_like(const std::string& who, const Tensor& param, const Tensor& t, const char* what) {
  check_defined(who.c_str(), t, what);
  BCOS_CHECK(t.shape() == param.shape(), who, ": ", what, " has shape ", t.shape(), " but the parameter has ",
             param.shape());
  check_same_dtype(who.c_str(), param, t);
  check_same_device(who.c_str(), param, t);
}

// Raises unless a 16-bit parameter's tensors match it, or a wider one is float32 / float64.
void check_param(const std::string& who, const Tensor& param) {
  check_defined(who.c_str(), param, "parameter");
  BCOS_CHECK(is_half(param) || param.dtype() == DType::f32 || param.dtype() == DType::f64, who,
             ": parameters must be floating-point, got ", dtype_name(param.dtype()));
}

std::string who_of(const char* op, size_t i, size_t count) {
  return count == 1 ? std::string(op) : std::string(op) + " (parameter " + std::to_string(i) + ")";
}

// A list of state tensors must hold one per parameter, or be empty where that state is not in use.
void check_count(const char* op, size_t params, size_t count, const char* what, bool in_use) {
  BCOS_CHECK(count == params || (!in_use && count == 0), op, ": ", params, " parameters but ", count, " ", what);
}

// Several parameters' tensors as the kernels take them. add() takes one parameter's: [0] the
// parameter, [1] its gradient, [2...] its state (undefined where not in use), all written but the
// read-only slot; run() calls the kernel once per (device, dtype) group with a list per slot,
// writes the copies back and marks what it wrote as changed (as PyTorch's in-place updates: a
// graph that saved a parameter before the step refuses its backward with the new values).
class StepBatch {
 public:
  StepBatch(size_t slots, size_t read_only) : slots_(slots), read_only_(read_only) {}

  void add(const std::vector<Tensor>& tensors) {
    const bool half = is_half(tensors[0]);
    std::vector<Tensor> work;
    for (size_t k = 0; k < slots_; ++k) {
      const Tensor& t = tensors[k];
      const bool copy = t.defined() && (half || !t.is_contiguous());
      work.push_back(!copy ? t : half ? raw_to(t, DType::f32, t.device()) : raw_contiguous(t));
      if (k != read_only_ && t.defined()) {
        written_.push_back(t);
        if (copy) write_back_.emplace_back(t, work.back());
      }
    }
    Group* group = nullptr;
    for (Group& g : groups_)
      if (g.lists[0][0].device() == work[0].device() && g.lists[0][0].dtype() == work[0].dtype()) group = &g;
    if (!group) group = &groups_.emplace_back(Group{std::vector<std::vector<Tensor>>(slots_)});
    for (size_t k = 0; k < slots_; ++k) group->lists[k].push_back(work[k]);
  }

  template <class Kernel>
  void run(Kernel&& kernel) {
    for (const Group& g : groups_) kernel(g.lists);
    for (const auto& [original, copy] : write_back_) kernel::copy(original, copy);
    for (const Tensor& t : written_) t.bump_version();
  }

 private:
  struct Group {
    std::vector<std::vector<Tensor>> lists;  // [slot][parameter]
  };
  size_t slots_, read_only_;
  std::vector<Group> groups_;
  std::vector<std::pair<Tensor, Tensor>> write_back_;  // (original, the copy the kernel stepped)
  std::vector<Tensor> written_;
};

// A parameter listed twice would be updated by two threads at once on a GPU.
void check_distinct(const char* op, const std::vector<Tensor>& params) {
  std::unordered_map<const void*, size_t> seen;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].defined() || params[i].numel() == 0) continue;
    const auto [at, fresh] = seen.emplace(params[i].raw_data(), i);
    BCOS_CHECK(fresh, op, ": parameter ", i, " is parameter ", at->second, " again (shape ", params[i].shape(), ")");
  }
}

// Scalars read from device memory are a CUDA graph's (tensor/op_kinds.h): every parameter on a GPU.
void check_on_device(const char* op, const std::vector<Tensor>& params, bool on_device) {
  if (!on_device) return;
  for (size_t i = 0; i < params.size(); ++i)
    BCOS_CHECK(params[i].is_cuda(), op, ": scalars read from device memory (on_device) are for steps inside a CUDA "
               "graph, but parameter ", i, " ", params[i].shape(), " is on ", params[i].device());
}

// list[i], or an undefined tensor when the list is empty (state not in use).
Tensor entry(const std::vector<Tensor>& list, size_t i) { return list.empty() ? Tensor() : list[i]; }

}  // namespace

void sgd_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& momenta,
               const SgdStepParams& p) {
  const char* op = "sgd_step_";
  const size_t n = params.size();
  check_count(op, n, grads.size(), "gradients", true);
  check_count(op, n, momenta.size(), "momentum buffers", p.momentum != 0);
  check_distinct(op, params);
  check_on_device(op, params, p.on_device != nullptr);
  StepBatch batch(3, /*read_only=*/1);
  for (size_t i = 0; i < n; ++i) {
    const std::string who = who_of(op, i, n);
    check_param(who, params[i]);
    check_like(who, params[i], grads[i], "gradient");
    const Tensor momentum = p.momentum != 0 ? entry(momenta, i) : Tensor();
    if (p.momentum != 0) check_like(who, params[i], momentum, "momentum buffer");
    batch.add({params[i], grads[i], momentum});
  }
  batch.run([&](const std::vector<std::vector<Tensor>>& l) { kernel::sgd_step(l[0], l[1], l[2], p); });
}

void sgd_step_(const Tensor& param, const Tensor& grad, const Tensor& momentum, const SgdStepParams& p) {
  sgd_step_(std::vector{param}, std::vector{grad}, std::vector{momentum}, p);
}

void adam_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                const std::vector<Tensor>& exp_avgs, const std::vector<Tensor>& exp_avg_sqs,
                const std::vector<Tensor>& max_exp_avg_sqs, const AdamStepParams& p) {
  const char* op = "adam_step_";
  const size_t n = params.size();
  check_count(op, n, grads.size(), "gradients", true);
  check_count(op, n, exp_avgs.size(), "exp_avg tensors", true);
  check_count(op, n, exp_avg_sqs.size(), "exp_avg_sq tensors", true);
  check_count(op, n, max_exp_avg_sqs.size(), "max_exp_avg_sq tensors", p.amsgrad);
  BCOS_CHECK(p.bias2_sqrt > 0, op, ": bias correction sqrt(1 - beta2^t) must be positive (step count >= 1)");
  check_distinct(op, params);
  check_on_device(op, params, p.on_device != nullptr);
  StepBatch batch(5, /*read_only=*/1);
  for (size_t i = 0; i < n; ++i) {
    const std::string who = who_of(op, i, n);
    check_param(who, params[i]);
    check_like(who, params[i], grads[i], "gradient");
    check_like(who, params[i], exp_avgs[i], "exp_avg");
    check_like(who, params[i], exp_avg_sqs[i], "exp_avg_sq");
    const Tensor max_sq = p.amsgrad ? entry(max_exp_avg_sqs, i) : Tensor();
    if (p.amsgrad) check_like(who, params[i], max_sq, "max_exp_avg_sq");
    batch.add({params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], max_sq});
  }
  batch.run([&](const std::vector<std::vector<Tensor>>& l) { kernel::adam_step(l[0], l[1], l[2], l[3], l[4], p); });
}

void adam_step_(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const Tensor& max_exp_avg_sq, const AdamStepParams& p) {
  adam_step_(std::vector{param}, std::vector{grad}, std::vector{exp_avg}, std::vector{exp_avg_sq},
             std::vector{max_exp_avg_sq}, p);
}

void adaptive_clip_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, double clip, double eps) {
  const char* op = "adaptive_clip_";
  BCOS_CHECK(clip > 0 && eps >= 0, op, ": clip must be positive and eps non-negative, got ", clip, " and ", eps);
  const size_t n = params.size();
  check_count(op, n, grads.size(), "gradients", true);
  check_distinct(op, grads);
  NoGradGuard no_grad;
  StepBatch batch(2, /*read_only=*/0);
  for (size_t i = 0; i < n; ++i) {
    const std::string who = who_of(op, i, n);
    check_param(who, params[i]);
    check_like(who, params[i], grads[i], "gradient");
    const Tensor& p = params[i];
    if (!is_half(p)) {
      batch.add({p, grads[i]});
      continue;
    }
    // Unit-wise norms over all dims but the first (the whole tensor for vectors and scalars).
    Dims dims;
    for (int64_t d = 1; d < p.dim(); ++d) dims.push_back(d);
    const bool keep = p.dim() > 1;
    const Tensor limit = clamp_min(norm(p, 2, dims, keep), eps) * clip;
    const Tensor grad_norm = norm(grads[i], 2, dims, keep);
    const Tensor factor = where(gt(grad_norm, limit), limit / clamp_min(grad_norm, 1e-6), 1.0);
    Tensor(grads[i]).copy_(grads[i] * factor);
  }
  batch.run([&](const std::vector<std::vector<Tensor>>& l) {
    std::vector<int64_t> units;  // a weight's output units; the whole tensor for vectors and scalars
    for (const Tensor& p : l[0]) units.push_back(p.dim() > 1 ? p.size(0) : 1);
    kernel::adaptive_clip(l[0], l[1], units, clip, eps);
  });
}

}  // namespace bcos
