// WebDataset: samples stored as tar shards, each sample a run of members sharing a key (the
// path up to the first dot of the file name): airplane_0001.jpg + airplane_0001.cls. Shards
// are read front to back, never extracted. Fields by extension: jpg / jpeg / png / bmp -> the
// image, cls -> the integer label, txt -> text, json -> raw JSON text; others are ignored.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "data/datasets.h"
#include "data/rng.h"
#include "data/tar.h"

namespace bcos::data {

// "dir/train-{000000..000004}.tar" -> the five names (zero-padded as the first bound is);
// several brace groups expand as a product; a pattern without braces is itself.
std::vector<std::string> expand_braces(const std::string& pattern);

struct WebDatasetOptions {
  bool require_label = true;  // a sample without .cls is an error (skipped with skip_corrupt)
  bool require_image = true;  // a sample without an image is an error
};

class WebDataset {
 public:
  // `shards`: a list of paths; each may be a brace pattern.
  WebDataset(std::vector<std::string> shards, WebDatasetOptions options = {});
  explicit WebDataset(const std::string& pattern, WebDatasetOptions options = {})
      : WebDataset(std::vector<std::string>{pattern}, options) {}

  const std::vector<std::string>& shards() const { return shards_; }
  const WebDatasetOptions& options() const { return options_; }
  // The exact number of samples, from the tar headers alone (data is skipped, not read);
  // computed once and cached (thread-safe). shard_counts(): the same per shard, in shards() order.
  int64_t count() const;
  std::vector<int64_t> shard_counts() const;

  // One pass over the samples in shard order, or, when `shuffle`, with the shard order
  // permuted by `rng` and samples drawn from a shuffle buffer of `buffer` records.
  class Stream {
   public:
    // Fills `r` with the next sample; false at the end. A sample that misses a required field
    // (or has a bad label, or a field twice) is returned with `missing` describing the problem,
    // for the caller to raise or skip.
    bool next(Record& r, std::string* missing);

   private:
    friend class WebDataset;
    bool read_one(Record& r, std::string* missing);  // in shard order
    std::vector<std::string> order_;
    size_t shard_ = 0;
    std::unique_ptr<TarReader> tar_;
    TarMember lookahead_;
    bool has_lookahead_ = false;
    WebDatasetOptions options_;
    // shuffle buffer
    bool shuffle_ = false;
    size_t buffer_size_ = 0;
    Rng rng_{0};
    std::vector<std::pair<Record, std::string>> buffer_;  // (sample, what it misses)
    bool source_done_ = false;
  };
  // part / parts: only the shards at positions part, part + parts, ... of the (permuted) shard
  // order: data-parallel ranks reading disjoint shards of one agreed permutation.
  Stream stream(bool shuffle = false, uint64_t seed = 0, int64_t buffer = 1000, int part = 0, int parts = 1) const;

 private:
  std::vector<std::string> shards_;
  WebDatasetOptions options_;
  mutable std::mutex count_mutex_;
  mutable std::vector<int64_t> shard_counts_;  // empty until counted
};

}  // namespace bcos::data
