// What conv.cu (cuDNN's legacy descriptor API) and conv_graph.cu (its graph API) share: the
// per-thread handle, the data types, which failures let the next algorithm try, and a pair of
// timing events for cudnn_benchmark(). Internal to the CUDA backend.
#pragma once

#include <cudnn.h>

#include <vector>

#include "tensor/cuda/internal.h"

namespace bcos::cuda::cudnn {

// The cuDNN found at run time must be the major version compiled against (its pip wheel and a
// system copy can both be on the search path).
inline void check_version() {
  static const size_t found = cudnnGetVersion();
  BCOS_CHECK(found / 10000 == CUDNN_MAJOR, "cuDNN: compiled against version ", CUDNN_MAJOR, ".", CUDNN_MINOR,
             " but the library loaded is ", found, "; put cuDNN ", CUDNN_MAJOR, "'s library first on LD_LIBRARY_PATH");
}

// One cuDNN handle per (thread, device), bound to the thread's current stream on every use. They
// are never destroyed, as in PyTorch: at a thread's or the program's exit the CUDA context may
// already be gone, and cudnnDestroy then crashes.
inline cudnnHandle_t handle(int device) {
  thread_local std::vector<cudnnHandle_t> by_device;
  check_device_index(device, "cuda::cudnn::handle");
  if (by_device.size() <= size_t(device)) by_device.resize(size_t(device) + 1, nullptr);
  cudnnHandle_t& h = by_device[size_t(device)];
  if (!h) {
    check_version();
    BCOS_CUDNN_CHECK(cudnnCreate(&h));
  }
  BCOS_CUDNN_CHECK(cudnnSetStream(h, stream_of(device)));
  return h;
}

inline cudnnDataType_t data_type(DType dt, const char* op) {
  if (dt == DType::f32) return CUDNN_DATA_FLOAT;
  if (dt == DType::f64) return CUDNN_DATA_DOUBLE;
  if (dt == DType::bf16) return CUDNN_DATA_BFLOAT16;
  if (dt == DType::f16) return CUDNN_DATA_HALF;
  fail(op, ": cuDNN convolutions take float32, float64 or (autocast) bfloat16 / float16, got ", dtype_name(dt));
}

// The convolution's own arithmetic: float32 for the 16-bit operand types.
inline cudnnDataType_t compute_type(DType dt, const char* op) {
  return dt == DType::bf16 || dt == DType::f16 ? CUDNN_DATA_FLOAT : data_type(dt, op);
}

// The statuses with which an algorithm (or engine) gives way to the next: NOT_SUPPORTED (cuDNN 9
// refines it into sub-codes 3001...), a pointer not aligned as the algorithm needs, and a texture
// it could not create. Anything else (bad parameters, execution failures) is raised.
inline bool gives_way(cudnnStatus_t status) {
  return CUDNN_STATUS_CATEGORY(status) == CUDNN_STATUS_NOT_SUPPORTED ||
         status == CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER ||
         status == CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED;
}

// A pair of timing events on `device`, destroyed with it.
struct TimedRun {
  int device;
  EventHandle start = nullptr, end = nullptr;
  explicit TimedRun(int device_) : device(device_) {
    start = create_event(device, true);
    try {
      end = create_event(device, true);
    } catch (...) {
      destroy_event(device, start);
      throw;
    }
  }
  ~TimedRun() {
    if (start) destroy_event(device, start);
    if (end) destroy_event(device, end);
  }
  TimedRun(const TimedRun&) = delete;
  TimedRun& operator=(const TimedRun&) = delete;
  float elapsed_ms() const {
    event_synchronize(device, end);
    return event_elapsed_ms(device, start, end);
  }
};

// ---- the graph API's convolutions (conv_graph.cu) -------------------------------------------
enum class Direction { forward, backward_data, backward_filter };

// One convolution direction through cuDNN's graph API, with x [N, C, H, W], w [K, C/groups, KH,
// KW] and y [N, K, OH, OW] dense tensors of one type (`direction` says which one it writes:
// y forward, x backward-data, w backward-filter). The heuristics' engine configurations (mode
// INSTANT, then FALLBACK) are tried in order -- those that break deterministic_algorithms() or
// allow_tf32() left out -- and the first that runs is kept per shape, type and alignment (with
// cudnn_benchmark(): each that runs is timed and the fastest kept). Returns false having written
// nothing when none runs or the graph cannot be built; conv.cu then takes its legacy path.
bool convolve(Direction direction, int device, const Tensor& x, const Tensor& w, const Tensor& y,
              const Conv2dParams& p, const char* op);

}  // namespace bcos::cuda::cudnn
