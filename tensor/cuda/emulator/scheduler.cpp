// The CUDA emulator's block scheduler: a launch is checked and queued on its stream; when the
// queue reaches it (runtime.cpp), the grid runs on that host thread, one block after another,
// each of the block's threads as a fiber with its own stack. A fiber runs until
// it finishes or reaches a barrier (__syncthreads) or a warp operation (shuffle, ballot), where
// it hands over to the next lane of its warp; a pass resumes every fiber that can go on, then
// releases the barriers that everyone reached. Nothing left to run while threads still wait is
// a deadlock -- a __syncthreads some threads skip, a shuffle that lanes left -- and fails the
// kernel instead of hanging, naming it and the block (the next synchronisation reports it).
// CUDA promises no order among blocks, nor among a block's threads between barriers, so neither
// does the emulator: each launch draws the order in which its blocks run and its threads take
// turns (the schedule below), and code that leans on one order shows it under another.
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tensor/cuda/emulator/device.h"
#include "tensor/cuda/emulator/runtime.h"
#include "tensor/error.h"

// Under AddressSanitizer every switch is announced through its fiber API, so that it knows which
// stack runs, and a stack is unpoisoned before a new thread starts on it: frames that never
// returned leave their red zones behind -- only the few at the top when a thread finished, but
// anywhere in a stack that a failed block (a deadlock) abandoned. Kernels' reads and writes are
// then checked like any other code's: with BCOS_CUDA_NO_CACHING=1 (tensor/cuda/allocator.cu),
// against each tensor's bounds.
#if defined(__SANITIZE_ADDRESS__)
#include <pthread.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define BCOS_EMU_ASAN 1
#endif

// ---- context switch ---------------------------------------------------------------------------
// switch_stack(&save, next): pushes the callee-saved registers (and the SSE / x87 control words)
// on the current stack, stores its pointer in *save, loads `next` and pops the same frame. The
// System V ABI needs nothing else kept across a call; glibc's swapcontext would also make a
// signal-mask syscall each time, which costs more than most emulated threads do.
#if !defined(__x86_64__)
#error "the CUDA emulator's fibers are written for x86-64"
#endif
extern "C" void bcos_emu_switch_stack(void** save, void* next);
asm(R"(
  .text
  .globl bcos_emu_switch_stack
  .type bcos_emu_switch_stack, @function
bcos_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size bcos_emu_switch_stack, .-bcos_emu_switch_stack
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace bcos::emu {

thread_local ThreadState* current_thread = nullptr;
thread_local uint3 block_index;
thread_local dim3 block_dim, grid_dim;

namespace {

enum class Wait { none, block, warp, done };

struct Fiber {
  ThreadState thread;
  void* sp = nullptr;
  Wait wait = Wait::none;
  uint64_t warp_ops = 0;  // warp operations passed: which half of the exchange buffer is in use
  const char* warp_op = "";
};

struct WarpBuffer {
  uint64_t bits[2][32];
  unsigned masks[2][32];
};

constexpr size_t kStackBytes = 256 * 1024;  // debug builds keep every local on the stack
constexpr size_t kGuardBytes = 4096;        // an inaccessible page below each stack
constexpr int kMaxThreads = 1024;

// State of the grid being run. One grid at a time in the whole process (the lock in run_grid):
// __shared__ arrays are statics, shared by every block.
struct Grid {
  const char* kernel = "";
  const std::function<void()>* body = nullptr;  // the kernel with its arguments
  std::vector<Fiber> fibers;
  std::vector<WarpBuffer> warps;
  // This launch's turn order: turn[k] is the k-th thread to run, turn_of its inverse, and
  // next_in_warp[t] the lane of t's warp that follows t in that order (cyclically).
  std::vector<int> turn, turn_of, next_in_warp;
  void* scheduler_sp = nullptr;
  Fiber* running = nullptr;
  std::string error;  // set by a fiber that cannot go on; raised once the fiber has yielded
  char* stacks = nullptr;
  // Under BCOS_CUDA_EMULATOR_TRACE: each thread's running time in the block being run (ns), the
  // one it is charged to now (-1: the scheduler) and since when.
  std::vector<uint64_t> busy;
  int charged = -1;
  uint64_t charged_since = 0;
  int64_t packs = 0;  // 16-byte pack accesses (count_pack_access)
};

Grid& grid_state() {
  static Grid g;
  return g;
}
// How many times each kernel (by its launch's text, "reduce_columns<OP, T, Out>") has run: what
// tests read to check that a shape takes the launch meant for it. Guarded by grid_lock.
std::map<std::string, int64_t>& kernel_runs() {
  static std::map<std::string, int64_t> runs;
  return runs;
}
// How many 16-byte pack accesses each kernel has made (count_pack_access). Guarded by grid_lock.
std::map<std::string, int64_t>& pack_runs() {
  static std::map<std::string, int64_t> packs;
  return packs;
}
std::mutex& grid_lock() {
  static std::mutex m;
  return m;
}

// BCOS_CUDA_EMULATOR_TRACE=<file>: a line per launch (tab-separated: kernel, grid, block, blocks,
// threads per block, and in ns of this host's time: all threads' running time, the
// longest block's, the longest thread's, and the mean over blocks of each block's longest thread).
// The emulator runs every thread one after another, so the sum is the launch's work, and a
// block's longest thread its critical path: a GPU runs a block's threads side by side and cannot
// end the block sooner -- the measure of a kernel whose per-thread loop grows with the batch while
// its grid does not, which no CPU profile shows. The mean over blocks leaves out the one thread
// that met a page fault or a cold cache (tools/emu_trace.py sums a trace by kernel).
std::mutex& trace_lock() {
  static std::mutex m;
  return m;
}
std::FILE* open_trace(const char* path) {
  std::FILE* f = std::fopen(path, "w");
  if (f == nullptr) fail("CUDA emulator: cannot open the trace file ", path, " for writing");
  std::fputs("kernel\tgrid\tblock\tblocks\tthreads\twork_ns\tmax_block_ns\tmax_thread_ns\tblock_path_ns\n", f);
  return f;
}
struct Trace {
  bool started = false;  // BCOS_CUDA_EMULATOR_TRACE read (or set_trace called)
  std::FILE* file = nullptr;
};
Trace& trace_state() {  // under trace_lock()
  static Trace t;
  return t;
}
std::FILE* trace_file() {  // under trace_lock()
  Trace& t = trace_state();
  if (!t.started) {
    t.started = true;
    if (const char* env = std::getenv("BCOS_CUDA_EMULATOR_TRACE"); env != nullptr && *env != '\0')
      t.file = open_trace(env);
  }
  return t.file;
}

// Wall time (~25 ns a read). A thread's CPU time would leave out what other processes took while
// this one waited for a core, but its clock is a system call (~1.7 us on a VM, more than most
// emulated threads run, charged to every barrier-heavy kernel); a preemption instead lands on the
// one thread that ran then, which the mean over blocks dilutes.
uint64_t now_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

// Charges the time since the last switch to the thread that ran, and starts `next`'s (-1: the
// scheduler's, charged to nobody). Only while tracing.
void charge_switch(int next) {
  Grid& g = grid_state();
  if (g.busy.empty()) return;
  const uint64_t t = now_ns();
  if (g.charged >= 0) g.busy[size_t(g.charged)] += t - g.charged_since;
  g.charged = next;
  g.charged_since = t;
}

char* fiber_stacks() {
  Grid& g = grid_state();
  if (g.stacks == nullptr) {
    const size_t total = size_t(kMaxThreads) * (kStackBytes + kGuardBytes);
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("CUDA emulator: could not map ", total, " bytes of fiber stacks");
    g.stacks = static_cast<char*>(p);
    for (int i = 0; i < kMaxThreads; ++i)
      mprotect(g.stacks + size_t(i) * (kStackBytes + kGuardBytes), kGuardBytes, PROT_NONE);
  }
  return g.stacks;
}

// Per stack: whether a thread left it mid-way (or it is in use), so that it needs a full unpoison.
std::vector<bool>& stack_abandoned() {
  static std::vector<bool> v(kMaxThreads, true);
  return v;
}

char* stack_bottom(int index) {
  return fiber_stacks() + size_t(index) * (kStackBytes + kGuardBytes) + kGuardBytes;
}

// Saves the running context in *save and resumes `next_sp`: fiber `next_index`'s stack, or the
// scheduler's (the host thread's own) for -1. `last`: the running fiber never resumes.
void switch_to(void** save, void* next_sp, int next_index, bool last = false) {
  charge_switch(next_index);
#ifdef BCOS_EMU_ASAN
  const void* bottom = nullptr;
  size_t size = 0;
  if (next_index >= 0) {
    bottom = stack_bottom(next_index);
    size = kStackBytes;
  } else {
    static thread_local std::pair<void*, size_t> host = [] {
      pthread_attr_t attr;
      std::pair<void*, size_t> bounds{nullptr, 0};
      if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstack(&attr, &bounds.first, &bounds.second);
        pthread_attr_destroy(&attr);
      }
      return bounds;
    }();
    bottom = host.first;
    size = host.second;
  }
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(last ? nullptr : &fake_stack, bottom, size);
  bcos_emu_switch_stack(save, next_sp);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  (void)next_index;
  (void)last;
  bcos_emu_switch_stack(save, next_sp);
#endif
}

void yield_to_scheduler(bool last = false) {
  Grid& g = grid_state();
  switch_to(&g.running->sp, g.scheduler_sp, -1, last);
}

// The running fiber has reached a warp operation (its value written, its wait set): hands over
// to the next lane of its warp that has yet to reach it -- one switch per lane and operation,
// without a round trip through the scheduler. Once every lane waits, the warp is released and
// the last to arrive goes on itself. A lane that finished or waits at __syncthreads leaves the
// warp to the scheduler, which reports it (or the deadlock).
void wait_for_warp() {
  Grid& g = grid_state();
  Fiber* const self = g.running;
  const int n = int(g.fibers.size());
  const int w0 = self->thread.warp * 32, w1 = std::min(n, w0 + 32);
  int t = int(self - g.fibers.data());
  bool everyone_waits = true;
  for (int step = 1; step < w1 - w0; ++step) {
    t = g.next_in_warp[size_t(t)];
    Fiber& other = g.fibers[size_t(t)];
    if (other.wait == Wait::none) {
      g.running = &other;
      current_thread = &other.thread;
      switch_to(&self->sp, other.sp, int(&other - g.fibers.data()));
      return;  // resumed by a lane (or the scheduler) after the warp's release
    }
    everyone_waits = everyone_waits && other.wait == Wait::warp;
  }
  if (everyone_waits) {
    for (int t = w0; t < w1; ++t) g.fibers[size_t(t)].wait = Wait::none;
    return;
  }
  yield_to_scheduler();
}

[[noreturn]] void fiber_main() {
#ifdef BCOS_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);  // the first entry: no earlier frame
#endif
  Grid& g = grid_state();
  (*g.body)();
  g.running->wait = Wait::done;
  yield_to_scheduler(/*last=*/true);
  __builtin_unreachable();
}

// A fresh stack whose first switch "returns" into fiber_main with the ABI's alignment
// (rsp + 8 a multiple of 16 at a function's entry).
void* fresh_stack(int index) {
#ifdef BCOS_EMU_ASAN
  constexpr size_t kTopBytes = 16 * 1024;  // fiber_main and the switch's frames, above any kernel's
  if (stack_abandoned()[size_t(index)])
    ASAN_UNPOISON_MEMORY_REGION(stack_bottom(index), kStackBytes);
  else
    ASAN_UNPOISON_MEMORY_REGION(stack_bottom(index) + kStackBytes - kTopBytes, kTopBytes);
  stack_abandoned()[size_t(index)] = true;  // until its thread finishes (run_block)
#endif
  // Stacks start at different offsets within a page: at equal ones, every fiber's saved registers
  // would share one set of the L1 cache and evict each other at each switch.
  char* top = stack_bottom(index) + kStackBytes - size_t(index % 61) * 64;
  auto* slots = reinterpret_cast<uint64_t*>(top - 16);  // slots[0]: return address; 16-aligned
  slots[0] = reinterpret_cast<uint64_t>(&fiber_main);
  slots[1] = 0;
  uint64_t* frame = slots - 7;  // control words, r15, r14, r13, r12, rbx, rbp
  for (int i = 0; i < 7; ++i) frame[i] = 0;
  uint32_t mxcsr;
  uint16_t fpu_control;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  std::memcpy(reinterpret_cast<char*>(frame), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(frame) + 4, &fpu_control, 2);
  return frame;
}

std::string describe_waits(const Grid& g) {
  std::ostringstream os;
  int at_block = 0, at_warp = 0, done = 0;
  for (const Fiber& f : g.fibers) {
    at_block += f.wait == Wait::block;
    at_warp += f.wait == Wait::warp;
    done += f.wait == Wait::done;
  }
  os << at_block << " thread(s) at __syncthreads, " << at_warp << " at a warp operation, " << done
     << " finished";
  return os.str();
}

// Releases the warps whose lanes have all reached their warp operation; a lane that finished
// while others wait for it is an error (CUDA leaves such a shuffle undefined).
bool release_warps(Grid& g) {
  bool released = false;
  const int n = int(g.fibers.size());
  for (int w0 = 0; w0 < n; w0 += 32) {
    const int w1 = std::min(n, w0 + 32);
    int waiting = 0, finished = 0;
    for (int t = w0; t < w1; ++t) {
      waiting += g.fibers[size_t(t)].wait == Wait::warp;
      finished += g.fibers[size_t(t)].wait == Wait::done;
    }
    if (waiting == 0) continue;
    if (waiting + finished == w1 - w0 && finished > 0) {
      std::string op;
      for (int t = w0; t < w1 && op.empty(); ++t)
        if (g.fibers[size_t(t)].wait == Wait::warp) op = g.fibers[size_t(t)].warp_op;
      g.error = "a warp operation (" + op + ") waits for " + std::to_string(finished) + " lane(s) of warp " +
                std::to_string(w0 / 32) + " that have finished";
      return false;
    }
    if (waiting == w1 - w0) {
      for (int t = w0; t < w1; ++t) g.fibers[size_t(t)].wait = Wait::none;
      released = true;
    }
  }
  return released;
}

bool release_block(Grid& g) {
  int waiting = 0, finished = 0;
  for (const Fiber& f : g.fibers) {
    waiting += f.wait == Wait::block;
    finished += f.wait == Wait::done;
  }
  if (waiting == 0 || waiting + finished != int(g.fibers.size())) return false;
  for (Fiber& f : g.fibers)
    if (f.wait == Wait::block) f.wait = Wait::none;
  return true;
}

void run_fibers(Grid& g);

void run_block(Grid& g) {
  run_fibers(g);
  for (size_t t = 0; t < g.fibers.size(); ++t)
    if (g.fibers[t].wait == Wait::done) stack_abandoned()[t] = false;
}

void run_fibers(Grid& g) {
  const int n = int(g.fibers.size());
  for (int t = 0; t < n; ++t) {
    Fiber& f = g.fibers[size_t(t)];
    f.sp = fresh_stack(t);
    f.wait = Wait::none;
    f.warp_ops = 0;
  }
  for (;;) {
    bool ran = false, live = false;
    for (int k = 0; k < n; ++k) {
      Fiber& f = g.fibers[size_t(g.turn[size_t(k)])];
      if (f.wait != Wait::none) continue;
      g.running = &f;
      current_thread = &f.thread;
      switch_to(&g.scheduler_sp, f.sp, int(&f - g.fibers.data()));
      ran = true;
      if (!g.error.empty()) return;
    }
    for (const Fiber& f : g.fibers) live = live || f.wait != Wait::done;
    if (!live) return;
    const bool warps = release_warps(g);
    if (!g.error.empty()) return;
    const bool block = release_block(g);
    if (!ran && !warps && !block) {
      g.error = "deadlock: " + describe_waits(g) +
                " (a __syncthreads or warp operation that not every thread reaches)";
      return;
    }
  }
}

}  // namespace

void sync_block() {
  // As at a warp operation: on to the next thread that has yet to arrive; the last one to arrive
  // releases the block and goes on itself.
  Grid& g = grid_state();
  Fiber* const self = g.running;
  self->wait = Wait::block;
  const int n = int(g.fibers.size()), my_turn = g.turn_of[size_t(self - g.fibers.data())];
  bool everyone_waits = true;
  for (int step = 1; step < n; ++step) {
    Fiber& other = g.fibers[size_t(g.turn[size_t((my_turn + step) % n)])];
    if (other.wait == Wait::none) {
      g.running = &other;
      current_thread = &other.thread;
      switch_to(&self->sp, other.sp, int(&other - g.fibers.data()));
      return;
    }
    everyone_waits = everyone_waits && (other.wait == Wait::block || other.wait == Wait::done);
  }
  if (everyone_waits) {
    for (Fiber& f : g.fibers)
      if (f.wait == Wait::block) f.wait = Wait::none;
    return;
  }
  yield_to_scheduler();
}

void count_pack_access() { ++grid_state().packs; }

void device_fault(const std::string& what) {
  Grid& g = grid_state();
  if (g.error.empty()) g.error = what;
}

uint64_t warp_exchange(uint64_t bits, int source_lane, unsigned mask, const char* op) {
  Grid& g = grid_state();
  Fiber& f = *g.running;
  WarpBuffer& w = g.warps[size_t(f.thread.warp)];
  const int half = int(f.warp_ops & 1);
  w.bits[half][f.thread.lane] = bits;
  w.masks[half][f.thread.lane] = mask;
  f.wait = Wait::warp;
  f.warp_op = op;
  wait_for_warp();
  // Every lane has written this half now, and none can write it again before all have read it.
  const int lanes = std::min(32, int(g.fibers.size()) - f.thread.warp * 32);
  const unsigned everyone = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  if ((w.masks[half][f.thread.lane] & everyone) != everyone && g.error.empty())
    g.error = std::string(op) + " with mask " + std::to_string(mask) +
              ": the emulator runs warp operations with every lane of the warp only";
  f.warp_ops++;
  return source_lane >= 0 && source_lane < lanes ? w.bits[half][source_lane] : bits;
}

unsigned warp_ballot(bool predicate, unsigned mask, const char* op) {
  Grid& g = grid_state();
  Fiber& f = *g.running;
  WarpBuffer& w = g.warps[size_t(f.thread.warp)];
  const int half = int(f.warp_ops & 1);
  w.bits[half][f.thread.lane] = predicate ? 1 : 0;
  w.masks[half][f.thread.lane] = mask;
  f.wait = Wait::warp;
  f.warp_op = op;
  wait_for_warp();
  const int lanes = std::min(32, int(g.fibers.size()) - f.thread.warp * 32);
  unsigned votes = 0;
  for (int l = 0; l < lanes; ++l)
    if (w.bits[half][l] != 0) votes |= 1u << l;
  f.warp_ops++;
  return votes & mask;
}

namespace {

// ---- schedule -----------------------------------------------------------------------------------
// BCOS_CUDA_EMULATOR_ORDER: forward (blocks and threads by index, as the emulator used to run),
// reverse, or shuffle (the default: an order drawn for each launch from a generator seeded with
// BCOS_CUDA_EMULATOR_SEED, 0 unless set, so a failing schedule comes back on a rerun of the same
// program). Without a barrier between them, a read of what a higher-numbered thread writes comes
// too early under forward, one of a lower-numbered thread's write under reverse; a shuffle mixes
// both, and float atomics then add in another order at each launch, as on a GPU -- which is what
// makes "deterministic algorithms" checkable.
struct Schedule {
  Order order = Order::shuffle;
  std::mt19937_64 draws;
};

std::mutex& schedule_lock() {
  static std::mutex m;
  return m;
}

Schedule& schedule() {  // under schedule_lock()
  static Schedule s = [] {
    Schedule fresh;
    if (const char* env = std::getenv("BCOS_CUDA_EMULATOR_ORDER"); env != nullptr && *env != '\0') {
      const std::string v = env;
      if (v == "forward") fresh.order = Order::forward;
      else if (v == "reverse") fresh.order = Order::reverse;
      else if (v == "shuffle") fresh.order = Order::shuffle;
      else fail("CUDA emulator: BCOS_CUDA_EMULATOR_ORDER=", v, ": expected forward, reverse or shuffle");
    }
    uint64_t seed = 0;
    if (const char* env = std::getenv("BCOS_CUDA_EMULATOR_SEED"); env != nullptr && *env != '\0') {
      char* end = nullptr;
      seed = std::strtoull(env, &end, 10);
      if (*end != '\0') fail("CUDA emulator: BCOS_CUDA_EMULATOR_SEED=", env, ": expected a whole number");
    }
    fresh.draws.seed(seed);
    return fresh;
  }();
  return s;
}

// The order of `n` turns under `s`: a permutation of [0, n).
std::vector<int64_t> turns(Schedule& s, int64_t n) {
  std::vector<int64_t> turn(static_cast<size_t>(n));
  std::iota(turn.begin(), turn.end(), int64_t(0));
  if (s.order == Order::reverse) std::reverse(turn.begin(), turn.end());
  if (s.order == Order::shuffle)
    for (int64_t i = n - 1; i > 0; --i) std::swap(turn[size_t(i)], turn[size_t(s.draws() % uint64_t(i + 1))]);
  return turn;
}

// The grid's blocks, in the order they run: block k is (first + k * step) mod count, with step
// coprime to count (so every block runs once) -- a permutation that needs no table for the
// millions of blocks an elementwise launch can have.
struct BlockOrder {
  uint64_t count = 1, first = 0, step = 1;
  uint64_t at(uint64_t k) const { return uint64_t((unsigned __int128)(first + (unsigned __int128)k * step) % count); }
};

BlockOrder block_order(Schedule& s, uint64_t count) {
  BlockOrder o;
  o.count = count;
  if (s.order == Order::reverse) o.first = count - 1, o.step = count - 1;  // -1 modulo count
  if (s.order == Order::shuffle && count > 1) {
    o.first = s.draws() % count;
    o.step = 1 + s.draws() % (count - 1);
    while (std::gcd(o.step, count) != 1) o.step = o.step % (count - 1) + 1;
  }
  return o;
}

// Draws this launch's thread order into g.turn, g.turn_of and g.next_in_warp.
void draw_turns(Grid& g) {
  const int n = int(g.fibers.size());
  std::vector<int64_t> order;
  {
    std::lock_guard<std::mutex> lock(schedule_lock());
    order = turns(schedule(), n);
  }
  g.turn.assign(order.begin(), order.end());
  g.turn_of.assign(size_t(n), 0);
  for (int k = 0; k < n; ++k) g.turn_of[size_t(g.turn[size_t(k)])] = k;
  // Each warp's lanes in the block's turn order, linked in a ring.
  g.next_in_warp.assign(size_t(n), 0);
  std::vector<int> last(g.warps.size(), -1), first(g.warps.size(), -1);
  for (int k = 0; k < n; ++k) {
    const int t = g.turn[size_t(k)], w = t / 32;
    if (last[size_t(w)] >= 0) g.next_in_warp[size_t(last[size_t(w)])] = t;
    else first[size_t(w)] = t;
    last[size_t(w)] = t;
  }
  for (size_t w = 0; w < g.warps.size(); ++w) g.next_in_warp[size_t(last[w])] = first[w];
}

// Runs the grid now, on this host thread. Called from the stream's queue (runtime::enqueue).
void run_grid_now(const char* kernel, dim3 grid, dim3 block, const std::function<void()>& call) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  std::lock_guard<std::mutex> lock(grid_lock());
  Grid& g = grid_state();
  g.kernel = kernel;
  g.body = &call;
  ++kernel_runs()[kernel];
  g.packs = 0;
  g.error.clear();
  g.fibers.assign(size_t(threads), Fiber{});
  g.warps.assign(size_t((threads + 31) / 32), WarpBuffer{});
  for (uint64_t t = 0; t < threads; ++t) {
    ThreadState& s = g.fibers[size_t(t)].thread;
    s.thread_idx = uint3{unsigned(t % block.x), unsigned(t / block.x % block.y), unsigned(t / (uint64_t(block.x) * block.y))};
    s.lane = int(t % 32);
    s.warp = int(t / 32);
  }
  draw_turns(g);
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  BlockOrder order;
  {
    std::lock_guard<std::mutex> schedule_guard(schedule_lock());
    order = block_order(schedule(), blocks);
  }
  ThreadState* const outer_thread = current_thread;
  block_dim = block;
  grid_dim = grid;
  std::FILE* trace = nullptr;
  {
    std::lock_guard<std::mutex> trace_guard(trace_lock());
    trace = trace_file();
  }
  uint64_t work_ns = 0, max_block_ns = 0, max_thread_ns = 0, sum_block_longest_ns = 0;
  g.busy.clear();
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t b = order.at(k);
    const unsigned x = unsigned(b % grid.x), y = unsigned(b / grid.x % grid.y), z = unsigned(b / grid.x / grid.y);
    block_index = uint3{x, y, z};
    if (trace != nullptr) g.busy.assign(size_t(threads), 0), g.charged = -1;
    run_block(g);
    if (trace != nullptr) {
      uint64_t block_ns = 0, longest = 0;
      for (uint64_t t : g.busy) block_ns += t, longest = std::max(longest, t);
      work_ns += block_ns;
      max_thread_ns = std::max(max_thread_ns, longest);
      sum_block_longest_ns += longest;
      max_block_ns = std::max(max_block_ns, block_ns);
      g.busy.clear();
    }
    if (!g.error.empty()) {
      current_thread = outer_thread;
      fail("CUDA emulator: kernel ", kernel, ", block (", x, ", ", y, ", ", z, ") of (", grid.x, ", ", grid.y,
           ", ", grid.z, "), ", threads, " threads: ", g.error);
    }
  }
  current_thread = outer_thread;
  if (g.packs > 0) pack_runs()[kernel] += g.packs;
  if (trace != nullptr) {
    std::lock_guard<std::mutex> trace_guard(trace_lock());
    if (std::FILE* f = trace_file())  // the one open now (set_trace may have replaced it)
      std::fprintf(f, "%s\t%u,%u,%u\t%u,%u,%u\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\n", kernel, grid.x, grid.y,
                   grid.z, block.x, block.y, block.z, (unsigned long long)blocks, (unsigned long long)threads,
                   (unsigned long long)work_ns, (unsigned long long)max_block_ns, (unsigned long long)max_thread_ns,
                   (unsigned long long)(sum_block_longest_ns / blocks));
  }
}

}  // namespace

void run_grid(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
              std::function<void()> call) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  // The limits of every GPU since compute capability 3.0; the hardware refuses a launch past them
  // and cudaGetLastError reports it.
  if (threads == 0 || threads > kMaxThreads || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    runtime::set_launch_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (shared_bytes > 48 * 1024) {
    runtime::set_launch_error(cudaErrorInvalidValue);
    return;
  }
  runtime::enqueue(stream, kernel,
                   [kernel, grid, block, call = std::move(call)] { run_grid_now(kernel, grid, block, call); });
}

void set_order(Order order, uint64_t seed) {
  std::lock_guard<std::mutex> lock(schedule_lock());
  schedule().order = order;
  schedule().draws.seed(seed);
}

Order current_order() {
  std::lock_guard<std::mutex> lock(schedule_lock());
  return schedule().order;
}

namespace runtime {
std::vector<int64_t> draw_order(int64_t n) {
  std::lock_guard<std::mutex> lock(schedule_lock());
  return turns(schedule(), n);
}
void set_trace(const std::string& path) {
  std::lock_guard<std::mutex> lock(trace_lock());
  Trace& t = trace_state();
  t.started = true;
  if (t.file != nullptr) std::fclose(t.file);
  t.file = nullptr;
  if (!path.empty()) t.file = open_trace(path.c_str());
}
bool tracing() {
  std::lock_guard<std::mutex> lock(trace_lock());
  return trace_file() != nullptr;
}
uint64_t trace_clock_ns() { return now_ns(); }
void trace_call(const char* name, const std::string& shape, uint64_t work_ns) {
  std::lock_guard<std::mutex> lock(trace_lock());
  if (std::FILE* f = trace_file())
    std::fprintf(f, "%s\t%s\t-\t1\t1\t%llu\t%llu\t%llu\t%llu\n", name, shape.c_str(), (unsigned long long)work_ns,
                 (unsigned long long)work_ns, (unsigned long long)work_ns, (unsigned long long)work_ns);
}
// The counts of the kernels whose names start with name_prefix, added.
int64_t total_by_prefix(const std::map<std::string, int64_t>& counts, std::string_view name_prefix) {
  std::lock_guard<std::mutex> lock(grid_lock());
  int64_t total = 0;
  for (const auto& [name, count] : counts)
    if (std::string_view(name).starts_with(name_prefix)) total += count;
  return total;
}
int64_t kernels_run(std::string_view name_prefix) { return total_by_prefix(kernel_runs(), name_prefix); }
int64_t pack_accesses(std::string_view name_prefix) { return total_by_prefix(pack_runs(), name_prefix); }
}  // namespace runtime

}  // namespace bcos::emu
