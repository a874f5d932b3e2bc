// Per-kernel timing (tensor/profile.h): CPU calls by the steady clock, GPU calls by timing-event
// pairs read back in batches.
#include "tensor/profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "tensor/error.h"

#ifdef BCOS_WITH_CUDA
#include "tensor/cuda/backend.h"
#endif

namespace bcos::profile {

namespace detail {
std::atomic<bool> g_active{false};
}  // namespace detail

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

struct Total {
  int64_t calls = 0;
  double ms = 0;
};

// One GPU call's events, read at the next batch (or stop()).
struct GpuCall {
  const char* call;
  const char* op;
  int device;
  void* before;
  void* after;
};

// Past this many unread GPU calls the queue is read (one wait for the GPU to catch up), so a
// long profile holds a bounded number of events.
constexpr size_t kMaxPending = 8192;

struct State {
  std::mutex mutex;
  uint64_t generation = 0;
  int64_t start_ns = 0;
  std::map<std::tuple<const char*, const char*, int>, Total> totals;  // by (call text, op, device)
  std::vector<GpuCall> pending;
  std::map<int, std::vector<void*>> spare_events;  // by device: recorded and read, ready again
  std::map<int, void*> span_start;                 // by device: recorded before its first call
  std::map<int, double> span_ms;                   // by device: span start to the latest call read
  // A CUDA error met while timing (a Scope's end cannot throw: it runs in a destructor, perhaps
  // while an exception unwinds): profiling of that device stops, and stop() raises it.
  std::string error;
};

State& state() {
  static State* s = new State;  // never destroyed: a Scope may close during static destruction
  return *s;
}

thread_local int t_depth = 0;

#ifdef BCOS_WITH_CUDA
// A recorded event on `device`'s current stream. Caller holds the lock.
void* record_on(State& s, int device) {
  std::vector<void*>& spare = s.spare_events[device];
  void* e = nullptr;
  if (spare.empty()) {
    e = cuda::create_event(device, true);
  } else {
    e = spare.back();
    spare.pop_back();
  }
  cuda::record_event(device, e, cuda::current_stream(device));
  return e;
}

// Reads every pending call's events into the totals; the span runs to the latest closing event.
// Caller holds the lock.
void read_pending(State& s) {
  // Every event read must have completed: calls may have run on several streams (a loader's
  // side stream), and the span's start on yet another.
  for (auto& [device, e] : s.span_start) cuda::event_synchronize(device, e);
  for (const GpuCall& c : s.pending) cuda::event_synchronize(c.device, c.after);
  for (const GpuCall& c : s.pending) {
    Total& t = s.totals[{c.call, c.op, c.device}];
    t.calls += 1;
    t.ms += cuda::event_elapsed_ms(c.device, c.before, c.after);
    double& span = s.span_ms[c.device];
    span = std::max(span, double(cuda::event_elapsed_ms(c.device, s.span_start.at(c.device), c.after)));
  }
  for (const GpuCall& c : s.pending) {
    s.spare_events[c.device].push_back(c.before);
    s.spare_events[c.device].push_back(c.after);
  }
  s.pending.clear();
}
#endif

std::string device_name(int device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }

}  // namespace

namespace detail {

// Neither throws: a Scope's end runs in a destructor. A CUDA failure is kept for stop() and
// ends the GPU timing (the device's sticky errors would fail every later record anyway).
void begin(Scope& scope, const char* call, const char* op, const Tensor& on) noexcept {
  scope.open_ = true;
  scope.timed_ = t_depth++ == 0;
  if (!scope.timed_) return;
  scope.call_ = call;
  scope.op_ = op;
  scope.device_ = on.is_cuda() ? on.device().index : -1;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  scope.generation_ = s.generation;
  if (scope.device_ < 0) {
    scope.start_ns_ = now_ns();
    return;
  }
#ifdef BCOS_WITH_CUDA
  // (Inside a CUDA graph capture nothing runs to time, and its events cannot be waited for.)
  if (!s.error.empty() || cuda::capturing()) {
    scope.timed_ = false;
    return;
  }
  try {
    if (!s.span_start.count(scope.device_)) {
      void* e = cuda::create_event(scope.device_, true);
      s.span_start[scope.device_] = e;
      cuda::record_event(scope.device_, e, cuda::current_stream(scope.device_));
    }
    scope.event_ = record_on(s, scope.device_);
  } catch (const std::exception& e) {
    s.error = e.what();
    scope.timed_ = false;
  }
#endif
}

void end(Scope& scope) noexcept {
  --t_depth;
  if (!scope.timed_) return;
  State& s = state();
  const int64_t end_ns = now_ns();
  std::lock_guard<std::mutex> lock(s.mutex);
  const bool current = active() && scope.generation_ == s.generation;
  if (scope.device_ < 0) {
    if (current) {
      Total& t = s.totals[{scope.call_, scope.op_, -1}];
      t.calls += 1;
      t.ms += double(end_ns - scope.start_ns_) * 1e-6;
    }
    return;
  }
#ifdef BCOS_WITH_CUDA
  if (!current || !s.error.empty()) {  // the profile it began in was stopped: its event goes back unread
    s.spare_events[scope.device_].push_back(scope.event_);
    return;
  }
  try {
    s.pending.push_back({scope.call_, scope.op_, scope.device_, scope.event_, nullptr});
    s.pending.back().after = record_on(s, scope.device_);
    if (s.pending.size() >= kMaxPending) read_pending(s);
  } catch (const std::exception& e) {
    s.error = e.what();
    if (!s.pending.empty() && s.pending.back().after == nullptr) s.pending.pop_back();
  }
#endif
}

}  // namespace detail

void start() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
#ifdef BCOS_WITH_CUDA
  for (const GpuCall& c : s.pending) {
    s.spare_events[c.device].push_back(c.before);
    s.spare_events[c.device].push_back(c.after);
  }
  for (auto& [device, e] : s.span_start) cuda::destroy_event(device, e);
#endif
  s.pending.clear();
  s.span_start.clear();
  s.span_ms.clear();
  s.totals.clear();
  s.error.clear();
  s.generation += 1;
  s.start_ns = now_ns();
  detail::g_active.store(true, std::memory_order_relaxed);
}

Report stop() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  Report r;
  if (!active()) return r;
  detail::g_active.store(false, std::memory_order_relaxed);
  r.wall_ms = double(now_ns() - s.start_ns) * 1e-6;
#ifdef BCOS_WITH_CUDA
  if (s.error.empty()) {
    try {
      read_pending(s);
    } catch (const std::exception& e) {
      s.error = e.what();
    }
  }
  if (!s.error.empty()) {
    const std::string error = s.error;
    s.error.clear();
    s.pending.clear();  // their events may be unusable; they are not reused
    for (auto& [device, e] : s.span_start) cuda::destroy_event(device, e);
    s.span_start.clear();
    s.totals.clear();
    s.generation += 1;
    fail("profile: timing the GPU's kernels failed: ", error);
  }
  for (auto& [device, ms] : s.span_ms) r.gpu_span_ms = std::max(r.gpu_span_ms, ms);
  for (auto& [device, e] : s.span_start) cuda::destroy_event(device, e);
  s.span_start.clear();
#endif
  // Merge by name (the text before '(', then the op) and device.
  std::map<std::pair<std::string, int>, Total> merged;
  for (auto& [key, t] : s.totals) {
    const auto& [call, op, device] = key;
    const char* paren = std::strchr(call, '(');
    std::string name = paren ? std::string(call, paren) : std::string(call);
    if (op) name += std::string(" ") + op;
    Total& m = merged[{name, device}];
    m.calls += t.calls;
    m.ms += t.ms;
  }
  for (auto& [key, t] : merged) r.rows.push_back({key.first, device_name(key.second), t.calls, t.ms});
  std::sort(r.rows.begin(), r.rows.end(), [](const Row& a, const Row& b) {
    return a.device != b.device ? a.device < b.device : a.ms > b.ms;
  });
  s.totals.clear();
  s.generation += 1;
  return r;
}

std::string Report::format(size_t max_rows) const {
  std::string out;
  char line[256];
  std::map<std::string, double> device_ms;
  for (const Row& row : rows) device_ms[row.device] += row.ms;
  std::string device;
  size_t shown = 0, hidden = 0;
  double hidden_ms = 0;
  auto flush_hidden = [&] {
    if (hidden) {
      std::snprintf(line, sizeof line, "  %-30s %8s %10.2f   (%zu more kernels)\n", "...", "", hidden_ms, hidden);
      out += line;
    }
    hidden = 0;
    hidden_ms = 0;
  };
  for (const Row& row : rows) {
    if (row.device != device) {
      flush_hidden();
      device = row.device;
      shown = 0;
      std::snprintf(line, sizeof line, "%-32s %8s %10s %10s %6s\n", ("kernel (" + device + ")").c_str(), "calls",
                    "total ms", "mean us", "share");
      out += line;
    }
    if (shown++ >= max_rows) {
      hidden += 1;
      hidden_ms += row.ms;
      continue;
    }
    const double total = device_ms[device];
    std::snprintf(line, sizeof line, "  %-30s %8lld %10.2f %10.1f %5.1f%%\n", row.kernel.c_str(),
                  static_cast<long long>(row.calls), row.ms, row.calls ? 1e3 * row.ms / double(row.calls) : 0.0,
                  total > 0 ? 100.0 * row.ms / total : 0.0);
    out += line;
  }
  flush_hidden();
  for (auto& [name, ms] : device_ms) {
    if (name == "cpu") {
      std::snprintf(line, sizeof line, "cpu: kernels %.2f ms of %.2f ms wall (%.1f%%; the rest: autograd, allocation, "
                    "the caller; calls from several threads add up)\n", ms, wall_ms,
                    wall_ms > 0 ? 100.0 * ms / wall_ms : 0.0);
    } else {
      std::snprintf(line, sizeof line, "%s: kernels %.2f ms of a %.2f ms span (%.1f%% busy; the rest: waiting for "
                    "the host to queue work)\n", name.c_str(), ms, gpu_span_ms,
                    gpu_span_ms > 0 ? 100.0 * ms / gpu_span_ms : 0.0);
    }
    out += line;
  }
  return out;
}

}  // namespace bcos::profile
