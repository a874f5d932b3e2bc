// bcos::dist: the processes of one data-parallel job and the collectives between them.
// CPU tensors travel through MPI (OpenMPI / MPICH, whatever launched the job), CUDA tensors
// through NCCL, whose communicator id rank 0 hands out over MPI or, for a torchrun-style launch,
// over a TCP rendezvous at MASTER_ADDR:MASTER_PORT. Nothing here is home-made transport.
//
//   dist::init();                      // reads the launcher's environment; a no-op when alone
//   dist::all_reduce(loss_sum);        // in place, summed over every rank
//   if (dist::is_main()) save(...);
//
// Every collective waits with a deadline (InitOptions::timeout_s): a rank that died or took
// another path ends the others with an Error naming the collective, instead of a hang. A rank
// that meets an Error should end the whole job with dist::abort (examples do: examples/cli.h).
// Collectives must be called by every rank in the same order, as with MPI and NCCL themselves.
#pragma once

#include <cstdint>
#include <string>

#include "tensor/tensor.h"

namespace bcos::dist {

struct InitOptions {
  // Seconds a collective may wait for the other ranks before it raises (PyTorch's default
  // process-group timeout is 30 min). $BCOS_DIST_TIMEOUT overrides it.
  double timeout_s = 1800;
};

// How this process was started, read from the environment: OpenMPI's OMPI_COMM_WORLD_*,
// MPICH / Intel MPI's PMI_*, Slurm's SLURM_PROCID / SLURM_NTASKS, torchrun's RANK / WORLD_SIZE /
// LOCAL_RANK / MASTER_ADDR / MASTER_PORT. world_size 1 and launcher "none" when started alone.
struct LaunchInfo {
  std::string launcher = "none";  // "mpirun", "srun", "torchrun" or "none"
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;  // torchrun-style only
  int master_port = 0;
};
LaunchInfo launch_info();

// Starts the job's communication. Called once per process (again: no-op). With a world size of
// 1 it starts nothing. Raises when launched by several processes but built without MPI, or when
// the launcher's and MPI's view of rank and size disagree.
void init(const InitOptions& options = {});
bool initialized();
// Ends MPI (and NCCL) cleanly; every rank must call it (it is a barrier). Called at exit too.
void finalize();
// Ends every rank of the job at once (MPI_Abort), after printing `why` on this rank.
[[noreturn]] void abort(int code, const std::string& why);

int rank();        // 0 when not initialised
int world_size();  // 1 when not initialised
int local_rank();  // the rank on this machine (picks the GPU)
inline bool is_main() { return rank() == 0; }
bool built_with_mpi();
bool built_with_nccl();
double timeout_seconds();

enum class ReduceOp { sum, avg, max, min };

// In place on a contiguous tensor, the same shape and dtype on every rank. CPU tensors: f32,
// f64, i64, u8 (MPI); CUDA tensors: f32, f64, f16, bf16, i64 (NCCL).
void all_reduce(const Tensor& t, ReduceOp op = ReduceOp::sum);
// t (contiguous, same shape everywhere) takes rank `root`'s values.
void broadcast(const Tensor& t, int root = 0);
// [world_size, *t.shape()]: every rank's t, by rank.
Tensor all_gather(const Tensor& t);
// timeout_s > 0: this wait's own limit instead of the job's (ranks waiting while rank 0 alone
// evaluates, say).
void barrier(double timeout_s = 0);

// A collective started but not finished (non-blocking MPI / NCCL on a side stream). wait()
// finishes it (with the deadline); a Work dropped unfinished waits in its destructor.
class Work {
 public:
  struct Impl;
  Work() = default;
  explicit Work(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  ~Work();
  Work(Work&&) noexcept = default;
  Work& operator=(Work&&) noexcept;
  bool done();  // also drives MPI's progress
  void wait(double timeout_s = 0);  // 0: the job's timeout

 private:
  std::shared_ptr<Impl> impl_;
};
Work all_reduce_async(const Tensor& t, ReduceOp op = ReduceOp::sum);

// A differentiable sum over ranks: forward all_reduce(sum) of a copy, backward the same of the
// gradient (each rank's loss depends on the sum through every rank's input). For synchronised
// batch-norm statistics.
Tensor all_reduce_sum_autograd(const Tensor& x);

// A differentiable all-gather along dim 0: x [n, *] on every rank -> [world_size · n, *], rank
// q's rows at q · n. Backward: the gradient summed over the ranks (every rank's loss may use
// every row), then this rank's rows -- a reduce-scatter, as torch.distributed.nn.all_gather. For
// losses over the global batch (CLIP's contrastive loss sees every rank's images and texts).
Tensor all_gather_autograd(const Tensor& x);

}  // namespace bcos::dist
