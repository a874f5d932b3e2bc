// ImageFolder and the CIFAR-10 binary format.
#include "data/datasets.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <unistd.h>

#include "data/image.h"

namespace bcos::data {

namespace fs = std::filesystem;

Tensor record_image(const Record& r) {
  if (r.pixels.defined()) return r.pixels;
  BCOS_CHECK(!r.image_bytes.empty(), r.name, ": the sample has no image");
  return decode_image(r.image_bytes, r.name);
}

// ---- ImageFolder ---------------------------------------------------------------------------
namespace {

bool has_extension(const std::string& name, const std::vector<std::string>& extensions) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  for (const std::string& e : extensions)
    if (lower.size() >= e.size() && lower.compare(lower.size() - e.size(), e.size(), e) == 0) return true;
  return false;
}

}  // namespace

ImageFolder::ImageFolder(const std::string& root, std::vector<std::string> extensions) {
  try {
    scan(root, std::move(extensions));
  } catch (const fs::filesystem_error& e) {  // unreadable folders, symlink loops
    fail("ImageFolder: ", root, ": ", e.what());
  }
}

void ImageFolder::scan(const std::string& root, std::vector<std::string> extensions) {
  std::error_code ec;
  BCOS_CHECK(fs::is_directory(root, ec), "ImageFolder: ", root, " is not a directory");
  for (std::string& e : extensions)
    std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  // Classes: the sub-directories, sorted by name (byte order of UTF-8 = Python's code-point order).
  for (const auto& entry : fs::directory_iterator(root, fs::directory_options::follow_directory_symlink))
    if (entry.is_directory()) classes_.push_back(entry.path().filename().string());
  std::sort(classes_.begin(), classes_.end());
  BCOS_CHECK(!classes_.empty(), "ImageFolder: no class folders in ", root);
  // Files: torchvision walks each class folder recursively, visiting directories in sorted
  // order of their path and files in sorted order within a directory.
  std::vector<std::string> empty_classes;
  for (size_t c = 0; c < classes_.size(); ++c) {
    std::vector<std::pair<std::string, std::string>> files;  // (directory, file name)
    for (auto it = fs::recursive_directory_iterator(fs::path(root) / classes_[c],
                                                     fs::directory_options::follow_directory_symlink);
         it != fs::recursive_directory_iterator(); ++it) {
      if (it->is_directory()) continue;
      const std::string name = it->path().filename().string();
      if (has_extension(name, extensions)) files.emplace_back(it->path().parent_path().string(), name);
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) empty_classes.push_back(classes_[c]);
    for (auto& [dir, name] : files) samples_.emplace_back(dir + "/" + name, int64_t(c));
  }
  if (!empty_classes.empty()) {
    std::string list, exts;
    for (auto& c : empty_classes) list += (list.empty() ? "" : ", ") + c;
    for (auto& e : extensions) exts += (exts.empty() ? "" : " ") + e;
    fail("ImageFolder: ", root, ": no image files (", exts, ") in the class folder(s) ", list);
  }
}

const std::string& ImageFolder::path(int64_t index) const {
  BCOS_CHECK(index >= 0 && index < size(), "ImageFolder: index ", index, " out of range [0, ", size(), ")");
  return samples_[size_t(index)].first;
}

int64_t ImageFolder::label(int64_t index) const {
  path(index);
  return samples_[size_t(index)].second;
}

Record ImageFolder::get(int64_t index) const {
  Record r;
  r.name = path(index);
  r.image_bytes = read_file(r.name);
  r.label = samples_[size_t(index)].second;
  return r;
}

// ---- CIFAR-10 binary -----------------------------------------------------------------------
// Each record: one label byte, then the 32x32 image as three planes (R, G, B), row-major.
namespace {
constexpr int64_t kCifarRecord = 1 + 3 * 32 * 32;
}

const std::vector<std::string>& Cifar10::classes() {
  static const std::vector<std::string> names = {"airplane", "automobile", "bird", "cat", "deer",
                                                 "dog", "frog", "horse", "ship", "truck"};
  return names;
}

Cifar10::Cifar10(const std::string& root, bool train) {
  std::string dir = root;
  std::error_code ec;
  if (!fs::exists(fs::path(dir) / (train ? "data_batch_1.bin" : "test_batch.bin"), ec) &&
      fs::is_directory(fs::path(root) / "cifar-10-batches-bin", ec))
    dir = (fs::path(root) / "cifar-10-batches-bin").string();
  if (train)
    for (int i = 1; i <= 5; ++i) files_.push_back(dir + "/data_batch_" + std::to_string(i) + ".bin");
  else
    files_.push_back(dir + "/test_batch.bin");
  for (const std::string& f : files_) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      for (int open_fd : fds_) ::close(open_fd);
      fail("Cifar10: cannot open ", f, ": ", std::strerror(err),
           " (expected the binary version: data_batch_1..5.bin, test_batch.bin)");
    }
    fds_.push_back(fd);
    const int64_t bytes = ::lseek(fd, 0, SEEK_END);
    if (bytes <= 0 || bytes % kCifarRecord != 0) {
      for (int open_fd : fds_) ::close(open_fd);
      fail("Cifar10: ", f, " has ", bytes, " bytes, not a multiple of the ", kCifarRecord,
           "-byte record (truncated or not a CIFAR-10 batch)");
    }
    records_per_file_.push_back(bytes / kCifarRecord);
    total_ += bytes / kCifarRecord;
  }
}

Cifar10::~Cifar10() {
  for (int fd : fds_) ::close(fd);
}

Record Cifar10::get(int64_t index) const {
  BCOS_CHECK(index >= 0 && index < total_, "Cifar10: index ", index, " out of range [0, ", total_, ")");
  size_t file = 0;
  int64_t local = index;
  while (local >= records_per_file_[file]) local -= records_per_file_[file++];
  uint8_t buf[kCifarRecord];
  const ssize_t got = ::pread(fds_[file], buf, kCifarRecord, off_t(local * kCifarRecord));
  BCOS_CHECK(got == kCifarRecord, "Cifar10: ", files_[file], ": short read of record ", local);
  Record r;
  r.name = files_[file] + ": record " + std::to_string(local);
  BCOS_CHECK(buf[0] < 10, r.name, ": label byte ", int(buf[0]), " is not a CIFAR-10 class (0-9)");
  r.label = buf[0];
  r.pixels = empty({32, 32, 3}, DType::u8);
  uint8_t* px = r.pixels.data<uint8_t>();
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 1024; ++i) px[i * 3 + c] = buf[1 + c * 1024 + i];
  return r;
}

}  // namespace bcos::data
