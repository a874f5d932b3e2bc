// What the CUDA emulator's parts share (tensor/cuda/emulator/): the emulated runtime's streams and
// its checks on device memory, which the scheduler and the cuBLAS / cuDNN / NCCL stand-ins use.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace bcos::emu::runtime {

// The error the next cudaGetLastError returns (a launch the hardware would refuse).
void set_launch_error(cudaError_t err);
// Queues `work` (a kernel, a library call, a copy) on `stream`, or raises naming `what` unless the
// stream is the default one or one created and not destroyed. Queued work runs later, in stream
// order, on whichever host thread needs it done: a synchronisation, an event query, a synchronous
// copy, a free, or work on another stream that waits for an event recorded after it. So a missing
// event wait or synchronisation shows up as stale data, as on a GPU. With
// BCOS_CUDA_EMULATOR_SYNC=1 work runs at once instead (a kernel's error then raises at its launch
// rather than at the next synchronisation). `work` captures what it reads by value.
void enqueue(cudaStream_t stream, const char* what, std::function<void()> work);
// Queues `work` on `stream` to start, in its turn, on a thread of its own: the NCCL stand-in's
// collectives, which wait for other processes while this one goes on. Later work on the stream,
// an event recorded after it, and every synchronisation wait for it to end. `work` must not throw
// (it reports through its own state).
void enqueue_beside_host(cudaStream_t stream, std::function<void()> work);
// Runs and waits for everything queued on every stream (cudaDeviceSynchronize).
void synchronize_all();
// A permutation of [0, n) by the launches' order (scheduler.cpp): the order in which a library
// stand-in's nondeterministic algorithm adds its partial sums.
std::vector<int64_t> draw_order(int64_t n);
// How many launches of kernels whose launch text starts with `name_prefix` ("reduce_columns") have
// run so far (queued ones count once run: synchronise first). Tests check with it that a shape
// takes the launch meant for it, which its results alone cannot show.
int64_t kernels_run(std::string_view name_prefix);
// How many 16-byte pack accesses (tensor/cuda/internal.h: pack_at) those kernels have made: which
// of a kernel's paths a launch took where its grid does not show it.
int64_t pack_accesses(std::string_view name_prefix);
// BCOS_CUDA_EMULATOR_TRACE=<file> writes a line per launch and per cuBLAS GEMM to <file>
// (scheduler.cpp; tools/emu_trace.py reads it). set_trace starts a new one in `path` in its place
// (closing the last; "" stops tracing); tracing() says whether one is open; trace_call writes a
// library call's line: its name, its shape in the grid's column, its host time as its work.
void set_trace(const std::string& path);
bool tracing();
void trace_call(const char* name, const std::string& shape, uint64_t work_ns);
uint64_t trace_clock_ns();

// The devices whose context the process has woken (bit d: device d), as the real runtime creates
// them: on cudaSetDevice, and on allocations, pinned host memory, streams, events and queued work
// on the current device. A data-parallel rank that wakes another rank's GPU costs it ~0.5 GiB.
uint64_t contexts();

// How many times the host has waited for the device: stream, event and device synchronisations,
// synchronous copies, copies into pageable memory, cudaFree and cudaFreeHost. Tests check with it that a GPU training step
// makes no round trip through the host (each one stalls the host until the GPU catches up).
int64_t host_waits();

// How many events exist (created, not destroyed): tests check with it that none pile up.
int64_t events_alive();
// How many graphs and executable graphs exist (cudaStreamEndCapture / cudaGraphInstantiate, not
// destroyed): tests check with it that a capture, failed or not, leaves none behind.
int64_t graphs_alive();
// Raises, naming `what`, unless [p, p + bytes) lies inside one live device allocation.
void check_device_range(const void* p, size_t bytes, const char* what);

// What the cuDNN stand-in's fast convolution algorithms (the heuristics' first entries) do, so
// that tests reach the backend's fallback to the next entry: run; refuse at execution with
// CUDNN_STATUS_NOT_SUPPORTED_SHAPE, as real cuDNN may for an algorithm its heuristics listed; or
// ask for a workspace larger than the device; or fail at execution with
// CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER, as an algorithm kept for aligned pointers may on a
// view that starts inside its allocation; or fail at execution with
// CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED, as a cuDNN 9 engine may where the next one
// runs (the graph API's search moves on; the legacy API raises it). fast_refusals() counts the
// refused executions.
enum class FastAlgorithms { run, refused, oversized, misaligned, failing };
void set_fast_algorithms(FastAlgorithms mode);
int64_t fast_refusals();

// The math type the cuDNN stand-in's heuristics rate their entries with: the descriptor's (true,
// the default), or always CUDNN_DEFAULT_MATH (false) -- what real cuDNN 9 might answer for an
// FMA-math descriptor, which float32 without TF32 must not take as it is.
void set_rated_with_descriptor_math(bool as_descriptor);

// Whether the cuBLASLt stand-in's heuristics offer an algorithm (default true); off, they answer
// CUBLAS_STATUS_NOT_SUPPORTED, as the library does when none suits, so that tests reach the
// backend's fallback for a linear layer's bias (cublaslt.cpp).
void set_lt_algorithms(bool offered);

// Whether the cuDNN graph API stand-in's heuristics rank any engine (default true); off, every
// mode answers an empty list, so that tests reach the backend's fallback from the graph API to
// the legacy one (cudnn_graph.cpp).
void set_cudnn_graph_engines(bool offered);

// What the stand-in's cublasLtMatmul answers (default: it runs the product). `decline`:
// CUBLAS_STATUS_NOT_SUPPORTED, the library's "no kernel for this", which the backend takes as a
// fallback; `fail`: CUBLAS_STATUS_EXECUTION_FAILED, which it must raise instead of hiding.
enum class LtMatmulAnswer { run, decline, fail };
void set_lt_matmul_answer(LtMatmulAnswer answer);

}  // namespace bcos::emu::runtime
