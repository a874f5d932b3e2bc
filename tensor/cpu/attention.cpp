// Fused attention on the CPU: softmax(q kᵀ · scale + bias) v for blocks of 128 (256) query rows at a
// time, so no Lq x Lk matrix outlives its block (the composed form keeps one per head for the
// backward: 197 x 197 x 12 heads x 4 bytes = 1.9 MB per ViT-B image and layer). The backward
// recomputes each block's probabilities from the saved row log-sum-exp (FlashAttention's
// idea; here a block's whole key range fits, so its softmax is exact in one pass):
//   P = exp(S − lse),  dV += Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − rowsum(P ∘ dP)),
//   dQ = dS K · scale,  dK += dSᵀ Q · scale
// The products are tensor/cpu/gemm.h's, single-threaded inside the parallel loops. rowsum(P ∘ dP)
// (FlashAttention takes the equal rowsum(dO ∘ O)) is softmax's own backward of the dP computed, so
// each row of dS sums to zero also when autocast rounds the products' operands (there dO ∘ O
// differs from it by bf16's rounding, which dP − D, often a small difference, would amplify).
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "tensor/cpu/gemm.h"
#include "tensor/cpu/kernels.h"
#include "tensor/cpu/vec_math.h"
#include "tensor/parallel.h"

namespace bcos::cpu {

namespace {

// Query rows per block, by the products' speed (ViT-B/16's 8 x 12 x 197 x 64, forward + backward,
// 2 threads, GFLOP/s at 64 / 128 / 256 rows): float32 104 / 123 / 101, bf16 operands 118 / 151 /
// 171 (the bf16 GEMM packs per product: fewer, larger ones win).
int64_t block_rows(const AttentionParams& p) { return p.bf16_operands ? 256 : 128; }

template <class T>
inline T exp_of(T v) {
  if constexpr (std::is_same_v<T, float>) return vec::exp(v);
  else return std::exp(v);
}

// Element (n, h) of a 4-D tensor's first two dims, as a typed pointer (rows along dim 2; T const
// for the inputs).
template <class T>
struct Heads {
  T* base;
  int64_t s0, s1, rows;  // strides of dims 0, 1 and 2
  Heads(const Tensor& t) : base(static_cast<T*>(t.raw_data())), s0(t.stride(0)), s1(t.stride(1)), rows(t.stride(2)) {}
  T* at(int64_t n, int64_t h) const { return base + n * s0 + h * s1; }
};

// The logits of query rows [i0, i0 + rows) against every key, written into s [rows, lk]:
// q kᵀ · scale + bias, −inf where causal hides a key.
template <class T>
void block_logits(const T* q, int64_t q_rows, const T* k, int64_t k_rows, const T* bias, const int64_t* bs,
                  int64_t i0, int64_t rows, int64_t lk, int64_t d, const AttentionParams& p, T* s) {
  gemm(rows, lk, d, q + i0 * q_rows, q_rows, 1, k, 1, k_rows, s, lk, 1, false);
  const T scale = T(p.scale), minus_inf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * lk;
    const int64_t i = i0 + r;
    if (bias) {
      const T* b = bias + i * bs[0];
      for (int64_t j = 0; j < lk; ++j) row[j] = row[j] * scale + b[j * bs[1]];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < lk; ++j) row[j] *= scale;
    }
    if (p.causal)
      for (int64_t j = i + 1; j < lk; ++j) row[j] = minus_inf;
  }
}

template <class T>
void forward_typed(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, const AttentionParams& p,
                   const Tensor& out, const Tensor& lse) {
  const int64_t n = q.size(0), heads = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2), dv = v.size(3);
  const Heads<const T> Q(q), K(k), V(v);
  const Heads<T> O(out);
  const T* pb = bias.defined() ? static_cast<const T*>(bias.raw_data()) : nullptr;
  const int64_t bias_rows[2] = {bias.defined() ? bias.stride(2) : 0, bias.defined() ? bias.stride(3) : 0};
  T* pl = lse.data<T>();
  const int64_t kBlock = block_rows(p), blocks = (lq + kBlock - 1) / kBlock, items = n * heads * blocks;
  parallel_for(items, kBlock * lk * (d + dv) * 2, [&](int64_t b0, int64_t b1) {
    std::vector<T> s(size_t(kBlock * lk));
    for (int64_t item = b0; item < b1; ++item) {
      const int64_t bh = item / blocks, i0 = (item % blocks) * kBlock, rows = std::min(kBlock, lq - i0);
      const int64_t ni = bh / heads, hi = bh % heads;
      const T* bias_nh = pb ? pb + ni * bias.stride(0) + hi * bias.stride(1) : nullptr;
      block_logits(Q.at(ni, hi), Q.rows, K.at(ni, hi), K.rows, bias_nh, bias_rows, i0, rows, lk, d, p, s.data());
      for (int64_t r = 0; r < rows; ++r) {  // each row's softmax, and its log-sum-exp
        T* row = s.data() + r * lk;
        // Vectorised as softmax_row's loops (scalar, this was 4 % of a B-cos ViT-B/16 training step).
        T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < lk; ++j) m = row[j] > m ? row[j] : m;
        if (std::isinf(m) && m < 0) {  // every key hidden: NaN, as softmax gives
          for (int64_t j = 0; j < lk; ++j) row[j] = std::numeric_limits<T>::quiet_NaN();
          pl[bh * lq + i0 + r] = std::numeric_limits<T>::quiet_NaN();
          continue;
        }
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < lk; ++j) {
          row[j] = exp_of<T>(row[j] - m);
          sum += double(row[j]);
        }
        const T inv = T(1.0 / sum);
#pragma omp simd
        for (int64_t j = 0; j < lk; ++j) row[j] *= inv;
        pl[bh * lq + i0 + r] = T(double(m) + std::log(sum));
      }
      gemm(rows, dv, lk, s.data(), lk, 1, V.at(ni, hi), V.rows, 1, O.at(ni, hi) + i0 * O.rows, O.rows, 1, false);
    }
  });
}

template <class T>
void backward_typed(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                    const Tensor& lse, const AttentionParams& p, const Tensor& grad_q,
                    const Tensor& grad_k, const Tensor& grad_v) {
  const int64_t n = q.size(0), heads = q.size(1), lq = q.size(2), d = q.size(3), lk = k.size(2), dv = v.size(3);
  const Heads<const T> Q(q), K(k), V(v), G(grad_out);
  const Heads<T> GQ(grad_q), GK(grad_k), GV(grad_v);
  const T* pb = bias.defined() ? static_cast<const T*>(bias.raw_data()) : nullptr;
  const int64_t bias_rows[2] = {bias.defined() ? bias.stride(2) : 0, bias.defined() ? bias.stride(3) : 0};
  const T* pl = static_cast<const T*>(lse.raw_data());
  const T scale = T(p.scale);
  // Parallel over (n, h): dK and dV of one head sum over all its query blocks.
  const int64_t kBlock = block_rows(p);
  parallel_for(n * heads, lq * lk * (2 * d + 2 * dv) * 2, [&](int64_t b0, int64_t b1) {
    std::vector<T> prob(size_t(kBlock * lk)), dprob(size_t(kBlock * lk));
    for (int64_t bh = b0; bh < b1; ++bh) {
      const int64_t ni = bh / heads, hi = bh % heads;
      const T *qh = Q.at(ni, hi), *kh = K.at(ni, hi), *vh = V.at(ni, hi);
      const T* bias_nh = pb ? pb + ni * bias.stride(0) + hi * bias.stride(1) : nullptr;
      T *dq = GQ.at(ni, hi), *dk = GK.at(ni, hi), *dvh = GV.at(ni, hi);
      for (int64_t i0 = 0; i0 < lq; i0 += kBlock) {
        const int64_t rows = std::min(kBlock, lq - i0);
        const T* dout = G.at(ni, hi) + i0 * G.rows;
        block_logits(qh, Q.rows, kh, K.rows, bias_nh, bias_rows, i0, rows, lk, d, p, prob.data());
        for (int64_t r = 0; r < rows; ++r) {
          const T l = pl[bh * lq + i0 + r];
          T* row = prob.data() + r * lk;
          for (int64_t j = 0; j < lk; ++j) row[j] = exp_of<T>(row[j] - l);  // −inf: 0; NaN rows stay NaN
        }
        // dV += Pᵀ dO   [lk, dv] = [lk, rows] · [rows, dv]
        gemm(lk, dv, rows, prob.data(), 1, lk, dout, G.rows, 1, dvh, GV.rows, 1, i0 > 0);
        // dP = dO Vᵀ   [rows, lk]
        gemm(rows, lk, dv, dout, G.rows, 1, vh, 1, V.rows, dprob.data(), lk, 1, false);
        for (int64_t r = 0; r < rows; ++r) {  // dS · scale, in place of dP
          T *ds = dprob.data() + r * lk;
          const T* pr = prob.data() + r * lk;
          double row_dot = 0;
#pragma omp simd reduction(+ : row_dot)
          for (int64_t j = 0; j < lk; ++j) row_dot += double(pr[j]) * double(ds[j]);
          const T dot = T(row_dot);
#pragma omp simd
          for (int64_t j = 0; j < lk; ++j) ds[j] = pr[j] * (ds[j] - dot) * scale;
        }
        // dQ = dS K   [rows, d];  dK += dSᵀ Q   [lk, d]
        gemm(rows, d, lk, dprob.data(), lk, 1, kh, K.rows, 1, dq + i0 * GQ.rows, GQ.rows, 1, false);
        gemm(lk, d, rows, dprob.data(), 1, lk, qh + i0 * Q.rows, Q.rows, 1, dk, GK.rows, 1, i0 > 0);
      }
      if (lq == 0) {  // no query: nothing flows back to the keys and values
        for (int64_t j = 0; j < lk; ++j) {
          std::fill(dk + j * GK.rows, dk + j * GK.rows + d, T(0));
          std::fill(dvh + j * GV.rows, dvh + j * GV.rows + dv, T(0));
        }
      }
    }
  });
}

// Under bf16 autocast the products run as gemm()'s under Bf16Operands::unrounded: the bf16 GEMM
// rounds both operands while it packs them, and a product too small for it multiplies rounded
// copies (tensor/cpu/gemm.h); the softmax stays float32.
Bf16Operands rounding_of(const AttentionParams& p, const Tensor& q) {
  return p.bf16_operands && q.dtype() == DType::f32 ? Bf16Operands::unrounded : bf16_operands_mode();
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, const AttentionParams& p,
                       const Tensor& out, const Tensor& lse) {
  const Bf16OperandsScope bf16(rounding_of(p, q));
  dispatch_float(q.dtype(), "scaled_dot_product_attention",
                 [&]<class T>() { forward_typed<T>(q, k, v, bias, p, out, lse); });
}

void attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                        const Tensor& /*out: the CUDA kernels' D = rowsum(dO ∘ O)*/, const Tensor& lse,
                        const AttentionParams& p, const Tensor& grad_q, const Tensor& grad_k, const Tensor& grad_v) {
  const Bf16OperandsScope bf16(rounding_of(p, q));
  dispatch_float(q.dtype(), "scaled_dot_product_attention backward", [&]<class T>() {
    backward_typed<T>(grad_out, q, k, v, bias, lse, p, grad_q, grad_k, grad_v);
  });
}

}  // namespace bcos::cpu
