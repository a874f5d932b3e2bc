// Pinned memory and the side-stream stager (see tensor/transfer.h). Each slot owns device
// buffers that live on the copy stream, and two events: `filled` (recorded on the copy stream
// after the slot's copies; the caller's stream waits for it before reading) and `consumed`
// (recorded on the caller's stream after it read the slot; the copy stream waits for it before
// overwriting). Reads clone the slot on the caller's stream, so the tensors handed out belong to
// that stream's allocator pool like any other, and a slot is reused as soon as its clone is queued.
#include "tensor/transfer.h"

#include <mutex>

#include "tensor/copy.h"
#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#endif

namespace bcos {

Tensor empty_pinned(const Shape& shape, DType dtype, Device for_device) {
#ifdef BCOS_WITH_CUDA
  if (cuda_device_count() > 0) {
    for (int64_t d : shape) BCOS_CHECK(d >= 0, "empty_pinned: negative size in shape ", shape);
    const size_t nbytes = size_t(shape.numel()) * dtype_size(dtype);
    std::shared_ptr<void> block = cuda::allocate_pinned(nbytes, for_device.is_cuda() ? for_device.index : -1);
    void* data = block.get();
    return from_blob(data, shape, dtype, Device(), std::move(block));
  }
#endif
  (void)for_device;  // nothing to pin without CUDA
  return empty(shape, dtype);
}

Tensor pin_memory(const Tensor& t, Device for_device) {
  BCOS_CHECK(t.defined() && t.is_cpu(), "pin_memory: needs a CPU tensor, got ",
             t.defined() ? t.device().name() : std::string("an undefined tensor"));
  Tensor out = empty_pinned(t.shape(), t.dtype(), for_device);
  copy_into(out, t);
  return out;
}

#ifdef BCOS_WITH_CUDA

namespace {
// One side stream per device for the whole process: the stager's copies queue there.
cuda::StreamHandle copy_stream(int device) {
  static std::mutex mu;
  static std::vector<cuda::StreamHandle> streams;
  std::lock_guard<std::mutex> lock(mu);
  if (streams.size() <= size_t(device)) streams.resize(size_t(device) + 1, nullptr);
  if (!streams[size_t(device)]) streams[size_t(device)] = cuda::create_stream(device);
  return streams[size_t(device)];
}

// Makes `stream` the thread's current stream on `device` for a scope.
struct StreamScope {
  int device;
  cuda::StreamHandle previous;
  StreamScope(int d, cuda::StreamHandle s) : device(d), previous(cuda::current_stream(d)) {
    cuda::set_current_stream(d, s);
  }
  ~StreamScope() { cuda::set_current_stream(device, previous); }
};
}  // namespace

struct DeviceStager::Slot {
  int device;
  std::vector<Tensor> host, buffers;  // host: kept alive until the copy from it has finished
  cuda::EventHandle filled = nullptr, consumed = nullptr;
  bool ever_consumed = false, full = false;
  explicit Slot(int d) : device(d), filled(cuda::create_event(d)), consumed(cuda::create_event(d)) {}
  ~Slot() {
    // The buffers go back to the side stream's pool: the copies into them and the caller's
    // reads of them must be over before anything else may be written there.
    try {
      cuda::event_synchronize(device, filled);
      if (ever_consumed) cuda::event_synchronize(device, consumed);
    } catch (...) {  // a destructor must not throw; the device is gone or broken
    }
    host.clear();
    buffers.clear();
    cuda::destroy_event(device, filled);
    cuda::destroy_event(device, consumed);
  }
};

DeviceStager::DeviceStager(Device device, int slots) : device_(device) {
  BCOS_CHECK(device.is_cuda(), "DeviceStager: stages copies to a CUDA device, got ", device);
  BCOS_CHECK(device.index >= 0 && device.index < cuda_device_count(), "DeviceStager: no device ", device, " (",
             cuda_device_count(), " CUDA devices visible)");
  BCOS_CHECK(slots >= 1, "DeviceStager: needs at least one slot, got ", slots);
  for (int i = 0; i < slots; ++i) slots_.push_back(std::make_unique<Slot>(device.index));
}

DeviceStager::~DeviceStager() = default;

void DeviceStager::stage(const std::vector<Tensor>& host) {
  BCOS_CHECK(waiting() < int(slots_.size()), "DeviceStager::stage: all ", slots_.size(),
             " slots hold groups not yet taken (take() one first)");
  Slot& slot = *slots_[size_t(staged_) % slots_.size()];
  const int dev = device_.index;
  cuda::event_synchronize(dev, slot.filled);  // the slot's previous copy has read its host tensors
  slot.host.clear();
  const cuda::StreamHandle side = copy_stream(dev);
  StreamScope scope(dev, side);
  // Before overwriting (or freeing) the slot's buffers, wait for the reads queued on the caller's stream.
  if (slot.ever_consumed) cuda::stream_wait_event(dev, side, slot.consumed);
  slot.buffers.resize(host.size());
  for (size_t i = 0; i < host.size(); ++i) {
    const Tensor& h = host[i];
    BCOS_CHECK(h.defined() && h.is_cpu(), "DeviceStager::stage: tensor ", i, " must be a CPU tensor, got ",
               h.defined() ? h.device().name() : std::string("an undefined tensor"));
    const Tensor src = h.is_contiguous() ? h : h.contiguous();
    Tensor& buf = slot.buffers[i];
    if (!buf.defined() || buf.shape() != src.shape() || buf.dtype() != src.dtype())
      buf = empty(src.shape(), {src.dtype(), device_});  // allocated on (and reused only by) the side stream
    cuda::copy_host_to_device(buf.raw_data(), src.raw_data(), size_t(src.numel()) * src.element_size(), dev);
    slot.host.push_back(src);
  }
  cuda::record_event(dev, slot.filled, side);
  slot.full = true;
  ++staged_;
}

std::vector<Tensor> DeviceStager::take() {
  BCOS_CHECK(waiting() > 0, "DeviceStager::take: nothing staged");
  Slot& slot = *slots_[size_t(taken_) % slots_.size()];
  const int dev = device_.index;
  const cuda::StreamHandle mine = cuda::current_stream(dev);
  cuda::stream_wait_event(dev, mine, slot.filled);
  std::vector<Tensor> out;
  for (const Tensor& buf : slot.buffers) {
    Tensor t = empty(buf.shape(), {buf.dtype(), device_});
    copy_into(t, buf);
    out.push_back(std::move(t));
  }
  cuda::record_event(dev, slot.consumed, mine);
  slot.ever_consumed = true;
  slot.full = false;
  ++taken_;
  return out;
}

#else

struct DeviceStager::Slot {};

DeviceStager::DeviceStager(Device device, int) : device_(device) {
  fail("DeviceStager: cannot stage copies to ", device, ": bcos was built without CUDA");
}
DeviceStager::~DeviceStager() = default;
void DeviceStager::stage(const std::vector<Tensor>&) { fail("DeviceStager: built without CUDA"); }
std::vector<Tensor> DeviceStager::take() { fail("DeviceStager: built without CUDA"); }

#endif

}  // namespace bcos
