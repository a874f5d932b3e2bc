// The TCP rendezvous of a torchrun-style launch (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT,
// no MPI): rank 0 listens on MASTER_PORT and sends a few bytes (the NCCL unique id) to each of
// the other ranks, which connect, retrying while rank 0 is not up yet. Only this id travels
// here; tensors go through NCCL.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "dist/internal.h"

namespace bcos::dist::detail {

namespace {
using Clock = std::chrono::steady_clock;

struct Socket {
  int fd = -1;
  explicit Socket(int f) : fd(f) {}
  ~Socket() {
    if (fd >= 0) ::close(fd);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
};

int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? int(std::min<int64_t>(left, 1000)) : 0;
}

// Waits until fd is readable / writable, or raises at the deadline.
void wait_for(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, ms_left(deadline));
    if (rc > 0) return;
    BCOS_CHECK(rc == 0 || errno == EINTR, "dist: rendezvous: poll failed while ", what, ": ", std::strerror(errno));
    BCOS_CHECK(Clock::now() < deadline, "dist: rendezvous: timed out while ", what);
  }
}

void send_all(int fd, const char* data, int bytes, Clock::time_point deadline, const std::string& what) {
  for (int sent = 0; sent < bytes;) {
    wait_for(fd, POLLOUT, deadline, what);
    const ssize_t n = ::send(fd, data + sent, size_t(bytes - sent), MSG_NOSIGNAL);
    BCOS_CHECK(n > 0 || errno == EINTR || errno == EAGAIN, "dist: rendezvous: ", what, ": ", std::strerror(errno));
    if (n > 0) sent += int(n);
  }
}

void recv_all(int fd, char* data, int bytes, Clock::time_point deadline, const std::string& what) {
  for (int got = 0; got < bytes;) {
    wait_for(fd, POLLIN, deadline, what);
    const ssize_t n = ::recv(fd, data + got, size_t(bytes - got), 0);
    BCOS_CHECK(n != 0, "dist: rendezvous: ", what, ": rank 0 closed the connection after ", got, " of ", bytes, " bytes");
    BCOS_CHECK(n > 0 || errno == EINTR || errno == EAGAIN, "dist: rendezvous: ", what, ": ", std::strerror(errno));
    if (n > 0) got += int(n);
  }
}

addrinfo* resolve(const LaunchInfo& info, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* result = nullptr;
  const std::string port = std::to_string(info.master_port);
  const int rc = ::getaddrinfo(passive ? nullptr : info.master_addr.c_str(), port.c_str(), &hints, &result);
  BCOS_CHECK(rc == 0, "dist: rendezvous: cannot resolve MASTER_ADDR=", info.master_addr, ": ", gai_strerror(rc));
  return result;
}
}  // namespace

void tcp_share(void* data, int bytes, const LaunchInfo& info, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  const std::string where = str(info.master_addr, ":", info.master_port);
  // A header in front of the bytes: a wrong peer on the port is refused, not read as an id.
  const uint32_t magic = 0xBC05D157u ^ uint32_t(bytes);
  if (info.rank == 0) {
    addrinfo* addrs = resolve(info, true);
    Socket server(::socket(addrs->ai_family, addrs->ai_socktype, addrs->ai_protocol));
    const int one = 1;
    ::setsockopt(server.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    const int bound = server.fd >= 0 ? ::bind(server.fd, addrs->ai_addr, addrs->ai_addrlen) : -1;
    const int err = errno;
    ::freeaddrinfo(addrs);
    BCOS_CHECK(bound == 0 && ::listen(server.fd, info.world_size) == 0, "dist: rendezvous: rank 0 cannot listen on port ",
               info.master_port, ": ", std::strerror(err), " (MASTER_PORT must be free on rank 0's machine)");
    for (int served = 1; served < info.world_size; ++served) {
      wait_for(server.fd, POLLIN, deadline, str("rank 0 waiting for ", info.world_size - served, " more rank(s) on port ",
                                                info.master_port));
      Socket peer(::accept(server.fd, nullptr, nullptr));
      BCOS_CHECK(peer.fd >= 0, "dist: rendezvous: accept failed: ", std::strerror(errno));
      send_all(peer.fd, reinterpret_cast<const char*>(&magic), 4, deadline, "sending the id");
      send_all(peer.fd, static_cast<const char*>(data), bytes, deadline, "sending the id");
    }
    return;
  }
  for (;;) {  // rank 0 may not listen yet: retry until the deadline
    addrinfo* addrs = resolve(info, false);
    Socket s(::socket(addrs->ai_family, addrs->ai_socktype, addrs->ai_protocol));
    const bool connected = s.fd >= 0 && ::connect(s.fd, addrs->ai_addr, addrs->ai_addrlen) == 0;
    const int err = errno;
    ::freeaddrinfo(addrs);
    if (connected) {
      uint32_t got = 0;
      recv_all(s.fd, reinterpret_cast<char*>(&got), 4, deadline, str("reading the id from ", where));
      BCOS_CHECK(got == magic, "dist: rendezvous: ", where, " is not a bcos.cpp rank 0 (wrong header)");
      recv_all(s.fd, static_cast<char*>(data), bytes, deadline, str("reading the id from ", where));
      return;
    }
    BCOS_CHECK(Clock::now() < deadline, "dist: rendezvous: rank ", info.rank, " could not reach rank 0 at ", where,
               " within ", timeout_s, " s: ", std::strerror(err));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace bcos::dist::detail
