// A streaming reader for tar archives (POSIX ustar, with pax and GNU long-name extensions):
// one pass from the front, never extracting to disk. WebDataset shards are plain tars.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace bcos::data {

struct TarMember {
  std::string name;   // full path inside the archive
  int64_t size = 0;   // bytes of data
  int64_t offset = 0; // byte offset of the data in the archive
  char type = '0';    // '0' regular file, '5' directory, ...
  bool is_file() const { return type == '0' || type == '\0' || type == '7'; }
};

class TarReader {
 public:
  explicit TarReader(std::string path);
  ~TarReader();
  TarReader(const TarReader&) = delete;
  TarReader& operator=(const TarReader&) = delete;

  // Advances to the next member (directories and links included) and reports it; false at the
  // end-of-archive blocks. A header with a bad checksum, a malformed pax record, or an archive
  // cut short (inside a header or member, or before its end blocks) raises bcos::Error naming
  // the file and the byte offset.
  bool next(TarMember& member);
  // The current member's data (call at most once per member; skipped otherwise).
  std::string read_data();
  const std::string& path() const { return path_; }

 private:
  void read_exact(char* dst, int64_t n, const char* what);
  void skip(int64_t n, const char* what);
  std::string path_;
  std::FILE* file_ = nullptr;
  int64_t file_size_ = 0;
  int64_t position_ = 0;      // bytes consumed so far
  int64_t pending_ = 0;       // data bytes of the current member not yet read
  int64_t pending_pad_ = 0;   // padding after them, up to the 512-byte boundary
  TarMember current_;
};

}  // namespace bcos::data
