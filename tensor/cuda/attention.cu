// Fused attention on the GPU (the contract: tensor/kernels.inc), nothing of size Lq x Lk in
// memory. Two kernel sets with one contract:
//
// Tensor cores (float32 under allow_tf32(), the default, or with bf16 autocast operands; both
// head sizes up to 64), tiles as FlashAttention-2 arranges them: a block of 4 warps owns 64 rows
// of one [N, H] slice (queries in the forward and the dQ pass, keys in the dK / dV pass); the
// other side streams past in tiles of 32 rows through shared memory, rounded to TF32 (bf16),
// zero past the ends;
// each warp multiplies its 16 rows with wmma's m16n16k8 TF32 (m16n16k16 bf16) products summed in
// float32, and its lanes turn the 16 x 32 products into probabilities in shared memory (two
// lanes a row).
//   forward, two sweeps over the keys: the first finds each row's log-sum-exp (online max and
//     sum), the second adds exp(S − lse) V straight into the accumulator fragments, already
//     normalised, so nothing is rescaled (one more QKᵀ than FlashAttention's single sweep, on
//     tensor cores, buys an accumulator that never leaves them);
//   backward, D_i = dO_i·O_i (bf16: rowsum(P ∘ dP), as the CPU, one more sweep), then a pass
//     per query tile for dQ and one per key tile for dK, dV.
//
// CUDA cores (float64, float32 without TF32, heads up to 256), one warp per row:
//   forward, a warp per query row: the keys stream past once with an online softmax (running
//     max m and sum l; the output accumulator rescaled by exp(m_old − m_new) when the max grows,
//     FlashAttention's recurrence), each lane holding up to 8 of the row's D / Dv elements;
//     saves lse = m + log l.
//   backward, two passes that recompute P = exp(S − lse) instead of storing it:
//     a warp per query row:  D_i = Σ dO_i·O_i,  dQ_i = scale Σ_j P_ij (dO_i·v_j − D_i) k_j
//     a warp per key row:    dV_j = Σ_i P_ij dO_i,  dK_j = scale Σ_i P_ij (dO_i·v_j − D_i) q_i
//
// Both: every output element has one writer (deterministic, no atomics). The op layer keeps the
// cuBLAS composition as the reference and for heads over 256.
#include <cmath>

#if defined(__CUDACC__)
#include <mma.h>  // the emulator's stand-in comes with its device header
#endif

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

// ---- tensor cores ------------------------------------------------------------------------------
namespace mma {

using namespace nvcuda;

// The two operand types, each with its wmma shape; the products sum in float32 either way.
struct Tf32 {  // float32 under allow_tf32(): m16n16k8
  using Elem = float;  // what the shared-memory tiles hold
  using Prec = wmma::precision::tf32;
  static constexpr int kK = 8;
  __device__ static float round(float v) { return wmma::__float_to_tf32(v); }
};
struct Bf16 {  // autocast's bf16 operands: m16n16k16
  using Elem = __nv_bfloat16;
  using Prec = __nv_bfloat16;
  static constexpr int kK = 16;
  __device__ static __nv_bfloat16 round(float v) { return __float2bfloat16(v); }
};
template <class P>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, P::kK, typename P::Prec, wmma::row_major>;
template <class P>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, P::kK, typename P::Prec, wmma::row_major>;
template <class P>  // rows of a tile read as columns (the other side's rows, transposed)
using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, P::kK, typename P::Prec, wmma::col_major>;
template <class P>
using FragC = wmma::fragment<wmma::accumulator, 16, 16, P::kK, float>;

constexpr int kWarps = 4;
constexpr int kOwn = 16 * kWarps;  // rows a block owns: 16 per warp
constexpr int kStep = 32;          // rows of the other side per shared-memory tile
constexpr int kHead = 64;          // D and Dv, zero-padded to it
constexpr int kLd = kHead + 8;     // row pitch of head-wide tiles (elements): 16-byte rows, fewer bank conflicts
constexpr int kSLd = kStep + 4;    // row pitch of a warp's 16 x 32 float products
constexpr int kScratch = 16 * kSLd;
// A warp's 16 x 32 weights (probabilities or dS as the next product's operand): for TF32 in
// place of the float products; for bf16 a copy beside them (pitch 40: 16-byte rows).
template <class P>
constexpr int kWLd = std::is_same_v<P, Tf32> ? kSLd : kStep + 8;

// A block's `work` bytes hold its own 64 rows while they become fragments, then, while the
// other side streams past, two float products per warp (and for bf16 two weight copies), then
// the float results on their way out.
template <class P>
struct Work {
  static constexpr int kProducts = 2 * kWarps * kScratch * 4;
  static constexpr int kWeights = std::is_same_v<P, Tf32> ? 0 : 2 * kWarps * 16 * kWLd<P> * 2;
  static constexpr int kOut = kOwn * kLd * 4;
  static constexpr int kBytes = kProducts + kWeights > kOut ? kProducts + kWeights : kOut;
  static_assert(kOwn * kLd * int(sizeof(typename P::Elem)) <= kBytes);
  static_assert(kBytes + 2 * kStep * kLd * int(sizeof(typename P::Elem)) + 2 * kStep * 4 <= 48 * 1024,
                "static shared memory is 48 KiB");
};

// Slot 0 or 1 of a warp's scratch: float products, and the weights the next product reads.
template <class P>
struct Scratch {
  float* products;
  typename P::Elem* weights;
};
template <class P>
__device__ Scratch<P> scratch_of(unsigned char* work, int slot, int warp) {
  float* products = reinterpret_cast<float*>(work) + (slot * kWarps + warp) * kScratch;
  if constexpr (std::is_same_v<P, Tf32>) {
    return {products, products};
  } else {
    auto* weights = reinterpret_cast<__nv_bfloat16*>(work + Work<P>::kProducts);
    return {products, weights + (slot * kWarps + warp) * 16 * kWLd<P>};
  }
}

// Rows [r0, r0 + count) of slice (ni, hi) of x (rows of len elements, `rows` of them, strides s)
// into tile [count][kLd], rounded to the operand type, zero past the ends. The block's threads
// share the work. x: float32, or bf16 (In: autocast's bf16 tensors, whose values are the operands).
template <class P, class In>
__device__ void stage(typename P::Elem* tile, int count, const In* x, const int64_t* s, int64_t ni, int64_t hi,
                      int64_t r0, int64_t rows, int64_t len) {
  for (int e = threadIdx.y * 32 + threadIdx.x; e < count * kHead; e += kWarps * 32) {
    const int r = e / kHead, c = e % kHead;
    const float v = r0 + r < rows && c < len ? convert_value<float>(row_of(x, s, ni, hi, r0 + r)[c]) : 0.f;
    tile[r * kLd + c] = P::round(v);
  }
}

// A warp's 16 staged rows (pitch kLd) as the left operand of its products.
template <class P>
__device__ void load_rows(FragA<P> (&f)[kHead / P::kK], const typename P::Elem* rows) {
BCOS_UNROLL
  for (int k = 0; k < kHead / P::kK; ++k) wmma::load_matrix_sync(f[k], rows + P::kK * k, kLd);
}

// Which (bh, first row) a block's tile index t names, for slices of `rows` rows in tiles of kOwn.
struct Tile {
  int64_t ni, hi, bh, r0;
};
__device__ Tile tile_of(int64_t t, int64_t rows, int64_t heads) {
  const int64_t per = (rows + kOwn - 1) / kOwn, bh = t / per;
  return {bh / heads, bh % heads, bh, (t % per) * kOwn};
}

// The block's own 64 rows of x (from tile.r0) staged through `work`, this warp's 16 of them
// into f; work is free again on return.
template <class P, class In>
__device__ void own_rows(FragA<P> (&f)[kHead / P::kK], unsigned char* work, const In* x, const int64_t* s,
                         const Tile& tile, int64_t rows, int64_t len) {
  auto* staged = reinterpret_cast<typename P::Elem*>(work);
  stage<P>(staged, kOwn, x, s, tile.ni, tile.hi, tile.r0, rows, len);
  __syncthreads();
  load_rows<P>(f, staged + 16 * threadIdx.y * kLd);
  __syncthreads();
}

// The next kStep rows (from r0) of two operands of the other side, staged for the whole block.
template <class P, class In>
__device__ void stream_rows(typename P::Elem* first, const In* x, const int64_t* xs, int64_t x_len,
                            typename P::Elem* second, const In* y, const int64_t* ys, int64_t y_len,
                            const Tile& tile, int64_t r0, int64_t rows) {
  stage<P>(first, kStep, x, xs, tile.ni, tile.hi, r0, rows, x_len);
  stage<P>(second, kStep, y, ys, tile.ni, tile.hi, r0, rows, y_len);
  __syncthreads();
}

template <class P>
__device__ void zero(FragC<P> (&acc)[kHead / 16]) {
BCOS_UNROLL
  for (int n = 0; n < kHead / 16; ++n) wmma::fill_fragment(acc[n], 0.f);
}

// out [16 x kStep] (pitch kSLd) = mine [16 x kHead] · tileᵀ, tile [kStep x kHead] (pitch kLd).
template <class P>
__device__ void times_rows(const FragA<P> (&mine)[kHead / P::kK], const typename P::Elem* tile, float* out) {
BCOS_UNROLL
  for (int n = 0; n < kStep / 16; ++n) {
    FragC<P> c;
    wmma::fill_fragment(c, 0.f);
BCOS_UNROLL
    for (int k = 0; k < kHead / P::kK; ++k) {
      FragBt<P> b;
      wmma::load_matrix_sync(b, tile + n * 16 * kLd + P::kK * k, kLd);
      wmma::mma_sync(c, mine[k], b, c);
    }
    wmma::store_matrix_sync(out + n * 16, c, kSLd, wmma::mem_row_major);
  }
}

// acc [16 x kHead] += weights [16 x kStep] (pitch kWLd) · tile [kStep x kHead].
template <class P>
__device__ void accumulate(FragC<P> (&acc)[kHead / 16], const typename P::Elem* weights,
                           const typename P::Elem* tile) {
BCOS_UNROLL
  for (int k = 0; k < kStep / P::kK; ++k) {
    FragA<P> a;
    wmma::load_matrix_sync(a, weights + P::kK * k, kWLd<P>);
BCOS_UNROLL
    for (int n = 0; n < kHead / 16; ++n) {
      FragB<P> b;
      wmma::load_matrix_sync(b, tile + P::kK * k * kLd + 16 * n, kLd);
      wmma::mma_sync(acc[n], a, b, acc[n]);
    }
  }
}

// The warp's 16 rows of acc into rows [r0, r0 + 16) of x (strides s, `rows` rows of len), through
// its part of `work` (float, pitch kLd). nan_rows: rows whose lane pair (2 r, 2 r + 1) holds a NaN
// `lse` are written as NaN (every key hidden).
template <class P, class In>
__device__ void write_rows(const FragC<P> (&acc)[kHead / 16], float* part, In* x, const int64_t* s, int64_t ni,
                           int64_t hi, int64_t r0, int64_t rows, int64_t len, bool nan_rows = false, float lse = 0) {
BCOS_UNROLL
  for (int n = 0; n < kHead / 16; ++n) wmma::store_matrix_sync(part + 16 * n, acc[n], kLd, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x;
  for (int e = lane; e < 16 * kHead; e += 32) {  // one row per two steps: r is the same on every lane
    const int r = e / kHead, c = e % kHead;
    const float row_lse = __shfl_sync(0xffffffffu, lse, 2 * r);
    if (r0 + r < rows && c < len)
      row_of(x, s, ni, hi, r0 + r)[c] = convert_value<In>(nan_rows && isnan(row_lse) ? NAN : part[r * kLd + c]);
  }
  __syncwarp();
}

// P_ij from its product q_i·k_j: a causally hidden key gives 0, or NaN when the row has no
// visible key at all (its lse is NaN), as softmax's NaN row in the composed form; a key a mask
// hides (−inf) gives 0 the same way.
__device__ float probability(float product, float lse, const float* bias, const AttentionDims& a, const Tile& t,
                             int64_t i, int64_t j) {
  if (a.causal && j > i) return isnan(lse) ? NAN : 0.f;
  return exp(logit(product, bias, a, t.ni, t.hi, i, j) - lse);
}

// In: the tensors' element type (float; __nv_bfloat16 for autocast's bf16 tensors, with P = Bf16);
// the bias, lse and row_dot are float32 either way.
template <class P, class In>
__global__ void __launch_bounds__(kWarps * 32) forward_kernel(const In* q, const In* k, const In* v,
                                                              const float* bias, In* out, float* lse_out,
                                                              AttentionDims a) {
  using Elem = typename P::Elem;
  __shared__ __align__(32) unsigned char work[Work<P>::kBytes];
  __shared__ __align__(32) unsigned char tiles[2 * kStep * kLd * sizeof(Elem)];
  Elem *keys = reinterpret_cast<Elem*>(tiles), *values = keys + kStep * kLd;
  const int warp = threadIdx.y, lane = threadIdx.x, r = lane / 2, half = lane % 2;
  const Scratch<P> scratch = scratch_of<P>(work, 0, warp);
  const int64_t tiles_total = a.n * a.h * ((a.lq + kOwn - 1) / kOwn);
  for (int64_t t = blockIdx.x; t < tiles_total; t += gridDim.x) {
    const Tile tile = tile_of(t, a.lq, a.h);
    const int64_t w0 = tile.r0 + 16 * warp, i = w0 + r;  // the warp's first row; this lane's row
    const int64_t end = a.causal ? min(a.lk, tile.r0 + kOwn) : a.lk;
    FragA<P> mine[kHead / P::kK];
    own_rows<P>(mine, work, q, a.qs, tile, a.lq, a.d);  // then work holds the scratch
    // Sweep 1: each lane keeps a running max and sum over its half of its row's keys.
    float m = -INFINITY, l = 0;
    for (int64_t j0 = 0; j0 < end; j0 += kStep) {
      stage<P>(keys, kStep, k, a.ks, tile.ni, tile.hi, j0, a.lk, a.d);
      __syncthreads();
      times_rows<P>(mine, keys, scratch.products);
      __syncwarp();
      for (int c = 16 * half; c < 16 * half + 16; ++c) {
        const int64_t j = j0 + c;
        if (i >= a.lq || j >= end || (a.causal && j > i)) continue;
        const float s = logit(scratch.products[r * kSLd + c], bias, a, tile.ni, tile.hi, i, j);
        if (s == -INFINITY) continue;
        const float m_new = s > m ? s : m;
        l = l * exp(m - m_new) + exp(s - m_new);
        m = m_new;
      }
      __syncthreads();
    }
    {  // the two halves of the row
      const float m2 = __shfl_xor_sync(0xffffffffu, m, 1), l2 = __shfl_xor_sync(0xffffffffu, l, 1);
      const float m_all = m2 > m ? m2 : m;
      const float mine_part = m == -INFINITY ? 0.f : l * exp(m - m_all);
      const float other_part = m2 == -INFINITY ? 0.f : l2 * exp(m2 - m_all);
      l = mine_part + other_part;
      if (isnan(m) || isnan(m2)) l = NAN;
      m = m_all;
    }
    const bool empty = !(l > 0) || !isfinite(m);  // every key hidden (or NaN logits): NaN, as softmax
    const float lse = empty ? NAN : m + log(l);
    if (half == 0 && i < a.lq) lse_out[tile.bh * a.lq + i] = lse;
    // Sweep 2: O = Σ exp(S − lse) V, normalised as it goes.
    FragC<P> acc[kHead / 16];
    zero<P>(acc);
    for (int64_t j0 = 0; j0 < end; j0 += kStep) {
      stream_rows<P>(keys, k, a.ks, a.d, values, v, a.vs, a.dv, tile, j0, a.lk);
      times_rows<P>(mine, keys, scratch.products);
      __syncwarp();
      for (int c = 16 * half; c < 16 * half + 16; ++c) {
        const int64_t j = j0 + c;
        const float p = i < a.lq && j < end ? probability(scratch.products[r * kSLd + c], lse, bias, a, tile, i, j) : 0.f;
        scratch.weights[r * kWLd<P> + c] = P::round(p);
      }
      __syncwarp();
      accumulate<P>(acc, scratch.weights, values);
      __syncthreads();
    }
    write_rows<P>(acc, reinterpret_cast<float*>(work) + 16 * warp * kLd, out, a.os, tile.ni, tile.hi, w0, a.lq, a.dv,
                  true, lse);
    __syncthreads();  // work is staged again by the next tile
  }
}

// D_i (into row_dot, for the key pass) and dQ_i = scale Σ_j P_ij (dP_ij − D_i) k_j. D_i is
// dO_i·O_i for TF32; for bf16 operands Σ_j P_ij dP_ij, the CPU's (tensor/cpu/attention.cpp: the
// two differ by bf16's rounding, which dP − D would amplify), one more sweep over the keys.
template <class P, class In>
__global__ void __launch_bounds__(kWarps * 32) backward_query_kernel(const In* g, const In* q, const In* k,
                                                                     const In* v, const float* bias,
                                                                     const In* out, const float* lse_in,
                                                                     float* row_dot, In* gq, AttentionDims a) {
  using Elem = typename P::Elem;
  __shared__ __align__(32) unsigned char work[Work<P>::kBytes];
  __shared__ __align__(32) unsigned char tiles[2 * kStep * kLd * sizeof(Elem)];
  Elem *keys = reinterpret_cast<Elem*>(tiles), *values = keys + kStep * kLd;
  const int warp = threadIdx.y, lane = threadIdx.x, r = lane / 2, half = lane % 2;
  const Scratch<P> logits = scratch_of<P>(work, 0, warp), dp = scratch_of<P>(work, 1, warp);
  const int64_t tiles_total = a.n * a.h * ((a.lq + kOwn - 1) / kOwn);
  for (int64_t t = blockIdx.x; t < tiles_total; t += gridDim.x) {
    const Tile tile = tile_of(t, a.lq, a.h);
    const int64_t w0 = tile.r0 + 16 * warp, i = w0 + r;
    const int64_t end = a.causal ? min(a.lk, tile.r0 + kOwn) : a.lk;
    const float lse = i < a.lq ? lse_in[tile.bh * a.lq + i] : 0.f;
    FragA<P> mine[kHead / P::kK], grads[kHead / P::kK];
    own_rows<P>(mine, work, q, a.qs, tile, a.lq, a.d);
    own_rows<P>(grads, work, g, a.gs, tile, a.lq, a.dv);
    float di = 0;
    if constexpr (std::is_same_v<P, Tf32>) {
      if (i < a.lq) {
        const In *gr = row_of(g, a.gs, tile.ni, tile.hi, i), *orow = row_of(out, a.os, tile.ni, tile.hi, i);
        for (int64_t c = half; c < a.dv; c += 2) di += convert_value<float>(gr[c]) * convert_value<float>(orow[c]);
      }
    } else {
      for (int64_t j0 = 0; j0 < end; j0 += kStep) {
        stream_rows<P>(keys, k, a.ks, a.d, values, v, a.vs, a.dv, tile, j0, a.lk);
        times_rows<P>(mine, keys, logits.products);
        times_rows<P>(grads, values, dp.products);
        __syncwarp();
        for (int c = 16 * half; c < 16 * half + 16; ++c) {
          const int64_t j = j0 + c;
          if (i < a.lq && j < end)
            di += probability(logits.products[r * kSLd + c], lse, bias, a, tile, i, j) * dp.products[r * kSLd + c];
        }
        __syncthreads();
      }
    }
    di += __shfl_xor_sync(0xffffffffu, di, 1);
    if (half == 0 && i < a.lq) row_dot[tile.bh * a.lq + i] = di;
    FragC<P> acc[kHead / 16];
    zero<P>(acc);
    for (int64_t j0 = 0; j0 < end; j0 += kStep) {
      stream_rows<P>(keys, k, a.ks, a.d, values, v, a.vs, a.dv, tile, j0, a.lk);
      times_rows<P>(mine, keys, logits.products);
      times_rows<P>(grads, values, dp.products);
      __syncwarp();
      for (int c = 16 * half; c < 16 * half + 16; ++c) {
        const int64_t j = j0 + c;
        float ds = 0;
        if (i < a.lq && j < end)
          ds = probability(logits.products[r * kSLd + c], lse, bias, a, tile, i, j) *
               (dp.products[r * kSLd + c] - di) * float(a.scale);
        logits.weights[r * kWLd<P> + c] = P::round(ds);
      }
      __syncwarp();
      accumulate<P>(acc, logits.weights, keys);
      __syncthreads();
    }
    write_rows<P>(acc, reinterpret_cast<float*>(work) + 16 * warp * kLd, gq, a.gqs, tile.ni, tile.hi, w0, a.lq, a.d);
    __syncthreads();
  }
}

// dV_j = Σ_i P_ij dO_i and dK_j = scale Σ_i P_ij (dP_ij − D_i) q_i, a block per 64 keys (after
// the query pass wrote row_dot).
template <class P, class In>
__global__ void __launch_bounds__(kWarps * 32) backward_key_kernel(const In* g, const In* q, const In* k,
                                                                   const In* v, const float* bias,
                                                                   const float* lse_in, const float* row_dot,
                                                                   In* gk, In* gv, AttentionDims a) {
  using Elem = typename P::Elem;
  __shared__ __align__(32) unsigned char work[Work<P>::kBytes];
  __shared__ __align__(32) unsigned char tiles[2 * kStep * kLd * sizeof(Elem)];
  __shared__ float lses[kStep], dots[kStep];
  Elem *queries = reinterpret_cast<Elem*>(tiles), *grads = queries + kStep * kLd;
  const int warp = threadIdx.y, lane = threadIdx.x, r = lane / 2, half = lane % 2;
  const Scratch<P> probs = scratch_of<P>(work, 0, warp), ds = scratch_of<P>(work, 1, warp);
  const int64_t tiles_total = a.n * a.h * ((a.lk + kOwn - 1) / kOwn);
  for (int64_t t = blockIdx.x; t < tiles_total; t += gridDim.x) {
    const Tile tile = tile_of(t, a.lk, a.h);
    const int64_t w0 = tile.r0 + 16 * warp, j = w0 + r;
    // Causal: queries before the block's first key see none of its keys. A row among them with
    // every key hidden (NaN lse) still makes every key's gradient NaN, as in the composed form.
    const int64_t start = a.causal ? min(tile.r0, a.lq) : 0;
    bool hidden_nan = false;
    for (int64_t i = lane; i < start; i += 32) hidden_nan |= isnan(lse_in[tile.bh * a.lq + i]);
    hidden_nan = __any_sync(0xffffffffu, hidden_nan);
    FragA<P> mine_k[kHead / P::kK], mine_v[kHead / P::kK];
    own_rows<P>(mine_k, work, k, a.ks, tile, a.lk, a.d);
    own_rows<P>(mine_v, work, v, a.vs, tile, a.lk, a.dv);
    FragC<P> acc_k[kHead / 16], acc_v[kHead / 16];
    zero<P>(acc_k);
    zero<P>(acc_v);
    for (int64_t i0 = start; i0 < a.lq; i0 += kStep) {
      const int e = threadIdx.y * 32 + threadIdx.x;
      if (e < kStep && i0 + e < a.lq) lses[e] = lse_in[tile.bh * a.lq + i0 + e], dots[e] = row_dot[tile.bh * a.lq + i0 + e];
      stream_rows<P>(queries, q, a.qs, a.d, grads, g, a.gs, a.dv, tile, i0, a.lq);
      times_rows<P>(mine_k, queries, probs.products);  // Sᵀ: a key per row, a query per column
      times_rows<P>(mine_v, grads, ds.products);       // dPᵀ
      __syncwarp();
      for (int c = 16 * half; c < 16 * half + 16; ++c) {
        const int64_t i = i0 + c;
        float p = 0, d = 0;
        if (j < a.lk && i < a.lq) {
          // (j, i) read as (i, j): causally hidden where j > i
          p = probability(probs.products[r * kSLd + c], lses[c], bias, a, tile, i, j);
          d = p * (ds.products[r * kSLd + c] - dots[c]) * float(a.scale);
        }
        probs.weights[r * kWLd<P> + c] = P::round(p);
        ds.weights[r * kWLd<P> + c] = P::round(d);
      }
      __syncwarp();
      accumulate<P>(acc_v, probs.weights, grads);
      accumulate<P>(acc_k, ds.weights, queries);
      __syncthreads();
    }
    const float poison = hidden_nan ? NAN : 0.f;  // write_rows's NaN rows, for the whole warp
    float* part = reinterpret_cast<float*>(work) + 16 * warp * kLd;
    write_rows<P>(acc_k, part, gk, a.gks, tile.ni, tile.hi, w0, a.lk, a.d, hidden_nan, poison);
    write_rows<P>(acc_v, part, gv, a.gvs, tile.ni, tile.hi, w0, a.lk, a.dv, hidden_nan, poison);
    __syncthreads();
  }
}

// Which tensor-core kernels take a call: float32 with bf16 autocast operands, or with TF32
// allowed at the forward (AttentionParams::tf32); bf16 tensors (autocast's: bf16 operands as
// they are); both head sizes within kHead.
enum class Kind { none, tf32, bf16 };
Kind kind_of(DType dt, const AttentionDims& a, const AttentionParams& p) {
  if (a.d > kHead || a.dv > kHead) return Kind::none;
  if (dt == DType::bf16) return Kind::bf16;
  if (dt != DType::f32) return Kind::none;
  if (p.bf16_operands) return Kind::bf16;
  return p.tf32 ? Kind::tf32 : Kind::none;
}

unsigned blocks(int64_t slices, int64_t rows) { return blocks_for(slices * ((rows + kOwn - 1) / kOwn), 1); }

// Calls fn.template operator()<P, In>() for the kind's operand type and the tensors' type dt.
template <class F>
void with_kind(Kind kind, DType dt, F&& fn) {
  if (kind == Kind::tf32) fn.template operator()<Tf32, float>();
  else if (dt == DType::bf16) fn.template operator()<Bf16, __nv_bfloat16>();
  else fn.template operator()<Bf16, float>();
}

}  // namespace mma

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, const AttentionParams& p,
                       const Tensor& out, const Tensor& lse) {
  const char* op = "cuda scaled_dot_product_attention";
  const AttentionDims a = dims_of(q, k, v, bias, p, out);
  if (a.n * a.h * a.lq == 0) return;
  const int device = q.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  if (const mma::Kind kind = mma::kind_of(q.dtype(), a, p); kind != mma::Kind::none) {
    mma::with_kind(kind, q.dtype(), [&]<class P, class In>() {
      mma::forward_kernel<P, In><<<mma::blocks(a.n * a.h, a.lq), dim3(32, mma::kWarps), 0, stream>>>(
          static_cast<const In*>(q.raw_data()), static_cast<const In*>(k.raw_data()),
          static_cast<const In*>(v.raw_data()), a.has_bias ? static_cast<const float*>(bias.raw_data()) : nullptr,
          static_cast<In*>(out.raw_data()), static_cast<float*>(lse.raw_data()), a);
      BCOS_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  BCOS_CHECK(!p.bf16_operands, op, ": bf16 operands need both head sizes within 64 (query ", q.shape(), ", value ",
             v.shape(), "); the op composes otherwise");
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
  const Tensor row_dot = empty({a.n, a.h, a.lq}, {lse.dtype(), q.device()});
  if (const mma::Kind kind = mma::kind_of(q.dtype(), a, p); kind != mma::Kind::none) {
    const float* b = a.has_bias ? static_cast<const float*>(bias.raw_data()) : nullptr;
    const float* pl = static_cast<const float*>(lse.raw_data());
    float* pd = static_cast<float*>(row_dot.raw_data());
    mma::with_kind(kind, q.dtype(), [&]<class P, class In>() {
      const In *pg = static_cast<const In*>(grad_out.raw_data()), *pq = static_cast<const In*>(q.raw_data());
      const In *pk = static_cast<const In*>(k.raw_data()), *pv = static_cast<const In*>(v.raw_data());
      if (a.n * a.h * a.lq > 0) {
        mma::backward_query_kernel<P, In><<<mma::blocks(a.n * a.h, a.lq), dim3(32, mma::kWarps), 0, stream>>>(
            pg, pq, pk, pv, b, static_cast<const In*>(out.raw_data()), pl, pd, static_cast<In*>(grad_q.raw_data()), a);
        BCOS_CUDA_CHECK_LAUNCH();
      }
      if (a.n * a.h * a.lk > 0) {
        mma::backward_key_kernel<P, In><<<mma::blocks(a.n * a.h, a.lk), dim3(32, mma::kWarps), 0, stream>>>(
            pg, pq, pk, pv, b, pl, pd, static_cast<In*>(grad_k.raw_data()), static_cast<In*>(grad_v.raw_data()), a);
        BCOS_CUDA_CHECK_LAUNCH();
      }
    });
    return;
  }
  BCOS_CHECK(!p.bf16_operands, op, ": bf16 operands need both head sizes within 64 (query ", q.shape(), ", value ",
             v.shape(), "); the op composes otherwise");
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
