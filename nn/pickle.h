// An allow-list unpickler for what torch.save writes. A Python pickle is a program for a small
// stack machine whose instructions may import any module and call anything; this one runs only
// the instructions that build plain data (None, bools, ints, floats, strings, bytes, tuples,
// lists, dicts) and resolves only the globals a state dict needs:
//   collections.OrderedDict, torch._utils._rebuild_tensor / _rebuild_tensor_v2 /
//   _rebuild_parameter, and the typed storage classes torch.{Float,Double,Half,BFloat16,Long,
//   Int,Short,Char,Byte,Bool}Storage (as names in persistent ids; they are never called).
// Any other global is an error naming it ("checkpoint would run code"), before anything is
// built. TorchScript archives (torch.jit.save) pickle their modules as instances of classes
// named __torch__.* (mangled names such as __torch__.x.___torch_mangle_7.Conv2d included):
// with allow_script_objects(), those become inert objects holding their attributes, built
// with NEWOBJ + BUILD and never called. Tensors are not materialised here: a rebuilt tensor is a TensorRef (storage record,
// offset, sizes, strides), already checked to lie inside its storage; the checkpoint reader
// copies the bytes once it knows where each storage's bytes are.
//
// Objects live in an arena owned by the Unpickler and refer to each other by plain pointers:
// a pickle can build self-referencing or million-deep structures, and nothing here ever walks
// them recursively or frees them one by one, so neither can overflow the stack.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tensor/tensor.h"

namespace bcos::nn::pickle {

// torch's typed storages. Int/Short/Char have no bcos dtype and are widened to int64 on load.
enum class StorageType { f32, f64, f16, bf16, i64, i32, i16, i8, u8, boolean };
size_t element_size(StorageType t);
const char* storage_class_name(StorageType t);  // "FloatStorage"
DType loaded_dtype(StorageType t);

// One serialized storage. `bytes` is set by the checkpoint reader when it finds the data (a zip
// record, or the legacy format's data section); until then `loaded` is false.
struct StorageRecord {
  std::string key;
  StorageType type = StorageType::f32;
  int64_t numel = 0;
  std::string_view bytes;
  bool loaded = false;
};

// A whole storage, or (legacy format) a view of `numel` elements from element `offset` of it.
struct StorageRef {
  std::shared_ptr<StorageRecord> record;
  int64_t offset = 0;
  int64_t numel = 0;
};

struct TensorRef {
  StorageRef storage;
  int64_t offset = 0;  // elements, relative to the StorageRef
  Shape shape;
  Strides strides;
  bool requires_grad = false;
};

// The callables and classes the unpickler knows.
enum class Global { ordered_dict, rebuild_tensor, rebuild_tensor_v2, rebuild_parameter, storage_class, script_class };

struct Value {
  enum class Kind {
    none, boolean, integer, big_integer, floating, string, bytes, tuple, list, dict, global, storage, tensor,
    object  // a TorchScript module: text is its class, entries its attributes (name -> value)
  };
  Kind kind = Kind::none;
  bool boolean = false;
  Global global = Global::ordered_dict;
  StorageType storage_type = StorageType::f32;  // global == storage_class
  int64_t integer = 0;
  double floating = 0;
  // string / bytes: the bytes; big_integer: little-endian two's complement; global and object:
  // "module.name"
  std::string text;
  std::vector<Value*> items;                       // tuple, list
  std::vector<std::pair<Value*, Value*>> entries;  // dict, in insertion order
  // The rarer payloads live apart, so that the many small values of a pickle stay small.
  std::unique_ptr<std::unordered_map<std::string, size_t>> index;  // dict: key identity -> entry
  std::unique_ptr<StorageRef> storage;                             // storage
  std::unique_ptr<TensorRef> tensor;                               // tensor

  bool is(Kind k) const { return kind == k; }
  bool is_string() const { return kind == Kind::string; }
};

// "a list", "the string 'abc'", "the global torch.FloatStorage": for error messages.
std::string describe(const Value& v);

class Unpickler {
 public:
  // Turns a persistent id (torch: a tuple ('storage', class, key, location, numel, ...)) into
  // a storage reference; raises bcos::Error for ids it does not accept.
  using PersistentLoad = std::function<StorageRef(const Value& pid)>;

  // `bytes` are read in place and must outlive the Unpickler. `source` names the stream in
  // errors (a file, or "file.pt: archive/data.pkl"); `base_offset` is added to positions in
  // errors, so they are offsets in the file.
  Unpickler(std::string_view bytes, std::string source, size_t base_offset = 0,
            PersistentLoad persistent_load = {});
  Unpickler(std::string&& bytes, std::string source, size_t base_offset = 0,
            PersistentLoad persistent_load = {}) = delete;  // would read a destroyed temporary

  // Accept TorchScript's __torch__.* classes as inert objects (see above). Off by default.
  void allow_script_objects(bool on = true) { allow_script_objects_ = on; }

  // Runs the pickle up to STOP and returns the value it leaves (owned by this Unpickler); later
  // calls return the same value.
  const Value& load();
  // Bytes consumed by load() (pickles follow each other in the legacy format).
  size_t consumed() const { return pos_; }

 private:
  [[noreturn]] void error(const std::string& what) const;
  const char* take(size_t n);
  uint64_t read_uint(int bytes);
  std::string_view read_line();
  Value* make(Value::Kind kind);
  Value* make_int(int64_t v);
  void push(Value* v);
  Value* pop();
  Value* top();
  std::vector<Value*> pop_to_mark();
  Value* memo_get(uint64_t index);
  void memo_put(uint64_t index);
  Value* resolve_global(const std::string& module, const std::string& name);
  Value* call(Value* callable, Value* args);
  Value* rebuild_tensor(Value* args, bool v2);
  void set_item(Value* dict, Value* key, Value* value);
  Value* parse_long(std::string_view little_endian);

  std::string_view s_;
  std::string source_;
  size_t base_;
  PersistentLoad persistent_load_;
  size_t pos_ = 0;
  size_t op_at_ = 0;  // position of the opcode being run, for errors
  std::deque<Value> arena_;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;  // stack sizes at each open MARK
  std::unordered_map<uint64_t, Value*> memo_;
  const Value* result_ = nullptr;
  bool allow_script_objects_ = false;
};

}  // namespace bcos::nn::pickle
