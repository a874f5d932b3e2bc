// Tests of the CUDA emulator itself (tensor/cuda/emulator/; built with -Dgpu_emulation=true): its
// threads, barriers and warp operations behave as CUDA defines them, the mistakes it exists to
// catch are caught, and its cuBLAS stand-in computes and refuses what the real library does (its
// cuDNN: test_emulator_cudnn.cpp). tests/cuda's other files then run the backend's kernels on it.
#include <doctest/doctest.h>

#include <cublas_v2.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "autograd/ops.h"
#include "tensor/cuda/backend.h"
#include "tensor/cuda/emulator/device.h"
#include "tensor/cuda/emulator/runtime.h"
#include "tensor/error.h"
#include "tensor/transfer.h"
#include "tests/cuda/emulator_test.h"
#include "tests/golden.h"

using bcos::emu_test::DeviceArray;
using bcos::emu_test::ScheduleScope;

namespace {

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const bcos::Error& e) {
    return e.what();
  }
  return "";
}

// What a launch's failure reads as once the device is synchronised: a kernel runs when its
// stream's queue is run, and its failure is the next synchronisation's cudaErrorLaunchFailure,
// once; "" if none.
std::string failure_of(auto&& launch) {
  launch();
  const cudaError_t err = cudaDeviceSynchronize();
  if (err == cudaSuccess) return "";
  CHECK(err == cudaErrorLaunchFailure);
  CHECK(std::string(cudaGetErrorName(err)) == "cudaErrorLaunchFailure");
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  CHECK(cudaDeviceSynchronize() == cudaSuccess);  // reported once
  return cudaGetErrorString(err);
}

// The order in which a launch of `blocks` x `threads` ran its threads: turn[i], thread i's place
// (global index), taken with an atomic -- which the emulator runs when the thread's turn comes.
std::vector<int> turns_of_launch(int blocks, int threads) {
  DeviceArray<int> counter(size_t(1)), turn(size_t(blocks * threads));
  bcos::emu::launch("turns", [&](auto&&... a) {
    auto body = [](int* c, int* t) { t[blockIdx.x * blockDim.x + threadIdx.x] = atomicAdd(c, 1); };
    body(a...);
  }, blocks, threads)(counter.p, turn.p);
  return turn.host();
}

}  // namespace

TEST_CASE("emulator: thread and block indices cover the grid once, in every dimension") {
  DeviceArray<int> hits(size_t(3 * 2 * 4 * 5 * 2 * 3));
  int* out = hits.p;
  bcos::emu::launch("indices", [&](auto&&... a) {
    auto body = [](int* o) {
      const unsigned bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
      const unsigned tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
      atomicAdd(o + bx * (blockDim.x * blockDim.y * blockDim.z) + tx, 1);
    };
    body(a...);
  }, dim3(3, 2, 4), dim3(5, 2, 3))(out);
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int v : hits.host()) CHECK(v == 1);
}

TEST_CASE("emulator: __syncthreads orders shared-memory writes before reads (a block reversal)") {
  constexpr int kN = 256;
  std::vector<float> in(kN);
  for (int i = 0; i < kN; ++i) in[size_t(i)] = float(i);
  DeviceArray<float> x(in), y{size_t(kN)};
  bcos::emu::launch("reverse", [&](auto&&... a) {
    auto body = [](const float* src, float* dst) {
      __shared__ float tile[kN];
      tile[threadIdx.x] = src[threadIdx.x];
      __syncthreads();  // without it, thread 0 would read tile[255] before thread 255 wrote it
      dst[threadIdx.x] = tile[kN - 1 - threadIdx.x];
    };
    body(a...);
  }, 1, kN)(x.p, y.p);
  const std::vector<float> out = y.host();
  for (int i = 0; i < kN; ++i) CHECK(out[size_t(i)] == float(kN - 1 - i));
}

TEST_CASE("emulator: warp shuffles and votes exchange the lanes' values") {
  DeviceArray<float> sums(size_t(64)), downs(size_t(64));
  DeviceArray<int> any(size_t(64)), all(size_t(64));
  bcos::emu::launch("warps", [&](auto&&... a) {
    auto body = [](float* s, float* d, int* an, int* al) {
      const int t = int(threadIdx.x);
      float v = float(t);
      for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
      s[t] = v;
      d[t] = __shfl_down_sync(0xffffffffu, float(t), 3);
      an[t] = __any_sync(0xffffffffu, t == 40);
      al[t] = __all_sync(0xffffffffu, t % 32 < 31);
    };
    body(a...);
  }, 1, 64)(sums.p, downs.p, any.p, all.p);
  const auto s = sums.host(), d = downs.host();
  const auto an = any.host(), al = all.host();
  for (int t = 0; t < 64; ++t) {
    const int warp = t / 32;
    CHECK(s[size_t(t)] == float(32 * 32 * warp + 31 * 32 / 2));  // the sum of the warp's lanes
    CHECK(d[size_t(t)] == float(t % 32 + 3 < 32 ? t + 3 : t));    // lanes past the end keep their own
    CHECK(an[size_t(t)] == (warp == 1));
    CHECK(al[size_t(t)] == 0);
  }
}

TEST_CASE("emulator: a __syncthreads that some threads skip is reported as a deadlock") {
  DeviceArray<float> x(size_t(64));
  float* p = x.p;
  const std::string err = failure_of([&] {
    bcos::emu::launch("divergent", [&](auto&&... a) {
      auto body = [](float* q) {
        if (threadIdx.x < 16) {
          __syncthreads();
          q[threadIdx.x] = 1;
        } else {
          q[threadIdx.x] = 2;
          __syncwarp();
          for (int i = 0; i < 2; ++i) __shfl_xor_sync(0xffffffffu, 1.0f, 1);
        }
      };
      body(a...);
    }, 2, 32)(p);
  });
  CHECK(err.find("divergent") != std::string::npos);
  CHECK(err.find("deadlock") != std::string::npos);
}

TEST_CASE("emulator: a shuffle waiting for lanes that returned is an error") {
  DeviceArray<float> x(size_t(32));
  float* p = x.p;
  const std::string err = failure_of([&] {
    bcos::emu::launch("early_exit", [&](auto&&... a) {
      auto body = [](float* q) {
        if (threadIdx.x >= 20) return;
        q[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
      };
      body(a...);
    }, 1, 32)(p);
  });
  CHECK(err.find("early_exit") != std::string::npos);
  CHECK(err.find("12 lane(s)") != std::string::npos);
}

TEST_CASE("emulator: launches the hardware refuses set cudaGetLastError and run nothing") {
  DeviceArray<int> x(size_t(1));
  int* p = x.p;
  auto kernel = [&](auto&&... a) {
    auto body = [](int* q) { atomicAdd(q, 1); };
    body(a...);
  };
  bcos::emu::launch("too_many_threads", kernel, 1, 1025)(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);  // not sticky
  bcos::emu::launch("empty_grid", kernel, 0, 32)(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  bcos::emu::launch("grid_y", kernel, dim3(1, 65536), 32)(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(x.host()[0] == 0);
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(s) == cudaSuccess);
  CHECK(error_of([&] { bcos::emu::launch("destroyed_stream", kernel, 1, 1, 0, s)(p); }).find("does not exist") !=
        std::string::npos);
}

// The NCCL stand-in's collectives run beside the host (runtime::enqueue_beside_host), as kernels
// do on a GPU: an event recorded after such work is not ready until it ends, and a stream told to
// wait for that event, or synchronised, runs nothing before it.
TEST_CASE("emulator: work queued beside the host holds back its stream, its events and synchronisation") {
  DeviceArray<int> x(size_t(4));
  int* p = x.p;
  cudaStream_t side = nullptr, other = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking) == cudaSuccess);
  cudaEvent_t done = nullptr;
  REQUIRE(cudaEventCreateWithFlags(&done, cudaEventDisableTiming) == cudaSuccess);
  std::promise<void> open_first, open_second;
  std::shared_future<void> first = open_first.get_future().share(), second = open_second.get_future().share();
  bcos::emu::runtime::enqueue_beside_host(side, [first, p] {
    first.wait();
    p[0] = 7;
  });
  REQUIRE(cudaEventRecord(done, side) == cudaSuccess);
  CHECK(cudaEventQuery(done) == cudaErrorNotReady);
  CHECK(cudaGetLastError() == cudaSuccess);  // "not ready" is not an error
  REQUIRE(cudaStreamWaitEvent(other, done, 0) == cudaSuccess);
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    open_first.set_value();
  });
  auto copy_first = [&](auto&&... a) {
    auto body = [](int* q) { q[1] = q[0]; };
    body(a...);
  };
  bcos::emu::launch("after_the_event", copy_first, 1, 1, 0, other)(p);  // waits for p[0] = 7
  CHECK(cudaStreamSynchronize(other) == cudaSuccess);
  opener.join();
  CHECK(cudaEventQuery(done) == cudaSuccess);
  bcos::emu::runtime::enqueue_beside_host(side, [second, p] {
    second.wait();
    p[2] = 9;
  });
  std::thread opener2([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    open_second.set_value();
  });
  CHECK(cudaStreamSynchronize(side) == cudaSuccess);
  opener2.join();
  CHECK(x.host() == std::vector<int>{7, 7, 9, 0});
  cudaEventDestroy(done);
  cudaStreamDestroy(side);
  cudaStreamDestroy(other);
}

// A stream is a queue, as on a GPU: work runs when the host needs it done, or when work on
// another stream waits for an event recorded after it -- and not before, so a forgotten wait reads
// what was there before. (Device memory is host memory here, so the test can look at it directly.)
TEST_CASE("emulator: blocks and threads take turns by index, in reverse, or in an order drawn for each launch") {
  using bcos::emu::Order;
  constexpr int kBlocks = 16, kThreads = 96, kN = kBlocks * kThreads;
  std::vector<int> by_index(kN);
  for (int i = 0; i < kN; ++i) by_index[size_t(i)] = i;
  {
    ScheduleScope scope(Order::forward, 0);
    CHECK(turns_of_launch(kBlocks, kThreads) == by_index);
  }
  {
    ScheduleScope scope(Order::reverse, 0);
    const std::vector<int> turn = turns_of_launch(kBlocks, kThreads);
    for (int i = 0; i < kN; ++i) CHECK(turn[size_t(i)] == kN - 1 - i);
  }
  ScheduleScope scope(Order::shuffle, 7);
  const std::vector<int> first = turns_of_launch(kBlocks, kThreads), second = turns_of_launch(kBlocks, kThreads);
  // A block runs whole before the next: its turns are one run of kThreads numbers.
  auto block_order = [&](const std::vector<int>& turn) {
    std::vector<int> order(kBlocks);
    for (int b = 0; b < kBlocks; ++b) {
      const int slot = turn[size_t(b * kThreads)] / kThreads;
      for (int t = 0; t < kThreads; ++t) CHECK(turn[size_t(b * kThreads + t)] / kThreads == slot);
      order[size_t(b)] = slot;
    }
    return order;
  };
  for (const std::vector<int>* turn : {&first, &second}) {
    std::vector<int> sorted = *turn;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted == by_index);  // every thread once
    std::vector<int> blocks = block_order(*turn);
    std::sort(blocks.begin(), blocks.end());
    CHECK(blocks == std::vector<int>(by_index.begin(), by_index.begin() + kBlocks));
  }
  CHECK(block_order(first) != block_order(second));
  CHECK(block_order(first) != std::vector<int>(by_index.begin(), by_index.begin() + kBlocks));
  // Within a block the threads' order is drawn too: not by index, and not the same each launch.
  const std::vector<int> within_first(first.begin(), first.begin() + kThreads);
  const std::vector<int> within_second(second.begin(), second.begin() + kThreads);
  CHECK(!std::is_sorted(within_first.begin(), within_first.end()));
  CHECK(within_first != within_second);
  // The same seed draws the same orders: a failing schedule comes back.
  bcos::emu::set_order(Order::shuffle, 7);
  CHECK(turns_of_launch(kBlocks, kThreads) == first);
}

TEST_CASE("emulator: a broadcast through shared memory without its barrier reads stale data in a drawn order") {
  using bcos::emu::Order;
  // Thread 0 writes a value that every thread of its block reads. Without the barrier the read
  // races the write; by index, thread 0 always comes first and the race stays hidden.
  auto stale_reads = [](bool barrier) {
    constexpr int kBlocks = 4, kThreads = 64;
    DeviceArray<int> out(size_t(kBlocks * kThreads), -1);
    bcos::emu::launch("broadcast", [&](auto&&... a) {
      auto body = [](int* o, bool sync) {
        __shared__ int value;
        if (threadIdx.x == 0) value = 100 + int(blockIdx.x);
        if (sync) __syncthreads();
        o[blockIdx.x * blockDim.x + threadIdx.x] = value;
      };
      body(a...);
    }, kBlocks, kThreads)(out.p, barrier);
    const std::vector<int> v = out.host();
    int stale = 0;
    for (int i = 0; i < kBlocks * kThreads; ++i) stale += v[size_t(i)] != 100 + i / kThreads;
    return stale;
  };
  {
    ScheduleScope scope(Order::forward, 0);
    CHECK(stale_reads(false) == 0);
  }
  for (Order order : {Order::reverse, Order::shuffle}) {
    ScheduleScope scope(order, 3);
    CHECK(stale_reads(false) > 0);
    CHECK(stale_reads(true) == 0);
  }
}

TEST_CASE("emulator: float atomics add in the drawn order, so their sums vary from launch to launch") {
  using bcos::emu::Order;
  // Terms over eight orders of magnitude: their float32 sum depends on the order of the adds.
  std::vector<float> terms(512);
  for (size_t i = 0; i < terms.size(); ++i)
    terms[i] = float((i % 2 ? -1.0 : 1.0) * std::pow(10.0, double(i % 9) - 4.0) * (1.0 + 0.001 * double(i)));
  DeviceArray<float> x(terms);
  auto atomic_sum = [&] {
    DeviceArray<float> sum(size_t(1));
    bcos::emu::launch("atomic_sum", [&](auto&&... a) {
      auto body = [](const float* v, float* s) { atomicAdd(s, v[blockIdx.x * blockDim.x + threadIdx.x]); };
      body(a...);
    }, 4, 128)(x.p, sum.p);
    return sum.host()[0];
  };
  {
    ScheduleScope scope(Order::forward, 0);
    CHECK(atomic_sum() == atomic_sum());
  }
  ScheduleScope scope(Order::shuffle, 11);
  const float a = atomic_sum(), b = atomic_sum();
  CHECK(a != b);
  double exact = 0, scale = 0;
  for (float t : terms) exact += t, scale += std::fabs(t);
  for (float s : {a, b}) CHECK(std::fabs(s - exact) <= 1e-4 * scale);  // the same sum, rounded otherwise
}

TEST_CASE("emulator: streams run their work when waited for; without an event wait another stream reads stale data") {
  DeviceArray<int> x(size_t(3));
  int* p = x.p;
  cudaStream_t a = nullptr, b = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking) == cudaSuccess);
  cudaEvent_t written = nullptr;
  REQUIRE(cudaEventCreateWithFlags(&written, cudaEventDisableTiming) == cudaSuccess);
  auto set_first = [=](auto&&... v) {
    auto body = [](int* q) { q[0] = 5; };
    body(v...);
  };
  auto copy_first_to = [=](auto&&... v) {
    auto body = [](int* q, int at) { q[at] = q[0]; };
    body(v...);
  };
  bcos::emu::launch("set_first", set_first, 1, 1, 0, a)(p);
  CHECK(p[0] == 0);  // queued, not run
  REQUIRE(cudaEventRecord(written, a) == cudaSuccess);
  bcos::emu::launch("no_wait", copy_first_to, 1, 1, 0, b)(p, 1);
  REQUIRE(cudaStreamWaitEvent(b, written, 0) == cudaSuccess);
  bcos::emu::launch("after_wait", copy_first_to, 1, 1, 0, b)(p, 2);
  CHECK(cudaStreamSynchronize(b) == cudaSuccess);
  CHECK(x.host() == std::vector<int>{5, 0, 5});  // the copy that did not wait read the old value
  cudaEventDestroy(written);
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
}

// As CUDA stages copies from pageable memory: the source is read when the call is made. Pinned
// memory is read (and written) only when the copy runs, so it must not change before then.
TEST_CASE("emulator: asynchronous copies read pinned memory when they run, pageable memory when issued") {
  DeviceArray<int> x(size_t(2));
  int* pinned = nullptr;
  REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&pinned), 2 * sizeof(int), cudaHostAllocDefault) == cudaSuccess);
  pinned[0] = 1;
  pinned[1] = 0;
  int pageable = 2;
  cudaStream_t s = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaMemcpyAsync(x.p, pinned, sizeof(int), cudaMemcpyHostToDevice, s) == cudaSuccess);
  REQUIRE(cudaMemcpyAsync(x.p + 1, &pageable, sizeof(int), cudaMemcpyHostToDevice, s) == cudaSuccess);
  pinned[0] = 10;  // too early: the copy has not read it
  pageable = 20;   // harmless: already staged
  REQUIRE(cudaMemcpyAsync(pinned + 1, x.p + 1, sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess);
  CHECK(pinned[1] == 0);
  CHECK(cudaStreamSynchronize(s) == cudaSuccess);
  CHECK(x.host() == std::vector<int>{10, 2});
  CHECK(pinned[1] == 2);
  int back = 0;  // into pageable memory: done when the call returns
  REQUIRE(cudaMemcpyAsync(&back, x.p, sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess);
  CHECK(back == 10);
  cudaStreamDestroy(s);
  cudaFreeHost(pinned);
}

// The legacy default stream waits for blocking streams (created without cudaStreamNonBlocking)
// and they for it; a non-blocking stream is ordered with neither.
TEST_CASE("emulator: the default stream and blocking streams are ordered with each other, non-blocking ones are not") {
  for (const unsigned flags : {unsigned(cudaStreamDefault), unsigned(cudaStreamNonBlocking)}) {
    CAPTURE(flags);
    DeviceArray<int> x(size_t(2));
    int* p = x.p;
    cudaStream_t s = nullptr;
    REQUIRE(cudaStreamCreateWithFlags(&s, flags) == cudaSuccess);
    auto set_first = [=](auto&&... v) {
      auto body = [](int* q) { q[0] = 3; };
      body(v...);
    };
    auto copy_first = [=](auto&&... v) {
      auto body = [](int* q) { q[1] = q[0]; };
      body(v...);
    };
    bcos::emu::launch("on_default", set_first, 1, 1)(p);
    bcos::emu::launch("on_the_stream", copy_first, 1, 1, 0, s)(p);
    CHECK(cudaStreamSynchronize(s) == cudaSuccess);
    CHECK(p[1] == (flags == cudaStreamDefault ? 3 : 0));
    cudaStreamDestroy(s);
  }
}

TEST_CASE("emulator: copies and memsets outside a device allocation are refused") {
  DeviceArray<float> x(size_t(8));
  std::vector<float> host(16);
  CHECK(cudaMemcpy(x.p, host.data(), 8 * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaMemcpy(x.p, host.data(), 9 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(host.data(), x.p + 1, 8 * sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(host.data(), host.data() + 8, 4, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  CHECK(cudaMemsetAsync(x.p, 0, 33, nullptr) == cudaErrorInvalidValue);
  CHECK(cudaFree(host.data()) == cudaErrorInvalidValue);
  cudaGetLastError();
  // Fresh memory is not zero (a large block from the C library would be), so a kernel that
  // forgets to clear an accumulator shows it even in a tensor of its own.
  void* fresh = nullptr;
  REQUIRE(cudaMalloc(&fresh, size_t(4) << 20) == cudaSuccess);
  std::vector<unsigned char> bytes(size_t(4) << 20);
  REQUIRE(cudaMemcpy(bytes.data(), fresh, bytes.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(std::count(bytes.begin(), bytes.end(), 0xFF) == std::ptrdiff_t(bytes.size()));
  cudaFree(fresh);
}

// With the caching allocator off, each tensor is an allocation of its own, exactly its size: the
// emulator's checks (and AddressSanitizer, in a sanitized build) then see a tensor's bounds.
TEST_CASE("emulator: without the allocator's cache a copy one byte past a tensor is refused") {
  const char* before = std::getenv("BCOS_CUDA_NO_CACHING");
  const std::string saved = before ? before : "";
  setenv("BCOS_CUDA_NO_CACHING", "1", 1);
  std::shared_ptr<void> a = bcos::cuda::allocate(1000, 0);
  setenv("BCOS_CUDA_NO_CACHING", "0", 1);
  std::vector<char> host(1001);
  CHECK(cudaMemcpy(host.data(), a.get(), 1000, cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(cudaMemcpy(host.data(), a.get(), 1001, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  cudaGetLastError();
  std::shared_ptr<void> cached = bcos::cuda::allocate(1000, 0);  // a slice of a segment: no such bound
  CHECK(cudaMemcpy(host.data(), cached.get(), 1001, cudaMemcpyDeviceToHost) == cudaSuccess);
  if (before)
    setenv("BCOS_CUDA_NO_CACHING", saved.c_str(), 1);
  else
    unsetenv("BCOS_CUDA_NO_CACHING");
}

TEST_CASE("emulator: cuBLAS GEMM is column-major with op(A), op(B), strides and beta; bad arguments are refused") {
  cublasHandle_t h = nullptr;
  REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  // Column-major A: 2 x 3 stored transposed (op T of a 3 x 2 buffer), B: 3 x 2, C: 2 x 2, two batches.
  const std::vector<double> a = {1, 2, 3, 4, 5, 6, /*batch 1*/ 1, 0, 0, 1, 1, 1};  // [3 x 2], lda 3
  const std::vector<double> b = {1, 0, 2, 0, 1, 3, /*batch 1*/ 2, 2, 2, 1, 1, 1};  // [3 x 2], ldb 3
  DeviceArray<double> da(a), db(b), dc(std::vector<double>(8, 10.0));
  const double alpha = 2, beta = 1;
  REQUIRE(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 2, 3, &alpha, da.p, CUDA_R_64F, 3, 6, db.p,
                                     CUDA_R_64F, 3, 6, &beta, dc.p, CUDA_R_64F, 2, 4, 2, CUBLAS_COMPUTE_64F,
                                     CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
  std::vector<double> want(8);
  for (int p = 0; p < 2; ++p)
    for (int j = 0; j < 2; ++j)
      for (int i = 0; i < 2; ++i) {
        double s = 0;
        for (int q = 0; q < 3; ++q) s += a[size_t(6 * p + q + 3 * i)] * b[size_t(6 * p + q + 3 * j)];
        want[size_t(4 * p + i + 2 * j)] = 2 * s + 10;
      }
  CHECK(dc.host() == want);
  // lda below op(A)'s rows, and float32 data with a double compute type, as cuBLAS refuses them.
  CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &alpha, da.p, CUDA_R_64F, 1, 6, db.p,
                                   CUDA_R_64F, 3, 6, &beta, dc.p, CUDA_R_64F, 2, 4, 2, CUBLAS_COMPUTE_64F,
                                   CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 3, &alpha, da.p, CUDA_R_32F, 2, 6, db.p,
                                   CUDA_R_32F, 3, 6, &beta, dc.p, CUDA_R_32F, 2, 4, 1, CUBLAS_COMPUTE_64F,
                                   CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED);
  // A batch stride that runs past the allocation is a bad address, which the emulator names.
  CHECK(error_of([&] {
          cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, 2, 2, 3, &alpha, da.p, CUDA_R_64F, 3, 7, db.p,
                                     CUDA_R_64F, 3, 6, &beta, dc.p, CUDA_R_64F, 2, 4, 2, CUBLAS_COMPUTE_64F,
                                     CUBLAS_GEMM_DEFAULT);
        }).find("A") != std::string::npos);
  cublasDestroy(h);
}

TEST_CASE("emulator: TF32 GEMM rounds float32 inputs to 10 mantissa bits") {
  cublasHandle_t h = nullptr;
  REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  const float x = 1.0f + 1.0f / 4096;  // 2^-12: below TF32's last bit (2^-10), rounds to 1
  DeviceArray<float> a(std::vector<float>{x}), b(std::vector<float>{1.0f}), c(size_t(1));
  const float one = 1, zero = 0;
  for (auto [compute, want] : {std::pair{CUBLAS_COMPUTE_32F, x}, std::pair{CUBLAS_COMPUTE_32F_FAST_TF32, 1.0f}}) {
    REQUIRE(cublasGemmStridedBatchedEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, a.p, CUDA_R_32F, 1, 1, b.p,
                                       CUDA_R_32F, 1, 1, &zero, c.p, CUDA_R_32F, 1, 1, 1, compute,
                                       CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS);
    CHECK(c.host()[0] == want);
  }
  cublasDestroy(h);
}

TEST_CASE("emulator: wmma's TF32 products multiply as a warp does; unrounded operands, misaligned tiles and a store read without __syncwarp are caught") {
  using namespace nvcuda;
  // __float_to_tf32 (cvt.rna): 10 mantissa bits, to nearest, ties away from zero.
  CHECK(wmma::__float_to_tf32(1.0f + 1.0f / 4096) == 1.0f);
  CHECK(wmma::__float_to_tf32(1.0f + 1.0f / 2048) == 1.0f + 1.0f / 1024);
  CHECK(wmma::__float_to_tf32(-1.0f - 1.0f / 2048) == -1.0f - 1.0f / 1024);
  // a [16 x 8] row-major, b [8 x 16] column-major (b's element (k, n) at n * 8 + k): small integers,
  // so every order of summation gives the same product.
  std::vector<float> a(16 * 8), b(8 * 16), want(16 * 16, 0.f);
  for (int i = 0; i < 128; ++i) a[size_t(i)] = float(i * 7 % 9 - 4), b[size_t(i)] = float(i * 5 % 7 - 3);
  for (int i = 0; i < 16; ++i)
    for (int n = 0; n < 16; ++n)
      for (int k = 0; k < 8; ++k) want[size_t(i * 16 + n)] += a[size_t(i * 8 + k)] * b[size_t(n * 8 + k)];
  enum Mode { plain, unrounded, misaligned, no_syncwarp };
  auto product = [&](Mode mode, std::vector<float> a_in) {
    DeviceArray<float> da(a_in), db(b), dc(size_t(256));
    const std::string failure = failure_of([&] {
      bcos::emu::launch("wmma", [&](auto&&... args) {
        auto body = [](const float* pa, const float* pb, float* out, Mode m) {
          __shared__ __align__(32) float tile[16 * 16 + 8];
          const int lane = threadIdx.x;
          for (int t = 0; t < 8; ++t) tile[8 * lane + t] = -1;  // what a stale read finds
          __syncwarp();
          wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
          wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
          wmma::load_matrix_sync(fa, pa, 8);
          wmma::load_matrix_sync(fb, pb, 8);
          if (m != unrounded)
            for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
          wmma::fill_fragment(fc, 0.f);
          wmma::mma_sync(fc, fa, fb, fc);
          wmma::store_matrix_sync(m == misaligned ? tile + 4 : tile, fc, 16, wmma::mem_row_major);
          if (m != no_syncwarp) __syncwarp();
          for (int t = 0; t < 8; ++t) out[8 * lane + t] = tile[8 * lane + t];  // mostly other lanes' elements
        };
        body(args...);
      }, 1, 32)(da.p, db.p, dc.p, mode);
    });
    return std::pair{failure, dc.host()};
  };
  ScheduleScope scope(bcos::emu::Order::shuffle, 5);
  {
    const auto [failure, out] = product(plain, a);
    CHECK(failure == "");
    CHECK(out == want);
  }
  std::vector<float> fine = a;
  fine[3] = 1.0f + 1.0f / 4096;  // not a TF32 value
  CHECK(product(unrounded, fine).first.find("wmma::mma_sync: a TF32 operand of matrix_a was not rounded") !=
        std::string::npos);
  CHECK(product(plain, fine).first == "");  // rounded in the fragment
  CHECK(product(misaligned, a).first.find("wmma::store_matrix_sync: the pointer is not 256-bit aligned") !=
        std::string::npos);
  const auto [failure, out] = product(no_syncwarp, a);
  CHECK(failure == "");
  CHECK(out != want);
}

TEST_CASE("emulator: a linear layer's bias goes in cuBLASLt's epilogue; where cuBLASLt offers no algorithm, "
          "it is written into the output for the GEMM to accumulate onto") {
  struct Restore {
    ~Restore() {
      bcos::emu::runtime::set_lt_algorithms(true);
      bcos::emu::runtime::set_lt_matmul_answer(bcos::emu::runtime::LtMatmulAnswer::run);
      bcos::set_allow_tf32(true);
    }
  } restore;
  bcos::set_allow_tf32(false);  // float32 products as the CPU's, to 1e-5
  bcos::manual_seed(33);
  // x a view one row into its storage: 96 bytes in, so cuBLASLt must be told its alignment.
  const bcos::Tensor big = bcos::randn({38, 24}), w = bcos::randn({19, 24}), b = bcos::randn({19});
  const bcos::Tensor x = big.narrow(0, 1, 37), c = bcos::randint(-3, 4, {37, 19}).to(bcos::DType::f32);
  auto run = [&](bcos::Device dev, bcos::DType autocast) {
    // Fresh leaves each run (to() on the tensor's own device returns the tensor itself).
    bcos::Tensor xd = dev.is_cuda() ? big.to(dev).narrow(0, 1, 37).detach() : x.clone();
    bcos::Tensor wd = w.to(dev).clone().requires_grad_(), bd = b.to(dev).clone().requires_grad_();
    xd.requires_grad_();
    bcos::Tensor y;
    {
      bcos::AutocastGuard guard(dev.type, autocast, autocast != bcos::DType::f32);
      y = bcos::linear(xd, wd, bd);
    }
    bcos::sum(y * c.to(dev)).backward();
    return std::vector<bcos::Tensor>{y.to(bcos::Device()), xd.grad().to(bcos::Device()), wd.grad().to(bcos::Device()),
                                     bd.grad().to(bcos::Device())};
  };
  for (bcos::DType autocast : {bcos::DType::f32, bcos::DType::bf16}) {
    CAPTURE(bcos::dtype_name(autocast));
    const auto cpu = run(bcos::Device(), autocast);
    // No algorithm offered, or the call itself declined (CUBLAS_STATUS_NOT_SUPPORTED): the fallback.
    for (const char* answer : {"offered", "no algorithm", "declined"}) {
      CAPTURE(answer);
      const bool offered = std::string(answer) == "offered";
      bcos::emu::runtime::set_lt_algorithms(std::string(answer) != "no algorithm");
      bcos::emu::runtime::set_lt_matmul_answer(std::string(answer) == "declined"
                                                   ? bcos::emu::runtime::LtMatmulAnswer::decline
                                                   : bcos::emu::runtime::LtMatmulAnswer::run);
      const int64_t epilogues = bcos::cuda::linear_bias_epilogues(), fallbacks = bcos::cuda::linear_bias_fallbacks();
      const auto gpu = run(bcos::Device::cuda(0), autocast);
      // float32: 1e-5. bf16 autocast: a bf16 result on both (the gradients through it too), each
      // rounding float32 sums taken in another order: now and then an element flips by 2^-8.
      const double tol = autocast == bcos::DType::f32 ? 1e-5 : 1.0 / 256;
      for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu[i], cpu[i]) <= tol);
      CHECK(bcos::cuda::linear_bias_epilogues() - epilogues == (offered ? 1 : 0));
      CHECK(bcos::cuda::linear_bias_fallbacks() - fallbacks == (offered ? 0 : 1));
    }
    bcos::emu::runtime::set_lt_algorithms(true);
    // Any other failure is an error, raised with the call's name, not hidden behind the fallback.
    bcos::emu::runtime::set_lt_matmul_answer(bcos::emu::runtime::LtMatmulAnswer::fail);
    const int64_t fallbacks = bcos::cuda::linear_bias_fallbacks();
    const bcos::Device gpu(bcos::Device::cuda(0));
    CHECK_THROWS_WITH_AS(bcos::linear(x.to(gpu), w.to(gpu), b.to(gpu)), doctest::Contains("cublasLtMatmul"),
                         bcos::Error);
    CHECK(bcos::cuda::linear_bias_fallbacks() == fallbacks);
    bcos::emu::runtime::set_lt_matmul_answer(bcos::emu::runtime::LtMatmulAnswer::run);
  }
  // float64 never asks cuBLASLt (PyTorch's addmm keeps it off too).
  const int64_t epilogues = bcos::cuda::linear_bias_epilogues(), fallbacks = bcos::cuda::linear_bias_fallbacks();
  const bcos::Tensor y64 = bcos::linear(x.to(bcos::DType::f64).to(bcos::Device::cuda(0)),
                                        w.to(bcos::DType::f64).to(bcos::Device::cuda(0)),
                                        b.to(bcos::DType::f64).to(bcos::Device::cuda(0)));
  CHECK(golden::relative_error(y64.to(bcos::Device()), bcos::linear(x.to(bcos::DType::f64), w.to(bcos::DType::f64),
                                                                     b.to(bcos::DType::f64))) <= 1e-12);
  CHECK(bcos::cuda::linear_bias_epilogues() == epilogues);
  CHECK(bcos::cuda::linear_bias_fallbacks() == fallbacks);
}

TEST_CASE("emulator: a pinned buffer held and copied to the GPU every step keeps no event of a copy that has run") {
  const bcos::Tensor host = bcos::pin_memory(bcos::full({256}, 3.0));
  const int64_t before = bcos::emu::runtime::events_alive();
  for (int step = 0; step < 20; ++step) {
    const bcos::Tensor on_gpu = host.to(bcos::Device::cuda(0));
    bcos::cuda::synchronize(0);
  }
  // Each copy's event goes once a later copy finds it done: at most the last one stays.
  CHECK(bcos::emu::runtime::events_alive() - before <= 1);
}

TEST_CASE("emulator contexts: threads that never chose a device, working on cuda:1 and pinning memory for it, "
          "wake no context on cuda:0") {
  // A data-parallel rank works on its own GPU only; a context on GPU 0 costs ~0.5 GiB there per
  // rank. Threads start with device 0 "current": a guard handing them back to it, or pinned
  // memory allocated under it, would create that context (real CUDA, from version 12, does so on
  // cudaSetDevice). Runs in a process of its own with two GPUs (tests/meson.build).
  namespace rt = bcos::emu::runtime;
  if (bcos::cuda::device_count() < 2 || rt::contexts() != 0) {
    MESSAGE("skipped: needs a process of its own with two emulated GPUs");
    return;
  }
  const bcos::Device gpu1 = bcos::Device::cuda(1);
  std::thread([&] {  // a training thread: forward, backward, results back
    bcos::manual_seed(35);
    const bcos::Tensor w = bcos::randn({8, 8}).to(gpu1).requires_grad_(), x = bcos::randn({4, 8}).to(gpu1);
    bcos::sum(bcos::relu(bcos::linear(x, w, bcos::Tensor()))).backward();
    CHECK(w.grad().to(bcos::Device()).numel() == 64);
  }).join();
  std::thread([&] {  // a data loader's worker: pinned buffers for batches bound for cuda:1
    const bcos::Tensor images = bcos::empty_pinned({2, 3}, bcos::DType::f32, gpu1);
    const bcos::Tensor labels = bcos::pin_memory(bcos::zeros({2}, bcos::DType::i64), gpu1);
    CHECK(labels.to(gpu1).to(bcos::Device()).to_vector<int64_t>() == std::vector<int64_t>{0, 0});
    CHECK(images.numel() == 6);
  }).join();
  bcos::cuda::synchronize(1);
  CHECK(rt::contexts() == 0b10);
}
