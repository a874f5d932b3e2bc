// DataLoader: batches of decoded, transformed images from a Dataset or a WebDataset.
// N worker threads each build whole batches (read, decode, transform, collate) into a bounded
// set of batches in flight; batches come out in order. Each sample's random transform draws
// from its own generator seeded by (seed, epoch, position), so the batches for a given seed are
// identical whatever the number of workers.
//
//   DataLoader loader(dataset, Compose({RandomCrop(32, 4), RandomHorizontalFlip(), ToTensor(),
//                                       Normalize(kImageNetMean, kImageNetStd)}),
//                     {.batch_size = 256, .shuffle = true, .workers = 4});
//   for (int64_t epoch = 0; epoch < epochs; ++epoch)
//     for (Batch& b : loader.epoch(epoch)) train_step(b.images, b.labels);
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/datasets.h"
#include "data/transforms.h"
#include "data/webdataset.h"

namespace bcos::data {

struct LoaderOptions {
  int64_t batch_size = 1;
  bool shuffle = false;        // reshuffled every epoch from (seed, epoch)
  bool drop_last = false;
  int workers = 0;             // decoding threads; 0 decodes in the calling thread
  int prefetch = 2;            // batches in flight per worker
  uint64_t seed = 0;
  bool skip_corrupt = false;   // skip (and count) undecodable samples instead of raising
  int64_t shuffle_buffer = 1000;  // WebDataset: samples in the shuffle buffer
  int64_t limit = 0;           // > 0: at most this many samples per epoch (after shuffling)
  bool report_skipped = true;  // print the skip count to stderr at the end of each epoch
  // Data-parallel training: this process's share of each epoch. Every rank draws the same
  // shuffle (same seed) and takes every world_size-th sample of it from position `rank`, so the
  // shares are disjoint and equal in size: a map-style dataset is padded with the shuffle's first
  // samples to a multiple of world_size (as PyTorch's DistributedSampler), a WebDataset stream
  // cut to its first world_size · floor(n / world_size) samples. num_samples() is the share.
  // (dist::rank() and dist::world_size() give the values; data/ does not depend on dist/.)
  int rank = 0;
  int world_size = 1;
  // WebDataset only: split by shard instead -- each rank reads only every world_size-th shard of
  // the epoch's agreed shard order (I/O no longer grows with the world size), its share cut to
  // what every rank is sure to have: the sum of the floor(shards / world_size) smallest shards.
  // Not the one-process epoch's samples then (those at the cut differ by epoch).
  bool split_shards = false;
  // Where batches are delivered. A GPU: workers collate into pinned host memory and each batch's
  // copy runs on a side stream while the GPU computes on the one before (tensor/transfer.h).
  Device device{};
};

struct Batch {
  Tensor images;                   // f32 [N, C, H, W], contiguous, on LoaderOptions::device
  Tensor labels;                   // i64 [N] (-1 where a sample has none), on the same device
  std::vector<int64_t> label_values;  // the same labels on the host: read without a GPU round trip
  std::vector<std::string> texts;  // per sample (empty strings when absent)
  std::vector<std::string> jsons;
  std::vector<std::string> names;  // file path or "shard: key", for messages
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

class DataLoader {
 public:
  // `transform` may be empty (no transform). Images still u8 [H, W, C] after the transform are
  // converted with to_tensor; all images of a batch must then have the same shape.
  DataLoader(std::shared_ptr<const Dataset> dataset, Transform transform, LoaderOptions options);
  DataLoader(std::shared_ptr<const WebDataset> dataset, Transform transform, LoaderOptions options);

  // Samples per epoch (a WebDataset's count() reads the tar headers once) and batches.
  int64_t num_samples() const;
  int64_t num_batches() const;
  const LoaderOptions& options() const { return options_; }

  struct State;
  class Epoch {
   public:
    explicit Epoch(std::unique_ptr<State> state);
    Epoch(Epoch&&) noexcept;
    Epoch& operator=(Epoch&&) noexcept;
    ~Epoch();  // stops and joins the workers, also when the epoch is abandoned early

    bool next(Batch& batch);  // false after the last batch
    int64_t skipped() const;  // corrupt samples skipped so far (with skip_corrupt)

    struct Iterator {
      Epoch* epoch;
      Batch batch;
      bool done;
      Batch& operator*() { return batch; }
      Iterator& operator++() {
        done = !epoch->next(batch);
        return *this;
      }
      bool operator!=(const Iterator& other) const { return done != other.done; }
    };
    Iterator begin();
    Iterator end() { return {this, {}, true}; }

   private:
    std::unique_ptr<State> state_;
  };
  Epoch epoch(int64_t epoch_index = 0) const;

 private:
  std::shared_ptr<const Dataset> dataset_;
  std::shared_ptr<const WebDataset> web_;
  Transform transform_;
  LoaderOptions options_;
};

}  // namespace bcos::data
