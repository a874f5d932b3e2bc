// The backward engine: grad mode, node recording, topological execution, leaf accumulation,
// saved-tensor version checks and the broadcast reduction of gradients.
#include <cmath>
#include <unordered_map>

#include "autograd/autograd.h"
#include "autograd/ops.h"
#include "tensor/copy.h"

namespace bcos {

namespace {
thread_local bool g_grad_enabled = true;
thread_local bool g_explanation_mode = false;
thread_local bool g_anomaly_detection = false;
thread_local DType g_autocast[2] = {DType::f32, DType::f32};  // by DeviceType: cpu, cuda
// The callbacks of the backward running on this thread (null outside one).
thread_local std::vector<std::function<void()>>* g_backward_callbacks = nullptr;
thread_local uint64_t g_backward_id = 0, g_backward_count = 0;  // the running one's; how many so far

// "[2, 3] (finite), [3] (NaN/Inf)": the shapes of an op's inputs and whether each was finite.
std::string describe_inputs(const std::vector<Tensor>& inputs) {
  std::string s;
  for (const Tensor& t : inputs) {
    if (!s.empty()) s += ", ";
    s += t.defined() ? str(t.shape(), all_finite(t) ? " (finite)" : " (NaN/Inf)") : std::string("none");
  }
  return s.empty() ? "none" : s;
}

// The forward op's name from its node's: "ConvolutionBackward" -> "Convolution".
std::string forward_name(const std::string& node) {
  const std::string suffix = "Backward";
  return node.size() > suffix.size() && node.compare(node.size() - suffix.size(), suffix.size(), suffix) == 0
             ? node.substr(0, node.size() - suffix.size())
             : node;
}
}

bool anomaly_detection() { return g_anomaly_detection; }
void set_anomaly_detection(bool enabled) { g_anomaly_detection = enabled; }

bool all_finite(const Tensor& t) {
  if (!t.defined() || !t.is_floating_point() || t.numel() == 0) return true;
  NoGradGuard no_grad;
  Tensor x = t.detach();
  if (x.dtype() != DType::f32 && x.dtype() != DType::f64) x = x.to(DType::f32);
  return std::isfinite(sum(x * 0.0).item<double>());  // 0 · Inf and 0 · NaN are NaN
}

bool has_nan(const Tensor& t) {
  if (!t.defined() || !t.is_floating_point() || t.numel() == 0) return false;
  NoGradGuard no_grad;
  const Tensor x = t.detach();
  return any(ne(x, x)).item<double>() != 0;
}

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool enabled) { g_grad_enabled = enabled; }

bool explanation_mode() { return g_explanation_mode; }
void set_explanation_mode(bool enabled) { g_explanation_mode = enabled; }

DType autocast_dtype(DeviceType device) { return g_autocast[int(device)]; }
void set_autocast(DeviceType device, DType dtype) {
  BCOS_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::f16,
             "autocast: the product type must be bfloat16 or float16 (float32: off), got ", dtype);
  g_autocast[int(device)] = dtype;
}
DType autocast_operands(const Tensor& t) {
  return t.defined() && t.dtype() == DType::f32 ? g_autocast[int(t.device().type)] : DType::f32;
}
bool autocasting(const Tensor& t) {
  return t.defined() && is_floating(t.dtype()) && t.dtype() != DType::f64 &&
         g_autocast[int(t.device().type)] != DType::f32;
}
bool autocast_lowers(const Tensor& t) {
  return autocasting(t) && t.dtype() != g_autocast[int(t.device().type)];
}
Tensor autocast_to_lower(const Tensor& t) {
  return autocast_lowers(t) ? t.to(g_autocast[int(t.device().type)]) : t;
}
bool autocast_widens(const Tensor& t, AutocastList list) {
  const bool listed = list == AutocastList::float32_everywhere || t.device().type == DeviceType::cuda;
  return listed && autocasting(t) && is_half_float(t.dtype());
}

const Tensor& SavedTensor::get() const {
  if (value_.defined() && value_.version() != version_)
    fail("a tensor saved for backward was modified by an in-place operation (version ",
         version_, " when saved, ", value_.version(),
         " now); compute with a copy, or do the in-place change after backward");
  return value_;
}

Node::~Node() {
  std::vector<std::shared_ptr<Node>> pending = std::move(next);
  while (!pending.empty()) {
    std::shared_ptr<Node> n = std::move(pending.back());
    pending.pop_back();
    if (n && n.use_count() == 1) {  // we hold the last reference: take over its edges
      for (auto& e : n->next) pending.push_back(std::move(e));
      n->next.clear();
    }
  }
}

bool needs_graph(std::initializer_list<Tensor> inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

bool needs_graph(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

namespace {
// The node a gradient for `t` flows into: its grad_fn, or its leaf accumulator.
std::shared_ptr<Node> edge_of(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return nullptr;
  const auto& meta = t.autograd_meta();
  if (meta->grad_fn) return meta->grad_fn;
  auto acc = meta->grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<Node>();
    acc->name = "AccumulateGrad";
    acc->leaf = meta;
    meta->grad_accumulator = acc;
  }
  return acc;
}
}  // namespace

void record(const char* name, const Tensor& out, const std::vector<Tensor>& inputs,
            BackwardFn backward) {
  auto node = std::make_shared<Node>();
  node->name = name;
  node->backward = std::move(backward);
  for (const Tensor& t : inputs) {
    node->next.push_back(edge_of(t));
    node->inputs.push_back(t.defined() ? InputInfo{t.shape(), t.dtype(), t.device()}
                                       : InputInfo{Shape{}, DType::f32, Device()});
  }
  if (g_anomaly_detection && has_nan(out))
    fail("anomaly detection: ", forward_name(name), " produced NaN in its output of shape ", out.shape(),
         "; inputs: ", describe_inputs(inputs));
  auto meta = std::make_shared<AutogradMeta>();
  meta->requires_grad = true;
  meta->grad_fn = std::move(node);
  out.set_autograd_meta(std::move(meta));
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  int lead = g.dim() - shape.size();
  BCOS_CHECK(lead >= 0, "sum_to: cannot reduce ", g.shape(), " to ", shape);
  Dims dims;
  for (int i = 0; i < g.dim(); ++i) {
    if (i < lead) {
      dims.push_back(i);
    } else if (shape[i - lead] == 1 && g.shape()[i] != 1) {
      dims.push_back(i);
    } else {
      BCOS_CHECK(shape[i - lead] == g.shape()[i], "sum_to: cannot reduce ", g.shape(), " to ",
                 shape);
    }
  }
  Tensor r = dims.empty() ? g : sum(g, dims, true);
  return lead > 0 || r.shape() != shape ? r.reshape(shape) : r;
}

namespace {
// True when nothing but this handle references g's memory and g covers all of it: then the
// gradient can become .grad as it is (as PyTorch does) instead of being copied -- a copy of
// every parameter per step otherwise (12 % of a ViT-B/32 training step).
bool sole_owner(const Tensor& g) {
  return !g.requires_grad() && g.is_contiguous() && g.offset() == 0 && g.storage() &&
         g.storage().use_count() == 1 && g.storage()->nbytes == size_t(g.numel()) * g.element_size();
}

// adopt: g is not used after this call (a leaf's gradient; a retained non-leaf gradient still
// flows on through its node's backward and is always copied).
void accumulate_leaf(AutogradMeta& meta, const Tensor& g, bool adopt) {
  if (!meta.grad.defined()) {
    meta.grad = adopt && sole_owner(g) ? g.detach() : g.clone();  // owned: users may modify .grad in place
  } else {
    meta.grad.add_(g);
  }
}

// A node's input gradient from several consumers, summed as they arrive. The first one's memory
// takes the sum in place when nothing else holds it and the sum keeps its shape and dtype (as
// PyTorch's InputBuffer): a fresh activation-sized tensor per residual branch otherwise.
void accumulate(std::unordered_map<Node*, Tensor>& buffers, Node* node, const Tensor& g) {
  auto it = buffers.find(node);
  if (it == buffers.end() || !it->second.defined()) {
    buffers[node] = g;
    return;
  }
  Tensor& sum = it->second;
  if (sole_owner(sum) && g.shape() == sum.shape() && g.dtype() == sum.dtype() && g.device() == sum.device())
    sum.add_(g);
  else
    sum = add(sum, g);
}
}  // namespace

void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph) {
  BCOS_CHECK(root.defined(), "backward: undefined tensor");
  BCOS_CHECK(root.requires_grad(),
             "backward: the tensor does not require grad and has no grad_fn (shape ",
             root.shape(), ")");
  BCOS_CHECK(grad.shape() == root.shape(), "backward: gradient shape ", grad.shape(),
             " does not match the tensor's shape ", root.shape());
  BCOS_CHECK(grad.dtype() == root.dtype() && grad.device() == root.device(),
             "backward: gradient is ", grad.dtype(), " on ", grad.device(), ", the tensor ",
             root.dtype(), " on ", root.device());
  NoGradGuard no_grad;
  // A backward runs in its forward's types: each recorded product kept its operand type, and the
  // ops backward functions are composed of (sums, a cast's backward) are not autocast again.
  AutocastGuard no_cpu_autocast(DeviceType::cpu, DType::bf16, false);
  AutocastGuard no_cuda_autocast(DeviceType::cuda, DType::bf16, false);
  std::shared_ptr<Node> start = edge_of(root);
  std::vector<std::function<void()>> callbacks;  // queue_backward_callback's, for this backward
  struct Restore {
    std::vector<std::function<void()>>* outer_callbacks;
    uint64_t outer_id;
    ~Restore() { g_backward_callbacks = outer_callbacks, g_backward_id = outer_id; }
  } restore{g_backward_callbacks, g_backward_id};
  g_backward_callbacks = &callbacks;
  g_backward_id = ++g_backward_count;

  // Dependency counts over the reachable graph (iterative DFS: deep nets overflow recursion).
  std::unordered_map<Node*, int> deps;
  std::vector<Node*> stack{start.get()};
  deps[start.get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const auto& next : n->next) {
      if (!next) continue;
      auto [it, fresh] = deps.try_emplace(next.get(), 0);
      it->second++;
      if (fresh) stack.push_back(next.get());
    }
  }

  std::unordered_map<Node*, Tensor> buffers;
  buffers[start.get()] = grad;
  std::vector<Node*> ready{start.get()};
  while (!ready.empty()) {
    Node* n = ready.back();
    ready.pop_back();
    Tensor g = std::move(buffers[n]);
    buffers.erase(n);

    if (n->leaf) {
      if (g.defined()) {
        accumulate_leaf(*n->leaf, g, /*adopt=*/true);
        for (const auto& hook : n->leaf->post_accumulate_hooks) hook(n->leaf->grad);
      }
      continue;
    }
    if (auto kept = n->retained.lock(); kept && kept->retains_grad && g.defined())
      accumulate_leaf(*kept, g, /*adopt=*/false);
    BCOS_CHECK(!n->released, "backward: trying to go through ", n->name,
               " a second time, but its saved tensors were freed by the first backward; "
               "call backward(gradient, /*retain_graph=*/true) the first time");

    Grads grads;
    if (g.defined()) {
      std::vector<bool> needs;
      for (const auto& next : n->next) needs.push_back(next != nullptr);
      try {
        grads = n->backward(g, needs);
      } catch (const Error& e) {
        fail("backward of ", n->name, ": ", e.what());
      }
      BCOS_CHECK(grads.size() <= n->next.size(), "backward of ", n->name, " returned ",
                 grads.size(), " gradients for ", n->next.size(), " inputs");
      if (g_anomaly_detection)
        for (size_t i = 0; i < grads.size(); ++i)
          if (!all_finite(grads[i]))
            fail("anomaly detection: the backward of ", forward_name(n->name), " produced NaN/Inf in the gradient of its input ",
                 i, " (shape ", grads[i].shape(), ") from an incoming gradient of shape ", g.shape(),
                 all_finite(g) ? " that was finite" : " that already held NaN/Inf");
    }
    if (!retain_graph) {
      n->backward = nullptr;  // frees the saved tensors
      n->released = true;
    }
    for (size_t i = 0; i < n->next.size(); ++i) {
      Node* next = n->next[i].get();
      if (!next) continue;
      if (i < grads.size() && grads[i].defined()) {
        const InputInfo& info = n->inputs[i];
        Tensor gi = grads[i];
        if (gi.shape() != info.shape) gi = sum_to(gi, info.shape);
        if (gi.dtype() != info.dtype) gi = gi.to(info.dtype);
        BCOS_CHECK(gi.device() == info.device, "backward of ", n->name, ": gradient on ",
                   gi.device(), " for an input on ", info.device);
        accumulate(buffers, next, gi);
      }
      if (--deps[next] == 0) ready.push_back(next);
    }
  }
  // A callback may queue another (it runs too); indices, since the vector may grow.
  for (size_t i = 0; i < callbacks.size(); ++i) {
    std::function<void()> callback = std::move(callbacks[i]);
    callback();
  }
}

void add_post_accumulate_grad_hook(const Tensor& t, std::function<void(const Tensor& grad)> hook) {
  BCOS_CHECK(t.defined() && t.requires_grad() && !t.autograd_meta()->grad_fn,
             "add_post_accumulate_grad_hook: needs a leaf tensor that requires grad (got ",
             t.defined() ? str("shape ", t.shape(), t.requires_grad() ? ", not a leaf" : ", no requires_grad")
                         : std::string("an undefined tensor"), ")");
  t.autograd_meta()->post_accumulate_hooks.push_back(std::move(hook));
}

uint64_t current_backward_id() { return g_backward_id; }

void queue_backward_callback(std::function<void()> callback) {
  BCOS_CHECK(g_backward_callbacks != nullptr, "queue_backward_callback: called outside a backward pass");
  g_backward_callbacks->push_back(std::move(callback));
}

}  // namespace bcos
