// Datasets: where samples come from, before decoding.
//   ImageFolder   root/<class>/**/<image>, labels as torchvision's ImageFolder numbers them.
//   Cifar10       the binary batches users download (data_batch_{1..5}.bin, test_batch.bin).
//   WebDataset    tar shards streamed in order (data/webdataset.h).
// A dataset hands out Records (undecoded bytes, or pixels when the format stores them raw);
// the DataLoader's workers decode and transform them in parallel.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace bcos::data {

struct Record {
  std::string name;         // for messages: the file path, or "shard.tar: key"
  std::string image_bytes;  // an encoded image (JPEG / PNG / BMP), or empty
  Tensor pixels;            // or already decoded: u8 [H, W, 3]
  int64_t label = -1;       // -1 when the sample has none
  std::string text;         // .txt field (WebDataset)
  std::string json;         // .json field, raw (WebDataset)
};

// The decoded image of a record: its pixels, or its bytes through decode_image.
Tensor record_image(const Record& r);

// Random access: size() records, any order, from any thread.
struct Dataset {
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual Record get(int64_t index) const = 0;
};

class ImageFolder : public Dataset {
 public:
  // Extensions matched case-insensitively: those of torchvision's IMG_EXTENSIONS that
  // data/image.h decodes.
  explicit ImageFolder(const std::string& root,
                       std::vector<std::string> extensions = {".jpg", ".jpeg", ".png", ".bmp"});
  int64_t size() const override { return int64_t(samples_.size()); }
  Record get(int64_t index) const override;
  const std::vector<std::string>& classes() const { return classes_; }
  const std::string& path(int64_t index) const;
  int64_t label(int64_t index) const;

 private:
  void scan(const std::string& root, std::vector<std::string> extensions);
  std::vector<std::string> classes_;
  std::vector<std::pair<std::string, int64_t>> samples_;  // (path, class index)
};

class Cifar10 : public Dataset {
 public:
  // `root` holds the batches, directly or in cifar-10-batches-bin/. train: data_batch_1..5.bin;
  // otherwise test_batch.bin.
  Cifar10(const std::string& root, bool train);
  ~Cifar10() override;
  Cifar10(const Cifar10&) = delete;  // owns open file descriptors
  Cifar10& operator=(const Cifar10&) = delete;
  int64_t size() const override { return total_; }
  Record get(int64_t index) const override;
  static const std::vector<std::string>& classes();

 private:
  std::vector<std::string> files_;
  std::vector<int> fds_;
  std::vector<int64_t> records_per_file_;
  int64_t total_ = 0;
};

}  // namespace bcos::data
