// Tar parsing: 512-byte headers, each followed by the member's data padded to 512 bytes; two
// zero blocks (or, as many writers leave it, the end of the file) close the archive.
#include "data/tar.h"

#include <cerrno>
#include <cstring>

#include <sys/stat.h>

#include "tensor/error.h"

namespace bcos::data {

namespace {

constexpr int64_t kBlock = 512;

// Numeric header fields: octal ASCII, or (GNU) base-256 big-endian when the top bit is set.
int64_t parse_number(const char* field, int length, bool* ok) {
  const auto* f = reinterpret_cast<const unsigned char*>(field);
  if (f[0] & 0x80) {
    uint64_t v = f[0] & 0x7F;
    for (int i = 1; i < length; ++i) {
      if (v >> 55) { *ok = false; return 0; }
      v = (v << 8) | f[i];
    }
    return int64_t(v);
  }
  int64_t v = 0;
  int i = 0;
  while (i < length && (f[i] == ' ' || f[i] == '\0')) ++i;  // leading padding
  for (; i < length && f[i] >= '0' && f[i] <= '7'; ++i) {
    if (v >> 60) { *ok = false; return 0; }
    v = v * 8 + (f[i] - '0');
  }
  for (; i < length; ++i)
    if (f[i] != ' ' && f[i] != '\0') *ok = false;
  return v;
}

std::string field_string(const char* field, size_t length) {
  return std::string(field, strnlen(field, length));
}

// A non-negative decimal number, digits only; false for anything else or on overflow.
bool parse_decimal(const std::string& text, int64_t* out) {
  if (text.empty() || text.size() > 18) return false;
  int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

// pax extended header records: "<length> <key>=<value>\n", the length counting the whole
// record. Returns false on a malformed record.
bool apply_pax(const std::string& data, std::string* path, int64_t* size, bool* has_size) {
  size_t pos = 0;
  while (pos < data.size()) {
    const size_t space = data.find(' ', pos);
    int64_t len = 0;
    if (space == std::string::npos || !parse_decimal(data.substr(pos, space - pos), &len)) return false;
    if (len <= int64_t(space - pos) + 1 || pos + size_t(len) > data.size() || data[pos + size_t(len) - 1] != '\n')
      return false;
    const std::string record = data.substr(space + 1, pos + size_t(len) - space - 2);
    const size_t eq = record.find('=');
    if (eq == std::string::npos) return false;
    const std::string key = record.substr(0, eq), value = record.substr(eq + 1);
    if (key == "path") *path = value;
    if (key == "size") {
      if (!parse_decimal(value, size)) return false;
      *has_size = true;
    }
    pos += size_t(len);
  }
  return true;
}

}  // namespace

TarReader::TarReader(std::string path) : path_(std::move(path)) {
  file_ = std::fopen(path_.c_str(), "rb");
  BCOS_CHECK(file_, "tar: cannot open ", path_, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(::fileno(file_), &st) != 0 || !S_ISREG(st.st_mode)) {
    std::fclose(file_);
    file_ = nullptr;
    fail("tar: ", path_, " is not a regular file");
  }
  file_size_ = int64_t(st.st_size);
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 20);
}

TarReader::~TarReader() {
  if (file_) std::fclose(file_);
}

void TarReader::read_exact(char* dst, int64_t n, const char* what) {
  const size_t got = std::fread(dst, 1, size_t(n), file_);
  if (int64_t(got) != n)
    fail("tar: ", path_, ": truncated at byte offset ", position_ + int64_t(got), " while reading ",
         what, " (", n, " bytes from offset ", position_, "; the file has ", file_size_, " bytes)");
  position_ += n;
}

void TarReader::skip(int64_t n, const char* what) {
  if (n == 0) return;
  BCOS_CHECK(n > 0, "tar: ", path_, ": negative skip at byte offset ", position_);
  if (n > file_size_ - position_)
    fail("tar: ", path_, ": truncated: ", what, " needs bytes up to offset ", position_ + n,
         " but the file ends at ", file_size_);
  BCOS_CHECK(std::fseek(file_, long(n), SEEK_CUR) == 0, "tar: ", path_, ": seek failed at offset ",
             position_);
  position_ += n;
}

bool TarReader::next(TarMember& member) {
  skip(pending_ + pending_pad_, "the previous member");
  pending_ = pending_pad_ = 0;
  std::string long_name;
  bool has_pax_size = false;
  int64_t pax_size = 0;
  for (;;) {
    if (position_ == file_size_)  // tar writers always close with zero blocks: this was cut short
      fail("tar: ", path_, ": truncated at byte offset ", position_,
           ": the file ends at a member boundary without the end-of-archive blocks");
    char h[kBlock];
    const int64_t header_at = position_;
    read_exact(h, kBlock, "a member header");
    bool all_zero = true;
    for (char c : h) all_zero = all_zero && c == 0;
    if (all_zero) return false;

    bool ok = true;
    const int64_t stored_sum = parse_number(h + 148, 8, &ok);
    int64_t unsigned_sum = 0, signed_sum = 0;
    for (int i = 0; i < kBlock; ++i) {
      const bool in_sum_field = i >= 148 && i < 156;
      unsigned_sum += in_sum_field ? ' ' : static_cast<unsigned char>(h[i]);
      signed_sum += in_sum_field ? ' ' : static_cast<signed char>(h[i]);
    }
    if (!ok || (stored_sum != unsigned_sum && stored_sum != signed_sum))
      fail("tar: ", path_, ": bad header checksum at byte offset ", header_at,
           " (not a tar file, or corrupted)");
    int64_t size = parse_number(h + 124, 12, &ok);
    BCOS_CHECK(ok && size >= 0, "tar: ", path_, ": bad size field in the header at byte offset ", header_at);
    const char type = h[156];
    std::string name = field_string(h, 100);
    if (std::memcmp(h + 257, "ustar\0", 6) == 0 && h[345] != '\0')  // POSIX, not GNU "ustar  "
      name = field_string(h + 345, 155) + "/" + name;

    if (type == 'x' || type == 'L' || type == 'g' || type == 'K') {  // describe the next member
      BCOS_CHECK(size < (int64_t(1) << 26), "tar: ", path_, ": extended header of ", size,
                 " bytes at byte offset ", header_at);
      std::string data(size_t(size), '\0');
      read_exact(data.data(), size, "an extended header");
      skip((kBlock - size % kBlock) % kBlock, "an extended header's padding");
      if (type == 'x' && !apply_pax(data, &long_name, &pax_size, &has_pax_size))
        fail("tar: ", path_, ": malformed pax header at byte offset ", header_at);
      if (type == 'L') long_name = std::string(data.c_str());
      continue;
    }
    if (!long_name.empty()) name = long_name;
    if (has_pax_size) size = pax_size;
    current_ = {name, size, position_, type};
    member = current_;
    pending_ = (type == '5' || type == '1' || type == '2') ? 0 : size;
    pending_pad_ = (kBlock - pending_ % kBlock) % kBlock;
    if (pending_ > file_size_ - position_ || pending_pad_ > file_size_ - position_ - pending_)
      fail("tar: ", path_, ": truncated: member '", name, "' needs ", size, " bytes from byte offset ",
           position_, " but the file ends at ", file_size_);
    return true;
  }
}

std::string TarReader::read_data() {
  BCOS_CHECK(pending_ <= (int64_t(1) << 31), "tar: ", path_, ": member '", current_.name, "' has ", pending_,
             " bytes; members over 2 GiB are not read into memory");
  std::string data(size_t(pending_), '\0');
  read_exact(data.data(), pending_, ("member '" + current_.name + "'").c_str());
  pending_ = 0;
  return data;
}

}  // namespace bcos::data
