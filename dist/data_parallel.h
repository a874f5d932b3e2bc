// DataParallel: one model replica per rank, gradients averaged over the ranks during backward
// (PyTorch's DistributedDataParallel). At construction rank 0's parameters and buffers go to
// every rank. The parameters are grouped into buckets of about bucket_mb (in reverse order of
// module.parameters(), roughly the order backward produces them); a hook on each parameter
// copies its gradient into its bucket, and the moment a bucket is full its all-reduce starts,
// while the backward goes on with the layers below. When backward ends, every bucket is
// awaited and each parameter's .grad becomes its averaged slice of the bucket.
//
//   dist::init();
//   dist::DataParallel ddp(model);
//   Tensor loss = loss_fn(ddp(x_of_this_rank), y);  // ddp(x): rank 0's buffers, then model(x)
//   loss.backward();                                  // gradients averaged over the ranks
//   optimizer.step();                                 // identical on every rank
//
// Batch-norm statistics are per rank, as in PyTorch; use_sync_batch_norm() makes them global.
#pragma once

#include <memory>
#include <vector>

#include "dist/dist.h"
#include "nn/module.h"

namespace bcos::dist {

struct DataParallelOptions {
  double bucket_mb = 25;          // PyTorch's bucket_cap_mb
  double first_bucket_mb = 1;     // small, so the first all-reduce starts early in the backward
  bool broadcast_buffers = true;  // rank 0's buffers (running statistics) to all at each forward
  // Parameters may get no gradient in a step (on some ranks or all): costs one small extra
  // all-reduce per step. Off: such a step raises an Error naming the parameters.
  bool find_unused_parameters = false;
};

struct DataParallelStats {
  int64_t steps = 0;           // backwards that averaged gradients
  int64_t buckets = 0;         // buckets per step
  std::vector<double> bucket_mb;  // their sizes, in the order their all-reduces start
  double bytes_per_step = 0;   // gradient bytes all-reduced per step
  double wait_seconds = 0;     // time spent waiting for all-reduces after the backward ended
};

class DataParallel {
 public:
  explicit DataParallel(nn::Module& module, DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  Tensor operator()(const Tensor& x);  // broadcast_buffers, then module(x)
  nn::Module& module() { return module_; }
  const DataParallelStats& stats() const;

  // Gradient accumulation: while off, backward leaves the local gradients alone (PyTorch's
  // no_sync()); the next backward with it on averages the accumulated sum.
  void set_sync(bool on);
  void broadcast_buffers();  // rank 0's buffers to every rank

  struct State;

 private:
  nn::Module& module_;
  DataParallelOptions options_;
  std::shared_ptr<State> state_;
};

// Makes the batch norms in `module` (nn::BatchNorm2d and bcosify's uncentred ones) compute their
// training statistics over the whole global batch, every rank's samples together (PyTorch's
// SyncBatchNorm): two small differentiable all-reduces per layer and step. No-op on one rank.
void use_sync_batch_norm(nn::Module& module, bool on = true);

}  // namespace bcos::dist
