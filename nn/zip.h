// The zip container of torch.save (since PyTorch 1.6), read in place from a mapped file:
// the end-of-central-directory record (ZIP64 too), the central directory, and each entry's
// local header. torch writes every entry STORED (uncompressed, 64-byte aligned) so tensors can
// be copied straight out; reading a compressed entry is an error (TorchScript archives list
// deflated code/ files, which are never read), an encrypted one too, as are ranges outside
// the file, names that differ between the central and the local header, duplicate names and
// CRC-32 mismatches (checked when an entry is read, as torch's reader does).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bcos::nn {

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // of the entry's bytes in the archive
  uint64_t size = 0;  // bytes in the archive
  uint32_t crc32 = 0;
  uint16_t method = 0;  // 0: stored
};

class ZipArchive {
 public:
  // `source` names the archive in errors. `bytes` must outlive the archive.
  ZipArchive(std::string_view bytes, std::string source);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;
  // The entry's bytes (a view into the archive), after checking their CRC-32.
  std::string_view read(const ZipEntry& entry) const;

 private:
  std::string_view bytes_;
  std::string source_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
};

}  // namespace bcos::nn
