// Zip reading, after the PKWARE APPNOTE: the end-of-central-directory record sits at the end of
// the file (followed only by its comment); it locates the central directory, whose entries
// give each member's sizes, CRC and local-header offset. Local headers repeat the name but,
// when bit 3 of the flags is set (torch sets it), carry zero sizes: the central directory is
// the authority for sizes.
#include "nn/zip.h"

#include <array>

#include "tensor/error.h"

namespace bcos::nn {

namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndOfCentralDir = 0x06054b50;
constexpr uint32_t kZip64EndOfCentralDir = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr size_t kEndRecordSize = 22, kCentralSize = 46, kLocalSize = 30;

uint64_t le(std::string_view b, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + size_t(i)]);
  return v;
}

uint32_t crc32(std::string_view data) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (char ch : data) c = table[(c ^ static_cast<unsigned char>(ch)) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

}  // namespace

ZipArchive::ZipArchive(std::string_view bytes, std::string source)
    : bytes_(bytes), source_(std::move(source)) {
  const size_t size = bytes.size();
  auto bad = [&](const auto&... what) { fail("zip: ", source_, ": ", what...); };
  // `n` bytes at `at` must lie in the file.
  auto need = [&](uint64_t at, uint64_t n, const char* what) {
    if (at > size || n > size - at)
      bad("truncated or corrupted: ", what, " at byte ", at, " (", n, " bytes) lies beyond the end of the file (",
          size, " bytes)");
  };

  // The end record: the last signature whose comment runs exactly to the end of the file.
  if (size < kEndRecordSize) bad("too short for a zip archive (", size, " bytes)");
  size_t end_at = size;
  const size_t lowest = size >= kEndRecordSize + 0xFFFF ? size - kEndRecordSize - 0xFFFF : 0;
  for (size_t at = size - kEndRecordSize + 1; at-- > lowest;) {
    if (le(bytes, at, 4) == kEndOfCentralDir && at + kEndRecordSize + le(bytes, at + 20, 2) == size) {
      end_at = at;
      break;
    }
  }
  if (end_at == size) bad("no end-of-central-directory record (truncated, or not a zip archive)");
  if (le(bytes, end_at + 4, 2) != 0 || le(bytes, end_at + 6, 2) != 0)
    bad("multi-disk archives are not supported");
  uint64_t count = le(bytes, end_at + 10, 2);
  uint64_t dir_size = le(bytes, end_at + 12, 4);
  uint64_t dir_offset = le(bytes, end_at + 16, 4);
  uint64_t dir_limit = end_at;  // the central directory ends before the record that locates it
  if (count == 0xFFFF || dir_size == 0xFFFFFFFF || dir_offset == 0xFFFFFFFF) {
    if (end_at < 20 || le(bytes, end_at - 20, 4) != kZip64Locator)
      bad("the end record needs ZIP64 values but the ZIP64 locator is missing");
    const uint64_t record = le(bytes, end_at - 20 + 8, 8);
    need(record, 56, "the ZIP64 end-of-central-directory record");
    if (le(bytes, record, 4) != kZip64EndOfCentralDir || record > end_at - 20)
      bad("bad ZIP64 end-of-central-directory record at byte ", record);
    count = le(bytes, record + 32, 8);
    dir_size = le(bytes, record + 40, 8);
    dir_offset = le(bytes, record + 48, 8);
    dir_limit = record;
  }
  if (dir_offset > dir_limit || dir_size > dir_limit - dir_offset)
    bad("the central directory [", dir_offset, ", +", dir_size, ") does not fit before byte ", dir_limit);
  if (count > dir_size / kCentralSize) bad(count, " entries cannot fit in a central directory of ", dir_size, " bytes");

  entries_.reserve(count);
  uint64_t at = dir_offset;
  const uint64_t dir_end = dir_offset + dir_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (kCentralSize > dir_end - at || le(bytes, at, 4) != kCentralHeader)
      bad("bad central directory entry ", i, " at byte ", at);
    const uint64_t flags = le(bytes, at + 8, 2), method = le(bytes, at + 10, 2);
    ZipEntry e;
    e.crc32 = uint32_t(le(bytes, at + 16, 4));
    uint64_t packed = le(bytes, at + 20, 4), unpacked = le(bytes, at + 24, 4);
    const uint64_t name_len = le(bytes, at + 28, 2), extra_len = le(bytes, at + 30, 2),
                   comment_len = le(bytes, at + 32, 2);
    uint64_t local = le(bytes, at + 42, 4);
    if (name_len + extra_len + comment_len > dir_end - at - kCentralSize)
      bad("central directory entry ", i, " at byte ", at, " runs past the directory");
    e.name = std::string(bytes.substr(at + kCentralSize, name_len));
    if (flags & 1) bad("entry '", e.name, "' is encrypted");
    e.method = uint16_t(method);  // a compressed entry may be listed (TorchScript's code/), not read

    // ZIP64 extra field: the 8-byte values of the fields that hold 0xFFFFFFFF, in this order.
    const uint64_t extra_at = at + kCentralSize + name_len;
    for (uint64_t x = 0; x + 4 <= extra_len;) {
      const uint64_t id = le(bytes, extra_at + x, 2), len = le(bytes, extra_at + x + 2, 2);
      if (x + 4 + len > extra_len) bad("entry '", e.name, "': an extra field runs past its entry");
      if (id == 1) {
        uint64_t y = 0;
        for (uint64_t* field : {&unpacked, &packed, &local}) {
          if (*field != 0xFFFFFFFF) continue;
          if (y + 8 > len) bad("entry '", e.name, "': the ZIP64 extra field is too short");
          *field = le(bytes, extra_at + x + 4 + y, 8);
          y += 8;
        }
      }
      x += 4 + len;
    }
    if (method == 0 && packed != unpacked)
      bad("entry '", e.name, "' is stored but its sizes differ (", packed, " vs ", unpacked, ")");
    e.size = packed;

    need(local, kLocalSize, "a local header");
    if (le(bytes, local, 4) != kLocalHeader) bad("entry '", e.name, "': no local header at byte ", local);
    const uint64_t local_name = le(bytes, local + 26, 2), local_extra = le(bytes, local + 28, 2);
    need(local + kLocalSize, local_name + local_extra, "a local header's name and extra field");
    if (bytes.substr(local + kLocalSize, local_name) != e.name)
      bad("entry '", e.name, "': the local header at byte ", local, " names a different file");
    e.data_offset = local + kLocalSize + local_name + local_extra;
    if (e.data_offset > dir_offset || e.size > dir_offset - e.data_offset)
      bad("entry '", e.name, "': its ", e.size, " bytes at byte ", e.data_offset,
          " run into the central directory or past the end of the file");

    if (!by_name_.emplace(e.name, entries_.size()).second) bad("duplicate entry '", e.name, "'");
    entries_.push_back(std::move(e));
    at += kCentralSize + name_len + extra_len + comment_len;
  }
}

const ZipEntry* ZipArchive::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

std::string_view ZipArchive::read(const ZipEntry& entry) const {
  if (entry.method != 0)
    fail("zip: ", source_, ": entry '", entry.name, "' is compressed (method ", entry.method,
         "); only stored entries can be read, as torch writes them");
  const std::string_view data = bytes_.substr(entry.data_offset, entry.size);
  const uint32_t actual = crc32(data);
  if (actual != entry.crc32)
    fail("zip: ", source_, ": entry '", entry.name, "' is corrupted (CRC-32 ", actual, ", expected ", entry.crc32, ")");
  return data;
}

}  // namespace bcos::nn
