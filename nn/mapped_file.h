// A whole file mapped read-only into memory, for the checkpoint readers: they parse headers in
// place and copy tensor bytes straight out of the mapping into fresh storages, so nothing is
// read twice and the mapping is closed when loading ends. (A file truncated by another process
// while it is mapped would fault; checkpoints are not written in place, so we accept that.)
#pragma once

#include <string>
#include <string_view>

namespace bcos::nn {

class MappedFile {
 public:
  // `op` names the caller in error messages ("load_safetensors").
  MappedFile(const std::string& path, const char* op);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::string_view bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace bcos::nn
