// CPU tensors between ranks through MPI: non-blocking collectives (MPI-3's MPI_Iallreduce and
// kin) on a duplicate of MPI_COMM_WORLD, so dist::Work can poll them against a deadline.
// Compiled only when meson found MPI (-Dmpi).
// The C API only: OpenMPI and MPICH would otherwise pull in their deprecated C++ bindings.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <string>

#include <climits>

#include "dist/internal.h"
#include "tensor/copy.h"

namespace bcos::dist::detail::mpi {

namespace {
MPI_Comm g_comm = MPI_COMM_NULL;
bool g_we_initialised = false;

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char message[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, message, &length);
  fail("dist: ", call, " failed: ", std::string(message, size_t(length)));
}

MPI_Datatype mpi_type(const char* op, const Tensor& t) {
  switch (t.dtype()) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i64: return MPI_INT64_T;
    case DType::u8:
    case DType::boolean: return MPI_UINT8_T;
    case DType::f16:
    case DType::bf16:  // moved as 16-bit words (autocast's features gathered); all_reduce adds float32 copies
      if (std::string(op) == "broadcast" || std::string(op) == "all_gather") return MPI_UINT16_T;
      [[fallthrough]];
    default: fail("dist::", op, ": MPI has no ", t.dtype(), " (", t.shape(), "); convert to float32 first");
  }
}

int mpi_count(const char* op, const Tensor& t) {
  BCOS_CHECK(t.numel() <= INT_MAX, "dist::", op, ": ", t.shape(), " has more elements than one MPI call takes (",
             INT_MAX, "); split it");
  return int(t.numel());
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::avg: return MPI_SUM;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
  }
  return MPI_SUM;
}

// Starts a collective (`call` fills the request) and hands back a Work that polls it; `keep`
// holds the tensors MPI reads and writes until then.
template <class Call>
std::shared_ptr<Work::Impl> start(std::string what, std::vector<Tensor> keep, const char* call_name, Call call) {
  auto request = std::make_shared<MPI_Request>(MPI_REQUEST_NULL);
  check(call(request.get()), call_name);
  auto impl = std::make_shared<Work::Impl>();
  impl->what = std::move(what);
  impl->finish = [keep] {
    for (const Tensor& t : keep) t.bump_version();  // written by MPI, not by an op
  };
  impl->test = [request, keep = std::move(keep)] {
    int done = 0;
    check(MPI_Test(request.get(), &done, MPI_STATUS_IGNORE), "MPI_Test");
    return done != 0;
  };
  return impl;
}
}  // namespace

void init(int& rank, int& world_size) {
  int already = 0;
  MPI_Initialized(&already);
  if (!already) {
    // SERIALIZED: the data loader's threads never call MPI; only one thread at a time does.
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    g_we_initialised = true;
  }
  check(MPI_Comm_dup(MPI_COMM_WORLD, &g_comm), "MPI_Comm_dup");
  // Errors come back as codes (raised as bcos::Error) instead of MPI ending the process.
  check(MPI_Comm_set_errhandler(g_comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check(MPI_Comm_rank(g_comm, &rank), "MPI_Comm_rank");
  check(MPI_Comm_size(g_comm, &world_size), "MPI_Comm_size");
}

bool active() { return g_comm != MPI_COMM_NULL; }

void finalize() {
  if (g_comm != MPI_COMM_NULL) MPI_Comm_free(&g_comm);
  g_comm = MPI_COMM_NULL;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_we_initialised && !finalized) MPI_Finalize();
  g_we_initialised = false;
}

void abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

std::shared_ptr<Work::Impl> all_reduce(const Tensor& t, ReduceOp op) {
  const char* name = op == ReduceOp::avg ? "all_reduce(avg)" : op == ReduceOp::sum ? "all_reduce(sum)"
                     : op == ReduceOp::max ? "all_reduce(max)" : "all_reduce(min)";
  BCOS_CHECK(op == ReduceOp::max || op == ReduceOp::min || t.dtype() != DType::boolean, "dist::", name,
             ": cannot add bool tensors (", t.shape(), ")");
  if (is_half_float(t.dtype())) {
    // MPI has no 16-bit float to add: the ranks reduce float32 copies (each value exact in them)
    // and every rank rounds the result once into t -- the same bits on every rank. (NCCL adds
    // bf16 / f16 itself.) A bf16 model's gradients and autocast's gathered features' gradients.
    const Tensor wide = raw_to(t, DType::f32, t.device());
    std::shared_ptr<Work::Impl> impl = detail::mpi::all_reduce(wide, op);
    impl->finish = [t, wide, widened = std::move(impl->finish)] {
      if (widened) widened();
      copy_into(t, wide);  // written by the collective, not by an op (as MPI writes the others)
      t.bump_version();
    };
    return impl;
  }
  const MPI_Datatype type = mpi_type(name, t);
  const int count = mpi_count(name, t);
  auto impl = start(describe(name, t), {t}, "MPI_Iallreduce", [&](MPI_Request* r) {
    return MPI_Iallreduce(MPI_IN_PLACE, t.raw_data(), count, type, mpi_op(op), g_comm, r);
  });
  if (op == ReduceOp::avg) {
    const double scale = 1.0 / double(dist::world_size());
    impl->finish = [t, scale] { Tensor(t).mul_(scale); };
  }
  return impl;
}

std::shared_ptr<Work::Impl> broadcast(const Tensor& t, int root) {
  const MPI_Datatype type = mpi_type("broadcast", t);
  const int count = mpi_count("broadcast", t);
  return start(describe("broadcast", t), {t}, "MPI_Ibcast",
               [&](MPI_Request* r) { return MPI_Ibcast(t.raw_data(), count, type, root, g_comm, r); });
}

std::shared_ptr<Work::Impl> all_gather(const Tensor& t, const Tensor& out) {
  const MPI_Datatype type = mpi_type("all_gather", t);
  const int count = mpi_count("all_gather", t);
  return start(describe("all_gather", t), {t, out}, "MPI_Iallgather", [&](MPI_Request* r) {
    return MPI_Iallgather(t.raw_data(), count, type, out.raw_data(), count, type, g_comm, r);
  });
}

std::shared_ptr<Work::Impl> barrier() {
  return start("barrier", {}, "MPI_Ibarrier", [](MPI_Request* r) { return MPI_Ibarrier(g_comm, r); });
}

void broadcast_bytes(void* data, int bytes) {
  check(MPI_Bcast(data, bytes, MPI_BYTE, 0, g_comm), "MPI_Bcast");
}

}  // namespace bcos::dist::detail::mpi
