// The CUDA emulator's NCCL: the calls dist/nccl.cpp makes (unique id, communicator, all-reduce,
// broadcast, all-gather, errors, abort), between the processes of a job, over TCP. Rank 0 is a
// hub: each collective sends every rank's buffer to it, it combines them in rank order and sends
// the result back. That is not NCCL's rings, but the results are NCCL's (sums taken in rank
// order, so runs repeat bit for bit). Each collective runs on its stream beside the host
// (runtime::enqueue_beside_host), as an NCCL kernel runs on a GPU: the caller goes on, an event
// tells when it is done, a peer that died shows as an asynchronous error (ncclRemoteError) and a
// silent one as work that never finishes until ncclCommAbort — the cases dist/nccl.cpp handles
// on a GPU. A collective that failed never finishes either (NCCL's guide: such operations "will
// usually not progress and never complete"), until the communicator is aborted. The unique id holds rank 0's host name, port and a random token; rank 0 must be the
// process that made it. As NCCL, it refuses two ranks on one GPU (the same device of the same
// host: BCOS_CUDA_EMULATOR_DEVICES gives each process several). Ranks calling different
// collectives (which NCCL leaves undefined) are caught: the hub compares a header of each call
// and ends the communicator.
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nccl.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tensor/cuda/emulator/runtime.h"
#include "tensor/dtype.h"
#include "tensor/error.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kInitTimeoutSeconds = 600;  // every rank must reach ncclCommInitRank within this

std::mutex g_error_mutex;
std::string g_last_error;  // ncclGetLastError's text

ncclResult_t error(ncclResult_t rc, const std::string& why) {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  g_last_error = "CUDA emulator's NCCL: " + why;
  return rc;
}

// What the 128-byte unique id carries.
struct IdContents {
  char magic[8];
  uint16_t port;
  char host[96];
  uint64_t token;
};
static_assert(sizeof(IdContents) <= NCCL_UNIQUE_ID_BYTES);
constexpr char kIdMagic[8] = "bcosNCL";

std::mutex g_listen_mutex;
std::map<uint64_t, int> g_listeners;  // token -> the socket rank 0 listens on, until the communicator starts

// What each rank tells the hub when it joins.
struct Hello {
  uint64_t token;
  int32_t rank, nranks, device;
  char host[96];
};

// Every collective's header, sent by each rank to the hub, which compares it with its own.
struct Header {
  uint64_t seq, count;
  int32_t kind, type, op, root, rank;
};
enum Kind : int32_t { kAllReduce = 1, kBroadcast = 2, kAllGather = 3 };
const char* kind_name(int32_t k) {
  return k == kAllReduce ? "ncclAllReduce" : k == kBroadcast ? "ncclBroadcast" : k == kAllGather ? "ncclAllGather" : "?";
}

bool send_all(int fd, const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n, bytes -= size_t(n);
  }
  return true;
}

bool recv_all(int fd, void* data, size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::recv(fd, p, bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;  // 0: the peer closed (exited, or its communicator was aborted)
    p += n, bytes -= size_t(n);
  }
  return true;
}

size_t type_bytes(ncclDataType_t t) {
  switch (t) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
  }
}

// acc = acc (op) x elementwise, in T's arithmetic (f16 / bf16 in float, rounded back each time).
template <class T, class Arith = T>
void combine_as(void* acc_v, const void* x_v, size_t n, ncclRedOp_t op) {
  T* acc = static_cast<T*>(acc_v);
  const T* x = static_cast<const T*>(x_v);
  for (size_t i = 0; i < n; ++i) {
    const Arith a = Arith(acc[i]), b = Arith(x[i]);
    Arith r = a;
    switch (op) {
      case ncclSum: case ncclAvg: r = a + b; break;
      case ncclProd: r = a * b; break;
      case ncclMax: r = b > a ? b : a; break;
      case ncclMin: r = b < a ? b : a; break;
      default: break;
    }
    acc[i] = T(r);
  }
}

template <class T, class Arith = T>
void divide_as(void* acc_v, size_t n, int by) {
  T* acc = static_cast<T*>(acc_v);
  for (size_t i = 0; i < n; ++i) acc[i] = T(Arith(acc[i]) / Arith(by));
}

bool reducible(ncclDataType_t t) { return type_bytes(t) != 0 && t != ncclFloat8e4m3 && t != ncclFloat8e5m2; }

void combine(ncclDataType_t t, void* acc, const void* x, size_t n, ncclRedOp_t op) {
  switch (t) {
    case ncclInt8: return combine_as<int8_t, int>(acc, x, n, op);
    case ncclUint8: return combine_as<uint8_t, unsigned>(acc, x, n, op);
    case ncclInt32: return combine_as<int32_t>(acc, x, n, op);
    case ncclUint32: return combine_as<uint32_t>(acc, x, n, op);
    case ncclInt64: return combine_as<int64_t>(acc, x, n, op);
    case ncclUint64: return combine_as<uint64_t>(acc, x, n, op);
    case ncclFloat16: return combine_as<bcos::Half, float>(acc, x, n, op);
    case ncclBfloat16: return combine_as<bcos::BFloat16, float>(acc, x, n, op);
    case ncclFloat32: return combine_as<float>(acc, x, n, op);
    case ncclFloat64: return combine_as<double>(acc, x, n, op);
    default: return;
  }
}

void divide(ncclDataType_t t, void* acc, size_t n, int by) {
  switch (t) {
    case ncclInt8: return divide_as<int8_t, int>(acc, n, by);
    case ncclUint8: return divide_as<uint8_t, unsigned>(acc, n, by);
    case ncclInt32: return divide_as<int32_t>(acc, n, by);
    case ncclUint32: return divide_as<uint32_t>(acc, n, by);
    case ncclInt64: return divide_as<int64_t>(acc, n, by);
    case ncclUint64: return divide_as<uint64_t>(acc, n, by);
    case ncclFloat16: return divide_as<bcos::Half, float>(acc, n, by);
    case ncclBfloat16: return divide_as<bcos::BFloat16, float>(acc, n, by);
    case ncclFloat32: return divide_as<float>(acc, n, by);
    case ncclFloat64: return divide_as<double>(acc, n, by);
    default: return;
  }
}

}  // namespace

struct ncclComm {
  int rank = 0, nranks = 1;
  std::vector<int> peers;  // the hub: a socket per rank (its own unused); the others: peers[0]
  uint64_t next_seq = 0;   // the calls made so far (the header's sequence number)
  std::atomic<ncclResult_t> async_error{ncclSuccess};
  std::mutex mutex;        // one collective on the sockets at a time
  std::mutex flight_mutex;
  std::condition_variable flight_done;
  int in_flight = 0;
  bool aborted = false;  // guarded by flight_mutex; ncclCommAbort sets it
  std::condition_variable abort_called;

  int hub_socket() const { return peers[0]; }
  void fail(ncclResult_t rc, const std::string& why) {
    ncclResult_t expected = ncclSuccess;
    if (async_error.compare_exchange_strong(expected, rc)) error(rc, why);
    shut_down();  // every other rank then sees its connection closed, as on a dead peer
  }
  void shut_down() {
    for (int fd : peers)
      if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  }
  // A failed collective's kernel: it spins until the communicator is aborted.
  void hang_until_aborted() {
    std::unique_lock<std::mutex> lock(flight_mutex);
    abort_called.wait(lock, [&] { return aborted; });
  }
  void wait_idle() {
    std::unique_lock<std::mutex> lock(flight_mutex);
    flight_done.wait(lock, [&] { return in_flight == 0; });
  }
  ~ncclComm() {
    for (int fd : peers)
      if (fd >= 0) ::close(fd);
  }
};

namespace {

struct Call {
  Header header;
  const void* send;
  void* recv;
};

std::string describe(const Header& h) {
  return bcos::str(kind_name(h.kind), " #", h.seq, " (", h.count, " elements, type ", h.type, ", op ", h.op, ", root ",
                   h.root, ")");
}

// One collective, on the stream's thread. The hub receives each rank's header (and data) in rank
// order, combines, and sends the result back; the others send and then receive.
void run(ncclComm* comm, const Call& c) {
  const Header& h = c.header;
  const size_t bytes = size_t(h.count) * type_bytes(ncclDataType_t(h.type));
  const int n = comm->nranks;
  auto lost = [&](int peer) {
    comm->fail(ncclRemoteError, bcos::str("rank ", comm->rank, " lost rank ", peer, " during ", describe(h),
                                          " (it exited, or aborted its communicator)"));
    comm->hang_until_aborted();
  };
  if (comm->async_error.load() != ncclSuccess) return comm->hang_until_aborted();
  if (comm->rank != 0) {
    const int fd = comm->hub_socket();
    if (!send_all(fd, &h, sizeof h)) return lost(0);
    switch (h.kind) {
      case kAllReduce:
        if (!send_all(fd, c.send, bytes) || !recv_all(fd, c.recv, bytes)) return lost(0);
        return;
      case kAllGather:  // sent before anything is received: in place (send inside recv) is safe
        if (!send_all(fd, c.send, bytes) || !recv_all(fd, c.recv, bytes * size_t(n))) return lost(0);
        return;
      case kBroadcast:
        if (h.root == comm->rank) {
          if (!send_all(fd, c.send, bytes)) return lost(0);
          if (c.recv != c.send) std::memmove(c.recv, c.send, bytes);
          return;
        }
        if (!recv_all(fd, c.recv, bytes)) return lost(0);
        return;
    }
    return;
  }
  // The hub: every rank's header first, compared with its own.
  for (int q = 1; q < n; ++q) {
    Header theirs{};
    if (!recv_all(comm->peers[size_t(q)], &theirs, sizeof theirs)) return lost(q);
    if (theirs.seq != h.seq || theirs.kind != h.kind || theirs.count != h.count || theirs.type != h.type ||
        theirs.op != h.op || theirs.root != h.root)
      return comm->fail(ncclInvalidUsage, bcos::str("the ranks made different calls: rank 0 ", describe(h), ", rank ", q,
                                                    " ", describe(theirs)));
  }
  const ncclDataType_t type = ncclDataType_t(h.type);
  std::vector<char> result;
  switch (h.kind) {
    case kAllReduce: {
      result.assign(static_cast<const char*>(c.send), static_cast<const char*>(c.send) + bytes);
      std::vector<char> theirs(bytes);
      for (int q = 1; q < n; ++q) {
        if (!recv_all(comm->peers[size_t(q)], theirs.data(), bytes)) return lost(q);
        combine(type, result.data(), theirs.data(), h.count, ncclRedOp_t(h.op));
      }
      if (h.op == ncclAvg) divide(type, result.data(), h.count, n);
      break;
    }
    case kAllGather:
      result.resize(bytes * size_t(n));
      std::memcpy(result.data(), c.send, bytes);
      for (int q = 1; q < n; ++q)
        if (!recv_all(comm->peers[size_t(q)], result.data() + bytes * size_t(q), bytes)) return lost(q);
      break;
    case kBroadcast:
      result.resize(bytes);
      if (h.root == 0)
        std::memcpy(result.data(), c.send, bytes);
      else if (!recv_all(comm->peers[size_t(h.root)], result.data(), bytes))
        return lost(h.root);
      break;
  }
  std::memcpy(c.recv, result.data(), result.size());
  for (int q = 1; q < n; ++q) {
    if (h.kind == kBroadcast && q == h.root) continue;  // the root keeps its own
    if (!send_all(comm->peers[size_t(q)], result.data(), result.size())) return lost(q);
  }
}

// Checks a call and queues it on the stream beside the host.
ncclResult_t enqueue(const char* name, Kind kind, const void* send, void* recv, size_t count, ncclDataType_t type,
                     int op, int root, ncclComm* comm, cudaStream_t stream) {
  if (comm == nullptr) return error(ncclInvalidArgument, bcos::str(name, ": no communicator"));
  if (const ncclResult_t e = comm->async_error.load(); e != ncclSuccess) return e;
  const size_t elem = type_bytes(type);
  if (elem == 0) return error(ncclInvalidArgument, bcos::str(name, ": unknown data type ", int(type)));
  if (kind == kAllReduce && (!reducible(type) || op < ncclSum || op > ncclAvg))
    return error(ncclInvalidArgument, bcos::str(name, ": reduction ", op, " on type ", int(type), " is not supported"));
  if (kind == kBroadcast && (root < 0 || root >= comm->nranks))
    return error(ncclInvalidArgument, bcos::str(name, ": root ", root, " with ", comm->nranks, " ranks"));
  const size_t in_bytes = count * elem, out_bytes = kind == kAllGather ? in_bytes * size_t(comm->nranks) : in_bytes;
  try {  // device buffers (enqueue_beside_host checks the stream)
    if (kind != kBroadcast || root == comm->rank) bcos::emu::runtime::check_device_range(send, in_bytes, name);
    bcos::emu::runtime::check_device_range(recv, out_bytes, name);
    Call c{{comm->next_seq, count, kind, int32_t(type), op, root, comm->rank}, send, recv};
    {
      std::lock_guard<std::mutex> lock(comm->flight_mutex);
      ++comm->in_flight;
    }
    ++comm->next_seq;
    bcos::emu::runtime::enqueue_beside_host(stream, [comm, c] {
      {
        std::lock_guard<std::mutex> lock(comm->mutex);
        run(comm, c);
      }
      std::lock_guard<std::mutex> lock(comm->flight_mutex);
      if (--comm->in_flight == 0) comm->flight_done.notify_all();
    });
  } catch (const std::exception& e) {
    return error(ncclInvalidArgument, e.what());
  }
  return ncclSuccess;
}

int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? int(std::min<int64_t>(left, 1000)) : 0;
}

void no_delay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// The hub's side of ncclCommInitRank: a connection from every other rank, each saying who it is,
// then a byte to each: 1 if all joined on distinct GPUs, 0 if not.
ncclResult_t accept_ranks(ncclComm* comm, int listener, const Hello& own, Clock::time_point deadline) {
  std::vector<Hello> hellos(size_t(comm->nranks));
  hellos[0] = own;
  for (int joined = 1; joined < comm->nranks;) {
    pollfd p{listener, POLLIN, 0};
    const int rc = ::poll(&p, 1, ms_left(deadline));
    if (rc < 0 && errno != EINTR) return error(ncclSystemError, bcos::str("poll: ", std::strerror(errno)));
    if (rc <= 0) {
      if (Clock::now() >= deadline)
        return error(ncclSystemError, bcos::str("ncclCommInitRank: rank 0 waited ", kInitTimeoutSeconds, " s for ",
                                                comm->nranks - joined, " more rank(s)"));
      continue;
    }
    const int fd = ::accept(listener, nullptr, nullptr);
    if (fd < 0) continue;
    no_delay(fd);
    Hello hello{};
    if (!recv_all(fd, &hello, sizeof hello) || hello.token != own.token) {
      ::close(fd);  // not one of ours
      continue;
    }
    hello.host[sizeof hello.host - 1] = 0;
    const int q = hello.rank;
    if (hello.nranks != comm->nranks || q <= 0 || q >= comm->nranks || comm->peers[size_t(q)] >= 0) {
      ::close(fd);
      return error(ncclInvalidUsage, bcos::str("ncclCommInitRank: a rank says it is ", q, " of ", hello.nranks,
                                               ", with rank 0 expecting ", comm->nranks, " ranks"));
    }
    comm->peers[size_t(q)] = fd;
    hellos[size_t(q)] = hello;
    ++joined;
  }
  std::string duplicate;
  for (int a = 0; a < comm->nranks && duplicate.empty(); ++a)
    for (int b = a + 1; b < comm->nranks && duplicate.empty(); ++b)
      if (hellos[size_t(a)].device == hellos[size_t(b)].device &&
          std::strcmp(hellos[size_t(a)].host, hellos[size_t(b)].host) == 0)
        duplicate = bcos::str("ranks ", a, " and ", b, " are both on cuda:", hellos[size_t(a)].device, " of ",
                              hellos[size_t(a)].host);
  const char ok = duplicate.empty() ? 1 : 0;  // init is collective: nobody returns before everyone has joined
  for (int q = 1; q < comm->nranks; ++q)
    if (!send_all(comm->peers[size_t(q)], &ok, 1)) return error(ncclSystemError, "ncclCommInitRank: a rank left");
  if (!duplicate.empty())
    return error(ncclInvalidUsage, "ncclCommInitRank: duplicate GPU: " + duplicate +
                                       " (one GPU per rank; the emulator gives each process "
                                       "BCOS_CUDA_EMULATOR_DEVICES devices)");
  return ncclSuccess;
}

ncclResult_t connect_to_hub(ncclComm* comm, const IdContents& id, const Hello& hello, Clock::time_point deadline) {
  const std::string port = std::to_string(ntohs(id.port));
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* addrs = nullptr;
    if (const int rc = ::getaddrinfo(id.host, port.c_str(), &hints, &addrs); rc != 0)
      return error(ncclSystemError, bcos::str("ncclCommInitRank: cannot resolve rank 0's host ", id.host, ": ",
                                              gai_strerror(rc)));
    const int fd = ::socket(addrs->ai_family, addrs->ai_socktype, addrs->ai_protocol);
    const bool connected = fd >= 0 && ::connect(fd, addrs->ai_addr, addrs->ai_addrlen) == 0;
    ::freeaddrinfo(addrs);
    if (connected) {
      no_delay(fd);
      char ok = 2;
      if (!send_all(fd, &hello, sizeof hello) || !recv_all(fd, &ok, 1) || ok != 1) {
        ::close(fd);
        if (ok == 0)
          return error(ncclInvalidUsage, "ncclCommInitRank: duplicate GPU: another rank uses this rank's device "
                                         "(rank 0 says which)");
        return error(ncclSystemError, bcos::str("ncclCommInitRank: rank 0 at ", id.host, ":", port,
                                                " closed the connection (the other ranks did not all join)"));
      }
      comm->peers[0] = fd;
      return ncclSuccess;
    }
    if (fd >= 0) ::close(fd);
    if (Clock::now() >= deadline)
      return error(ncclSystemError, bcos::str("ncclCommInitRank: rank ", comm->rank, " could not reach rank 0 at ",
                                              id.host, ":", port));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

// ---- the NCCL API -------------------------------------------------------------------------------
ncclResult_t ncclGetVersion(int* version) {
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t) {
  static thread_local std::string copy;
  std::lock_guard<std::mutex> lock(g_error_mutex);
  copy = g_last_error;
  return copy.c_str();
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* unique_id) {
  if (unique_id == nullptr) return error(ncclInvalidArgument, "ncclGetUniqueId: null id");
  IdContents id{};
  std::memcpy(id.magic, kIdMagic, sizeof id.magic);
  if (::gethostname(id.host, sizeof id.host - 1) != 0) std::strcpy(id.host, "localhost");
  id.token = std::random_device{}() * 0x9E3779B97F4A7C15ull ^ uint64_t(Clock::now().time_since_epoch().count());
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);  // dual-stack: the host name may resolve to either
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_any;
  socklen_t len = sizeof addr;
  const int off = 0;
  if (fd < 0 || ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) != 0 ||
      ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 64) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    return error(ncclSystemError, bcos::str("ncclGetUniqueId: cannot listen: ", std::strerror(err)));
  }
  id.port = addr.sin6_port;
  {
    std::lock_guard<std::mutex> lock(g_listen_mutex);
    g_listeners[id.token] = fd;
  }
  std::memset(unique_id, 0, sizeof *unique_id);
  std::memcpy(unique_id->internal, &id, sizeof id);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm_out, int nranks, ncclUniqueId unique_id, int rank) {
  if (comm_out == nullptr) return error(ncclInvalidArgument, "ncclCommInitRank: null communicator");
  *comm_out = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return error(ncclInvalidArgument, bcos::str("ncclCommInitRank: rank ", rank, " of ", nranks));
  IdContents id;
  std::memcpy(&id, unique_id.internal, sizeof id);
  if (std::memcmp(id.magic, kIdMagic, sizeof id.magic) != 0)
    return error(ncclInvalidArgument, "ncclCommInitRank: the unique id was not made by ncclGetUniqueId");
  id.host[sizeof id.host - 1] = 0;
  auto comm = std::make_unique<ncclComm>();
  comm->rank = rank;
  comm->nranks = nranks;
  comm->peers.assign(rank == 0 ? size_t(nranks) : 1, -1);
  const auto deadline = Clock::now() + std::chrono::seconds(int(kInitTimeoutSeconds));
  Hello hello{};
  hello.token = id.token;
  hello.rank = rank;
  hello.nranks = nranks;
  cudaGetDevice(&hello.device);  // the communicator's GPU: the current device, as NCCL's
  if (::gethostname(hello.host, sizeof hello.host - 1) != 0) std::strcpy(hello.host, "localhost");
  ncclResult_t rc = ncclSuccess;
  if (rank == 0) {
    int listener = -1;
    {
      std::lock_guard<std::mutex> lock(g_listen_mutex);
      auto it = g_listeners.find(id.token);
      if (it != g_listeners.end()) {
        listener = it->second;
        g_listeners.erase(it);
      }
    }
    if (listener < 0)
      return error(ncclInvalidUsage, "ncclCommInitRank: rank 0 must be the process whose ncclGetUniqueId made the id "
                                     "(the emulator's rank 0 listens for the others), and use it once");
    rc = accept_ranks(comm.get(), listener, hello, deadline);
    ::close(listener);
  } else {
    rc = connect_to_hub(comm.get(), id, hello, deadline);
  }
  if (rc != ncclSuccess) return rc;
  *comm_out = comm.release();
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (comm == nullptr || async_error == nullptr) return error(ncclInvalidArgument, "ncclCommGetAsyncError: null argument");
  *async_error = comm->async_error.load();
  return ncclSuccess;
}

// Starts the calls still queued on their streams and waits for those in flight (destroy: they
// finish; abort: the sockets are shut first, so one waiting for a silent peer ends at once), then
// frees the communicator.
static void start_queued_calls() {
  try {
    bcos::emu::runtime::synchronize_all();
  } catch (const std::exception&) {  // a queued kernel's failure is dropped: the communicator goes anyway
  }
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return error(ncclInvalidArgument, "ncclCommDestroy: null communicator");
  start_queued_calls();
  comm->wait_idle();
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  comm->fail(ncclInvalidUsage, bcos::str("rank ", comm->rank, "'s communicator was aborted"));
  {
    std::lock_guard<std::mutex> lock(comm->flight_mutex);
    comm->aborted = true;
  }
  comm->abort_called.notify_all();
  start_queued_calls();
  comm->wait_idle();
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  return enqueue("ncclAllReduce", kAllReduce, sendbuff, recvbuff, count, datatype, op, 0, comm, stream);
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  return enqueue("ncclBroadcast", kBroadcast, sendbuff, recvbuff, count, datatype, ncclSum, root, comm, stream);
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  return enqueue("ncclAllGather", kAllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0, comm, stream);
}
