// Per-kernel timing, a small torch.profiler: between profile::start() and profile::stop(), every
// kernel call through tensor/dispatch.h is timed by its family name (conv2d_forward, binary,
// batch_norm_backward, ...) and device. On the CPU a call is timed by the wall clock around it
// (kernels run synchronously there). On a GPU it is bracketed by two timing events on the
// current stream, read only at stop(), so profiling adds no synchronisation: a row's time is the
// stream's time from the call's first queued work to its last, and the report's "GPU busy"
// (the sum of the rows) against the events' whole span shows how long the GPU sat idle, waiting
// for the host to queue work. Calls made from inside another timed call are not counted twice.
// Off (the default) a kernel call pays one relaxed atomic load (and the multi-op kernels a
// lookup of their op's name).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace bcos::profile {

struct Row {
  std::string kernel;   // the dispatch name, e.g. "conv2d_forward", with its op: "binary add"
  std::string device;   // "cpu", "cuda:0"
  int64_t calls = 0;
  double ms = 0;        // summed over the calls
};

struct Report {
  std::vector<Row> rows;   // by device, then time, largest first
  double wall_ms = 0;      // host time from start() to stop()
  double gpu_span_ms = 0;  // the GPU events' first to last (0 without GPU kernels)
  // A table: each kernel's calls, total, mean and share of its device's time, then per device
  // the kernels' sum beside the wall time (CPU) or the events' span (GPU).
  std::string format(size_t max_rows = 25) const;
};

class Scope;
namespace detail {
extern std::atomic<bool> g_active;
void begin(Scope& scope, const char* call, const char* op, const Tensor& on) noexcept;
void end(Scope& scope) noexcept;
}  // namespace detail

inline bool active() { return detail::g_active.load(std::memory_order_relaxed); }

// Starts collecting (a running profile is discarded and restarted).
void start();
// Stops collecting and returns the report: waits for the GPUs' queued work to read its events.
// Raises the first CUDA error met while timing (the report is then lost).
Report stop();

// Times one kernel call: `call` is the dispatch's call text, a string literal ("conv2d_forward(x,
// w, ...)"), cut at its '(' for the report; `op`, a string literal or null, the op of a kernel
// that runs several (op_name(BinaryOp::add): "add"); `on` is the tensor whose device runs it.
class Scope {
 public:
  Scope(const char* call, const Tensor& on, const char* op = nullptr) {
    if (active()) detail::begin(*this, call, op, on);
  }
  ~Scope() {
    if (open_) detail::end(*this);
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

  // Filled by detail::begin (no allocation per call).
  const char* call_ = nullptr;
  const char* op_ = nullptr;
  int device_ = -1;          // -1: the CPU
  int64_t start_ns_ = 0;     // CPU: the steady clock at the call
  void* event_ = nullptr;    // GPU: the timing event recorded before the call
  uint64_t generation_ = 0;  // the profile it belongs to (a stop() in between drops it)
  bool open_ = false;        // counted in this thread's nesting depth
  bool timed_ = false;       // the outermost timed call of this thread
};

}  // namespace bcos::profile
