// Module: the unit networks are built from, as torch.nn.Module. A module owns named parameters
// (trainable leaves), named buffers (state such as BatchNorm's running statistics) and named
// child modules; state_dict() walks them in registration order and yields exactly the keys
// PyTorch gives the same model ("layer1.0.conv1.weight"), so checkpoints load by name.
//
// Subclasses keep their tensors as members and register them by address, so moving the model to
// another device or loading a state dict updates the members in place:
//   struct Affine : Module {
//     Tensor weight;
//     Affine(int64_t n) : Module("Affine") { register_parameter("weight", weight, ones({n})); }
//     Tensor forward(const Tensor& x) override { return x * weight; }
//   };
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nn/state_dict.h"
#include "tensor/tensor.h"

namespace bcos::nn {

class Module {
 public:
  explicit Module(std::string type_name) : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;  // members are registered by address
  Module& operator=(const Module&) = delete;

  // The single-input forward; modules with other signatures add their own methods.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }

  const std::string& type_name() const { return type_name_; }

  // ---- the tree ------------------------------------------------------------------------------
  std::vector<Tensor> parameters() const;  // every trainable tensor, recursively
  StateDict named_parameters(const std::string& prefix = "") const;
  StateDict named_buffers(const std::string& prefix = "") const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  std::shared_ptr<Module> child(const std::string& name) const;  // nullptr when absent
  // Every module below this one (this one first, depth-first), with its dotted path.
  std::vector<std::pair<std::string, Module*>> named_modules(const std::string& prefix = "");

  // Parameters, then buffers, of each module before its children: PyTorch's order and keys.
  StateDict state_dict() const;
  // Copies tensors into this module's by key (converting device and float dtype). Shapes must
  // match always; strict: every key must match both ways too. The error lists missing and
  // unexpected keys and mismatches, and nothing is copied then. Buffers named
  // num_batches_tracked may be absent (checkpoints from before PyTorch 0.4.1 lack them).
  void load_state_dict(const StateDict& state, bool strict = true);

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Moves parameters (still leaves) and buffers. The parameters become new tensors: build
  // optimizers after moving the model (an optimizer holding the old ones raises on step()).
  void to(Device device);
  void to(DType dtype);    // floating-point parameters and buffers only
  void zero_grad();
  int64_t num_parameters() const;

  // A readable outline: the tree with each module's description.
  std::string to_string() const;
  // One line about this module's configuration, e.g. "in_features=64, out_features=10".
  virtual std::string describe() const { return ""; }

 protected:
  // The slot must outlive the module (a member of the subclass). An undefined `value` leaves
  // the slot empty and registers nothing, as PyTorch's register_parameter(name, None).
  void register_parameter(const std::string& name, Tensor& slot, Tensor value);
  void register_buffer(const std::string& name, Tensor& slot, Tensor value);
  // A child kept only in the module's list (containers).
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module, nullptr);
    return module;
  }
  // A child also held in a member slot of the subclass, which replace_child keeps current.
  void register_module(const std::string& name, std::shared_ptr<Module>& slot, std::shared_ptr<Module> module) {
    slot = module;
    add_child(name, std::move(module), &slot);
  }
  bool training_ = true;

 public:
  // Swaps a registered child for another (bcosify rewrites models this way); the member slot it
  // was registered with follows.
  void replace_child(const std::string& name, std::shared_ptr<Module> module);
  // Unregisters one of this module's own parameters and empties its slot, as PyTorch's
  // `module.bias = None` (forwards treat an undefined bias as none). Raises when absent.
  void remove_parameter(const std::string& name);

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> module, std::shared_ptr<Module>* slot);
  void print(std::string& out, const std::string& name, int indent) const;
  std::string type_name_;
  std::vector<std::pair<std::string, Tensor*>> parameters_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::vector<std::shared_ptr<Module>*> child_slots_;  // parallel to children_; null for list-only
};

using ModulePtr = std::shared_ptr<Module>;

// ---- containers ----------------------------------------------------------------------------
// Runs its children in order; children are named "0", "1", ... as in PyTorch.
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  explicit Sequential(std::vector<ModulePtr> modules);
  void push_back(ModulePtr module);
  // A child under its own name (torchvision names some: "encoder_layer_0", "head").
  void register_block(const std::string& name, ModulePtr module) { register_module(name, std::move(module)); }
  Tensor forward(const Tensor& x) override;
  size_t size() const { return children().size(); }
  Module& operator[](size_t i) const { return *children().at(i).second; }
};

// Holds children without a forward of its own (the owner iterates it).
class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  explicit ModuleList(std::vector<ModulePtr> modules);
  void push_back(ModulePtr module);
  size_t size() const { return children().size(); }
  Module& operator[](size_t i) const { return *children().at(i).second; }
};

class Identity : public Module {
 public:
  Identity() : Module("Identity") {}
  Tensor forward(const Tensor& x) override { return x; }
};

class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1)
      : Module("Flatten"), start_(start_dim), end_(end_dim) {}
  Tensor forward(const Tensor& x) override { return x.flatten(start_, end_); }

 private:
  int64_t start_, end_;
};

}  // namespace bcos::nn
