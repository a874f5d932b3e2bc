// Fused attention on the GPU (the contract: tensor/kernels.inc), one warp per row, nothing of
// size Lq x Lk in memory:
//   forward, a warp per query row: the keys stream past once with an online softmax (running
//     max m and sum l; the output accumulator rescaled by exp(m_old − m_new) when the max grows,
//     FlashAttention's recurrence), each lane holding up to 8 of the row's D / Dv elements;
//     saves lse = m + log l.
//   backward, two passes that recompute P = exp(S − lse) instead of storing it:
//     a warp per query row:  D_i = Σ dO_i·O_i,  dQ_i = scale Σ_j P_ij (dO_i·v_j − D_i) k_j
//     a warp per key row:    dV_j = Σ_i P_ij dO_i,  dK_j = scale Σ_i P_ij (dO_i·v_j − D_i) q_i
//   so every output element has one writer: deterministic, no atomics.
// Dot products are warp reductions over CUDA cores (no tensor cores yet): the first, readable
// version; the op layer keeps the cuBLAS composition as the reference and for heads over 256.
#include <cmath>

#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

struct AttentionDims {
  int64_t n, h, lq, lk, d, dv;
  int64_t qs[3], ks[3], vs[3];  // strides of dims 0, 1, 2 (dim 3 has unit stride)
  int64_t os[3], gs[3];         // of out and grad_out
  int64_t gqs[3], gks[3], gvs[3];  // of grad_q, grad_k, grad_v
  int64_t bs[4];                // the bias's four strides (0 where broadcast)
  bool has_bias, causal;
  double scale;
};

// Row r of a [N, H, L, ·] operand with strides s (T const for the inputs).
template <class T>
__device__ __forceinline__ T* row_of(T* base, const int64_t* s, int64_t ni, int64_t hi, int64_t r) {
  return base + ni * s[0] + hi * s[1] + r * s[2];
}

// This lane's share of a row of `len` elements: elements lane, lane + 32, ... (kPer of them).
template <class T, int kPer>
__device__ __forceinline__ void load_row(const T* row, int64_t len, int lane, T (&out)[kPer]) {
#pragma unroll
  for (int c = 0; c < kPer; ++c) {
    const int64_t e = lane + 32 * c;
    out[c] = e < len ? row[e] : T(0);
  }
}

template <class T, int kPer>
__device__ __forceinline__ T dot_row(const T (&mine)[kPer], const T* row, int64_t len, int lane) {
  T part = 0;
#pragma unroll
  for (int c = 0; c < kPer; ++c) {
    const int64_t e = lane + 32 * c;
    if (e < len) part += mine[c] * row[e];
  }
  return warp_sum(part);
}

template <class T>
__device__ __forceinline__ T logit(T dot, const T* bias, const AttentionDims& a, int64_t ni, int64_t hi, int64_t i,
                                   int64_t j) {
  T s = dot * T(a.scale);
  if (a.has_bias) s += bias[ni * a.bs[0] + hi * a.bs[1] + i * a.bs[2] + j * a.bs[3]];
  return s;
}

template <class T, int kPer>
__global__ void forward_kernel(const T* q, const T* k, const T* v, const T* bias, T* out, T* lse, AttentionDims a) {
  const int lane = threadIdx.x;
  const int64_t rows = a.n * a.h * a.lq, step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < rows; row += step) {
    const int64_t i = row % a.lq, bh = row / a.lq, ni = bh / a.h, hi = bh % a.h;
    T qv[kPer], acc[kPer];
    load_row<T, kPer>(row_of(q, a.qs, ni, hi, i), a.d, lane, qv);
#pragma unroll
    for (int c = 0; c < kPer; ++c) acc[c] = 0;
    T m = -INFINITY, l = 0;
    const int64_t end = a.causal ? min(a.lk, i + 1) : a.lk;
    for (int64_t j = 0; j < end; ++j) {
      const T s = logit(dot_row<T, kPer>(qv, row_of(k, a.ks, ni, hi, j), a.d, lane), bias, a, ni, hi, i, j);
      if (s == T(-INFINITY)) continue;  // a hidden key (the same on every lane)
      const T m_new = s > m ? s : m;
      const T correction = exp(m - m_new), p = exp(s - m_new);
      l = l * correction + p;
      const T* vr = row_of(v, a.vs, ni, hi, j);
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const int64_t e = lane + 32 * c;
        acc[c] = acc[c] * correction + (e < a.dv ? p * vr[e] : T(0));
      }
      m = m_new;
    }
    const bool empty = !(l > 0) || !isfinite(m);  // every key hidden (or NaN logits): NaN, as softmax
    T* o = row_of(out, a.os, ni, hi, i);
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int64_t e = lane + 32 * c;
      if (e < a.dv) o[e] = empty ? T(NAN) : acc[c] / l;
    }
    if (lane == 0) lse[row] = empty ? T(NAN) : m + log(l);
  }
}

// A warp per query row: D_i (saved for the key pass) and dQ_i.
template <class T, int kPer>
__global__ void backward_query_kernel(const T* g, const T* q, const T* k, const T* v, const T* bias, const T* out,
                                      const T* lse, T* row_dot, T* gq, AttentionDims a) {
  const int lane = threadIdx.x;
  const int64_t rows = a.n * a.h * a.lq, step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < rows; row += step) {
    const int64_t i = row % a.lq, bh = row / a.lq, ni = bh / a.h, hi = bh % a.h;
    T qv[kPer], gv[kPer], dq[kPer];
    load_row<T, kPer>(row_of(q, a.qs, ni, hi, i), a.d, lane, qv);
    load_row<T, kPer>(row_of(g, a.gs, ni, hi, i), a.dv, lane, gv);
    const T di = dot_row<T, kPer>(gv, row_of(out, a.os, ni, hi, i), a.dv, lane), l = lse[row];
    if (lane == 0) row_dot[row] = di;
#pragma unroll
    for (int c = 0; c < kPer; ++c) dq[c] = 0;
    const int64_t end = a.causal ? min(a.lk, i + 1) : a.lk;
    for (int64_t j = 0; j < end; ++j) {
      const T* kr = row_of(k, a.ks, ni, hi, j);
      const T p = exp(logit(dot_row<T, kPer>(qv, kr, a.d, lane), bias, a, ni, hi, i, j) - l);
      const T ds = p * (dot_row<T, kPer>(gv, row_of(v, a.vs, ni, hi, j), a.dv, lane) - di) * T(a.scale);
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const int64_t e = lane + 32 * c;
        if (e < a.d) dq[c] += ds * kr[e];
      }
    }
    T* o = row_of(gq, a.gqs, ni, hi, i);
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int64_t e = lane + 32 * c;
      if (e < a.d) o[e] = dq[c];
    }
  }
}

// A warp per key row: dK_j and dV_j (after the query pass, which wrote row_dot).
template <class T, int kPer>
__global__ void backward_key_kernel(const T* g, const T* q, const T* k, const T* v, const T* bias, const T* lse,
                                    const T* row_dot, T* gk, T* gv, AttentionDims a) {
  const int lane = threadIdx.x;
  const int64_t rows = a.n * a.h * a.lk, step = int64_t(gridDim.x) * blockDim.y;
  for (int64_t row = int64_t(blockIdx.x) * blockDim.y + threadIdx.y; row < rows; row += step) {
    const int64_t j = row % a.lk, bh = row / a.lk, ni = bh / a.h, hi = bh % a.h;
    T kv[kPer], vv[kPer], dk[kPer], dv[kPer];
    load_row<T, kPer>(row_of(k, a.ks, ni, hi, j), a.d, lane, kv);
    load_row<T, kPer>(row_of(v, a.vs, ni, hi, j), a.dv, lane, vv);
    // A query row with every key hidden has a NaN log-sum-exp, and (as in the composed softmax,
    // and on the CPU) its NaN reaches every key's gradient, also those of keys causality hides
    // from it, which the loop below skips: they start from NaN.
    bool hidden_row = false;
    if (a.causal)
      for (int64_t i = lane; i < min(j, a.lq); i += 32) hidden_row |= isnan(lse[bh * a.lq + i]);
    const T start = __any_sync(0xffffffffu, hidden_row) ? T(NAN) : T(0);
#pragma unroll
    for (int c = 0; c < kPer; ++c) dk[c] = start, dv[c] = start;
    for (int64_t i = a.causal ? j : 0; i < a.lq; ++i) {
      const int64_t qrow = bh * a.lq + i;
      const T* qr = row_of(q, a.qs, ni, hi, i);
      const T* gr = row_of(g, a.gs, ni, hi, i);
      const T p = exp(logit(dot_row<T, kPer>(kv, qr, a.d, lane), bias, a, ni, hi, i, j) - lse[qrow]);
      const T ds = p * (dot_row<T, kPer>(vv, gr, a.dv, lane) - row_dot[qrow]) * T(a.scale);
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const int64_t e = lane + 32 * c;
        if (e < a.dv) dv[c] += p * gr[e];
        if (e < a.d) dk[c] += ds * qr[e];
      }
    }
    T *gk_row = row_of(gk, a.gks, ni, hi, j), *gv_row = row_of(gv, a.gvs, ni, hi, j);
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int64_t e = lane + 32 * c;
      if (e < a.d) gk_row[e] = dk[c];
      if (e < a.dv) gv_row[e] = dv[c];
    }
  }
}

// The outputs' strides stay 0 where a call has no such tensor (forward: the gradients).
AttentionDims dims_of(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, const AttentionParams& p,
                      const Tensor& out, const Tensor& grad_out = Tensor(), const Tensor& grad_q = Tensor(),
                      const Tensor& grad_k = Tensor(), const Tensor& grad_v = Tensor()) {
  AttentionDims a{};
  a.n = q.size(0), a.h = q.size(1), a.lq = q.size(2), a.d = q.size(3), a.lk = k.size(2), a.dv = v.size(3);
  for (int i = 0; i < 3; ++i) a.qs[i] = q.stride(i), a.ks[i] = k.stride(i), a.vs[i] = v.stride(i);
  auto strides = [](const Tensor& t, int64_t (&s)[3]) {
    for (int i = 0; i < 3; ++i) s[i] = t.defined() ? t.stride(i) : 0;
  };
  strides(out, a.os), strides(grad_out, a.gs), strides(grad_q, a.gqs), strides(grad_k, a.gks), strides(grad_v, a.gvs);
  a.has_bias = bias.defined();
  for (int i = 0; i < 4; ++i) a.bs[i] = a.has_bias ? bias.stride(i) : 0;
  a.causal = p.causal;
  a.scale = p.scale;
  return a;
}

// Calls fn.template operator()<T, kPer>() for the smallest lane share that holds D and Dv.
template <class F>
void with_row_share(DType dt, int64_t width, const char* op, F&& fn) {
  BCOS_CHECK(width <= 256, op, ": head size ", width, " is over the fused kernel's 256 (the op composes instead)");
  dispatch_float(dt, op, [&]<class T>() {
    if (width <= 32) fn.template operator()<T, 1>();
    else if (width <= 64) fn.template operator()<T, 2>();
    else if (width <= 128) fn.template operator()<T, 4>();
    else fn.template operator()<T, 8>();
  });
}

unsigned warp_blocks(int64_t rows) { return blocks_for(rows, kWarpsPerBlock); }

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, const AttentionParams& p,
                       const Tensor& out, const Tensor& lse) {
  const char* op = "cuda scaled_dot_product_attention";
  const AttentionDims a = dims_of(q, k, v, bias, p, out);
  if (a.n * a.h * a.lq == 0) return;
  const int device = q.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  with_row_share(q.dtype(), std::max(a.d, a.dv), op, [&]<class T, int kPer>() {
    forward_kernel<T, kPer><<<warp_blocks(a.n * a.h * a.lq), dim3(32, kWarpsPerBlock), 0, stream>>>(
        static_cast<const T*>(q.raw_data()), static_cast<const T*>(k.raw_data()), static_cast<const T*>(v.raw_data()),
        a.has_bias ? static_cast<const T*>(bias.raw_data()) : nullptr, static_cast<T*>(out.raw_data()),
        static_cast<T*>(lse.raw_data()), a);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias,
                        const Tensor& out, const Tensor& lse, const AttentionParams& p, const Tensor& grad_q,
                        const Tensor& grad_k, const Tensor& grad_v) {
  const char* op = "cuda scaled_dot_product_attention backward";
  const AttentionDims a = dims_of(q, k, v, bias, p, out, grad_out, grad_q, grad_k, grad_v);
  const int device = q.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  const Tensor row_dot = empty({a.n, a.h, a.lq}, {q.dtype(), q.device()});
  with_row_share(q.dtype(), std::max(a.d, a.dv), op, [&]<class T, int kPer>() {
    const T* b = a.has_bias ? static_cast<const T*>(bias.raw_data()) : nullptr;
    const T *pg = static_cast<const T*>(grad_out.raw_data()), *pq = static_cast<const T*>(q.raw_data());
    const T *pk = static_cast<const T*>(k.raw_data()), *pv = static_cast<const T*>(v.raw_data());
    const T* pl = static_cast<const T*>(lse.raw_data());
    T* pd = static_cast<T*>(row_dot.raw_data());
    if (a.n * a.h * a.lq > 0) {
      backward_query_kernel<T, kPer><<<warp_blocks(a.n * a.h * a.lq), dim3(32, kWarpsPerBlock), 0, stream>>>(
          pg, pq, pk, pv, b, static_cast<const T*>(out.raw_data()), pl, pd, static_cast<T*>(grad_q.raw_data()), a);
      BCOS_CUDA_CHECK_LAUNCH();
    }
    if (a.n * a.h * a.lk > 0) {
      backward_key_kernel<T, kPer><<<warp_blocks(a.n * a.h * a.lk), dim3(32, kWarpsPerBlock), 0, stream>>>(
          pg, pq, pk, pv, b, pl, pd, static_cast<T*>(grad_k.raw_data()), static_cast<T*>(grad_v.raw_data()), a);
      BCOS_CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace bcos::cuda
