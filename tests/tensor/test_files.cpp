// AtomicFile and write_file_atomic (tensor/files.h): the destination is either the old file or
// the new one, temporaries never outlive a failed or abandoned write, and temporaries left by
// killed writers are cleaned up by the next save.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

#include "tensor/error.h"
#include "tensor/files.h"

using namespace bcos;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path path = fs::temp_directory_path() / ("bcos_files_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
};
size_t count_temporaries(const fs::path& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string().find(".tmp.") != std::string::npos;
  return n;
}
}  // namespace

TEST_CASE("tensor: write_file_atomic replaces the file whole; an abandoned AtomicFile leaves the old one") {
  TempDir dir;
  const std::string path = (dir.path / "a.bin").string();
  write_file_atomic(path, "first");
  CHECK(read_file(path) == "first");
  {
    AtomicFile f(path, "test");
    f.write("second, never committed");
    CHECK(fs::exists(f.temporary_path()));
  }  // e.g. an exception while writing
  CHECK(read_file(path) == "first");
  CHECK(count_temporaries(dir.path) == 0);
  write_file_atomic(path, "third");
  CHECK(read_file(path) == "third");
  AtomicFile committed(path, "test");
  committed.write("x");
  committed.commit();
  CHECK_THROWS_WITH_AS(committed.write("y"), doctest::Contains("already closed"), Error);
}

TEST_CASE("tensor: AtomicFile removes temporaries of writers that died, and keeps those of live ones") {
  TempDir dir;
  const std::string path = (dir.path / "ckpt.safetensors").string();
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  REQUIRE(child > 0);
  ::waitpid(child, nullptr, 0);  // a pid that no longer runs
  const std::string dead = path + ".tmp." + std::to_string(child), live = path + ".tmp." + std::to_string(::getppid());
  const std::string other = (dir.path / "other.bin.tmp.1").string(), not_pid = path + ".tmp.abc";
  for (const std::string& p : {dead, live, other, not_pid}) std::ofstream(p) << "half";
  write_file_atomic(path, "whole");
  CHECK(read_file(path) == "whole");
  CHECK(!fs::exists(dead));
  CHECK(fs::exists(live));     // its writer (this test's parent) still runs
  CHECK(fs::exists(other));    // another file's
  CHECK(fs::exists(not_pid));  // not a temporary of ours
}

TEST_CASE("tensor: write_file_atomic and read_file name the file and the system's reason") {
  CHECK_THROWS_WITH_AS(write_file_atomic("/nonexistent_dir/x.bin", "x", "save_thing"),
                       doctest::Contains("save_thing: cannot create /nonexistent_dir/x.bin.tmp."), Error);
  CHECK_THROWS_WITH_AS(read_file("/nonexistent_dir/x.bin"), doctest::Contains("No such file or directory"), Error);
}
