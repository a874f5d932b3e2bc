// torch.save readers: the zip and the legacy layout around the same pickled object, then the
// state dict found in it, copied out of the mapped file tensor by tensor.
#include "nn/torch_checkpoint.h"

#include <cstring>
#include <map>
#include <set>

#include "nn/mapped_file.h"
#include "nn/pickle.h"
#include "nn/safetensors.h"
#include "nn/zip.h"

namespace bcos::nn {

namespace {

using pickle::StorageRecord;
using pickle::StorageRef;
using pickle::StorageType;
using pickle::TensorRef;
using pickle::Value;
using Kind = Value::Kind;

constexpr const char* kOp = "load_torch_checkpoint";
// 0x1950a86a20f9469cfc6c, the legacy format's magic number, as pickle's LONG1 stores it.
constexpr std::string_view kLegacyMagic = "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
constexpr int64_t kLegacyProtocol = 1001;
constexpr int64_t kMaxExpandedElements = int64_t(1) << 26;

const std::string& string_field(const Value& pid, size_t i, const char* what) {
  if (!pid.items[i]->is_string()) fail("persistent id: the ", what, " is ", pickle::describe(*pid.items[i]));
  return pid.items[i]->text;
}

int64_t count_field(const Value& pid, size_t i, const char* what) {
  const Value& v = *pid.items[i];
  if (!v.is(Kind::integer) || v.integer < 0) fail("persistent id: the ", what, " is ", pickle::describe(v));
  return v.integer;
}

// The storages of one checkpoint by key; a key seen twice must describe the same storage.
class StorageTable {
 public:
  // Checks a persistent id's common part ('storage', class, key, location, numel, ...) and
  // returns the record, creating it the first time the key appears (`fresh` says so).
  std::shared_ptr<StorageRecord> lookup(const Value& pid, size_t expected_items, bool* fresh) {
    if (!pid.is(Kind::tuple) || pid.items.empty())
      fail("persistent id: expected a tuple ('storage', ...), got ", pickle::describe(pid));
    const Value& tag = *pid.items[0];
    if (tag.is_string() && tag.text == "module")
      fail("the checkpoint pickles a whole module (torch.save(model)); save model.state_dict() instead");
    if (!tag.is_string() || tag.text != "storage")
      fail("persistent id: unknown kind ", pickle::describe(tag), " (expected 'storage')");
    if (pid.items.size() != expected_items)
      fail("persistent id: a storage id of ", pid.items.size(), " items (expected ", expected_items, ")");
    const Value& cls = *pid.items[1];
    if (!cls.is(Kind::global) || cls.global != pickle::Global::storage_class)
      fail("persistent id: the storage class is ", pickle::describe(cls));
    const std::string& key = string_field(pid, 2, "storage key");
    string_field(pid, 3, "location");  // "cpu", "cuda:0": everything loads to the CPU
    const int64_t numel = count_field(pid, 4, "element count");
    int64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, int64_t(pickle::element_size(cls.storage_type)), &nbytes))
      fail("persistent id: storage '", key, "' of ", numel, " elements is too large");

    auto [it, is_new] = records_.try_emplace(key);
    *fresh = is_new;
    if (is_new) {
      it->second = std::make_shared<StorageRecord>();
      it->second->key = key;
      it->second->type = cls.storage_type;
      it->second->numel = numel;
    } else if (it->second->type != cls.storage_type || it->second->numel != numel) {
      fail("persistent id: storage '", key, "' appears as ", numel, " x ", pickle::storage_class_name(cls.storage_type),
           " and as ", it->second->numel, " x ", pickle::storage_class_name(it->second->type));
    }
    return it->second;
  }
  StorageRecord* get(const std::string& key) {
    auto it = records_.find(key);
    return it == records_.end() ? nullptr : it->second.get();
  }

 private:
  std::map<std::string, std::shared_ptr<StorageRecord>> records_;
};

// Calls f(byte offset) for every element of a strided tensor, in row-major order.
template <class F>
void for_each_element(const Shape& shape, const Strides& strides, int64_t first, size_t element, F&& f) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (numel == 0) return;
  std::vector<int64_t> index(size_t(shape.size()), 0);
  int64_t at = first;
  for (int64_t n = 0; n < numel; ++n) {
    f(size_t(at) * element);
    for (int d = shape.size() - 1; d >= 0; --d) {  // odometer step
      if (++index[size_t(d)] < shape[d]) {
        at += strides[d];
        break;
      }
      at -= strides[d] * (shape[d] - 1);
      index[size_t(d)] = 0;
    }
  }
}

// A fresh contiguous CPU tensor with the elements the reference views.
Tensor materialize(const TensorRef& ref, const std::string& key, const std::string& path) {
  const StorageRecord& record = *ref.storage.record;
  BCOS_CHECK(record.loaded, kOp, ": ", path, ": tensor '", key, "': its storage '", record.key,
             "' has no data in the file");
  const StorageType type = record.type;
  const size_t element = pickle::element_size(type);
  const int64_t first = ref.storage.offset + ref.offset;  // checked against the storage when unpickled
  // Zero strides let a tensor repeat a few stored elements without bound; allow what a real
  // expanded buffer needs, not what a hostile file could ask for.
  const int64_t numel = ref.shape.numel();
  BCOS_CHECK(numel <= ref.storage.numel || numel <= kMaxExpandedElements, kOp, ": ", path, ": tensor '", key,
             "' of shape ", ref.shape, " repeats the ", ref.storage.numel, " elements of storage '", record.key,
             "' through zero strides into more than ", kMaxExpandedElements, " elements");
  Tensor out = empty(ref.shape, pickle::loaded_dtype(type));
  auto* dst = static_cast<char*>(out.raw_data());
  const char* src = record.bytes.data();

  bool contiguous = true;
  int64_t expected = 1;
  for (int d = ref.shape.size() - 1; d >= 0; --d) {
    if (ref.shape[d] == 1) continue;
    contiguous = contiguous && ref.strides[d] == expected;
    expected *= ref.shape[d];
  }
  const bool widen = type == StorageType::i32 || type == StorageType::i16 || type == StorageType::i8;
  if (widen) {
    auto* values = reinterpret_cast<int64_t*>(dst);
    for_each_element(ref.shape, ref.strides, first, element, [&](size_t at) {
      int32_t i32;
      int16_t i16;
      int8_t i8;
      if (type == StorageType::i32) *values++ = (std::memcpy(&i32, src + at, 4), i32);
      else if (type == StorageType::i16) *values++ = (std::memcpy(&i16, src + at, 2), i16);
      else *values++ = (std::memcpy(&i8, src + at, 1), i8);
    });
  } else if (contiguous) {
    if (out.numel() > 0) std::memcpy(dst, src + size_t(first) * element, size_t(out.numel()) * element);
  } else {
    for_each_element(ref.shape, ref.strides, first, element, [&](size_t at) {
      std::memcpy(dst, src + at, element);
      dst += element;
    });
  }
  if (type == StorageType::boolean) {
    const auto* b = static_cast<const unsigned char*>(out.raw_data());
    for (int64_t i = 0; i < out.numel(); ++i)
      BCOS_CHECK(b[i] <= 1, kOp, ": ", path, ": tensor '", key, "': bool element ", i, " is ", int(b[i]),
                 ", not 0 or 1");
  }
  return out;
}

// The state dict inside the unpickled object (see the header for what is accepted).
StateDict extract_state_dict(const Value& root, const std::string& path) {
  BCOS_CHECK(root.is(Kind::dict), kOp, ": ", path, ": the checkpoint holds ", pickle::describe(root),
             ", not a state dict (a dict of tensors)");
  const Value* dict = &root;
  bool has_tensors = false;
  for (const auto& entry : root.entries) has_tensors = has_tensors || entry.second->is(Kind::tensor);
  if (!has_tensors && !root.entries.empty()) {
    dict = nullptr;
    for (const char* wrapper : {"state_dict", "model_state_dict", "model"}) {
      for (const auto& [k, v] : root.entries)
        if (k->is_string() && k->text == wrapper && v->is(Kind::dict)) dict = v;
      if (dict) break;
    }
    if (!dict) {
      std::string keys;
      for (size_t i = 0; i < root.entries.size() && i < 12; ++i)
        keys += (i ? ", " : "") + (root.entries[i].first->is_string() ? "'" + root.entries[i].first->text + "'"
                                                                      : pickle::describe(*root.entries[i].first));
      fail(kOp, ": ", path, ": no state dict found: the top-level dict holds no tensors and no \"state_dict\", "
           "\"model_state_dict\" or \"model\" dict (its keys: ", keys, root.entries.size() > 12 ? ", ..." : "", ")");
    }
  }
  StateDict out;
  for (const auto& [k, v] : dict->entries) {
    BCOS_CHECK(k->is_string(), kOp, ": ", path, ": a state dict key is ", pickle::describe(*k), ", not a string");
    switch (v->kind) {
      case Kind::tensor: out.emplace_back(k->text, materialize(*v->tensor, k->text, path)); break;
      case Kind::none: case Kind::boolean: case Kind::integer: case Kind::big_integer:
      case Kind::floating: case Kind::string: break;  // e.g. a version number: not a tensor, skipped
      default:
        fail(kOp, ": ", path, ": state dict entry '", k->text, "' is ", pickle::describe(*v), ", not a tensor");
    }
  }
  return out;
}

// A TorchScript module tree (torch.jit.save): every tensor attribute by its dotted path, as
// state_dict() names it ("visual.layer1.0.conv1.weight"); scalars ("training") are skipped.
// Iterative, and each object visited once, so no pickle can recurse deeply or loop.
StateDict flatten_script_module(const Value& root, const std::string& path) {
  StateDict out;
  std::vector<std::pair<const Value*, std::string>> todo{{&root, ""}};
  std::set<const Value*> seen;
  while (!todo.empty()) {
    auto [obj, prefix] = todo.back();
    todo.pop_back();
    if (!seen.insert(obj).second) continue;
    std::vector<std::pair<const Value*, std::string>> children;
    for (const auto& [k, v] : obj->entries) {
      const std::string key = prefix + k->text;
      if (v->is(Kind::tensor)) out.emplace_back(key, materialize(*v->tensor, key, path));
      else if (v->is(Kind::object)) children.emplace_back(v, key + ".");
    }
    todo.insert(todo.end(), children.rbegin(), children.rend());  // children in order, depth first
  }
  return out;
}

StateDict load_zip(const MappedFile& file) {
  const std::string& path = file.path();
  ZipArchive zip(file.bytes(), path);
  BCOS_CHECK(!zip.entries().empty(), kOp, ": ", path, ": an empty zip archive");
  // torch names every entry <archive>/...; <archive> is the first entry's folder.
  const std::string& first = zip.entries()[0].name;
  const size_t slash = first.find('/');
  BCOS_CHECK(slash != std::string::npos && slash > 0, kOp, ": ", path, ": entry '", first,
             "' is not inside an archive folder: not a torch.save file");
  const std::string root = first.substr(0, slash);
  const ZipEntry* pkl = zip.find(root + "/data.pkl");
  BCOS_CHECK(pkl, kOp, ": ", path, ": no '", root, "/data.pkl' in the archive",
             zip.find(root + "/constants.pkl") ? " (a TorchScript archive: torch.jit.save, not torch.save)"
                                               : ": not a torch.save file");
  if (const ZipEntry* order = zip.find(root + "/byteorder")) {
    const std::string_view byteorder = zip.read(*order);
    BCOS_CHECK(byteorder == "little", kOp, ": ", path, ": byte order '", byteorder,
               "': only little-endian checkpoints are supported");
  }

  StorageTable storages;
  auto persistent_load = [&](const Value& pid) {
    bool fresh = false;
    std::shared_ptr<StorageRecord> record = storages.lookup(pid, 5, &fresh);
    if (fresh) {
      const std::string name = root + "/data/" + record->key;
      const ZipEntry* entry = zip.find(name);
      if (!entry) fail("storage '", record->key, "': no entry '", name, "' in the archive");
      const uint64_t nbytes = uint64_t(record->numel) * pickle::element_size(record->type);
      if (entry->size != nbytes)
        fail("storage '", record->key, "': ", record->numel, " x ", pickle::storage_class_name(record->type),
             " needs ", nbytes, " bytes but '", name, "' holds ", entry->size);
      record->bytes = zip.read(*entry);
      record->loaded = true;
    }
    return StorageRef{record, 0, record->numel};
  };
  pickle::Unpickler unpickler(zip.read(*pkl), path + ": " + pkl->name, pkl->data_offset, persistent_load);
  const bool torchscript = zip.find(root + "/constants.pkl") != nullptr;  // torch.jit.save writes it, torch.save not
  unpickler.allow_script_objects(torchscript);
  const Value& object = unpickler.load();
  if (torchscript) {
    BCOS_CHECK(object.is(Kind::object), kOp, ": ", path, ": a TorchScript archive whose data.pkl holds ",
               pickle::describe(object), ", not a module");
    return flatten_script_module(object, path);
  }
  return extract_state_dict(object, path);
}

StateDict load_legacy(const MappedFile& file) {
  const std::string& path = file.path();
  const std::string_view bytes = file.bytes();
  size_t pos = 0;
  // The pickles follow each other; each Unpickler reads one.
  auto next = [&](pickle::Unpickler::PersistentLoad load) {
    auto u = std::make_unique<pickle::Unpickler>(bytes.substr(pos), path, pos, std::move(load));
    u->load();
    pos += u->consumed();
    return u;
  };
  {
    auto magic = next({});
    const Value& m = magic->load();
    BCOS_CHECK(m.is(Kind::big_integer) && m.text == kLegacyMagic, kOp, ": ", path,
               ": not a PyTorch checkpoint (the first pickle is ", pickle::describe(m), ", not the magic number)");
  }
  {
    auto version = next({});
    const Value& v = version->load();
    BCOS_CHECK(v.is(Kind::integer) && v.integer == kLegacyProtocol, kOp, ": ", path,
               ": legacy protocol version is ", pickle::describe(v), " (expected 1001)");
  }
  {
    auto sys_info = next({});
    const Value& info = sys_info->load();
    BCOS_CHECK(info.is(Kind::dict), kOp, ": ", path, ": the system-info pickle is ", pickle::describe(info));
    for (const auto& [k, v] : info.entries)
      BCOS_CHECK(!(k->is_string() && k->text == "little_endian" && v->is(Kind::boolean) && !v->boolean), kOp,
                 ": ", path, ": a big-endian checkpoint; only little-endian checkpoints are supported");
  }

  StorageTable storages;
  auto persistent_load = [&](const Value& pid) {
    bool fresh = false;
    std::shared_ptr<StorageRecord> record = storages.lookup(pid, 6, &fresh);
    const Value& view = *pid.items[5];
    if (view.is(Kind::none)) return StorageRef{record, 0, record->numel};
    if (!view.is(Kind::tuple) || view.items.size() != 3)
      fail("persistent id: the storage view is ", pickle::describe(view), " (expected (key, offset, numel))");
    const int64_t offset = count_field(view, 1, "view offset"), numel = count_field(view, 2, "view size");
    if (offset > record->numel || numel > record->numel - offset)
      fail("storage view [", offset, ", +", numel, ") lies outside storage '", record->key, "' of ", record->numel,
           " elements");
    return StorageRef{record, offset, numel};
  };
  auto object = next(persistent_load);

  auto keys_pickle = next({});
  const Value& keys = keys_pickle->load();
  BCOS_CHECK(keys.is(Kind::list), kOp, ": ", path, ": the storage-key pickle is ", pickle::describe(keys));
  std::set<std::string> seen;
  for (const Value* k : keys.items) {
    BCOS_CHECK(k->is_string(), kOp, ": ", path, ": a storage key is ", pickle::describe(*k));
    StorageRecord* record = storages.get(k->text);
    BCOS_CHECK(record, kOp, ": ", path, ": the data section lists storage '", k->text,
               "', which no tensor uses");
    BCOS_CHECK(seen.insert(k->text).second, kOp, ": ", path, ": storage '", k->text, "' is listed twice");
    const size_t element = pickle::element_size(record->type);
    BCOS_CHECK(bytes.size() - pos >= 8, kOp, ": ", path, ": truncated at byte ", pos,
               ": the element count of storage '", k->text, "' is missing");
    uint64_t count = 0;
    for (int i = 7; i >= 0; --i) count = (count << 8) | static_cast<unsigned char>(bytes[pos + size_t(i)]);
    BCOS_CHECK(count == uint64_t(record->numel), kOp, ": ", path, ": storage '", k->text, "' at byte ", pos,
               " holds ", count, " elements, but its tensors were saved with ", record->numel);
    pos += 8;
    const uint64_t nbytes = count * element;  // no overflow: checked when the id was read
    BCOS_CHECK(nbytes <= bytes.size() - pos, kOp, ": ", path, ": truncated: storage '", k->text, "' needs ",
               nbytes, " bytes from byte ", pos, " but the file ends at byte ", bytes.size());
    record->bytes = bytes.substr(pos, nbytes);
    record->loaded = true;
    pos += nbytes;
  }
  return extract_state_dict(object->load(), path);
}

}  // namespace

StateDict load_torch_checkpoint(const std::string& path) {
  MappedFile file(path, kOp);
  const std::string_view b = file.bytes();
  if (b.substr(0, 4) == "PK\x03\x04") return load_zip(file);
  if (!b.empty() && static_cast<unsigned char>(b[0]) == 0x80) return load_legacy(file);
  if (b.size() > 262 && b.substr(257, 5) == "ustar")
    fail(kOp, ": ", path, ": a tar checkpoint (PyTorch before 0.4) is not supported; re-save it with a newer PyTorch");
  fail(kOp, ": ", path, ": not a PyTorch checkpoint (neither a zip archive nor a pickle)");
}

StateDict load_checkpoint(const std::string& path) {
  std::string head;
  {
    MappedFile file(path, "load_checkpoint");
    head = std::string(file.bytes().substr(0, 9));
    uint64_t header_len = 0;
    for (int i = 7; i >= 0 && head.size() >= 8; --i)
      header_len = (header_len << 8) | static_cast<unsigned char>(head[size_t(i)]);
    if (head.size() == 9 && head[8] == '{' && header_len <= file.size() - 8) return load_safetensors(path);
  }
  if (head.substr(0, 4) == "PK\x03\x04" || (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80))
    return load_torch_checkpoint(path);
  fail("load_checkpoint: ", path, ": unrecognised format (not safetensors, nor a PyTorch zip or legacy checkpoint)");
}

}  // namespace bcos::nn
