// Batch norm on the GPU, as tensor/cpu/norm.cpp: per channel over x viewed [N, C, S], statistics
// (in one pass over x, from sums shifted by the channel's first element) and gradient sums
// accumulated in double, and the elementwise parts one thread per element -- or per 16-byte pack
// of elements, in every pass over the activations, where the plane size allows (below).
// A channel's sums are split across blocks (block (c, part) adds a contiguous stretch of the
// channel's N·S elements, walked plane by plane so that its reads are coalesced and divide
// nothing), then a finish kernel adds each channel's parts in order: deterministic, and a GPU
// full even for few channels (one block per channel left ResNet-50's first stage, 64 channels of
// 200 K elements at batch 64, to 64 blocks).
//   forward:  y = fma(x, scale, shift), scale = invstd · w, shift = b − mean · scale; with relu
//             max(y, 0), and the backward's g taken as 0 where the recomputed y ≤ 0
//   backward: grad_w = Σ g x̂, grad_b = Σ g, grad_x = w·invstd·(g − mean(g)) − w·invstd²·mean(g x̂)·(x − mean)
//             (training; in evaluation the two means are 0)
//   uncentred (B-cos) backward, y = γ x r (+ β), r = 1 / sqrt(var + eps), A = Σ g x, B = Σ g:
//             grad_w = r A, grad_b = B, grad_x = γ r g − (through the variance: γ r³ (A / M)(x − mean))
//   synchronised: given replica_sums (every replica's grad_w and grad_b summed, and their count),
//             grad_x takes its means from those and the sums kernels are skipped
// grad_x's per-channel coefficients are computed once per channel (in double, as the CPU), not
// per element. Element types: S stores x, its gradient and the output; T the per-channel tensors
// and the arithmetic -- float for float16 / bfloat16 activations (each result rounded once).
// The uncentred form runs with S = T only (a 16-bit input reaches it through float32).
#include "tensor/kernel_views.h"
#include "tensor/batch_norm_math.h"
#include "tensor/copy.h"
#include "tensor/cuda/internal.h"
#include "tensor/elementwise_math.h"

namespace bcos::cuda {

namespace {

constexpr int kReduceThreads = 256;
constexpr int64_t kTargetBlocks = 1024;  // blocks per reduction: several per SM on any GPU
constexpr int64_t kMinPerBlock = 4096;   // elements a block adds at least (fewer: its own sum dominates)

// The sum of v over the block's threads, in every thread (blockDim.x == kReduceThreads).
__device__ double block_sum(double v, double* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int half = kReduceThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  const double total = scratch[0];
  __syncthreads();  // scratch is reused by the caller's next reduction
  return total;
}

// How a channel's N·S elements are split across blocks: `parts` stretches of `chunk` (the shape
// alone decides, so results do not depend on the GPU).
struct Split {
  int64_t parts, chunk;
};
// pack: the elements a thread reads at a time (16-byte packs where they fit, below), which every
// stretch's start is then a multiple of (a last part may be left empty: it adds nothing).
Split split_of(const Channels& d, int64_t pack) {
  const int64_t count = d.n * d.s;
  const int64_t parts = std::clamp<int64_t>(std::min(kTargetBlocks / std::max<int64_t>(d.c, 1), count / kMinPerBlock),
                                            1, 65535);
  return {parts, ((count + parts - 1) / parts + pack - 1) / pack * pack};
}

// Block (c, part): two sums of terms(i, c, a, b) over elements [part · chunk, (part + 1) · chunk)
// of channel c (flattened (n, s) order) into partials[c][part][0, 1]. With packs (pack > 1: the
// plane size and chunk are multiples of it, so each run of a plane starts and ends on a pack)
// a thread adds a pack's terms at a time, in element order.
template <class Terms>
__global__ void partial_sums_kernel(Channels d, int64_t chunk, Terms terms, int pack, double* partials) {
  __shared__ double scratch[kReduceThreads];
  const int64_t c = blockIdx.x, part = blockIdx.y, count = d.n * d.s;
  const int64_t end = min(count, (part + 1) * chunk);
  double a = 0, b = 0;
  for (int64_t k = part * chunk; k < end;) {  // plane by plane: a run of one (n, c) plane
    const int64_t n = k / d.s, s0 = k % d.s, s1 = min(d.s, s0 + (end - k));
    const int64_t base = (n * d.c + c) * d.s;
    if (pack > 1) {
      for (int64_t q = (base + s0) / pack + threadIdx.x; q < (base + s1) / pack; q += blockDim.x) terms.pack(q, c, a, b);
    } else {
      for (int64_t s = s0 + threadIdx.x; s < s1; s += blockDim.x) terms(base + s, c, a, b);
    }
    k += s1 - s0;
  }
  a = block_sum(a, scratch);
  b = block_sum(b, scratch);
  if (threadIdx.x == 0) {
    double* out = partials + (c * int64_t(gridDim.y) + part) * 2;
    out[0] = a, out[1] = b;
  }
}

// Channel c's parts added in order.
__device__ void channel_totals(const double* partials, int64_t parts, int64_t c, double& a, double& b) {
  a = 0, b = 0;
  for (int64_t p = 0; p < parts; ++p) a += partials[(c * parts + p) * 2], b += partials[(c * parts + p) * 2 + 1];
}

// y = fma(x, scale, shift) of channel c, as the CPU computes it (the ReLU mask depends on it).
template <class T>
__device__ __forceinline__ math::BatchNormAffine<T> affine_of(const T* w, const T* b, T mean, T invstd, int64_t c) {
  return math::BatchNormAffine<T>(mean, invstd, w ? w[c] : T(1), b ? b[c] : T(0));
}
template <class T>
__device__ T normalized(T x, const T* w, const T* b, T mean, const T* invstd, int64_t c) {
  return affine_of(w, b, mean, invstd[c], c)(x);
}

// The forward's per-channel statistics: mean (null: 0, the uncentred norm) and invstd, read from
// the finish kernel's output or, in an evaluation forward that runs alone, made from the running
// variance by the finish's own formula (the same bits, one launch fewer per norm).
template <class T>
struct ForwardStats {
  const T* mean;
  const T* invstd;  // or null: from var and eps
  const T* var;
  T eps;
  __device__ __forceinline__ T mean_of(int64_t c) const { return mean ? mean[c] : T(0); }
  __device__ __forceinline__ T invstd_of(int64_t c) const {
    return invstd ? invstd[c] : batch_norm_math::invstd_of(var[c], eps);
  }
};
template <class T, class S>
__device__ __forceinline__ T value(S v) {
  return convert_value<T>(v);
}

// The terms each reduction adds (a, b): the statistics' one pass, the backward's sums. Each adds
// an element's terms by value (add); operator() reads element i, pack() pack q (internal.h).
template <class S>
struct ShiftedTerms {  // Σ (x − k), Σ (x − k)², k = the channel's first element
  static constexpr int kPack = Pack<S>::kSize;  // elements per pack(): partial_sums' index step
  const S* x;
  int64_t plane;  // S: channel c's first element is x[c · S]
  __device__ void add(S xi, int64_t c, double& a, double& b) const {
    const double v = value<double>(xi) - value<double>(x[c * plane]);
    a += v;
    b += v * v;
  }
  __device__ void operator()(int64_t i, int64_t c, double& a, double& b) const { add(x[i], c, a, b); }
  __device__ void pack(int64_t q, int64_t c, double& a, double& b) const {
    const Pack<S> xp = pack_at(x, q);
BCOS_UNROLL
    for (int j = 0; j < kPack; ++j) add(xp.v[j], c, a, b);
  }
};
template <class S, class T>
struct GradTerms {  // Σ g, Σ g (x − mean)
  static constexpr int kPack = Pack<S>::kSize;
  const S *g, *x;
  const T *w, *b, *mean, *invstd;
  bool relu;
  __device__ void add(S gs, S xs, int64_t c, double& sg, double& sgx) const {
    const T xi = value<T>(xs);
    const double gi = relu && !(normalized(xi, w, b, mean[c], invstd, c) > T(0)) ? 0.0 : value<double>(gs);
    sg += gi;
    sgx += gi * (double(xi) - double(mean[c]));
  }
  __device__ void operator()(int64_t i, int64_t c, double& sg, double& sgx) const { add(g[i], x[i], c, sg, sgx); }
  __device__ void pack(int64_t q, int64_t c, double& sg, double& sgx) const {
    const Pack<S> gp = pack_at(g, q), xp = pack_at(x, q);
BCOS_UNROLL
    for (int j = 0; j < kPack; ++j) add(gp.v[j], xp.v[j], c, sg, sgx);
  }
};
template <class T>
struct UncenteredTerms {  // Σ g x, Σ g
  static constexpr int kPack = Pack<T>::kSize;
  const T *g, *x, *w, *b, *invstd;
  bool relu;
  __device__ void add(T gs, T xi, int64_t c, double& sgx, double& sg) const {
    const double gi = relu && !(normalized(xi, w, b, T(0), invstd, c) > T(0)) ? 0.0 : double(gs);
    sgx += gi * double(xi);
    sg += gi;
  }
  __device__ void operator()(int64_t i, int64_t c, double& sgx, double& sg) const { add(g[i], x[i], c, sgx, sg); }
  __device__ void pack(int64_t q, int64_t c, double& sgx, double& sg) const {
    const Pack<T> gp = pack_at(g, q), xp = pack_at(x, q);
BCOS_UNROLL
    for (int j = 0; j < kPack; ++j) add(gp.v[j], xp.v[j], c, sgx, sg);
  }
};

// The statistics from the shifted sums, a thread per channel: mean = k + Σ(x − k) / M,
// var = Σ(x − k)² / M − (Σ(x − k) / M)². In double, with k inside the data's spread, the
// subtraction loses nothing a float32 result would keep (|mean − k| is a few standard deviations
// at most), so one read of x gives what the CPU's two passes give. No elements: NaN, as there.
template <class S, class T>
__global__ void stats_finish_kernel(const double* partials, int64_t parts, Channels d, const S* x, T* mean, T* var) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < d.c; c += int64_t(gridDim.x) * blockDim.x) {
    double a, b;
    channel_totals(partials, parts, c, a, b);
    const double count = double(d.n * d.s), k = count > 0 ? value<double>(x[c * d.s]) : 0.0;
    const double shifted_mean = a / count, v = b / count - shifted_mean * shifted_mean;
    mean[c] = T(k + shifted_mean);
    var[c] = T(v < 0 ? 0.0 : v);  // rounding may leave a constant channel a hair below 0; NaN stays NaN
  }
}

// The backward's sums per channel into sums[2c], sums[2c + 1] (the terms' a, b), and
// grad_w = invstd · (centred: b = Σ g x̂ / invstd; uncentred: a = Σ g x), grad_b = Σ g.
template <class T>
__global__ void grad_finish_kernel(const double* partials, int64_t parts, Channels d, const T* invstd,
                                   bool uncentered, double* sums, T* grad_w, T* grad_b) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < d.c; c += int64_t(gridDim.x) * blockDim.x) {
    double a, b;
    channel_totals(partials, parts, c, a, b);
    sums[2 * c] = a;
    sums[2 * c + 1] = b;
    if (grad_w) grad_w[c] = T((uncentered ? a : b) * double(invstd[c]));
    if (grad_b) grad_b[c] = T(uncentered ? b : a);
  }
}

// grad_x's per-channel coefficients coef[c] = {k1, k2, mg, mu}: grad_x = k1 (g − mg) − k2 (x − mu),
// from channel c's sums (a, b) (grad_finish's) or the replicas' summed ones.
//   centred:   k1 = w invstd, k2 = w invstd² mean(g x̂), mg = mean(g) (both means 0 in evaluation)
//   uncentred: k1 = γ r, k2 = γ r³ A / M (through the variance), mg = 0
template <class T>
__device__ void channel_coefficients(const T* w, const T* mean, const T* invstd, double sa, double sb,
                                     const T* replica, Channels d, bool training, bool uncentered, int64_t c, T* coef) {
  const double count = replica ? double(replica[2 * d.c]) : double(d.n * d.s);
  const double is = double(invstd[c]), wc = w ? double(w[c]) : 1.0;
  T* k = coef + 4 * c;
  if (uncentered) {
    const double a = replica ? double(replica[c]) / is : sa;  // the replicas' Σ grad_w is r A summed
    k[0] = T(wc * is), k[1] = mean ? T(wc * is * is * is * a / count) : T(0), k[2] = T(0);
    k[3] = mean ? mean[c] : T(0);
  } else {
    const double mean_g = training ? (replica ? double(replica[d.c + c]) : sa) / count : 0.0;
    const double mean_gx = training ? (replica ? double(replica[c]) : sb * is) / count : 0.0;
    k[0] = T(wc * is), k[1] = T(wc * is * is * mean_gx), k[2] = T(mean_g), k[3] = mean[c];
  }
}

template <class T>
__global__ void coefficients_kernel(const T* w, const T* mean, const T* invstd, const double* sums, const T* replica,
                                    Channels d, bool training, bool uncentered, T* coef) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < d.c; c += int64_t(gridDim.x) * blockDim.x)
    channel_coefficients(w, mean, invstd, replica ? 0.0 : sums[2 * c], replica ? 0.0 : sums[2 * c + 1], replica, d,
                         training, uncentered, c, coef);
}

// grad_finish_kernel and coefficients_kernel in one launch, where the sums are this replica's own
// (no synchronised batch norm): a per-channel launch fewer per batch norm per backward.
template <class T>
__global__ void grad_finish_coefficients_kernel(const double* partials, int64_t parts, Channels d, const T* invstd,
                                                bool uncentered, T* grad_w, T* grad_b, const T* w, const T* mean,
                                                bool training, T* coef) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < d.c; c += int64_t(gridDim.x) * blockDim.x) {
    double a, b;
    channel_totals(partials, parts, c, a, b);
    if (grad_w) grad_w[c] = T((uncentered ? a : b) * double(invstd[c]));
    if (grad_b) grad_b[c] = T(uncentered ? b : a);
    channel_coefficients(w, mean, invstd, a, b, static_cast<const T*>(nullptr), d, training, uncentered, c, coef);
  }
}

// Elementwise kernels index with I: 32 bits when the tensor allows, their channel found by
// multiplying (internal.h: Divisor), not dividing -- a division per element costs more than its
// memory traffic.
template <class I>
struct ChannelOf {
  Divisor<I> plane, channels;  // d.s, d.c
  explicit ChannelOf(const Channels& d) : plane(d.s), channels(d.c) {}
  __device__ __forceinline__ I operator()(I i) const { return channels.mod(plane.div(i)); }
};

// The elementwise passes go in 16-byte packs (internal.h) where the plane size is a multiple of
// the pack's P elements and the tensors are aligned: a plane then starts at a multiple of P, so
// a pack never straddles two channels and finds its channel, and loads its per-channel values,
// once for P elements (float32: every ResNet stage but 7 x 7; 16-bit packs of 8 miss 14 x 14 too).
// The arithmetic per element is the same either way, and so are the bits.
template <class S>
constexpr int kPackOf = Pack<S>::kSize;

template <class S, class T, class I>
__global__ void forward_kernel(const S* x, const T* w, const T* b, ForwardStats<T> stats, Channels d,
                               ChannelOf<I> channel_of, bool relu, bool packed, S* out) {
  const I n = I(d.n * d.c * d.s), first = I(blockIdx.x) * blockDim.x + threadIdx.x, step = I(gridDim.x) * blockDim.x;
  auto apply = [relu](const math::BatchNormAffine<T>& f, S v) {
    const T y = f(value<T>(v));
    return convert_value<S>(relu && y < T(0) ? T(0) : y);  // as relu: NaN stays NaN
  };
  if (packed) {
    constexpr int P = kPackOf<S>;
    for (I p = first; p < n / P; p += step) {
      const I c = channel_of(p * P);
      const math::BatchNormAffine<T> f = affine_of(w, b, stats.mean_of(c), stats.invstd_of(c), c);
      const Pack<S> xp = pack_at(x, p);
      Pack<S> o;
BCOS_UNROLL
      for (int j = 0; j < P; ++j) o.v[j] = apply(f, xp.v[j]);
      pack_at(out, p) = o;
    }
    return;
  }
  for (I i = first; i < n; i += step) {
    const I c = channel_of(i);
    out[i] = apply(affine_of(w, b, stats.mean_of(c), stats.invstd_of(c), c), x[i]);
  }
}

// grad_x = k1 (g − mg) − k2 (x − mu); g is 0 where a fused ReLU cut y (y recomputed from
// normalized_mean: the mean the forward used, or none for the uncentred form).
template <class S, class T, class I>
__global__ void grad_x_kernel(const S* g, const S* x, const T* w, const T* bias, const T* normalized_mean,
                              const T* invstd, const T* coef, Channels d, ChannelOf<I> channel_of, bool relu,
                              bool packed, S* gx) {
  const I n = I(d.n * d.c * d.s), first = I(blockIdx.x) * blockDim.x + threadIdx.x, step = I(gridDim.x) * blockDim.x;
  struct Channel {  // channel c's coefficients and forward map
    const T* k;
    math::BatchNormAffine<T> f;
  };
  auto channel = [&](I c) {
    return Channel{coef + 4 * c, affine_of(w, bias, normalized_mean ? normalized_mean[c] : T(0), invstd[c], c)};
  };
  auto grad = [relu](const Channel& ch, S gs, S xs) {
    const T xi = value<T>(xs);
    const T gi = relu && !(ch.f(xi) > T(0)) ? T(0) : value<T>(gs);
    return convert_value<S>(ch.k[0] * (gi - ch.k[2]) - ch.k[1] * (xi - ch.k[3]));
  };
  if (packed) {
    constexpr int P = kPackOf<S>;
    for (I p = first; p < n / P; p += step) {
      const Channel ch = channel(channel_of(p * P));
      const Pack<S> gp = pack_at(g, p), xp = pack_at(x, p);
      Pack<S> o;
BCOS_UNROLL
      for (int j = 0; j < P; ++j) o.v[j] = grad(ch, gp.v[j], xp.v[j]);
      pack_at(gx, p) = o;
    }
    return;
  }
  for (I i = first; i < n; i += step) gx[i] = grad(channel(channel_of(i)), g[i], x[i]);
}

// Whether the elementwise passes over these tensors go in packs (above), and their grid.
template <class S, class... P>
bool packs_fit(const Channels& d, const P*... pointers) {
  return packs_enabled() && d.s % kPackOf<S> == 0 && aligned16(pointers...);
}
template <class S>
unsigned elementwise_blocks(int64_t n, bool packed) {
  return blocks_for(packed ? n / kPackOf<S> : n);
}

template <class T>
__global__ void finish_kernel(const T* mean, const T* var, batch_norm_math::Finish<T> f, int64_t c, T* invstd,
                              T* running_mean, T* running_var, int64_t* batches_tracked) {
  if (batches_tracked && blockIdx.x == 0 && threadIdx.x == 0) ++*batches_tracked;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < c; i += int64_t(gridDim.x) * blockDim.x)
    batch_norm_math::finish_channel(i, mean, var, f, invstd, running_mean, running_var);
}

template <class T>
__global__ void eval_scale_kernel(const T* var, const T* weight, T eps, int64_t c, T* scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < c; i += int64_t(gridDim.x) * blockDim.x)
    scale[i] = batch_norm_math::eval_scale(i, var, weight, eps);
}

template <class T>
const T* maybe(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.raw_data()) : nullptr;
}

// Runs partial_sums_kernel for terms over every channel; returns the partials and their split.
// packed: the terms' tensors fit packs (packs_fit); the kernel then steps by the terms' own pack.
template <class Terms>
std::pair<std::shared_ptr<void>, int64_t> partial_sums(const Channels& d, const Terms& terms, bool packed, int device,
                                                       cudaStream_t stream) {
  const int pack = packed ? Terms::kPack : 1;
  const Split split = split_of(d, pack);
  std::shared_ptr<void> partials = allocate(size_t(d.c * split.parts * 2) * sizeof(double), device);
  partial_sums_kernel<<<dim3(unsigned(d.c), unsigned(split.parts)), kReduceThreads, 0, stream>>>(
      d, split.chunk, terms, pack, static_cast<double*>(partials.get()));
  BCOS_CUDA_CHECK_LAUNCH();
  return {partials, split.parts};
}

// The backward shared by both forms: the sums (unless the replicas' are given and no parameter
// gradient is wanted), the coefficients, grad_x.
template <class S, class T, class Terms>
void backward(const Tensor& g, const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& invstd,
              const Tensor& normalized_mean, const Tensor& coefficient_mean, bool training, bool uncentered, bool relu,
              const Terms& terms, const Tensor& grad_x, const Tensor& grad_w, const Tensor& grad_b,
              const Tensor& replica_sums) {
  const Channels d = channels_of(x);
  const int device = x.device().index;
  cudaStream_t stream = stream_of(device);
  T* const gw = grad_w.defined() ? static_cast<T*>(grad_w.raw_data()) : nullptr;
  T* const gb = grad_b.defined() ? static_cast<T*>(grad_b.raw_data()) : nullptr;
  const bool wants_x = grad_x.defined() && x.numel() > 0;
  std::shared_ptr<void> coef = wants_x ? allocate(size_t(4 * d.c) * sizeof(T), device) : nullptr;
  static_assert(Terms::kPack == kPackOf<S>, "packs_fit<S> checked the planes for the terms' packs");
  const bool sums_packed = packs_fit<S>(d, g.raw_data(), x.raw_data());
  if (wants_x && !replica_sums.defined()) {  // the sums are ours: finish and coefficients in one launch
    const auto [partials, parts] = partial_sums(d, terms, sums_packed, device, stream);
    grad_finish_coefficients_kernel<<<blocks_for(d.c), kThreads, 0, stream>>>(
        static_cast<const double*>(partials.get()), parts, d, static_cast<const T*>(invstd.raw_data()), uncentered,
        gw, gb, maybe<T>(weight), maybe<T>(coefficient_mean), training, static_cast<T*>(coef.get()));
    BCOS_CUDA_CHECK_LAUNCH();
  } else {
    std::shared_ptr<void> sums = allocate(size_t(2 * d.c) * sizeof(double), device);
    if (grad_w.defined() || grad_b.defined() || !replica_sums.defined()) {
      const auto [partials, parts] = partial_sums(d, terms, sums_packed, device, stream);
      grad_finish_kernel<<<blocks_for(d.c), kThreads, 0, stream>>>(
          static_cast<const double*>(partials.get()), parts, d, static_cast<const T*>(invstd.raw_data()), uncentered,
          static_cast<double*>(sums.get()), gw, gb);
      BCOS_CUDA_CHECK_LAUNCH();
    }
    if (!wants_x) return;
    coefficients_kernel<<<blocks_for(d.c), kThreads, 0, stream>>>(
        maybe<T>(weight), maybe<T>(coefficient_mean), static_cast<const T*>(invstd.raw_data()),
        static_cast<const double*>(sums.get()), maybe<T>(replica_sums), d, training, uncentered,
        static_cast<T*>(coef.get()));
    BCOS_CUDA_CHECK_LAUNCH();
  }
  const bool packed = packs_fit<S>(d, g.raw_data(), x.raw_data(), grad_x.raw_data());
  with_index(x.numel(), [&]<class I>() {
    grad_x_kernel<S, T, I><<<elementwise_blocks<S>(x.numel(), packed), kThreads, 0, stream>>>(
        static_cast<const S*>(g.raw_data()), static_cast<const S*>(x.raw_data()), maybe<T>(weight), maybe<T>(bias),
        maybe<T>(normalized_mean), static_cast<const T*>(invstd.raw_data()), static_cast<const T*>(coef.get()), d,
        ChannelOf<I>(d), relu, packed, static_cast<S*>(grad_x.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

// Calls body.template operator()<S, T>() for x's storage type S and the arithmetic's T (above).
template <class F>
void dispatch_batch_norm(const Tensor& x, const Tensor& per_channel, const char* op, F&& body) {
  if (is_half_float(x.dtype())) {
    BCOS_CHECK(per_channel.dtype() == DType::f32, op, ": a ", dtype_name(x.dtype()), " input takes float32 statistics, got ",
               dtype_name(per_channel.dtype()));
    return dispatch_half(x.dtype(), [&]<class S>() { body.template operator()<S, float>(); });
  }
  dispatch_float(x.dtype(), op, [&]<class T>() { body.template operator()<T, T>(); });
}

}  // namespace

void batch_norm_stats(const Tensor& x_in, const Tensor& mean, const Tensor& var_biased) {
  const Tensor x = raw_contiguous(x_in);
  const Channels d = channels_of(x);
  if (d.c == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_batch_norm(x, mean, "cuda batch_norm", [&]<class S, class T>() {
    // One pass over x (the CPU makes two: the mean, then the squared deviations from it).
    const S* px = static_cast<const S*>(x.raw_data());
    const auto [partials, parts] = partial_sums(d, ShiftedTerms<S>{px, d.s}, packs_fit<S>(d, px), device, stream);
    stats_finish_kernel<<<blocks_for(d.c), kThreads, 0, stream>>>(static_cast<const double*>(partials.get()), parts,
                                                                  d, px, static_cast<T*>(mean.raw_data()),
                                                                  static_cast<T*>(var_biased.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_finish(const Tensor& mean, const Tensor& var, double eps, double momentum, double unbias,
                       const Tensor& invstd, const Tensor& running_mean, const Tensor& running_var,
                       const Tensor& batches_tracked) {
  if (var.numel() == 0 && !batches_tracked.defined()) return;
  const int device = var.device().index;
  DeviceGuard guard(device);
  dispatch_float(var.dtype(), "cuda batch_norm", [&]<class T>() {
    auto out = [](const Tensor& t) { return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr; };
    finish_kernel<T><<<blocks_for(var.numel()), kThreads, 0, stream_of(device)>>>(
        maybe<T>(mean), static_cast<const T*>(var.raw_data()), batch_norm_math::finish_factors<T>(eps, momentum, unbias),
        var.numel(), out(invstd), out(running_mean), out(running_var),
        batches_tracked.defined() ? batches_tracked.data<int64_t>() : nullptr);
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_eval_scale(const Tensor& var, const Tensor& weight, double eps, const Tensor& scale) {
  if (var.numel() == 0) return;
  const int device = var.device().index;
  DeviceGuard guard(device);
  dispatch_float(var.dtype(), "cuda batch_norm_eval_scale", [&]<class T>() {
    eval_scale_kernel<T><<<blocks_for(var.numel()), kThreads, 0, stream_of(device)>>>(
        static_cast<const T*>(var.raw_data()), maybe<T>(weight), T(eps), var.numel(), static_cast<T*>(scale.raw_data()));
    BCOS_CUDA_CHECK_LAUNCH();
  });
}

// The forward pass with invstd given, or made from var and eps (invstd undefined).
static void launch_forward(const Tensor& x_in, const Tensor& weight, const Tensor& bias, const Tensor& mean,
                           const Tensor& invstd, const Tensor& var, double eps, bool relu, const Tensor& out) {
  const Tensor x = raw_contiguous(x_in);
  const Channels d = channels_of(x);
  if (x.numel() == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = stream_of(device);
  dispatch_batch_norm(x, invstd.defined() ? invstd : var, "cuda batch_norm", [&]<class S, class T>() {
    const bool packed = packs_fit<S>(d, x.raw_data(), out.raw_data());
    const ForwardStats<T> stats{maybe<T>(mean), maybe<T>(invstd), maybe<T>(var), T(eps)};
    with_index(x.numel(), [&]<class I>() {
      forward_kernel<S, T, I><<<elementwise_blocks<S>(x.numel(), packed), kThreads, 0, stream>>>(
          static_cast<const S*>(x.raw_data()), maybe<T>(weight), maybe<T>(bias), stats, d, ChannelOf<I>(d), relu,
          packed, static_cast<S*>(out.raw_data()));
      BCOS_CUDA_CHECK_LAUNCH();
    });
  });
}

void batch_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& mean,
                        const Tensor& invstd, bool relu, const Tensor& out) {
  launch_forward(x, weight, bias, mean, invstd, Tensor(), 0, relu, out);
}

void batch_norm_eval_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                             const Tensor& running_var, double eps, bool relu, const Tensor& out) {
  launch_forward(x, weight, bias, running_mean, Tensor(), running_var, eps, relu, out);
}

void batch_norm_backward(const Tensor& grad_out_in, const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                         const Tensor& mean, const Tensor& invstd, bool training, bool relu, const Tensor& grad_x,
                         const Tensor& grad_w, const Tensor& grad_b, const Tensor& replica_sums) {
  const Tensor g = raw_contiguous(grad_out_in), x = raw_contiguous(x_in);
  if (x.size(1) == 0) return;
  DeviceGuard guard(x.device().index);
  dispatch_batch_norm(x, mean, "cuda batch_norm_backward", [&]<class S, class T>() {
    const GradTerms<S, T> terms{static_cast<const S*>(g.raw_data()), static_cast<const S*>(x.raw_data()),
                                maybe<T>(weight), maybe<T>(bias), static_cast<const T*>(mean.raw_data()),
                                static_cast<const T*>(invstd.raw_data()), relu};
    backward<S, T>(g, x, weight, bias, invstd, mean, mean, training, false, relu, terms, grad_x, grad_w, grad_b,
                replica_sums);
  });
}

void batch_norm_uncentered_backward(const Tensor& grad_in, const Tensor& x_in, const Tensor& weight,
                                    const Tensor& bias, const Tensor& mean, const Tensor& invstd,
                                    bool through_variance, bool relu, const Tensor& grad_x,
                                    const Tensor& grad_w, const Tensor& grad_b, const Tensor& replica_sums) {
  const Tensor g = raw_contiguous(grad_in), x = raw_contiguous(x_in);
  if (x.size(1) == 0) return;
  DeviceGuard guard(x.device().index);
  dispatch_float(x.dtype(), "cuda batch_norm_uncentered_backward", [&]<class T>() {
    const UncenteredTerms<T> terms{static_cast<const T*>(g.raw_data()), static_cast<const T*>(x.raw_data()),
                                   maybe<T>(weight), maybe<T>(bias), static_cast<const T*>(invstd.raw_data()), relu};
    backward<T, T>(g, x, weight, bias, invstd, Tensor(), through_variance ? mean : Tensor(), true, true, relu, terms,
                grad_x, grad_w, grad_b, replica_sums);
  });
}

}  // namespace bcos::cuda
