// The Tensor handle: a shared Storage plus shape, strides (in elements), offset, dtype and an
// opaque pointer to autograd metadata. Copying a Tensor aliases; clone() copies the data.
//
// The members below marked "autograd-aware" record graph nodes and are defined in autograd/;
// tensor/ itself only ever touches `autograd_meta()` as an opaque pointer.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/shape.h"
#include "tensor/storage.h"

namespace bcos {

struct AutogradMeta;  // defined in autograd/; opaque here

struct TensorOptions {
  DType dtype = DType::f32;
  Device device;
  TensorOptions() = default;
  TensorOptions(DType t) : dtype(t) {}
  TensorOptions(Device d) : device(d) {}
  TensorOptions(const char* d) : device(d) {}
  TensorOptions(DType t, Device d) : dtype(t), device(d) {}
};

class Tensor {
 public:
  Tensor() {}  // undefined (user-provided: GCC needs it for Tensor() default arguments)
  Tensor(std::shared_ptr<Storage> storage, const Shape& shape, const Strides& strides,
         int64_t offset, DType dtype);

  // ---- metadata -----------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  int dim() const { return shape_.size(); }
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  size_t element_size() const { return dtype_size(dtype_); }
  Device device() const;
  bool is_cuda() const { return device().is_cuda(); }
  bool is_cpu() const { return device().is_cpu(); }
  bool is_floating_point() const { return is_floating(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Pointer to the first element; data<T>() checks T against the dtype.
  void* raw_data() const;
  template <class T>
  T* data() const {
    BCOS_CHECK(dtype_of<T>::value == dtype_, "Tensor::data: tensor is ", dtype_name(dtype_),
               ", asked for ", dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw_data());
  }
  // The single value of a one-element tensor (copied to the host when on CUDA).
  double item() const;
  template <class T>
  T item() const {  // exact for int64 (through to_vector, not through double)
    BCOS_CHECK(numel() == 1, "item: a tensor with ", numel(), " elements (shape ", shape_,
               ") cannot be converted to a scalar");
    return to_vector<T>()[0];
  }
  // All values as a host vector in row-major order, converted to T.
  template <class T>
  std::vector<T> to_vector() const;

  // A view of the same storage with the given geometry and no autograd history. Kernels and
  // the autograd engine build on this; users want the autograd-aware views below.
  Tensor alias(const Shape& shape, const Strides& strides, int64_t offset) const;
  // Same view, same storage, no autograd metadata.
  Tensor data_alias() const { return alias(shape_, strides_, offset_); }
  // Marks the storage as modified in place (autograd checks saved tensors against it).
  void bump_version() const;
  uint64_t version() const;

  // ---- autograd-aware (defined in autograd/) --------------------------------------------
  bool requires_grad() const;
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const;
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  void zero_grad() const;  // drops .grad
  void retain_grad() const;
  std::string grad_fn_name() const;  // "" for leaves and plain tensors
  Tensor detach() const;
  // Backpropagates from this tensor: a scalar needs no gradient; any other needs `gradient`.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;

  Tensor view(const Shape& shape) const;     // raises when no view is possible
  Tensor reshape(const Shape& shape) const;  // a view whenever possible, else a copy
  Tensor permute(const Shape& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const;  // transpose of a matrix
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& shape) const;  // -1 keeps a dim
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;

  // In-place (bump the version; refused on tensors that need grad while grad mode is on).
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(double value);
  Tensor& mul_(const Tensor& other);  // other broadcast to this shape; another dtype: rounded once
  Tensor& masked_fill_(const Tensor& mask, double value);

  std::string to_string() const;  // as PyTorch prints it

  // A number given where a tensor goes (x * 0.5): a 0-dim handle marked so, as PyTorch's wrapped
  // numbers, so that it never widens the result's type (bf16 loss / 4 stays bf16).
  bool is_wrapped_number() const { return wrapped_number_; }
  Tensor as_wrapped_number() const {
    Tensor t = *this;
    t.wrapped_number_ = true;
    return t;
  }

  const std::shared_ptr<AutogradMeta>& autograd_meta() const { return autograd_; }
  void set_autograd_meta(std::shared_ptr<AutogradMeta> m) const { autograd_ = std::move(m); }

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Strides strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::f32;
  bool wrapped_number_ = false;
  mutable std::shared_ptr<AutogradMeta> autograd_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// ---- creation (tensor/factory.cpp) --------------------------------------------------------
Tensor empty(const Shape& shape, TensorOptions opts = {});
Tensor zeros(const Shape& shape, TensorOptions opts = {});
Tensor ones(const Shape& shape, TensorOptions opts = {});
Tensor full(const Shape& shape, double value, TensorOptions opts = {});
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
Tensor scalar_tensor(double value, TensorOptions opts = {});
Tensor arange(double end, TensorOptions opts = {});
Tensor arange(double start, double end, double step = 1.0, TensorOptions opts = {});
Tensor linspace(double start, double end, int64_t steps, TensorOptions opts = {});
Tensor eye(int64_t n, int64_t m = -1, TensorOptions opts = {});
Tensor rand(const Shape& shape, TensorOptions opts = {});   // U[0, 1)
Tensor randn(const Shape& shape, TensorOptions opts = {});  // N(0, 1)
Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts = DType::i64);
// Copies the values (converted to opts.dtype) into a new tensor of the given shape.
template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opts = dtype_of<T>::value);
// Wraps memory owned elsewhere without copying; `keep_alive` is held while any view lives.
Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device = Device(),
                 std::shared_ptr<void> keep_alive = nullptr);

// ---- random numbers (tensor/random.cpp): one seeded generator for the process -------------
void manual_seed(uint64_t seed);
struct GeneratorState {
  uint64_t seed = 0, counter = 0;
};
GeneratorState get_rng_state();
void set_rng_state(const GeneratorState& s);
// Reserves n words of the generator: returns the state before (seed, first counter) and advances
// the counter by n.
GeneratorState reserve_random_words(uint64_t n);
// Draws n raw 64-bit values from the global generator, advancing it.
void random_bits(uint64_t* out, int64_t n);

}  // namespace bcos
