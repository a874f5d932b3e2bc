// The CUDA emulator runtime's state (tensor/cuda/emulator/runtime.cpp) and the helpers its other
// part, stream capture and graphs (capture.cpp), works with. Not for the rest of the emulator:
// runtime.h is its interface.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace bcos::emu::runtime::internal {

enum class Kind { device, pinned };
struct Allocation {
  size_t bytes;
  int device;
  Kind kind;
};

// A stream's queue. Items run in order; `started` counts those taken off the front (an item
// runs to its end before another thread may take the next: see State::exec).
struct Queue {
  std::deque<std::function<void()>> items;
  uint64_t queued = 0, started = 0;
  std::shared_future<void> tail;  // the last work started beside the host from this queue
  int device = 0;
  bool blocking = false;  // a stream created without cudaStreamNonBlocking: ordered with the default stream
};
// An event's record: the work queued on `queue` before `through` (the record's own item
// included), then the beside-host work pending when that item ran.
struct Record {
  void* queue;
  uint64_t through;
  std::shared_future<void> tail;
  std::chrono::steady_clock::time_point at{};  // when the queue reached it (cudaEventElapsedTime)
  bool reached = false;
  uint64_t capture = 0;  // recorded inside this capture (nothing queued: it exists in the graph only)
};
// A stream capture in progress: the work queued on the stream since it began, which the graph
// it ends in replays. `invalid` once a call broke a rule of capture (the end then fails).
struct Capture {
  std::vector<std::function<void()>> items;
  std::thread::id thread;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  int device = 0;
  uint64_t id = 0;
  bool invalid = false;
};
// What cudaStreamEndCapture hands out (a cudaGraph_t) and cudaGraphInstantiate makes of it.
struct Graph {
  std::shared_ptr<const std::vector<std::function<void()>>> items;
  int device = 0;
};

struct State {
  std::mutex mutex;  // guards everything below but `exec`
  std::recursive_mutex exec;  // held while queued work runs: one host thread runs device work at a time
  std::map<uintptr_t, Allocation> allocations;  // by start address
  std::set<void*> streams, events;  // handles created and not destroyed
  std::set<void*> timing_events;     // events created without cudaEventDisableTiming
  std::map<void*, Queue> queues;  // by stream handle; device d's default stream under default_key(d)
  std::map<void*, std::shared_ptr<Record>> records;  // each event's last record
  std::map<void*, Capture> captures;                 // by stream handle
  uint64_t captures_begun = 0;
  int64_t graphs_alive = 0;  // graphs and executable graphs not destroyed
  size_t device_bytes_in_use = 0;
  // The first failure of queued work (a kernel's deadlock, say) not yet reported; its text stays
  // for cudaGetErrorString.
  bool device_error = false;
  std::string device_error_text = "unspecified launch failure";
};

State& state();
extern thread_local int t_device;
// The calling thread's interaction mode with captures (cudaThreadExchangeStreamCaptureMode).
extern thread_local cudaStreamCaptureMode t_capture_mode;

// The rest take the state's lock from their caller, but for those marked "locks".
cudaError_t record(cudaError_t err);  // notes err for cudaGetLastError; returns it
bool valid_stream(cudaStream_t s);
void wake_context(int device);
void* key_of(cudaStream_t s);  // the queue a stream names (nullptr: the thread's device's default stream)
Queue& queue_of(void* key);
// Appends an item to queue `key` as it is; returns how many the queue has had.
uint64_t push(void* key, std::function<void()> item);
std::shared_future<void> pending_tail(void* key);  // the beside-host work pending on a queue
void order_with_default_stream(void* key);
bool run_at_once();  // BCOS_CUDA_EMULATOR_SYNC=1
// locks: runs everything queued on `key`, waits for its beside-host work.
void finish(void* key);
// locks: cudaErrorLaunchFailure once after queued work failed, else cudaSuccess.
cudaError_t device_error();
void wait_for(std::shared_future<void> f);

// Captures (capture.cpp).
Capture* capture_of(void* key);  // the capture in progress on a stream, or nullptr
// Whether CUDA's rule refuses the calling thread a "potentially unsafe" call now (spoiling the
// captures that forbid it).
bool unsafe_call_refused();
// Whether any stream of `device` captures (spoiling those captures: a device-wide synchronisation).
bool device_capturing(int device);

}  // namespace bcos::emu::runtime::internal
