// What dist.cpp shares with its transports, mpi.cpp and nccl.cpp (each compiled only when its
// library was found: -Dmpi / -Dnccl).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "dist/dist.h"

namespace bcos::dist {

// A started collective: `test` says whether it finished (and drives progress); `finish` runs once
// after it did (e.g. divides a sum by the world size). `what` names it in a timeout's message.
struct Work::Impl {
  std::string what;
  std::function<bool()> test;
  std::function<void()> finish;
  // At the deadline, before the error: NCCL aborts its communicator (as PyTorch's watchdog does),
  // so that nothing left behind -- a synchronising free while the error unwinds -- waits for the
  // stuck collective. Empty for MPI.
  std::function<void()> give_up;
  bool finished = false;
};

namespace detail {

// Collectives on one rank need no transport: what each would compute over a world of one.
[[noreturn]] void no_transport(const char* op, const Tensor& t);

// "all_reduce(sum) of f32 [3, 4] on cpu": a collective and its tensor, for messages.
std::string describe(const char* op, const Tensor& t);

#ifdef BCOS_WITH_MPI
namespace mpi {
void init(int& rank, int& world_size);  // MPI_Init_thread unless the program already did
bool active();
void finalize();
void abort(int code);
std::shared_ptr<Work::Impl> all_reduce(const Tensor& t, ReduceOp op);
std::shared_ptr<Work::Impl> broadcast(const Tensor& t, int root);
std::shared_ptr<Work::Impl> all_gather(const Tensor& t, const Tensor& out);
std::shared_ptr<Work::Impl> barrier();
// Rank 0's `bytes` to every rank (the NCCL unique id).
void broadcast_bytes(void* data, int bytes);
}  // namespace mpi
#endif

#ifdef BCOS_WITH_NCCL
namespace nccl {
// Creates the communicator on GPU `device` (this rank's): the id from rank 0 through `share_id`.
void init(int rank, int world_size, int device, const std::function<void(void* id, int bytes)>& share_id);
bool active();
void finalize();
void abort();
std::shared_ptr<Work::Impl> all_reduce(const Tensor& t, ReduceOp op);
std::shared_ptr<Work::Impl> broadcast(const Tensor& t, int root);
std::shared_ptr<Work::Impl> all_gather(const Tensor& t, const Tensor& out);
}  // namespace nccl
#endif

// torchrun-style launches: rank 0 serves `bytes` at MASTER_ADDR:MASTER_PORT, the others fetch
// them (retrying until the deadline). Used for the NCCL id when MPI did not start the job.
void tcp_share(void* data, int bytes, const LaunchInfo& info, double timeout_s);

}  // namespace detail
}  // namespace bcos::dist
