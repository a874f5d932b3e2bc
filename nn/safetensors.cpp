// safetensors reader and writer. The header is parsed by a small strict JSON parser (objects,
// arrays, strings with escapes, integers: all a safetensors header may hold) instead of a JSON
// library, so that every malformed header becomes an error naming the file and the byte.
#include "nn/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include <unistd.h>

#include "nn/mapped_file.h"
#include "tensor/copy.h"
#include "tensor/files.h"

namespace bcos::nn {

namespace {

constexpr const char* kLoad = "load_safetensors";
constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the limit of the Python library

// ---- the JSON subset of a safetensors header ------------------------------------------------

struct JsonMember;
struct Json {
  enum class Kind { object, array, string, integer } kind = Kind::object;
  std::string text;
  int64_t integer = 0;
  std::vector<Json> items;           // array
  std::vector<JsonMember> members;   // object, in file order
  size_t at = 0;                     // byte offset in the file, for errors
};
struct JsonMember {  // (a std::pair would need Json complete inside Json)
  std::string key;
  Json value;
};

const char* kind_name(Json::Kind k) {
  switch (k) {
    case Json::Kind::object: return "an object";
    case Json::Kind::array: return "an array";
    case Json::Kind::string: return "a string";
    case Json::Kind::integer: return "an integer";
  }
  return "?";
}

class JsonParser {
 public:
  // `origin`: the file offset of text[0], so errors give file offsets.
  JsonParser(std::string_view text, size_t origin, const std::string& path)
      : s_(text), origin_(origin), path_(path) {}

  Json parse_document() {
    Json v = value(0);
    skip_ws();
    if (pos_ != s_.size()) error("trailing characters after the JSON header");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 8;  // a header nests three deep

  [[noreturn]] void error(const std::string& what) const {
    fail(kLoad, ": ", path_, ": bad JSON header at byte ", origin_ + pos_, ": ", what);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) error("unexpected end of the header");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) error(str("expected '", c, "', found '", printable(s_[pos_]), "'"));
    ++pos_;
  }
  static std::string printable(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string(1, c);
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", u);
    return buf;
  }

  Json value(int depth) {
    if (depth > kMaxDepth) error("nested deeper than a safetensors header can be");
    const char c = peek();
    Json v;
    v.at = origin_ + pos_;
    if (c == '{') {
      v.kind = Json::Kind::object;
      ++pos_;
      std::set<std::string> seen;
      if (peek() == '}') { ++pos_; return v; }
      for (;;) {
        if (peek() != '"') error("expected a string key");
        std::string key = string();
        if (!seen.insert(key).second) error("duplicate key \"" + key + "\"");
        expect(':');
        v.members.push_back(JsonMember{std::move(key), value(depth + 1)});
        if (peek() == ',') { ++pos_; continue; }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::Kind::array;
      ++pos_;
      if (peek() == ']') { ++pos_; return v; }
      for (;;) {
        v.items.push_back(value(depth + 1));
        if (peek() == ',') { ++pos_; continue; }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Json::Kind::string;
      v.text = string();
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind = Json::Kind::integer;
      v.integer = integer();
      return v;
    }
    error(str("unexpected '", printable(c), "' (a header holds only objects, arrays, strings and integers)"));
  }

  int64_t integer() {
    const bool negative = s_[pos_] == '-';
    if (negative) ++pos_;
    if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') error("expected a digit");
    if (s_[pos_] == '0' && pos_ + 1 < s_.size() && s_[pos_ + 1] >= '0' && s_[pos_ + 1] <= '9')
      error("a number with a leading zero");
    int64_t v = 0;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
      if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, s_[pos_] - '0', &v))
        error("an integer too large for 64 bits");
      ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == '.' || s_[pos_] == 'e' || s_[pos_] == 'E'))
      error("a fractional number (the header holds only integers)");
    return negative ? -v : v;
  }

  unsigned hex4() {
    if (s_.size() - pos_ < 4) error("a truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= unsigned(h - '0');
      else if (h >= 'a' && h <= 'f') v |= unsigned(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') v |= unsigned(h - 'A' + 10);
      else error("a bad hex digit in a \\u escape");
    }
    return v;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  // Length of the valid UTF-8 sequence starting at s_[pos_] (non-ASCII lead byte), or 0.
  size_t utf8_length() const {
    const auto* p = reinterpret_cast<const unsigned char*>(s_.data()) + pos_;
    const size_t left = s_.size() - pos_;
    size_t n = 0;
    unsigned cp = 0;
    if ((p[0] & 0xE0) == 0xC0) { n = 2; cp = p[0] & 0x1F; }
    else if ((p[0] & 0xF0) == 0xE0) { n = 3; cp = p[0] & 0x0F; }
    else if ((p[0] & 0xF8) == 0xF0) { n = 4; cp = p[0] & 0x07; }
    else return 0;
    if (left < n) return 0;
    for (size_t i = 1; i < n; ++i) {
      if ((p[i] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (p[i] & 0x3F);
    }
    const unsigned min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) error("an unterminated string");
      const char c = s_[pos_];
      if (c == '"') { ++pos_; return out; }
      if (static_cast<unsigned char>(c) < 0x20) error("a control character inside a string");
      if (static_cast<unsigned char>(c) >= 0x80) {
        const size_t n = utf8_length();
        if (n == 0) error("invalid UTF-8 inside a string");
        out.append(s_.substr(pos_, n));
        pos_ += n;
        continue;
      }
      ++pos_;
      if (c != '\\') { out += c; continue; }
      if (pos_ >= s_.size()) error("an unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) error("a lone low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.size() - pos_ < 2 || s_[pos_] != '\\' || s_[pos_ + 1] != 'u')
              error("a high surrogate without its low half");
            pos_ += 2;
            const unsigned low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) error("a high surrogate without its low half");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: --pos_; error(str("an unknown escape \\", printable(e)));
      }
    }
  }

  std::string_view s_;
  size_t origin_;
  const std::string& path_;
  size_t pos_ = 0;
};

// ---- dtypes ---------------------------------------------------------------------------------

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
    case DType::boolean: return "BOOL";
  }
  return "?";
}

bool parse_dtype(const std::string& name, DType* out) {
  for (DType t : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i64, DType::u8, DType::boolean})
    if (name == safetensors_dtype(t)) { *out = t; return true; }
  return false;
}

// ---- reading --------------------------------------------------------------------------------

struct Entry {
  std::string key;
  DType dtype = DType::f32;
  Shape shape;
  int64_t begin = 0, end = 0;
};

Entry parse_entry(const std::string& key, const Json& v, const std::string& path) {
  auto bad = [&](const auto&... what) { fail(kLoad, ": ", path, ": tensor '", key, "': ", what...); };
  if (v.kind != Json::Kind::object) bad("expected an object, found ", kind_name(v.kind));
  Entry e;
  e.key = key;
  bool has_dtype = false, has_shape = false, has_offsets = false;
  for (const auto& [field, f] : v.members) {
    if (field == "dtype") {
      if (f.kind != Json::Kind::string) bad("\"dtype\" is ", kind_name(f.kind), ", not a string");
      if (!parse_dtype(f.text, &e.dtype))
        bad("unsupported dtype \"", f.text, "\" (supported: F32, F64, F16, BF16, I64, U8, BOOL)");
      has_dtype = true;
    } else if (field == "shape") {
      if (f.kind != Json::Kind::array) bad("\"shape\" is ", kind_name(f.kind), ", not an array");
      if (f.items.size() > size_t(kMaxDims)) bad("shape has ", f.items.size(), " dims; at most ", kMaxDims, " are supported");
      for (const Json& d : f.items) {
        if (d.kind != Json::Kind::integer || d.integer < 0) bad("shape holds something other than a non-negative integer");
        e.shape.push_back(d.integer);
      }
      has_shape = true;
    } else if (field == "data_offsets") {
      if (f.kind != Json::Kind::array || f.items.size() != 2 || f.items[0].kind != Json::Kind::integer ||
          f.items[1].kind != Json::Kind::integer)
        bad("\"data_offsets\" must be an array of two integers");
      e.begin = f.items[0].integer;
      e.end = f.items[1].integer;
      if (e.begin < 0 || e.end < e.begin) bad("bad data_offsets [", e.begin, ", ", e.end, "]");
      has_offsets = true;
    } else {
      bad("unknown field \"", field, "\"");
    }
  }
  if (!has_dtype || !has_shape || !has_offsets) bad("needs \"dtype\", \"shape\" and \"data_offsets\"");
  int64_t numel = 1, nbytes = 0;
  for (int64_t d : e.shape)
    if (__builtin_mul_overflow(numel, d, &numel)) bad("shape ", e.shape, " has too many elements");
  if (__builtin_mul_overflow(numel, int64_t(dtype_size(e.dtype)), &nbytes) || nbytes != e.end - e.begin)
    bad(safetensors_dtype(e.dtype), " ", e.shape, " needs ", numel, " x ", dtype_size(e.dtype),
        " bytes, but data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin);
  return e;
}

}  // namespace

StateDict load_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  MappedFile file(path, kLoad);
  const std::string_view bytes = file.bytes();
  BCOS_CHECK(bytes.size() >= 8, kLoad, ": ", path, ": ", bytes.size(),
             " bytes is too short for a safetensors file (8-byte header length missing)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[size_t(i)]);
  BCOS_CHECK(header_len <= bytes.size() - 8, kLoad, ": ", path, ": the header claims ", header_len,
             " bytes but only ", bytes.size() - 8, " follow the length field (truncated, or not a safetensors file)");
  BCOS_CHECK(header_len <= kMaxHeaderBytes, kLoad, ": ", path, ": header of ", header_len,
             " bytes exceeds the ", kMaxHeaderBytes, "-byte limit");
  const std::string_view header = bytes.substr(8, header_len);
  BCOS_CHECK(!header.empty() && header[0] == '{', kLoad, ": ", path,
             ": the header does not start with '{' (not a safetensors file)");
  const Json root = JsonParser(header, 8, path).parse_document();

  const size_t data_start = 8 + header_len;
  const int64_t data_size = int64_t(bytes.size() - data_start);
  std::vector<Entry> entries;
  if (metadata) metadata->clear();
  for (const auto& [key, v] : root.members) {
    if (key == "__metadata__") {
      BCOS_CHECK(v.kind == Json::Kind::object, kLoad, ": ", path, ": \"__metadata__\" is ",
                 kind_name(v.kind), ", not an object");
      for (const auto& [mk, mv] : v.members) {
        BCOS_CHECK(mv.kind == Json::Kind::string, kLoad, ": ", path, ": \"__metadata__\" entry '", mk,
                   "' is ", kind_name(mv.kind), ", not a string");
        if (metadata) (*metadata)[mk] = mv.text;
      }
      continue;
    }
    entries.push_back(parse_entry(key, v, path));
    const Entry& e = entries.back();
    BCOS_CHECK(e.end <= data_size, kLoad, ": ", path, ": tensor '", key, "': data_offsets [", e.begin,
               ", ", e.end, "] lie outside the data section of ", data_size, " bytes");
  }

  // The byte ranges, in order, must tile [0, data_size).
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  int64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < covered)
      fail(kLoad, ": ", path, ": tensors '", previous->key, "' [", previous->begin, ", ", previous->end,
           ") and '", e.key, "' [", e.begin, ", ", e.end, ") overlap");
    if (e.begin > covered)
      fail(kLoad, ": ", path, ": bytes [", covered, ", ", e.begin, ") of the data section belong to no tensor");
    covered = e.end;
    previous = &e;
  }
  if (covered != data_size)
    fail(kLoad, ": ", path, ": bytes [", covered, ", ", data_size, ") of the data section belong to no tensor");

  StateDict out;
  out.reserve(entries.size());
  for (const Entry& e : entries) {
    Tensor t = empty(e.shape, e.dtype);
    const char* src = bytes.data() + data_start + e.begin;
    if (e.dtype == DType::boolean)
      for (int64_t i = 0; i < e.end - e.begin; ++i)
        BCOS_CHECK(static_cast<unsigned char>(src[i]) <= 1, kLoad, ": ", path, ": tensor '", e.key,
                   "': BOOL element ", i, " is ", int(static_cast<unsigned char>(src[i])), ", not 0 or 1");
    if (e.end > e.begin) std::memcpy(t.raw_data(), src, size_t(e.end - e.begin));
    out.emplace_back(e.key, std::move(t));
  }
  return out;
}

// ---- writing --------------------------------------------------------------------------------

namespace {

void append_json_string(std::string& out, const std::string& s) {
  out += '"';
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  out += '"';
}

}  // namespace

void save_safetensors(const std::string& path, const StateDict& tensors,
                      const std::map<std::string, std::string>& metadata) {
  constexpr const char* op = "save_safetensors";
  std::vector<const std::pair<std::string, Tensor>*> order;
  for (const auto& entry : tensors) {
    BCOS_CHECK(entry.first != "__metadata__", op, ": ", path, ": \"__metadata__\" is reserved, not a tensor name");
    BCOS_CHECK(entry.second.defined(), op, ": ", path, ": tensor '", entry.first, "' is undefined");
    order.push_back(&entry);
  }
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->first < b->first; });
  for (size_t i = 1; i < order.size(); ++i)
    BCOS_CHECK(order[i - 1]->first != order[i]->first, op, ": ", path, ": duplicate tensor name '",
               order[i]->first, "'");

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ',';
      first = false;
      append_json_string(header, k);
      header += ':';
      append_json_string(header, v);
    }
    header += '}';
  }
  int64_t offset = 0;
  for (const auto* entry : order) {
    const Tensor& t = entry->second;
    const int64_t nbytes = t.numel() * int64_t(t.element_size());
    if (header.size() > 1) header += ',';
    append_json_string(header, entry->first);
    header += str(":{\"dtype\":\"", safetensors_dtype(t.dtype()), "\",\"shape\":[");
    for (int d = 0; d < t.dim(); ++d) header += str(d ? "," : "", t.size(d));
    header += str("],\"data_offsets\":[", offset, ",", offset + nbytes, "]}");
    offset += nbytes;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');

  AtomicFile out(path, op);
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(uint64_t(header.size()) >> (8 * i));
  out.write(length, 8);
  out.write(header.data(), header.size());
  for (const auto* entry : order) {
    const Tensor host = to_cpu_contiguous(entry->second);  // one tensor at a time: bounded memory
    out.write(host.raw_data(), size_t(host.numel()) * host.element_size());
  }
  out.commit();
}

}  // namespace bcos::nn
