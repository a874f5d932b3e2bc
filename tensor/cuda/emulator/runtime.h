// What the CUDA emulator's parts share (tensor/cuda/emulator/): the emulated runtime's checks on
// streams and device memory, which its cuBLAS / cuDNN stand-ins and the scheduler also use.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace bcos::emu::runtime {

// The error the next cudaGetLastError returns (a launch the hardware would refuse).
void set_launch_error(cudaError_t err);
// Raises, naming `what`, unless `stream` is the default stream or one created and not destroyed.
void check_stream(cudaStream_t stream, const char* what);
// Raises, naming `what`, unless [p, p + bytes) lies inside one live device allocation.
void check_device_range(const void* p, size_t bytes, const char* what);

}  // namespace bcos::emu::runtime
