// Define-by-run autograd. An op that needs a gradient records a Node: its backward closure
// (written beside the op's forward), the tensors it saved, and edges to the nodes of its inputs.
// backward() orders the reachable nodes topologically and runs each once; leaves accumulate
// `.grad`. Gradients returned for broadcast inputs are summed back to the input's shape here,
// in the engine, so no op has to remember to do it.
#pragma once

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace bcos {

// ---- grad mode ------------------------------------------------------------------------------
bool grad_enabled();
void set_grad_enabled(bool enabled);

// Within its scope no op records a graph (like torch.no_grad()).
struct NoGradGuard {
  NoGradGuard() : previous_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// ---- B-cos explanation mode -----------------------------------------------------------------
// Inside it, B-cos layers and the detachable norms treat their input-dependent scales as
// constants, so the gradient of an output with respect to the input is the dynamic linear map
// W(x) with output = W(x) · x. Like grad mode it is per thread.
bool explanation_mode();
void set_explanation_mode(bool enabled);

struct ExplanationModeGuard {
  explicit ExplanationModeGuard(bool enabled = true) : previous_(explanation_mode()) {
    set_explanation_mode(enabled);
  }
  ~ExplanationModeGuard() { set_explanation_mode(previous_); }
  ExplanationModeGuard(const ExplanationModeGuard&) = delete;
  ExplanationModeGuard& operator=(const ExplanationModeGuard&) = delete;

 private:
  bool previous_;
};

// ---- autocast (mixed precision) ---------------------------------------------------------------
// As torch.autocast: inside an AutocastGuard for a device type, the ops on that device cast their
// floating inputs by three lists, PyTorch's (float64 tensors are never touched, so gradchecks
// stay exact; the casts record, so gradients come back in each leaf's own type):
// - products -- matmul, linear, conv2d, scaled_dot_product_attention / packed_self_attention:
//   float32 inputs rounded to bfloat16 (or float16), the 16-bit values summed in float32, a
//   16-bit result (weights stay float32 parameters: each forward multiplies a rounded copy);
// - the float32 list -- the losses on both devices; on CUDA also softmax / log-softmax, layer
//   and group norm, sum, norm, logsumexp, exp, log, log1p, rsqrt, reciprocal, pow (as torch's
//   CUDA list; its CPU list keeps those in the input's type): 16-bit inputs widened, a float32
//   result;
// - everything else runs in its inputs' types (a 16-bit ReLU, batch norm of a 16-bit input with
//   float32 parameters), and mixed operands promote (bf16 + float32 is float32; cat and stack).
// So activations are 16-bit between a product and the next float32-list op, as PyTorch's. The
// B-cos layers (bcos_conv2d / bcos_linear) are one op each: products of rounded operands summed in
// float32, a float32 result (as the authors' layers under torch.autocast, whose scale is float32).
// A backward runs in its forward's types, whatever autocast is on while it runs. Per thread,
// like grad mode. f16 overflows above 65504 and underflows small gradients: pair it with
// nn::GradScaler.
DType autocast_dtype(DeviceType device);  // the operand type of float32 products (f32: off)
void set_autocast(DeviceType device, DType dtype);

struct AutocastGuard {
  explicit AutocastGuard(DeviceType device, DType dtype = DType::bf16, bool enabled = true)
      : device_(device), previous_(autocast_dtype(device)) {
    set_autocast(device, enabled ? dtype : DType::f32);
  }
  ~AutocastGuard() { set_autocast(device_, previous_); }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  DeviceType device_;
  DType previous_;
};

// The operand type a float32 product of t takes under the current autocast (f32: unchanged).
DType autocast_operands(const Tensor& t);
// Whether autocast is on for t's device and t a type it casts (float32 or 16-bit).
bool autocasting(const Tensor& t);
// A product's operand: t under autocast as a (recorded) copy of autocast's 16-bit type (as
// torch's, a float16 t is cast under bfloat16 autocast too); autocast_lowers: whether it is cast.
bool autocast_lowers(const Tensor& t);
Tensor autocast_to_lower(const Tensor& t);
// Whether a float32-list op widens its input t: t 16-bit under autocast -- on both devices for
// the losses, on CUDA only for the rest of the list (torch's CPU list keeps softmax, norms, sum
// and exp in the input's type). The op then runs on t.to(kFloat32) (recorded).
enum class AutocastList { float32_everywhere, float32_on_cuda };
bool autocast_widens(const Tensor& t, AutocastList list);

// ---- anomaly detection ----------------------------------------------------------------------
// For hunting a NaN in training (as torch.autograd.detect_anomaly): every recorded op's output is
// checked for NaN (an Inf can be meant there: attention masks write −Inf into logits) and every
// gradient the backward computes for NaN and Inf; the first found raises an Error naming the op
// and the shapes (and whether its inputs were already NaN/Inf). One or two extra reductions per
// tensor: a debugging aid, off by default, per thread.
bool anomaly_detection();
void set_anomaly_detection(bool enabled);

struct AnomalyDetectionGuard {
  explicit AnomalyDetectionGuard(bool enabled = true) : previous_(anomaly_detection()) {
    set_anomaly_detection(enabled);
  }
  ~AnomalyDetectionGuard() { set_anomaly_detection(previous_); }
  AnomalyDetectionGuard(const AnomalyDetectionGuard&) = delete;
  AnomalyDetectionGuard& operator=(const AnomalyDetectionGuard&) = delete;

 private:
  bool previous_;
};

// False when a floating-point t holds a NaN or an Inf (integer and empty tensors: true).
bool all_finite(const Tensor& t);
// True when a floating-point t holds a NaN.
bool has_nan(const Tensor& t);

// ---- graph ----------------------------------------------------------------------------------
struct Node;

struct AutogradMeta {
  bool requires_grad = false;
  bool retains_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;          // null for leaves
  std::weak_ptr<Node> grad_accumulator;   // leaves: created on first use
  // Called, in order, after a backward has accumulated this leaf's gradient into `grad`.
  std::vector<std::function<void(const Tensor& grad)>> post_accumulate_hooks;
};

using Grads = std::vector<Tensor>;
// needs[i]: whether input i wants a gradient (skip the work otherwise).
using BackwardFn = std::function<Grads(const Tensor& grad_out, const std::vector<bool>& needs)>;

struct InputInfo {
  Shape shape;
  DType dtype;
  Device device;
};

struct Node {
  std::string name;                           // e.g. "MulBackward"
  std::vector<std::shared_ptr<Node>> next;    // per input; null when it needs no gradient
  std::vector<InputInfo> inputs;              // what each input looked like, for checks
  BackwardFn backward;                        // null once run without retain_graph
  std::weak_ptr<AutogradMeta> retained;       // the output, when it called retain_grad()
  std::shared_ptr<AutogradMeta> leaf;         // set for AccumulateGrad nodes only
  bool released = false;

  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  ~Node();  // releases long chains iteratively (a recursive release overflows the stack)
};

// A tensor kept for backward. It remembers the storage version at save time; get() raises if
// the tensor was modified in place since.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t)  // NOLINT: implicit on purpose, ops save tensors by assignment
      : value_(t.defined() ? t.data_alias() : Tensor()), version_(t.version()) {}
  const Tensor& get() const;
  bool defined() const { return value_.defined(); }

 private:
  Tensor value_;
  uint64_t version_ = 0;
};

// True when grad mode is on and any defined input requires grad: the op must record a node.
bool needs_graph(std::initializer_list<Tensor> inputs);
bool needs_graph(const std::vector<Tensor>& inputs);

// Makes `out` the output of a new node named `name` with the given inputs.
void record(const char* name, const Tensor& out, const std::vector<Tensor>& inputs,
            BackwardFn backward);

// Runs backward from `root` with gradient `grad` (same shape as root).
void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph);

// ---- hooks (what data-parallel training builds on) --------------------------------------------
// `hook(grad)` runs each time a backward has accumulated the leaf `t`'s gradient into t.grad()
// (PyTorch's register_post_accumulate_grad_hook): the gradient of that step is final then, so it
// can be sent while the backward goes on with the layers below.
void add_post_accumulate_grad_hook(const Tensor& t, std::function<void(const Tensor& grad)> hook);
// Only during a backward (from a hook): `callback` runs once that backward has finished every
// node, before backward() returns (PyTorch's queue_callback). Callbacks run in the order queued.
void queue_backward_callback(std::function<void()> callback);
// An id of the backward running on this thread, unique per backward() call (0 outside one): a
// hook tells a new backward from the one it already saw, also after one that raised midway.
uint64_t current_backward_id();

// Sums `g` over broadcast dims so it has `shape` (the inverse of broadcasting).
Tensor sum_to(const Tensor& g, const Shape& shape);

}  // namespace bcos
