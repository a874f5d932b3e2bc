// Normalisation layers: BatchNorm2d (running statistics as buffers, updated in training, used in
// eval), LayerNorm, GroupNorm. Names and defaults as PyTorch's.
#pragma once

#include <functional>
#include <optional>

#include "autograd/ops.h"
#include "nn/module.h"

namespace bcos::nn {

// A differentiable sum of a tensor over data-parallel replicas (dist::all_reduce_sum_autograd).
using ReplicaSum = std::function<Tensor(const Tensor&)>;

// x: [N, C, H, W]. Buffers running_mean, running_var, num_batches_tracked (i64 scalar).
// momentum = std::nullopt (PyTorch's momentum=None): the running statistics are the plain
// average of every batch seen, each training step moving them by 1 / num_batches_tracked.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                       bool affine = true, bool track_running_stats = true);
  Tensor forward(const Tensor& x) override;
  // relu(forward(x)) in one fused pass each way.
  Tensor forward_relu(const Tensor& x);
  std::string describe() const override;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
  int64_t num_features;
  double eps;
  std::optional<double> momentum;
  // Set (by dist::use_sync_batch_norm) to a differentiable sum over the data-parallel replicas:
  // training statistics are then those of every replica's batch together.
  ReplicaSum replica_sum;

 private:
  Tensor run(const Tensor& x, bool relu);
};

// A training step of a batch norm with this momentum: the running statistics' update factor, and
// the count to hand the norm op. With a momentum: the momentum, and num_batches_tracked itself
// (the op increments it in the kernel that steps the statistics). With a cumulative average
// (momentum = std::nullopt): 1 / num_batches_tracked after this step's increment, made here
// first, and no count for the op.
struct RunningStatsStep {
  double factor = 0;
  Tensor count;
};
RunningStatsStep running_stats_step(const std::optional<double>& momentum, const Tensor& num_batches_tracked);

// "0.1", or "None" for a cumulative average: as PyTorch prints the momentum.
std::string momentum_repr(const std::optional<double>& momentum);

// relu(bn(x)) for the conv → BN → ReLU of ResNets: fused when bn is a plain BatchNorm2d or
// BatchNormUncentered2d (bcosify's) and relu a plain ReLU, else the two modules one after the other.
Tensor batch_norm_relu(Module& bn, Module& relu, const Tensor& x);

// Normalises over the trailing dims `normalized_shape`.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(Shape normalized_shape, double eps = 1e-5, bool elementwise_affine = true);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Tensor weight, bias;
  Shape normalized_shape;
  double eps;
};

class GroupNorm : public Module {
 public:
  GroupNorm(int64_t num_groups, int64_t num_channels, double eps = 1e-5, bool affine = true);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Tensor weight, bias;
  int64_t num_groups, num_channels;
  double eps;
};

}  // namespace bcos::nn
