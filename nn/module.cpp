// Module bookkeeping: registration, recursive walks, state dicts, modes and devices.
#include "nn/module.h"

#include <map>
#include <set>

#include "autograd/autograd.h"

namespace bcos::nn {

Tensor Module::forward(const Tensor&) {
  fail(type_name_, ": this module has no single-input forward");
}

void Module::register_parameter(const std::string& name, Tensor& slot, Tensor value) {
  BCOS_CHECK(name.find('.') == std::string::npos && !name.empty(), type_name_, ": bad parameter name '", name, "'");
  slot = value.defined() ? value.detach() : Tensor();  // a parameter is a leaf, as PyTorch's
  if (!slot.defined()) return;
  if (slot.is_floating_point()) slot.requires_grad_(true);
  parameters_.emplace_back(name, &slot);
}

void Module::register_buffer(const std::string& name, Tensor& slot, Tensor value) {
  BCOS_CHECK(name.find('.') == std::string::npos && !name.empty(), type_name_, ": bad buffer name '", name, "'");
  slot = std::move(value);
  if (slot.defined()) buffers_.emplace_back(name, &slot);
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module, std::shared_ptr<Module>* slot) {
  BCOS_CHECK(module, type_name_, ": child '", name, "' is null");
  BCOS_CHECK(name.find('.') == std::string::npos && !name.empty(), type_name_, ": bad child name '", name, "'");
  for (const auto& [n, m] : children_) BCOS_CHECK(n != name, type_name_, ": two children named '", name, "'");
  children_.emplace_back(name, std::move(module));
  child_slots_.push_back(slot);
}

void Module::replace_child(const std::string& name, std::shared_ptr<Module> module) {
  BCOS_CHECK(module, type_name_, ": replacement for '", name, "' is null");
  for (size_t i = 0; i < children_.size(); ++i)
    if (children_[i].first == name) {
      if (child_slots_[i]) *child_slots_[i] = module;
      children_[i].second = std::move(module);
      return;
    }
  fail(type_name_, ": no child named '", name, "' to replace");
}

void Module::remove_parameter(const std::string& name) {
  for (auto it = parameters_.begin(); it != parameters_.end(); ++it)
    if (it->first == name) {
      *it->second = Tensor();
      parameters_.erase(it);
      return;
    }
  fail(type_name_, ": no parameter named '", name, "' to remove");
}

std::shared_ptr<Module> Module::child(const std::string& name) const {
  for (const auto& [n, m] : children_)
    if (n == name) return m;
  return nullptr;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules(const std::string& prefix) {
  std::vector<std::pair<std::string, Module*>> out{{prefix, this}};
  for (auto& [name, m] : children_) {
    auto sub = m->named_modules(prefix.empty() ? name : prefix + "." + name);
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

StateDict Module::named_parameters(const std::string& prefix) const {
  StateDict out;
  const std::string p = prefix.empty() ? "" : prefix + ".";
  for (const auto& [name, slot] : parameters_) out.emplace_back(p + name, *slot);
  for (const auto& [name, m] : children_) {
    StateDict sub = m->named_parameters(p + name);
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

StateDict Module::named_buffers(const std::string& prefix) const {
  StateDict out;
  const std::string p = prefix.empty() ? "" : prefix + ".";
  for (const auto& [name, slot] : buffers_) out.emplace_back(p + name, *slot);
  for (const auto& [name, m] : children_) {
    StateDict sub = m->named_buffers(p + name);
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

StateDict Module::state_dict() const {
  StateDict out;
  // Each module's own tensors come before its children's, recursively (not all parameters first).
  struct Walk {
    static void run(const Module& m, const std::string& prefix, StateDict& out) {
      for (const auto& [name, slot] : m.parameters_) out.emplace_back(prefix + name, slot->detach());
      for (const auto& [name, slot] : m.buffers_) out.emplace_back(prefix + name, *slot);
      for (const auto& [name, child] : m.children_) run(*child, prefix + name + ".", out);
    }
  };
  Walk::run(*this, "", out);
  return out;
}

void Module::load_state_dict(const StateDict& state, bool strict) {
  // Slots by key, in this module's order.
  std::vector<std::pair<std::string, Tensor*>> slots;
  struct Walk {
    static void run(Module& m, const std::string& prefix, std::vector<std::pair<std::string, Tensor*>>& out) {
      for (auto& [name, slot] : m.parameters_) out.emplace_back(prefix + name, slot);
      for (auto& [name, slot] : m.buffers_) out.emplace_back(prefix + name, slot);
      for (auto& [name, child] : m.children_) run(*child, prefix + name + ".", out);
    }
  };
  Walk::run(*this, "", slots);
  std::map<std::string, const Tensor*> given;
  for (const auto& [key, t] : state) given[key] = &t;

  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> known;
  for (const auto& [key, slot] : slots) {
    known.insert(key);
    auto it = given.find(key);
    if (it == given.end()) {
      const bool optional = key == "num_batches_tracked" ||
                            (key.size() > 20 && key.compare(key.size() - 20, 20, ".num_batches_tracked") == 0);
      if (!optional) missing.push_back(key);
      continue;
    }
    if (it->second->shape() != slot->shape())
      mismatched.push_back(str(key, ": checkpoint ", it->second->shape(), ", model ", slot->shape()));
    else if (is_floating(it->second->dtype()) != is_floating(slot->dtype()) && it->second->dtype() != slot->dtype())
      mismatched.push_back(str(key, ": checkpoint ", dtype_name(it->second->dtype()), ", model ", dtype_name(slot->dtype())));
  }
  for (const auto& [key, t] : state)
    if (!known.count(key)) unexpected.push_back(key);
  auto join = [](const std::vector<std::string>& v) {  // the first few: enough to tell what went wrong
    std::string s;
    for (size_t i = 0; i < v.size() && i < 6; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 6) s += str(", ... (", v.size(), " in all)");
    return s;
  };
  if (!mismatched.empty() || (strict && (!missing.empty() || !unexpected.empty()))) {
    std::string msg = str("load_state_dict (", type_name_, "): ");
    if (!mismatched.empty()) msg += str("shape or dtype mismatch for ", join(mismatched), ". ");
    if (strict && !missing.empty()) msg += str("missing keys: ", join(missing), ". ");
    if (strict && !unexpected.empty()) msg += str("unexpected keys: ", join(unexpected), ". ");
    msg.pop_back();
    fail(msg);
  }
  NoGradGuard no_grad;
  for (const auto& [key, slot] : slots) {
    auto it = given.find(key);
    if (it == given.end()) continue;
    slot->data_alias().copy_(it->second->to(slot->device()));
  }
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, m] : children_) m->train(on);
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  for (auto& [name, slot] : parameters_) {
    if (slot->device() == device) continue;
    Tensor moved = slot->detach().to(device);
    if (slot->requires_grad()) moved.requires_grad_(true);
    *slot = moved;
  }
  for (auto& [name, slot] : buffers_)
    if (slot->device() != device) *slot = slot->to(device);
  for (auto& [name, m] : children_) m->to(device);
}

void Module::to(DType dtype) {
  BCOS_CHECK(is_floating(dtype), "Module::to: ", dtype_name(dtype), " is not a floating-point dtype");
  NoGradGuard no_grad;
  for (auto& [name, slot] : parameters_) {
    if (!slot->is_floating_point() || slot->dtype() == dtype) continue;
    Tensor cast = slot->detach().to(dtype);
    if (slot->requires_grad()) cast.requires_grad_(true);
    *slot = cast;
  }
  for (auto& [name, slot] : buffers_)
    if (slot->is_floating_point()) *slot = slot->to(dtype);
  for (auto& [name, m] : children_) m->to(dtype);
}

void Module::zero_grad() {
  for (auto& [name, slot] : parameters_) slot->zero_grad();
  for (auto& [name, m] : children_) m->zero_grad();
}

void Module::print(std::string& out, const std::string& name, int indent) const {
  out += std::string(size_t(indent), ' ');
  if (!name.empty()) out += "(" + name + "): ";
  out += type_name_ + "(" + describe();
  if (children_.empty()) {
    out += ")\n";
    return;
  }
  out += "\n";
  for (const auto& [n, m] : children_) m->print(out, n, indent + 2);
  out += std::string(size_t(indent), ' ') + ")\n";
}

std::string Module::to_string() const {
  std::string out;
  print(out, "", 0);
  return out;
}

// ---- containers ----------------------------------------------------------------------------
Sequential::Sequential(std::vector<ModulePtr> modules) : Module("Sequential") {
  for (auto& m : modules) push_back(std::move(m));
}

void Sequential::push_back(ModulePtr module) { register_module(std::to_string(children().size()), std::move(module)); }

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (const auto& [name, m] : children()) y = m->forward(y);
  return y;
}

ModuleList::ModuleList(std::vector<ModulePtr> modules) : Module("ModuleList") {
  for (auto& m : modules) push_back(std::move(m));
}

void ModuleList::push_back(ModulePtr module) { register_module(std::to_string(children().size()), std::move(module)); }

}  // namespace bcos::nn
