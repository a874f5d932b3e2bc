// What the CUDA emulator's parts share (tensor/cuda/emulator/): the emulated runtime's checks on
// streams and device memory, which its cuBLAS / cuDNN / NCCL stand-ins and the scheduler use.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>

namespace bcos::emu::runtime {

// The error the next cudaGetLastError returns (a launch the hardware would refuse).
void set_launch_error(cudaError_t err);
// Raises, naming `what`, unless `stream` is the default stream or one created and not destroyed;
// then waits for the work queued on it beside the host (below), so what follows on the stream
// runs after it. Every launch, library call and copy on a stream goes through here.
void check_stream(cudaStream_t stream, const char* what);
// Queues `work` on `stream` to run on a thread of its own, after the stream's earlier work: the
// NCCL stand-in's collectives, which wait for other processes while this one goes on. Later work
// on the stream, an event recorded after it, and every synchronisation wait for it; everything
// else runs at once, as before. `work` must not throw (it reports through its own state).
void enqueue_beside_host(cudaStream_t stream, std::function<void()> work);
// Raises, naming `what`, unless [p, p + bytes) lies inside one live device allocation.
void check_device_range(const void* p, size_t bytes, const char* what);

}  // namespace bcos::emu::runtime
