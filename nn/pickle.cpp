// The allow-list unpickler. Opcodes follow Python's pickle protocols 0-5 (Lib/pickletools.py
// documents each); torch.save writes protocol 2 and uses only: PROTO, MARK, STOP, EMPTY_DICT,
// EMPTY_TUPLE, TUPLE, TUPLE1-3, SETITEM(S), BINUNICODE, BININT/BININT1/BININT2, LONG1,
// BINFLOAT, NONE, NEWTRUE/NEWFALSE, GLOBAL, REDUCE, BUILD (an OrderedDict's _metadata),
// BINPERSID, BINPUT/LONG_BINPUT, BINGET/LONG_BINGET. The rest of the data-building opcodes are
// accepted because other picklers (protocol 4, Python 2) emit them for the same data; opcodes
// that construct arbitrary objects (INST, OBJ, EXT*) are refused like forbidden globals.
#include "nn/pickle.h"

#include <cmath>
#include <cstring>

namespace bcos::nn::pickle {

namespace {

constexpr size_t kMaxLine = 256;  // text arguments of protocol-0 opcodes

const char* opcode_name(uint8_t op) {
  switch (op) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
  }
  return nullptr;
}

struct StorageClass {
  const char* name;
  StorageType type;
  size_t size;
  DType dtype;
};
constexpr StorageClass kStorageClasses[] = {
    {"FloatStorage", StorageType::f32, 4, DType::f32},     {"DoubleStorage", StorageType::f64, 8, DType::f64},
    {"HalfStorage", StorageType::f16, 2, DType::f16},      {"BFloat16Storage", StorageType::bf16, 2, DType::bf16},
    {"LongStorage", StorageType::i64, 8, DType::i64},      {"IntStorage", StorageType::i32, 4, DType::i64},
    {"ShortStorage", StorageType::i16, 2, DType::i64},     {"CharStorage", StorageType::i8, 1, DType::i64},
    {"ByteStorage", StorageType::u8, 1, DType::u8},        {"BoolStorage", StorageType::boolean, 1, DType::boolean},
};

const StorageClass& storage_class(StorageType t) {
  for (const auto& c : kStorageClasses)
    if (c.type == t) return c;
  fail("pickle: unknown storage type");
}

// Parses a decimal integer (protocol-0 text), optionally signed; false if malformed or too big.
bool parse_decimal(std::string_view text, int64_t* out) {
  bool negative = false;
  size_t i = 0;
  if (i < text.size() && (text[i] == '-' || text[i] == '+')) negative = text[i++] == '-';
  if (i == text.size()) return false;
  int64_t v = 0;  // accumulated with the sign, so that -2^63 parses
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    const int digit = negative ? -(text[i] - '0') : text[i] - '0';
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, digit, &v)) return false;
  }
  *out = v;
  return true;
}

}  // namespace

size_t element_size(StorageType t) { return storage_class(t).size; }
const char* storage_class_name(StorageType t) { return storage_class(t).name; }
DType loaded_dtype(StorageType t) { return storage_class(t).dtype; }

std::string describe(const Value& v) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::none: return "None";
    case K::boolean: return v.boolean ? "True" : "False";
    case K::integer: return str("the integer ", v.integer);
    case K::big_integer: return str("an integer of ", v.text.size(), " bytes");
    case K::floating: return str("the float ", v.floating);
    case K::string:
      return v.text.size() <= 60 ? "the string '" + v.text + "'" : "the string '" + v.text.substr(0, 57) + "...'";
    case K::bytes: return str("bytes of length ", v.text.size());
    case K::tuple: return str("a tuple of ", v.items.size(), " items");
    case K::list: return str("a list of ", v.items.size(), " items");
    case K::dict: return str("a dict of ", v.entries.size(), " entries");
    case K::global: return "the global " + v.text;
    case K::storage:
      return str("a torch.", storage_class_name(v.storage->record->type), " '", v.storage->record->key, "'");
    case K::tensor: return str("a tensor of shape ", v.tensor->shape);
    case K::object: return "an instance of " + v.text;
  }
  return "?";
}

Unpickler::Unpickler(std::string_view bytes, std::string source, size_t base_offset,
                     PersistentLoad persistent_load)
    : s_(bytes), source_(std::move(source)), base_(base_offset),
      persistent_load_(std::move(persistent_load)) {}

void Unpickler::error(const std::string& what) const {
  const uint8_t op = op_at_ < s_.size() ? static_cast<uint8_t>(s_[op_at_]) : 0;
  const char* name = opcode_name(op);
  fail("pickle: ", source_, ": ", what, " (opcode ", name ? name : "?", " at byte ", base_ + op_at_, ")");
}

const char* Unpickler::take(size_t n) {
  if (n > s_.size() - pos_)
    error(str("truncated: ", n, " bytes needed at byte ", base_ + pos_, " but the stream ends at byte ",
              base_ + s_.size()));
  const char* p = s_.data() + pos_;
  pos_ += n;
  return p;
}

uint64_t Unpickler::read_uint(int bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(take(size_t(bytes)));
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string_view Unpickler::read_line() {
  const size_t limit = std::min(s_.size(), pos_ + kMaxLine);
  for (size_t i = pos_; i < limit; ++i) {
    if (s_[i] != '\n') continue;
    std::string_view line = s_.substr(pos_, i - pos_);
    pos_ = i + 1;
    return line;
  }
  if (limit == s_.size()) error(str("truncated: no end of line before byte ", base_ + s_.size()));
  error(str("a text argument longer than ", kMaxLine, " bytes"));
}

Value* Unpickler::make(Value::Kind kind) {
  arena_.emplace_back();
  arena_.back().kind = kind;
  return &arena_.back();
}

Value* Unpickler::make_int(int64_t v) {
  Value* x = make(Value::Kind::integer);
  x->integer = v;
  return x;
}

void Unpickler::push(Value* v) { stack_.push_back(v); }

Value* Unpickler::pop() {
  const size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) error(marks_.empty() ? "stack underflow" : "stack underflow (past a MARK)");
  Value* v = stack_.back();
  stack_.pop_back();
  return v;
}

Value* Unpickler::top() {
  const size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) error("empty stack");
  return stack_.back();
}

std::vector<Value*> Unpickler::pop_to_mark() {
  if (marks_.empty()) error("no MARK to pop to");
  const size_t at = marks_.back();
  marks_.pop_back();
  std::vector<Value*> items(stack_.begin() + std::ptrdiff_t(at), stack_.end());
  stack_.resize(at);
  return items;
}

Value* Unpickler::memo_get(uint64_t index) {
  auto it = memo_.find(index);
  if (it == memo_.end()) error(str("memo index ", index, " was never stored"));
  return it->second;
}

void Unpickler::memo_put(uint64_t index) { memo_[index] = top(); }

Value* Unpickler::resolve_global(const std::string& module, const std::string& name) {
  Value* g = make(Value::Kind::global);
  g->text = module + "." + name;
  if (module == "collections" && name == "OrderedDict") {
    g->global = Global::ordered_dict;
  } else if (module == "torch._utils" && name == "_rebuild_tensor") {
    g->global = Global::rebuild_tensor;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    g->global = Global::rebuild_tensor_v2;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    g->global = Global::rebuild_parameter;
  } else if (allow_script_objects_ && (module == "__torch__" || module.rfind("__torch__.", 0) == 0)) {
    g->global = Global::script_class;  // a TorchScript module class: instantiated inertly, never called
  } else {
    bool found = false;
    if (module == "torch")
      for (const auto& c : kStorageClasses)
        if (name == c.name) {
          g->global = Global::storage_class;
          g->storage_type = c.type;
          found = true;
        }
    if (!found)
      error(str("global '", g->text, "' is not on the allow-list: loading this checkpoint would run code "
                "(only state dicts of tensors can be loaded)"));
  }
  return g;
}

namespace {

// Dict keys compare as Python compares the scalars torch uses as keys; anything else by identity.
std::string key_identity(const Value& k) {
  using K = Value::Kind;
  switch (k.kind) {
    case K::string: return "s" + k.text;
    case K::bytes: return "b" + k.text;
    case K::integer: return "i" + std::to_string(k.integer);
    case K::boolean: return k.boolean ? "i1" : "i0";
    case K::none: return "n";
    case K::big_integer: return "B" + k.text;
    case K::floating:
      if (std::nearbyint(k.floating) == k.floating && std::abs(k.floating) < 9e18)
        return "i" + std::to_string(int64_t(k.floating));  // 2.0 == 2
      {
        uint64_t bits;
        std::memcpy(&bits, &k.floating, 8);
        return "f" + std::to_string(bits);
      }
    default: return str("p", static_cast<const void*>(&k));
  }
}

}  // namespace

void Unpickler::set_item(Value* dict, Value* key, Value* value) {
  if (!dict->is(Value::Kind::dict)) error("setting an item of " + describe(*dict) + ", not a dict");
  if (!dict->index) dict->index = std::make_unique<std::unordered_map<std::string, size_t>>();
  auto [it, fresh] = dict->index->emplace(key_identity(*key), dict->entries.size());
  if (fresh) dict->entries.emplace_back(key, value);
  else dict->entries[it->second].second = value;
}

Value* Unpickler::parse_long(std::string_view le) {
  const size_t n = le.size();
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(le[i]); };
  const bool negative = n > 0 && (byte(n - 1) & 0x80);
  // Fits in 64 bits when every byte past the 8th only repeats the sign.
  bool fits = true;
  for (size_t i = 8; i < n; ++i) fits = fits && byte(i) == (negative ? 0xFF : 0x00);
  if (n > 8 && fits) fits = ((byte(7) & 0x80) != 0) == negative;
  if (!fits) {
    Value* v = make(Value::Kind::big_integer);
    v->text = std::string(le);
    return v;
  }
  uint64_t u = negative ? ~uint64_t(0) : 0;
  for (size_t i = 0; i < std::min<size_t>(n, 8); ++i) {
    u &= ~(uint64_t(0xFF) << (8 * i));
    u |= uint64_t(byte(i)) << (8 * i);
  }
  return make_int(int64_t(u));
}

Value* Unpickler::rebuild_tensor(Value* args, bool v2) {
  const auto& a = args->items;
  const char* fn = v2 ? "torch._utils._rebuild_tensor_v2" : "torch._utils._rebuild_tensor";
  const bool arity_ok = v2 ? (a.size() == 6 || a.size() == 7) : a.size() == 4;
  if (!arity_ok) error(str(fn, " called with ", a.size(), " arguments"));
  auto bad = [&](const std::string& what) { error(str(fn, ": ", what)); };
  if (!a[0]->is(Value::Kind::storage)) bad("the storage argument is " + describe(*a[0]));
  if (!a[1]->is(Value::Kind::integer) || a[1]->integer < 0) bad("the storage offset is " + describe(*a[1]));
  if (!a[2]->is(Value::Kind::tuple) || !a[3]->is(Value::Kind::tuple))
    bad("size and stride must be tuples, got " + describe(*a[2]) + " and " + describe(*a[3]));
  const auto& size = a[2]->items;
  const auto& stride = a[3]->items;
  if (size.size() != stride.size()) bad(str("size has ", size.size(), " dims but stride ", stride.size()));
  if (size.size() > size_t(kMaxDims)) bad(str(size.size(), " dims; at most ", kMaxDims, " are supported"));

  Value* t = make(Value::Kind::tensor);
  t->tensor = std::make_unique<TensorRef>();
  TensorRef& r = *t->tensor;
  r.storage = *a[0]->storage;
  r.offset = a[1]->integer;
  int64_t numel = 1, last = r.offset;  // last: the highest element index the tensor touches
  bool overflow = false;
  for (size_t d = 0; d < size.size(); ++d) {
    if (!size[d]->is(Value::Kind::integer) || size[d]->integer < 0) bad("size holds " + describe(*size[d]));
    if (!stride[d]->is(Value::Kind::integer) || stride[d]->integer < 0) bad("stride holds " + describe(*stride[d]));
    r.shape.push_back(size[d]->integer);
    r.strides.push_back(stride[d]->integer);
    int64_t reach = 0;
    overflow = overflow || __builtin_mul_overflow(numel, size[d]->integer, &numel);
    if (size[d]->integer > 0)
      overflow = overflow || __builtin_mul_overflow(size[d]->integer - 1, stride[d]->integer, &reach) ||
                 __builtin_add_overflow(last, reach, &last);
  }
  const int64_t storage_numel = r.storage.numel;
  if (overflow || (numel > 0 && last >= storage_numel) || (numel == 0 && r.offset > storage_numel))
    bad(str("a tensor of size ", r.shape, ", stride ", r.strides, " and offset ", r.offset,
            " reaches beyond its storage '", r.storage.record->key, "' of ", storage_numel, " elements"));
  if (v2) {
    if (a[4]->is(Value::Kind::boolean)) r.requires_grad = a[4]->boolean;
    else if (!a[4]->is(Value::Kind::integer)) bad("requires_grad is " + describe(*a[4]));
    if (!a[5]->is(Value::Kind::dict)) bad("backward_hooks is " + describe(*a[5]));
    if (a.size() == 7 && !a[6]->is(Value::Kind::dict) && !a[6]->is(Value::Kind::none))
      bad("metadata is " + describe(*a[6]));
  }
  return t;
}

Value* Unpickler::call(Value* callable, Value* args) {
  if (!callable->is(Value::Kind::global))
    error("calling " + describe(*callable) + " would run code");
  if (!args->is(Value::Kind::tuple)) error("the arguments of " + callable->text + " are " + describe(*args));
  switch (callable->global) {
    case Global::ordered_dict:
      if (!args->items.empty()) error("collections.OrderedDict called with arguments");
      return make(Value::Kind::dict);
    case Global::rebuild_tensor: return rebuild_tensor(args, false);
    case Global::rebuild_tensor_v2: return rebuild_tensor(args, true);
    case Global::rebuild_parameter: {
      const auto& a = args->items;
      if (a.size() != 3 || !a[0]->is(Value::Kind::tensor) || !a[2]->is(Value::Kind::dict))
        error("torch._utils._rebuild_parameter expects (tensor, requires_grad, backward_hooks)");
      Value* p = make(Value::Kind::tensor);
      p->tensor = std::make_unique<TensorRef>(*a[0]->tensor);
      p->tensor->requires_grad = a[1]->is(Value::Kind::boolean) && a[1]->boolean;
      return p;
    }
    case Global::storage_class: case Global::script_class: break;
  }
  error("calling " + callable->text + " would run code");
}

const Value& Unpickler::load() {
  if (result_) return *result_;
  for (;;) {
    op_at_ = pos_;
    const auto op = static_cast<uint8_t>(*take(1));
    switch (op) {
      case 0x80: {  // PROTO
        const auto version = static_cast<uint8_t>(*take(1));
        if (version > 5) error(str("pickle protocol ", int(version), " (at most 5 exists)"));
        break;
      }
      case 0x95: read_uint(8); break;  // FRAME: a length hint; the opcodes follow inline
      case '(': marks_.push_back(stack_.size()); break;
      case '.': {
        if (!marks_.empty() || stack_.size() != 1)
          error(str("STOP leaves ", stack_.size(), " values and ", marks_.size(), " open MARKs (expected one value)"));
        result_ = stack_.back();
        return *result_;
      }
      case '0':
        if (!marks_.empty() && stack_.size() == marks_.back()) marks_.pop_back();
        else pop();
        break;
      case '1': pop_to_mark(); break;
      case '2': push(top()); break;

      case 'N': push(make(Value::Kind::none)); break;
      case 0x88:
      case 0x89: {
        Value* b = make(Value::Kind::boolean);
        b->boolean = op == 0x88;
        push(b);
        break;
      }
      case 'J': push(make_int(int32_t(uint32_t(read_uint(4))))); break;
      case 'K': push(make_int(int64_t(read_uint(1)))); break;
      case 'M': push(make_int(int64_t(read_uint(2)))); break;
      case 0x8a: {  // LONG1
        const size_t n = read_uint(1);
        push(parse_long(std::string_view(take(n), n)));
        break;
      }
      case 0x8b: {  // LONG4
        const auto n = int32_t(uint32_t(read_uint(4)));
        if (n < 0) error("negative length");
        push(parse_long(std::string_view(take(size_t(n)), size_t(n))));
        break;
      }
      case 'I': {  // INT: decimal text; "00" / "01" are protocol 0's False / True
        const std::string_view line = read_line();
        if (line == "00" || line == "01") {
          Value* b = make(Value::Kind::boolean);
          b->boolean = line == "01";
          push(b);
          break;
        }
        int64_t v = 0;
        if (!parse_decimal(line, &v)) error("a malformed or out-of-range INT");
        push(make_int(v));
        break;
      }
      case 'L': {  // LONG: decimal text with an optional trailing 'L'
        std::string_view line = read_line();
        if (!line.empty() && line.back() == 'L') line.remove_suffix(1);
        int64_t v = 0;
        if (!parse_decimal(line, &v)) error("a malformed or out-of-range LONG");
        push(make_int(v));
        break;
      }
      case 'F': {  // FLOAT: repr text
        const std::string text(read_line());
        char* end = nullptr;
        const double d = std::strtod(text.c_str(), &end);
        if (text.empty() || end != text.c_str() + text.size()) error("a malformed FLOAT");
        Value* f = make(Value::Kind::floating);
        f->floating = d;
        push(f);
        break;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE double
        const auto* p = reinterpret_cast<const unsigned char*>(take(8));
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | p[i];
        Value* f = make(Value::Kind::floating);
        std::memcpy(&f->floating, &bits, 8);
        push(f);
        break;
      }

      // Strings: Python 2 str (BINSTRING, SHORT_BINSTRING) reads as str, as torch.load does.
      case 'T': case 'U': case 'X': case 0x8c: case 0x8d:
      case 'B': case 'C': case 0x8e: {
        uint64_t n = 0;
        if (op == 'U' || op == 0x8c || op == 'C') n = read_uint(1);
        else if (op == 0x8d || op == 0x8e) n = read_uint(8);
        else if (op == 'T') {
          const auto len = int32_t(uint32_t(read_uint(4)));
          if (len < 0) error("negative length");
          n = uint64_t(len);
        } else n = read_uint(4);
        Value* v = make(op == 'B' || op == 'C' || op == 0x8e ? Value::Kind::bytes : Value::Kind::string);
        v->text.assign(take(size_t(n)), size_t(n));
        push(v);
        break;
      }

      case ')': push(make(Value::Kind::tuple)); break;
      case 't': {
        Value* t = make(Value::Kind::tuple);
        t->items = pop_to_mark();
        push(t);
        break;
      }
      case 0x85: case 0x86: case 0x87: {
        const int n = op - 0x84;
        Value* t = make(Value::Kind::tuple);
        t->items.resize(size_t(n));
        for (int i = n - 1; i >= 0; --i) t->items[size_t(i)] = pop();
        push(t);
        break;
      }
      case ']': push(make(Value::Kind::list)); break;
      case 'l': {
        Value* l = make(Value::Kind::list);
        l->items = pop_to_mark();
        push(l);
        break;
      }
      case 'a': {
        Value* v = pop();
        Value* l = top();
        if (!l->is(Value::Kind::list)) error("appending to " + describe(*l) + ", not a list");
        l->items.push_back(v);
        break;
      }
      case 'e': {
        std::vector<Value*> items = pop_to_mark();
        Value* l = top();
        if (!l->is(Value::Kind::list)) error("appending to " + describe(*l) + ", not a list");
        l->items.insert(l->items.end(), items.begin(), items.end());
        break;
      }
      case '}': push(make(Value::Kind::dict)); break;
      case 'd': {
        std::vector<Value*> items = pop_to_mark();
        if (items.size() % 2) error("DICT with an odd number of items");
        Value* d = make(Value::Kind::dict);
        for (size_t i = 0; i < items.size(); i += 2) set_item(d, items[i], items[i + 1]);
        push(d);
        break;
      }
      case 's': {
        Value* value = pop();
        Value* key = pop();
        set_item(top(), key, value);
        break;
      }
      case 'u': {
        std::vector<Value*> items = pop_to_mark();
        if (items.size() % 2) error("SETITEMS with an odd number of items");
        Value* d = top();
        for (size_t i = 0; i < items.size(); i += 2) set_item(d, items[i], items[i + 1]);
        break;
      }

      case 'g': case 'p': {  // GET / PUT with a decimal index
        int64_t index = 0;
        if (!parse_decimal(read_line(), &index) || index < 0) error("a malformed memo index");
        if (op == 'g') push(memo_get(uint64_t(index)));
        else memo_put(uint64_t(index));
        break;
      }
      case 'h': push(memo_get(read_uint(1))); break;
      case 'j': push(memo_get(read_uint(4))); break;
      case 'q': memo_put(read_uint(1)); break;
      case 'r': memo_put(read_uint(4)); break;
      case 0x94: memo_put(memo_.size()); break;  // MEMOIZE

      case 'c': {  // GLOBAL "module\nname\n"
        const std::string module(read_line());
        const std::string name(read_line());
        push(resolve_global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        Value* name = pop();
        Value* module = pop();
        if (!module->is_string() || !name->is_string()) error("STACK_GLOBAL needs two strings");
        push(resolve_global(module->text, name->text));
        break;
      }
      case 'R': {
        Value* args = pop();
        Value* callable = pop();
        push(call(callable, args));
        break;
      }
      case 0x81: case 0x92: {  // NEWOBJ / NEWOBJ_EX: cls.__new__(cls, *args[, **kwargs])
        Value* kwargs = op == 0x92 ? pop() : nullptr;
        Value* args = pop();
        Value* cls = pop();
        const bool empty_kwargs = !kwargs || (kwargs->is(Value::Kind::dict) && kwargs->entries.empty());
        const bool known = cls->is(Value::Kind::global) &&
                           (cls->global == Global::ordered_dict || cls->global == Global::script_class);
        if (!known || !args->is(Value::Kind::tuple) || !args->items.empty() || !empty_kwargs)
          error("creating an instance of " + describe(*cls) + " would run code");
        Value* obj = make(cls->global == Global::script_class ? Value::Kind::object : Value::Kind::dict);
        if (obj->is(Value::Kind::object)) obj->text = cls->text;
        push(obj);
        break;
      }
      case 'b': {  // BUILD: an OrderedDict's attribute dict (torch's _metadata, ignored), or the
                   // attributes of a TorchScript object, set once from a dict with string keys
        Value* state = pop();
        Value* obj = top();
        if (obj->is(Value::Kind::object) && state->is(Value::Kind::dict) && obj->entries.empty()) {
          for (const auto& [k, v] : state->entries)
            if (!k->is_string()) error("an attribute name of " + describe(*obj) + " is " + describe(*k));
          obj->entries = state->entries;
          break;
        }
        if (!obj->is(Value::Kind::dict) || !(state->is(Value::Kind::dict) || state->is(Value::Kind::none)))
          error("setting the state of " + describe(*obj) + " from " + describe(*state) + " would run code");
        break;
      }
      case 'Q': case 'P': {  // BINPERSID / PERSID
        Value* pid = nullptr;
        if (op == 'Q') {
          pid = pop();
        } else {
          pid = make(Value::Kind::string);
          pid->text = std::string(read_line());
        }
        if (!persistent_load_) error("a persistent id where none is expected");
        Value* s = make(Value::Kind::storage);
        try {
          s->storage = std::make_unique<StorageRef>(persistent_load_(*pid));
        } catch (const Error& e) {
          error(e.what());  // adds the stream and the byte offset
        }
        push(s);
        break;
      }

      case 'i': case 'o': case 0x82: case 0x83: case 0x84:
        error("this opcode constructs arbitrary objects: loading this checkpoint would run code");
      default: {
        const char* name = opcode_name(op);
        error(name ? str("unsupported opcode ", name)
                   : str("unknown opcode 0x", "0123456789abcdef"[op >> 4], "0123456789abcdef"[op & 15],
                         " (not a pickle, or corrupted)"));
      }
    }
  }
}

}  // namespace bcos::nn::pickle
