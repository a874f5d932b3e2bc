// Tensor handle basics: geometry queries, raw aliases, element access, storage allocation.
#include "tensor/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <string>
#include <string_view>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "tensor/copy.h"
#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#endif

namespace bcos {

// ---- Storage ----------------------------------------------------------------------------

namespace {

// glibc serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with mmap and
// unmaps them on free, and trims the heap top when it frees more than a few MiB: every fresh
// activation of a training or inference step is then page-faulted in and zeroed by the kernel
// on first touch -- 3-10 % of a ResNet step here (perf: exc_page_fault, clear_page). So the
// first CPU tensor raises both thresholds (as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
// would): large blocks then come from the heap and freed ones are reused, coalesced with their
// neighbours, instead of returned to the OS. Peak resident memory stays that of the peak live
// tensors (bench/models' memory columns). BCOS_MALLOC_TUNING=0 leaves malloc as it is.
void tune_malloc_once() {
#if defined(__GLIBC__)
  static const bool done = [] {
    const char* env = std::getenv("BCOS_MALLOC_TUNING");
    if (env && std::string(env) == "0") return false;
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 64 << 20);
    return true;
  }();
  (void)done;
#endif
}

}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  auto s = std::make_shared<Storage>();
  s->nbytes = nbytes;
  s->device = device;
  if (device.is_cpu()) {
    tune_malloc_once();
    size_t rounded = (std::max<size_t>(nbytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    BCOS_CHECK(p != nullptr, "Storage: out of host memory allocating ", nbytes, " bytes");
    s->data = p;
    s->owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  } else {
#ifdef BCOS_WITH_CUDA
    s->owner = cuda::allocate(nbytes, device.index);
    s->data = s->owner.get();
#else
    fail("Storage: cannot allocate on ", device, ": bcos was built without CUDA");
#endif
  }
  return s;
}

std::shared_ptr<Storage> Storage::borrow(void* data, size_t nbytes, Device device,
                                         std::shared_ptr<void> keep_alive) {
  auto s = std::make_shared<Storage>();
  s->data = data;
  s->nbytes = nbytes;
  s->device = device;
  s->owner = std::move(keep_alive);
  return s;
}

bool cuda_compiled() {
#ifdef BCOS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef BCOS_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

void synchronize(Device d) {
#ifdef BCOS_WITH_CUDA
  if (d.is_cuda()) cuda::synchronize(d.index);
#else
  BCOS_CHECK(d.is_cpu(), "synchronize: ", d, " is not available: bcos was built without CUDA");
#endif
}

size_t peak_memory_bytes(Device d) {
#ifdef BCOS_WITH_CUDA
  if (d.is_cuda()) return cuda::memory_stats(d.index).peak_in_use;
#else
  BCOS_CHECK(d.is_cpu(), "peak_memory_bytes: ", d, " is not available: bcos was built without CUDA");
#endif
  return 0;
}

void reset_peak_memory(Device d) {
#ifdef BCOS_WITH_CUDA
  if (d.is_cuda()) cuda::reset_peak_memory(d.index);
#else
  BCOS_CHECK(d.is_cpu(), "reset_peak_memory: ", d, " is not available: bcos was built without CUDA");
#endif
}

namespace {
// A process-wide switch whose start comes from the environment: `on` or `off`; unset or empty:
// `fallback`; anything else keeps `fallback` and says so. Read at the first use (not at static
// initialisation, so another file's static initialiser cannot see it unset); set() wins.
struct EnvSwitch {
  const char *name, *on, *off;
  bool fallback;
  std::atomic<int> state{-1};  // -1: not read yet; else 0 / 1
  bool get() {
    int v = state.load(std::memory_order_relaxed);
    if (v < 0) {
      int read = from_env();
      state.compare_exchange_strong(v, read, std::memory_order_relaxed);  // a set() meanwhile wins
      v = state.load(std::memory_order_relaxed);
    }
    return v == 1;
  }
  void set(bool value) { state.store(value ? 1 : 0, std::memory_order_relaxed); }
  int from_env() const {
    const char* value = std::getenv(name);
    if (value == nullptr || std::string_view(value).empty()) return fallback;
    if (std::string_view(value) == on) return 1;
    if (std::string_view(value) == off) return 0;
    std::fprintf(stderr, "bcos: %s=%s is neither \"%s\" nor \"%s\"; using \"%s\"\n", name, value, on, off,
                 fallback ? on : off);
    return fallback;
  }
};
// BCOS_TF32=0 starts a program with TF32 off (every float32 product: cuBLAS, cuDNN and our own
// tensor-core attention), as set_allow_tf32(false) would; unset or 1: on, PyTorch's cuDNN default.
EnvSwitch g_allow_tf32{"BCOS_TF32", "1", "0", true};
EnvSwitch g_cudnn_graph_api{"BCOS_CUDNN_API", "graph", "legacy", false};
std::atomic<bool> g_deterministic{false};
std::atomic<bool> g_cudnn_benchmark{false};
}  // namespace
void set_allow_tf32(bool allow) { g_allow_tf32.set(allow); }
bool allow_tf32() { return g_allow_tf32.get(); }
void set_deterministic_algorithms(bool on) { g_deterministic.store(on, std::memory_order_relaxed); }
bool deterministic_algorithms() { return g_deterministic.load(std::memory_order_relaxed); }
void set_cudnn_benchmark(bool on) { g_cudnn_benchmark.store(on, std::memory_order_relaxed); }
bool cudnn_benchmark() { return g_cudnn_benchmark.load(std::memory_order_relaxed); }
void set_cudnn_graph_api(bool on) { g_cudnn_graph_api.set(on); }
bool cudnn_graph_api() { return g_cudnn_graph_api.get(); }

// ---- Tensor -----------------------------------------------------------------------------

Tensor::Tensor(std::shared_ptr<Storage> storage, const Shape& shape, const Strides& strides,
               int64_t offset, DType dtype)
    : storage_(std::move(storage)), shape_(shape), strides_(strides), offset_(offset),
      dtype_(dtype) {
  BCOS_CHECK(shape_.size() == strides_.size(), "Tensor: shape ", shape_, " and strides ",
             strides_, " differ in length");
  for (int64_t d : shape_) BCOS_CHECK(d >= 0, "Tensor: negative size in shape ", shape_);
}

int64_t Tensor::size(int64_t d) const {
  BCOS_CHECK(dim() > 0, "size: dim ", d, " asked of a 0-dim tensor");
  return shape_[wrap_dim(d, dim(), "size")];
}
int64_t Tensor::stride(int64_t d) const {
  BCOS_CHECK(dim() > 0, "stride: dim ", d, " asked of a 0-dim tensor");
  return strides_[wrap_dim(d, dim(), "stride")];
}

Device Tensor::device() const { return storage_ ? storage_->device : Device(); }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // as PyTorch: no element is out of place
  int64_t expected = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  BCOS_CHECK(defined(), "Tensor: access to an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_ * int64_t(element_size());
}

Tensor Tensor::alias(const Shape& shape, const Strides& strides, int64_t offset) const {
  BCOS_CHECK(defined(), "Tensor::alias: undefined tensor");
  return Tensor(storage_, shape, strides, offset, dtype_);
}

void Tensor::bump_version() const {
  if (storage_) storage_->version.fetch_add(1, std::memory_order_relaxed);
}
uint64_t Tensor::version() const { return storage_ ? storage_->version.load() : 0; }

double Tensor::item() const {
  BCOS_CHECK(defined(), "item: undefined tensor");
  BCOS_CHECK(numel() == 1, "item: a tensor with ", numel(), " elements (shape ", shape_,
             ") cannot be converted to a scalar");
  Tensor host = to_cpu_contiguous(*this);
  return dispatch_all(dtype_, [&]<class T>() { return double(*host.data<T>()); });
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  BCOS_CHECK(defined(), "to_vector: undefined tensor");
  Tensor host = to_cpu_contiguous(*this);
  std::vector<T> out(static_cast<size_t>(numel()));
  dispatch_all(dtype_, [&]<class S>() {
    const S* p = host.data<S>();
    for (size_t i = 0; i < out.size(); ++i) {
      if constexpr (std::is_same_v<S, Half> || std::is_same_v<S, BFloat16>)
        out[i] = static_cast<T>(float(p[i]));
      else
        out[i] = static_cast<T>(p[i]);
    }
  });
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;
template std::vector<bool> Tensor::to_vector<bool>() const;
template std::vector<int> Tensor::to_vector<int>() const;

}  // namespace bcos
