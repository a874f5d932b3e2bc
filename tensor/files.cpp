// AtomicFile and the whole-file helpers (tensor/files.h).
#include "tensor/files.h"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <fcntl.h>
#include <unistd.h>

#include "tensor/error.h"

namespace bcos {

namespace {

// Removes "<path>.tmp.<pid>" files whose writer no longer runs: what a killed process leaves.
void remove_stale_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const std::string prefix = target.filename().string() + ".tmp.";
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string pid_text = name.substr(prefix.size());
    if (pid_text.find_first_not_of("0123456789") != std::string::npos || pid_text.size() > 9) continue;
    const pid_t pid = pid_t(std::stol(pid_text));
    if (pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH) {
      std::error_code ignored;
      fs::remove(it->path(), ignored);
    }
  }
}

}  // namespace

AtomicFile::AtomicFile(const std::string& path, const char* op)
    : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())), op_(op) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  BCOS_CHECK(f_, op_, ": cannot create ", tmp_, ": ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) std::remove(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  BCOS_CHECK(f_, op_, ": ", tmp_, " is already closed");
  if (n && std::fwrite(data, 1, n, f_) != n) fail(op_, ": error writing ", path_, ": ", std::strerror(errno));
}

void AtomicFile::commit() {
  BCOS_CHECK(f_, op_, ": ", tmp_, " is already closed");
  const bool ok = std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0;
  const int err = errno;
  const bool closed = std::fclose(f_) == 0;
  const int close_err = errno;
  f_ = nullptr;
  if (!ok || !closed) fail(op_, ": error writing ", path_, ": ", std::strerror(ok ? close_err : err));
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail(op_, ": cannot rename ", tmp_, " to ", path_, ": ", std::strerror(errno));
  committed_ = true;
  // The rename itself reaches the disk with the directory.
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  remove_stale_temporaries(path_);
}

void write_file_atomic(const std::string& path, std::string_view bytes, const char* op) {
  AtomicFile f(path, op);
  f.write(bytes);
  f.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  BCOS_CHECK(f.good(), "read_file: cannot open ", path, ": ", std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  BCOS_CHECK(!f.bad(), "read_file: error reading ", path);
  return bytes;
}

}  // namespace bcos
