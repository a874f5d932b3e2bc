// Multi-head attention with PyTorch's parameter layout: one packed input projection
// (in_proj_weight [3E, E], in_proj_bias [3E]) for queries, keys and values, and out_proj.
// Inputs are batch-first: [N, L, E].
#pragma once

#include "nn/linear.h"
#include "nn/module.h"

namespace bcos::nn {

class MultiheadAttention : public Module {
 public:
  MultiheadAttention(int64_t embed_dim, int64_t num_heads, double dropout = 0.0, bool bias = true);
  // query: [N, Lq, E], key / value: [N, Lk, E]. attn_mask: [Lq, Lk] or [N * heads, Lq, Lk];
  // float masks are added to the attention logits, bool masks block where true.
  Tensor forward(const Tensor& query, const Tensor& key, const Tensor& value, const Tensor& attn_mask = Tensor());
  Tensor forward(const Tensor& x) override { return forward(x, x, x); }  // self-attention
  std::string describe() const override;

  Tensor in_proj_weight, in_proj_bias;
  std::shared_ptr<Module> out_proj;  // Linear(E, E)
  // B-cos ViTs: in explanation mode the attention pattern softmax(q kᵀ) is a constant, so the
  // layer is linear in its input (through v).
  bool detach_qk_when_explaining = false;
  // scaled_dot_product_attention's fused kernel (no Lq x Lk matrix kept for the backward); false:
  // the composed matmul-softmax-matmul. Dropout in training always composes.
  bool fused_attention = true;
  int64_t embed_dim, num_heads;
  double dropout;
};

}  // namespace bcos::nn
