// The job's processes (launcher environment, init / finalize / abort) and the device dispatch of
// the collectives: CPU tensors to mpi.cpp, CUDA tensors to nccl.cpp, a world of one to nothing.
#include "dist/dist.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "autograd/autograd.h"
#include "autograd/ops.h"
#include "dist/internal.h"

namespace bcos::dist {

namespace {
struct State {
  bool initialized = false;
  LaunchInfo info;
  double timeout_s = 1800;
  bool nccl_tried = false;
};
State g_state;

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, const char* what) {
  const char* v = env(name);
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  BCOS_CHECK(end && *end == 0 && x >= 0 && x < (1 << 24), "dist: ", name, "=", v, " is not a valid ", what);
  return int(x);
}

const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
  }
  return "?";
}

void check_collective(const char* op, const Tensor& t) {
  BCOS_CHECK(t.defined(), "dist::", op, ": undefined tensor");
  BCOS_CHECK(t.is_contiguous(), "dist::", op, ": needs a contiguous tensor (got ", t.shape(), " with strides ",
             t.strides(), "); call .contiguous() and copy the result back");
}

#ifdef BCOS_WITH_NCCL
// The NCCL communicator, made on the first CUDA collective (every rank makes the same calls, so
// every rank gets there): the id from rank 0 over MPI, or over TCP for a torchrun-style launch.
void ensure_nccl(int device) {
  if (detail::nccl::active()) return;
  BCOS_CHECK(!g_state.nccl_tried,
             "dist: no NCCL communicator: it failed to start, or was aborted when a collective timed out");
  g_state.nccl_tried = true;
  const LaunchInfo& info = g_state.info;
#ifdef BCOS_WITH_MPI
  if (detail::mpi::active()) {
    detail::nccl::init(info.rank, info.world_size, device,
                       [](void* id, int bytes) { detail::mpi::broadcast_bytes(id, bytes); });
    return;
  }
#endif
  detail::nccl::init(info.rank, info.world_size, device,
                     [&](void* id, int bytes) { detail::tcp_share(id, bytes, info, g_state.timeout_s); });
}
#endif

bool use_nccl([[maybe_unused]] const char* op, const Tensor& t) {  // op: for the error without NCCL
  if (!t.is_cuda()) return false;
#ifdef BCOS_WITH_NCCL
  ensure_nccl(t.device().index);
  return true;
#else
  fail("dist::", op, ": ", t.shape(), " is on ", t.device(),
       ", and this build has no NCCL for CUDA tensors (configure with -Dnccl=enabled)");
#endif
}
}  // namespace

namespace detail {
std::string describe(const char* op, const Tensor& t) {
  return str(op, " of ", t.dtype(), " ", t.shape(), " on ", t.device());
}

void no_transport(const char* op, const Tensor& t) {
  fail("dist::", op, ": ", t.shape(), " on ", t.device(), " needs MPI between the ", world_size(),
       " ranks, but the job was started by ", g_state.info.launcher,
       g_state.info.launcher == "torchrun" ? " (no MPI: only CUDA tensors, through NCCL, can be exchanged; "
                                             "start it with mpirun or srun for CPU tensors)"
                                           : "");
}
}  // namespace detail

LaunchInfo launch_info() {
  LaunchInfo info;
  auto take = [&](const char* launcher, const char* rank, const char* size, const char* local) {
    if (!env(rank) || !env(size)) return false;
    info.launcher = launcher;
    info.rank = env_int(rank, "rank");
    info.world_size = env_int(size, "world size");
    info.local_rank = local && env(local) ? env_int(local, "local rank") : 0;
    BCOS_CHECK(info.world_size >= 1 && info.rank < info.world_size, "dist: ", rank, "=", info.rank, " with ", size, "=",
               info.world_size, " (from ", launcher, ")");
    return true;
  };
  // MPI launchers first: under mpirun the torchrun variables are the user's own, if any.
  if (take("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK") ||
      take("mpirun", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID") ||
      take("srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
    return info;
  if (take("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK")) {
    if (info.world_size > 1) {
      BCOS_CHECK(env("MASTER_ADDR") && env("MASTER_PORT"), "dist: RANK and WORLD_SIZE are set (", info.rank, " of ",
                 info.world_size, ") but MASTER_ADDR / MASTER_PORT are not: a torchrun-style launch needs both");
      info.master_addr = env("MASTER_ADDR");
      info.master_port = env_int("MASTER_PORT", "port");
      BCOS_CHECK(info.master_port > 0 && info.master_port < 65536, "dist: MASTER_PORT=", info.master_port, " is not a port");
    }
    return info;
  }
  return info;
}

void init(const InitOptions& options) {
  if (g_state.initialized) return;
  State s;
  s.info = launch_info();
  s.timeout_s = options.timeout_s;
  if (const char* t = env("BCOS_DIST_TIMEOUT")) {
    char* end = nullptr;
    s.timeout_s = std::strtod(t, &end);
    BCOS_CHECK(end && *end == 0 && s.timeout_s > 0, "dist: BCOS_DIST_TIMEOUT=", t, " is not a positive number of seconds");
  }
  if (s.info.world_size > 1 && s.info.launcher != "torchrun") {
#ifdef BCOS_WITH_MPI
    int rank = 0, size = 1;
    detail::mpi::init(rank, size);
    BCOS_CHECK(rank == s.info.rank && size == s.info.world_size, "dist: ", s.info.launcher, " says rank ", s.info.rank,
               " of ", s.info.world_size, " but MPI says ", rank, " of ", size,
               " (an MPI other than the one that launched the job?)");
#else
    fail("dist: started by ", s.info.launcher, " as rank ", s.info.rank, " of ", s.info.world_size,
         ", but this build has no MPI (install libopenmpi-dev and reconfigure: -Dmpi=enabled)");
#endif
  }
  g_state = s;
  g_state.initialized = true;
}

bool initialized() { return g_state.initialized; }

void finalize() {
  if (!g_state.initialized) return;
#ifdef BCOS_WITH_NCCL
  detail::nccl::finalize();
#endif
#ifdef BCOS_WITH_MPI
  detail::mpi::finalize();
#endif
  g_state.initialized = false;
}

void abort(int code, const std::string& why) {
  std::fprintf(stderr, "%s\n", why.c_str());
  std::fflush(stderr);
  if (g_state.initialized && g_state.info.world_size > 1) {
    std::fprintf(stderr, "dist: rank %d of %d ends the job\n", g_state.info.rank, g_state.info.world_size);
    std::fflush(stderr);
#ifdef BCOS_WITH_NCCL
    detail::nccl::abort();
#endif
#ifdef BCOS_WITH_MPI
    if (detail::mpi::active()) detail::mpi::abort(code);
#endif
  }
  std::_Exit(code);  // torchrun-style: the launcher sees the exit; the others time out
}

int rank() { return g_state.info.rank; }
int world_size() { return g_state.initialized ? g_state.info.world_size : 1; }
int local_rank() { return g_state.info.local_rank; }
double timeout_seconds() { return g_state.timeout_s; }

bool built_with_mpi() {
#ifdef BCOS_WITH_MPI
  return true;
#else
  return false;
#endif
}

bool built_with_nccl() {
#ifdef BCOS_WITH_NCCL
  return true;
#else
  return false;
#endif
}

// ---- Work -------------------------------------------------------------------------------------
Work::~Work() {
  if (impl_ && !impl_->finished) {
    try {
      wait();
    } catch (const Error& e) {  // a destructor must not throw: the job cannot go on
      dist::abort(1, e.what());
    }
  }
}

Work& Work::operator=(Work&& other) noexcept {
  if (this != &other) {
    Work old(std::move(*this));  // finishes what this held
    impl_ = std::move(other.impl_);
  }
  return *this;
}

namespace {
// Whether the collective is done; a failure it reports ends it (the destructor must not wait on it
// again, and so hide this error behind a later one).
bool poll(Work::Impl& impl) {
  try {
    return impl.test();
  } catch (...) {
    impl.finished = true;
    throw;
  }
}
}  // namespace

bool Work::done() { return !impl_ || impl_->finished || poll(*impl_); }

void Work::wait(double timeout_s) {
  if (!impl_ || impl_->finished) return;
  using Clock = std::chrono::steady_clock;
  const double limit = timeout_s > 0 ? timeout_s : timeout_seconds();
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limit));
  // Poll. MPI's non-blocking collectives advance only inside MPI calls, a step per call, so a
  // sleep between polls would stretch every step of a large all-reduce: yield instead (other
  // threads on the core still run), and only after half a second, a wait for a rank busy with
  // something else (rank 0 evaluating alone), poll every millisecond.
  const auto patient_until = Clock::now() + std::chrono::milliseconds(500);
  bool long_wait = false;
  for (int polls = 0; !poll(*impl_); ++polls) {
    if (long_wait)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    else
      std::this_thread::yield();
    if (polls % 64 == 0) long_wait = Clock::now() > patient_until;
    if (polls % 64 == 0 && Clock::now() > deadline) {
      impl_->finished = true;  // do not wait again in the destructor
      if (impl_->give_up) impl_->give_up();
      fail("dist: ", impl_->what, ": no answer from the other ranks within ", limit, " s (rank ", rank(),
           " of ", world_size(), "; a rank may have failed or left the training loop early; "
           "$BCOS_DIST_TIMEOUT sets the limit)");
    }
  }
  impl_->finished = true;
  if (impl_->finish) impl_->finish();
}

// ---- collectives ------------------------------------------------------------------------------
Work all_reduce_async(const Tensor& t, ReduceOp op) {
  check_collective("all_reduce", t);
  BCOS_CHECK(op != ReduceOp::avg || t.is_floating_point(), "dist::all_reduce: avg needs a float tensor, got ",
             t.dtype(), " ", t.shape());
  if (world_size() == 1) return Work();
  if (use_nccl("all_reduce", t)) {
#ifdef BCOS_WITH_NCCL
    return Work(detail::nccl::all_reduce(t, op));
#endif
  }
#ifdef BCOS_WITH_MPI
  if (detail::mpi::active()) return Work(detail::mpi::all_reduce(t, op));
#endif
  detail::no_transport(str("all_reduce(", op_name(op), ")").c_str(), t);
}

void all_reduce(const Tensor& t, ReduceOp op) { all_reduce_async(t, op).wait(); }

void broadcast(const Tensor& t, int root) {
  check_collective("broadcast", t);
  BCOS_CHECK(root >= 0 && root < world_size(), "dist::broadcast: root ", root, " outside the ", world_size(), " ranks");
  if (world_size() == 1) return;
  if (use_nccl("broadcast", t)) {
#ifdef BCOS_WITH_NCCL
    Work(detail::nccl::broadcast(t, root)).wait();
    return;
#endif
  }
#ifdef BCOS_WITH_MPI
  if (detail::mpi::active()) return Work(detail::mpi::broadcast(t, root)).wait();
#endif
  detail::no_transport("broadcast", t);
}

Tensor all_gather(const Tensor& t) {
  check_collective("all_gather", t);
  Shape shape{int64_t(world_size())};
  for (int64_t d : t.shape()) shape.push_back(d);
  if (world_size() == 1) return t.clone().reshape(shape);
  Tensor out = empty(shape, {t.dtype(), t.device()});
  if (use_nccl("all_gather", t)) {
#ifdef BCOS_WITH_NCCL
    Work(detail::nccl::all_gather(t, out)).wait();
    return out;
#endif
  }
#ifdef BCOS_WITH_MPI
  if (detail::mpi::active()) {
    Work(detail::mpi::all_gather(t, out)).wait();
    return out;
  }
#endif
  detail::no_transport("all_gather", t);
}

void barrier(double timeout_s) {
  if (world_size() == 1) return;
#ifdef BCOS_WITH_MPI
  if (detail::mpi::active()) return Work(detail::mpi::barrier()).wait(timeout_s);
#endif
#ifdef BCOS_WITH_NCCL
  if (cuda_device_count() > 0) {  // torchrun-style, GPUs only: a one-element all-reduce on this rank's GPU
    Tensor token = zeros({1}, {DType::f32, Device::cuda(local_rank() % cuda_device_count())});
    use_nccl("barrier", token);
    return Work(detail::nccl::all_reduce(token, ReduceOp::sum)).wait(timeout_s);
  }
#endif
  detail::no_transport("barrier", zeros({1}));
}

Tensor all_reduce_sum_autograd(const Tensor& x) {
  BCOS_CHECK(x.defined(), "dist::all_reduce_sum_autograd: undefined tensor");
  Tensor out;
  {
    NoGradGuard no_grad;
    out = x.detach().contiguous().clone();
    all_reduce(out, ReduceOp::sum);
  }
  if (needs_graph({x}))
    record("AllReduceSumBackward", out, {x}, [](const Tensor& g, const std::vector<bool>&) -> Grads {
      Tensor summed = g.contiguous().clone();
      all_reduce(summed, ReduceOp::sum);
      return {summed};
    });
  return out;
}

Tensor all_gather_autograd(const Tensor& x) {
  BCOS_CHECK(x.defined() && x.dim() >= 1, "dist::all_gather_autograd: needs a tensor of at least one dim");
  Tensor out;
  {
    NoGradGuard no_grad;
    Tensor gathered = all_gather(x.detach().contiguous());  // [world, n, *]
    Shape shape = x.shape();
    shape[0] *= world_size();
    out = gathered.reshape(shape);
  }
  if (needs_graph({x})) {
    const int64_t n = x.size(0), offset = int64_t(rank()) * x.size(0);
    record("AllGatherBackward", out, {x}, [n, offset](const Tensor& g, const std::vector<bool>&) -> Grads {
      Tensor summed = g.contiguous().clone();
      all_reduce(summed, ReduceOp::sum);
      return {summed.narrow(0, offset, n).contiguous()};
    });
  }
  return out;
}

}  // namespace bcos::dist
