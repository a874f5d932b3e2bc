// Helpers of the serialization tests: files written byte by byte (pickles, stored zip
// archives), so that each malformed case is exactly the malformation under test.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "tests/data/helpers.h"

namespace testnn {

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

inline std::string le(uint64_t v, int bytes) {
  std::string s;
  for (int i = 0; i < bytes; ++i) s += char((v >> (8 * i)) & 0xFF);
  return s;
}

// Pickle opcodes, protocol 2, as torch.save writes them.
struct PickleWriter {
  std::string out = "\x80\x02";
  PickleWriter& mark() { return op("("); }
  PickleWriter& op(const std::string& code) { out += code; return *this; }
  PickleWriter& global(const std::string& module, const std::string& name) {
    return op("c" + module + "\n" + name + "\n");
  }
  PickleWriter& str(const std::string& s) {
    out += 'X';
    out += le(s.size(), 4);
    out += s;
    return *this;
  }
  PickleWriter& integer(int64_t v) {
    if (v >= 0 && v < 256) return op(std::string("K") + char(v));
    out += std::string("\x8a\x08", 2);  // LONG1, 8 bytes
    out += le(uint64_t(v), 8);
    return *this;
  }
  PickleWriter& ints(const std::vector<int64_t>& values) {  // a tuple
    mark();
    for (int64_t v : values) integer(v);
    return op("t");
  }
  PickleWriter& tuple() { return op("t"); }
  PickleWriter& reduce() { return op("R"); }
  PickleWriter& none() { return op("N"); }
  PickleWriter& stop() { return op("."); }
  // _rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', numel), offset, size, stride, False, OrderedDict())
  PickleWriter& tensor(const std::string& key, int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                       const std::vector<int64_t>& stride, const std::string& storage_class = "FloatStorage") {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    mark().str("storage").global("torch", storage_class).str(key).str("cpu").integer(numel).tuple().op("Q");
    integer(offset).ints(size).ints(stride).op("\x89");
    global("collections", "OrderedDict").op(")").reduce();
    return tuple().reduce();
  }
};

// A zip archive of stored entries, as torch.save lays it out (the data of each entry starts on
// a 64-byte boundary), with the central directory and end record. With `zip64`, the central
// directory and the end record give their sizes and offsets in ZIP64 form, as writers do for
// archives over 4 GiB.
struct ZipWriter {
  struct Item {
    std::string name, data;
    uint16_t method = 0;
  };
  std::vector<Item> items;
  bool zip64 = false;

  ZipWriter& add(const std::string& name, const std::string& data, uint16_t method = 0) {
    items.push_back({name, data, method});
    return *this;
  }
  static uint32_t crc32(const std::string& data) {
    uint32_t c = 0xFFFFFFFFu;
    for (char ch : data) {
      c ^= static_cast<unsigned char>(ch);
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xFFFFFFFFu;
  }
  std::string bytes() const {
    std::string out, dir;
    for (const Item& it : items) {
      const size_t header_at = out.size();
      const size_t pad = (64 - (header_at + 30 + it.name.size() + 4) % 64) % 64;
      const std::string extra = le(0x4246, 2) + le(pad, 2) + std::string(pad, 'Z');  // torch's "FB" padding
      const uint32_t crc = crc32(it.data);
      const uint64_t size32 = zip64 ? 0xFFFFFFFF : it.data.size(), offset32 = zip64 ? 0xFFFFFFFF : header_at;
      const std::string central_extra =
          zip64 ? le(1, 2) + le(24, 2) + le(it.data.size(), 8) + le(it.data.size(), 8) + le(header_at, 8) : "";
      const std::string common = le(0, 2) + le(it.method, 2) + le(0, 4) + le(crc, 4);
      out += le(0x04034b50, 4) + le(20, 2) + common + le(it.data.size(), 4) + le(it.data.size(), 4) +
             le(it.name.size(), 2) + le(extra.size(), 2) + it.name + extra + it.data;
      dir += le(0x02014b50, 4) + le(45, 2) + le(45, 2) + common + le(size32, 4) + le(size32, 4) +
             le(it.name.size(), 2) + le(central_extra.size(), 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) +
             le(offset32, 4) + it.name + central_extra;
    }
    const size_t dir_at = out.size();
    out += dir;
    if (zip64) {
      const size_t record_at = out.size();
      out += le(0x06064b50, 4) + le(44, 8) + le(45, 2) + le(45, 2) + le(0, 4) + le(0, 4) + le(items.size(), 8) +
             le(items.size(), 8) + le(dir.size(), 8) + le(dir_at, 8);
      out += le(0x07064b50, 4) + le(0, 4) + le(record_at, 8) + le(1, 4);
      out += le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(0xFFFF, 2) + le(0xFFFF, 2) + le(0xFFFFFFFF, 4) +
             le(0xFFFFFFFF, 4) + le(0, 2);
    } else {
      out += le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(items.size(), 2) + le(items.size(), 2) +
             le(dir.size(), 4) + le(dir_at, 4) + le(0, 2);
    }
    return out;
  }
};

inline std::string golden(const std::string& name) { return std::string(BCOS_GOLDEN_DIR) + "/" + name; }

}  // namespace testnn
