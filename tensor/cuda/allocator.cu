// The caching allocator behind every CUDA tensor. cudaMalloc / cudaFree are slow and cudaFree
// synchronises the device, so memory is taken from the driver in segments and recycled:
// requests are rounded up, served best-fit from cached free blocks (small and large requests in
// separate pools so small tensors do not fragment big segments), split when a block is much
// larger than asked for and merged with free neighbours of the same segment when returned.
// A block is handed out again only on the stream it was allocated on: work queued on that
// stream is ordered after any earlier use, so reuse needs no synchronisation.
// BCOS_CUDA_NO_CACHING=1 turns all of that off (as PyTorch's PYTORCH_NO_CUDA_MEMORY_CACHING):
// each tensor gets a cudaMalloc of exactly its size, freed with it. Slow; it is for memory
// checkers (compute-sanitizer on a GPU, AddressSanitizer on the CUDA emulator), which then see
// every tensor's own bounds instead of a segment's. Each free is a cudaFree, which waits for the
// whole device: with an NCCL collective stuck on a dead peer, freeing a tensor waits for it too.
// While a CUDA graph is captured (tensor/cuda/graph.cu) the capturing stream's allocations come
// from a pool of the graph's own, as PyTorch's private graph pools: every replay writes the same
// addresses, so those blocks -- freed or not -- are never handed to work outside the graph, and
// its segments stay until the graph is gone. A block is keyed by a pool instead of a stream
// there; blocks freed during the capture are reused by the capture, in its own order.
#include <cstdint>
#include <cstdlib>
#include <iomanip>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "tensor/cuda/internal.h"

namespace bcos::cuda {

namespace {

constexpr size_t kRound = 512;                    // every block is a multiple of this
constexpr size_t kSmallRequest = size_t(1) << 20;  // up to 1 MiB: small pool
constexpr size_t kSmallSegment = size_t(2) << 20;  // small pool segments: 2 MiB
constexpr size_t kMediumRequest = size_t(10) << 20;  // up to 10 MiB: shared 20 MiB segments
constexpr size_t kMediumSegment = size_t(20) << 20;
constexpr size_t kLargeRound = size_t(2) << 20;  // larger requests: their own segment

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

bool caching_disabled() {  // read at each allocation, so that a test can switch it
  const char* v = std::getenv("BCOS_CUDA_NO_CACHING");
  return v != nullptr && *v != 0 && std::string(v) != "0";
}

// One piece of a segment. Blocks of a segment form a doubly linked list in address order, so
// a returned block finds its neighbours without a search.
struct Block {
  int device = 0;
  cudaStream_t stream = nullptr;  // the stream it is reused on, or a graph pool's key
  size_t size = 0;
  char* ptr = nullptr;
  bool allocated = false;
  bool small = false;
  Block* prev = nullptr;
  Block* next = nullptr;
};

// Free blocks ordered so that lower_bound({stream, size}) is the best fit on that stream.
struct BlockOrder {
  bool operator()(const Block* a, const Block* b) const {
    auto key = [](const Block* x) {
      return std::make_tuple(reinterpret_cast<uintptr_t>(x->stream), x->size,
                             reinterpret_cast<uintptr_t>(x->ptr));
    };
    return key(a) < key(b);
  }
};
using Pool = std::set<Block*, BlockOrder>;
using PoolKey = cudaStream_t;  // a graph pool's key takes a stream's place in the block order

struct DeviceState {
  Pool small_pool, large_pool;
  size_t in_use = 0, reserved = 0, peak_in_use = 0, segments = 0, total = 0;
};

std::string human_bytes(size_t n) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(2);
  if (n >= (size_t(1) << 30))
    os << double(n) / double(size_t(1) << 30) << " GiB";
  else
    os << double(n) / double(size_t(1) << 20) << " MiB";
  return os.str();
}

class Allocator {
 public:
  std::shared_ptr<void> allocate(size_t nbytes, int device) {
    if (nbytes == 0) return nullptr;  // empty tensors own no memory
    check_device_index(device, "cuda::allocate");
    BCOS_CHECK(nbytes <= SIZE_MAX - kLargeRound, "cuda::allocate: ", nbytes,
               " bytes is beyond any device");
    if (caching_disabled()) return allocate_uncached(nbytes, device);
    cudaStream_t stream = stream_of(device);
    size_t size = round_up(nbytes, kRound);
    bool small = size <= kSmallRequest;

    std::lock_guard<std::mutex> lock(mu_);
    DeviceState& st = state(device);
    const bool capturing = capture_stream_ != nullptr && stream == capture_stream_;
    if (capturing) stream = capture_pool_;
    Pool& pool = small ? st.small_pool : st.large_pool;
    Block* block = take_best_fit(pool, stream, size);
    if (block == nullptr) {
      size_t segment = small ? kSmallSegment
                       : size <= kMediumRequest ? kMediumSegment
                                                : round_up(size, kLargeRound);
      block = new Block();
      block->device = device;
      block->stream = stream;
      block->size = segment;
      block->small = small;
      try {
        block->ptr = static_cast<char*>(malloc_segment(device, segment, nbytes, capturing));
      } catch (...) {
        delete block;
        throw;
      }
      st.reserved += segment;
      st.segments++;
    }
    split_if_worthwhile(pool, block, size);
    block->allocated = true;
    st.in_use += block->size;
    st.peak_in_use = std::max(st.peak_in_use, st.in_use);
    return std::shared_ptr<void>(block->ptr, [this, block](void*) noexcept { release(block); });
  }

  MemoryStats stats(int device) {
    check_device_index(device, "cuda::memory_stats");
    std::lock_guard<std::mutex> lock(mu_);
    DeviceState& st = state(device);
    if (st.total == 0) {
      DeviceGuard guard(device);
      size_t free_bytes = 0;
      BCOS_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &st.total));
    }
    MemoryStats s;
    s.in_use = st.in_use;
    s.cached = st.reserved;
    s.peak_in_use = st.peak_in_use;
    s.segments = st.segments;
    s.device_total = st.total;
    return s;
  }

  void reset_peak(int device) {
    check_device_index(device, "cuda::reset_peak_memory");
    std::lock_guard<std::mutex> lock(mu_);
    DeviceState& st = state(device);
    st.peak_in_use = st.in_use;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    BCOS_CHECK(capture_stream_ == nullptr, "cuda::empty_cache: not while a CUDA graph is being captured");
    for (size_t d = 0; d < devices_.size(); ++d) release_free_segments(int(d));
  }

  // From now until end_capture, `stream`'s allocations come from a new pool; returns its key.
  PoolKey begin_capture(int device, cudaStream_t stream) {
    BCOS_CHECK(!caching_disabled(), "CudaGraph.capture: needs the caching allocator (BCOS_CUDA_NO_CACHING is "
               "set): a graph's memory must stay its own between replays");
    std::lock_guard<std::mutex> lock(mu_);
    // One at a time: a capture synchronises the device first, which would spoil another one.
    BCOS_CHECK(capture_stream_ == nullptr, "CudaGraph.capture on cuda:", device, ": another thread is capturing a "
               "graph (captures run one at a time)");
    capture_stream_ = stream;
    capture_pool_ = reinterpret_cast<PoolKey>(kPoolTag | ++pools_made_);
    live_pools_.insert(capture_pool_);
    return capture_pool_;
  }
  void end_capture() {
    std::lock_guard<std::mutex> lock(mu_);
    capture_stream_ = nullptr;
  }
  // The graph is gone: its pool's free segments go back to the driver (blocks still held by
  // tensors follow when those are freed and the cache is emptied) -- not while another graph is
  // captured, as that needs a device-wide synchronisation.
  void release_pool(int device, PoolKey key) {
    std::lock_guard<std::mutex> lock(mu_);
    live_pools_.erase(key);
    if (capture_stream_ == nullptr) release_free_segments(device, key);
  }

 private:
  // BCOS_CUDA_NO_CACHING: a segment of exactly nbytes per tensor, returned to the driver with it.
  std::shared_ptr<void> allocate_uncached(size_t nbytes, int device) {
    std::lock_guard<std::mutex> lock(mu_);
    DeviceState& st = state(device);
    void* p = malloc_segment(device, nbytes, nbytes);
    st.in_use += nbytes;
    st.reserved += nbytes;
    st.segments++;
    st.peak_in_use = std::max(st.peak_in_use, st.in_use);
    return std::shared_ptr<void>(p, [this, device, nbytes](void* q) noexcept {
      // cudaFree waits for the device, so no queued kernel still reads q. At program exit the
      // runtime may be gone already: its error is dropped, as the memory goes with the process.
      if (cudaFree(q) != cudaSuccess) cudaGetLastError();
      try {
        std::lock_guard<std::mutex> relock(mu_);
        DeviceState& s = devices_[size_t(device)];
        s.in_use -= nbytes;
        s.reserved -= nbytes;
        s.segments--;
      } catch (...) {
      }
    });
  }

  DeviceState& state(int device) {
    if (devices_.size() <= size_t(device)) devices_.resize(size_t(device_count()));
    return devices_[size_t(device)];
  }

  static Block* take_best_fit(Pool& pool, cudaStream_t stream, size_t size) {
    Block key;
    key.stream = stream;
    key.size = size;
    key.ptr = nullptr;
    auto it = pool.lower_bound(&key);
    if (it == pool.end() || (*it)->stream != stream) return nullptr;
    Block* block = *it;
    pool.erase(it);
    return block;
  }

  // Small blocks split whenever a rounded unit is left; large ones only when the rest is
  // worth a large request, so that large segments do not crumble into small slivers.
  static void split_if_worthwhile(Pool& pool, Block* block, size_t size) {
    size_t remaining = block->size - size;
    bool split = block->small ? remaining >= kRound : remaining > kSmallRequest;
    if (!split) return;
    Block* rest = new Block(*block);
    rest->ptr = block->ptr + size;
    rest->size = remaining;
    rest->allocated = false;
    rest->prev = block;
    rest->next = block->next;
    if (block->next) block->next->prev = rest;
    block->next = rest;
    block->size = size;
    pool.insert(rest);
  }

  void* malloc_segment(int device, size_t bytes, size_t requested, bool capturing = false) {
    DeviceGuard guard(device);
    void* p = nullptr;
    cudaError_t err = cudaSuccess;
    if (capturing) {
      // cudaMalloc is among the calls a capture forbids outside relaxed mode: it is not a node of
      // the graph. That is as meant here (the segment outlives the graph's replays), so relaxed.
      cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
      BCOS_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
      err = cudaMalloc(&p, bytes);
      BCOS_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
      // No retry after freeing the cache: that synchronises the device, which a capture forbids.
      if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        throw OutOfMemoryError(str("CUDA out of memory on cuda:", device, " while capturing a CUDA graph: requested ",
                                   requested, " bytes (", human_bytes(requested), "); free the cache (empty_cache) "
                                   "before the capture, or capture less"));
      }
      BCOS_CUDA_CHECK(err);
      return p;
    }
    err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear it: we handle out-of-memory ourselves
      // (Freeing the cache synchronises the device: not while another thread captures a graph.)
      if (capture_stream_ == nullptr) {
        release_free_segments(device);
        err = cudaMalloc(&p, bytes);
      }
      if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        DeviceState& st = state(device);
        size_t free_bytes = 0, total = 0;
        if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) cudaGetLastError();
        throw OutOfMemoryError(str("CUDA out of memory on cuda:", device, ": requested ", requested, " bytes (",
                                   human_bytes(requested), "); ", st.in_use, " bytes in use by tensors (",
                                   human_bytes(st.in_use), "), ", st.reserved, " bytes cached by the allocator (",
                                   human_bytes(st.reserved), "), ", free_bytes, " bytes free of ", total,
                                   " bytes total on the device (", human_bytes(total), ")"));
      }
    }
    BCOS_CUDA_CHECK(err);
    return p;
  }

  // Returns every segment that is entirely free to the driver (only those of `only`, a stream or
  // graph pool, when given), but a live graph's. Callers hold mu_.
  void release_free_segments(int device, cudaStream_t only = nullptr) {
    DeviceState& st = state(device);
    std::vector<Block*> whole;
    for (Pool* pool : {&st.small_pool, &st.large_pool})
      for (Block* b : *pool)
        if (b->prev == nullptr && b->next == nullptr && live_pools_.count(b->stream) == 0 &&
            (only == nullptr || b->stream == only))
          whole.push_back(b);
    if (whole.empty()) return;
    DeviceGuard guard(device);
    // Kernels queued before the blocks were returned may still be reading them.
    BCOS_CUDA_CHECK(cudaDeviceSynchronize());
    for (Block* b : whole) {
      (b->small ? st.small_pool : st.large_pool).erase(b);
      BCOS_CUDA_CHECK(cudaFree(b->ptr));
      st.reserved -= b->size;
      st.segments--;
      delete b;
    }
  }

  // The deleter of every allocation: must not throw, and touches no CUDA API, so it is safe
  // even after the runtime has shut down at program exit.
  void release(Block* block) noexcept {
    try {
      std::lock_guard<std::mutex> lock(mu_);
      DeviceState& st = devices_[size_t(block->device)];
      Pool& pool = block->small ? st.small_pool : st.large_pool;
      block->allocated = false;
      st.in_use -= block->size;
      if (Block* prev = block->prev; prev != nullptr && !prev->allocated) {
        pool.erase(prev);  // before its size (part of the ordering key) changes
        prev->size += block->size;
        prev->next = block->next;
        if (block->next) block->next->prev = prev;
        delete block;
        block = prev;
      }
      if (Block* next = block->next; next != nullptr && !next->allocated) {
        pool.erase(next);
        block->size += next->size;
        block->next = next->next;
        if (next->next) next->next->prev = block;
        delete next;
      }
      pool.insert(block);
    } catch (...) {
      // Only a failing mutex or set insertion can land here; leaking the block is the safe
      // outcome for a deleter.
    }
  }

  std::mutex mu_;
  std::vector<DeviceState> devices_;
  // Graph pools: keys no stream handle can be (stream handles are addresses: the tag's top bits
  // are never one there); the stream capturing now (one at a time) and its pool; the pools whose
  // graph lives.
  static constexpr uintptr_t kPoolTag = uintptr_t(0xB0C5) << 48;
  uint64_t pools_made_ = 0;
  cudaStream_t capture_stream_ = nullptr;
  PoolKey capture_pool_ = nullptr;
  std::set<PoolKey> live_pools_;
};

// Leaked on purpose: tensors held by static objects are freed during static destruction, in
// an order we do not control, and their deleters must still find the allocator alive.
Allocator& allocator() {
  static Allocator* instance = new Allocator();
  return *instance;
}

}  // namespace

std::shared_ptr<void> allocate(size_t nbytes, int device) {
  return allocator().allocate(nbytes, device);
}

MemoryStats memory_stats(int device) { return allocator().stats(device); }

void reset_peak_memory(int device) { allocator().reset_peak(device); }

void empty_cache() { allocator().empty_cache(); }

void* begin_capture_pool(int device, void* stream) {
  return allocator().begin_capture(device, static_cast<cudaStream_t>(stream));
}
void end_capture_pool() { allocator().end_capture(); }
void release_capture_pool(int device, void* pool) { allocator().release_pool(device, static_cast<cudaStream_t>(pool)); }

}  // namespace bcos::cuda
