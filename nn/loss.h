// Losses as modules, as torch.nn's: they hold their options, and loss(input, target) calls the
// functional form in autograd/ops.h.
#pragma once

#include "autograd/ops.h"
#include "nn/module.h"

namespace bcos::nn {

// logits [N, C] (or [N, C, ...]) and class indices [N] (int64; ignore_index skipped).
class CrossEntropyLoss : public Module {
 public:
  explicit CrossEntropyLoss(double label_smoothing = 0.0, int64_t ignore_index = -100,
                            Reduction reduction = Reduction::mean)
      : Module("CrossEntropyLoss"), label_smoothing(label_smoothing), ignore_index(ignore_index), reduction(reduction) {}
  Tensor operator()(const Tensor& logits, const Tensor& target) const {
    return cross_entropy(logits, target, ignore_index, label_smoothing, reduction);
  }
  std::string describe() const override { return str("label_smoothing=", label_smoothing); }
  double label_smoothing;
  int64_t ignore_index;
  Reduction reduction;
};

// log-probabilities [N, C] and class indices [N].
class NLLLoss : public Module {
 public:
  explicit NLLLoss(int64_t ignore_index = -100, Reduction reduction = Reduction::mean)
      : Module("NLLLoss"), ignore_index(ignore_index), reduction(reduction) {}
  Tensor operator()(const Tensor& log_probs, const Tensor& target) const {
    return nll_loss(log_probs, target, ignore_index, reduction);
  }
  int64_t ignore_index;
  Reduction reduction;
};

// logits and targets in [0, 1] of the same shape; optional per-element weight.
class BCEWithLogitsLoss : public Module {
 public:
  explicit BCEWithLogitsLoss(Tensor weight = Tensor(), Reduction reduction = Reduction::mean)
      : Module("BCEWithLogitsLoss"), weight(std::move(weight)), reduction(reduction) {}
  Tensor operator()(const Tensor& logits, const Tensor& target) const {
    return binary_cross_entropy_with_logits(logits, target, weight, reduction);
  }
  Tensor weight;
  Reduction reduction;
};

}  // namespace bcos::nn
