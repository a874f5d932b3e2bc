// Whole files, written so that no data a user saved is ever lost: AtomicFile writes to a
// temporary file beside the destination ("<path>.tmp.<pid>"), flushes it to disk and renames it
// over the destination, so a crash, a kill or a full disk leaves either the old file or the
// new one, never a mix. A temporary left by a killed writer is removed by the next successful
// write of the same path. Checkpoints, images, reports and the examples' outputs go through it.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace bcos {

class AtomicFile {
 public:
  // `op` names the caller in errors ("save_safetensors").
  AtomicFile(const std::string& path, const char* op);
  ~AtomicFile();  // removes the temporary unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Flushes, fsyncs and renames over the destination; raises (naming the file and the system's
  // reason, e.g. "No space left on device") when any of it fails, leaving the destination as
  // it was.
  void commit();
  const std::string& temporary_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  const char* op_;
  std::FILE* f_ = nullptr;
  bool committed_ = false;
};

void write_file_atomic(const std::string& path, std::string_view bytes, const char* op = "write_file");
std::string read_file(const std::string& path);

}  // namespace bcos
