// tensor/profile.h on the CPU: what a profile counts, that it stops counting, and its table.
#include <doctest/doctest.h>

#include <string>

#include "autograd/ops.h"
#include "tensor/profile.h"

using namespace bcos;

namespace {
const profile::Row* find_row(const profile::Report& r, const std::string& kernel, const std::string& device) {
  for (const profile::Row& row : r.rows)
    if (row.kernel == kernel && row.device == device) return &row;
  return nullptr;
}
}  // namespace

TEST_CASE("tensor: the profiler counts each kernel call once, by name and device, only while it runs") {
  const Tensor a = randn({64, 64}), b = randn({64, 64});
  const Tensor x = randn({2, 3, 16, 16}), w = randn({4, 3, 3, 3});
  CHECK_FALSE(profile::active());
  profile::start();
  CHECK(profile::active());
  for (int i = 0; i < 3; ++i) (void)add(a, b);
  (void)matmul(a, b);
  (void)conv2d(x, w, Tensor(), 1, 1);
  const profile::Report r = profile::stop();
  CHECK_FALSE(profile::active());
  const profile::Row* binary = find_row(r, "binary add", "cpu");  // a multi-op kernel: named with its op
  REQUIRE(binary != nullptr);
  CHECK(binary->calls == 3);
  const profile::Row* conv = find_row(r, "conv2d_forward", "cpu");
  REQUIRE(conv != nullptr);
  CHECK(conv->calls == 1);
  REQUIRE(find_row(r, "bmm", "cpu") != nullptr);
  double sum = 0;
  for (const profile::Row& row : r.rows) {
    CHECK(row.ms >= 0);
    sum += row.ms;
  }
  CHECK(r.wall_ms >= sum);  // the kernels ran inside the profiled stretch, one after another
  CHECK(r.gpu_span_ms == 0);
  const std::string table = r.format();
  CHECK(table.find("conv2d_forward") != std::string::npos);
  CHECK(table.find("cpu: kernels") != std::string::npos);

  // Stopped: nothing is counted, and a second stop reports nothing.
  (void)add(a, b);
  CHECK(profile::stop().rows.empty());
  // A new profile starts empty.
  profile::start();
  (void)mul(a, b);
  const profile::Report again = profile::stop();
  REQUIRE(again.rows.size() == 1);
  CHECK(again.rows[0].kernel == "binary mul");
  CHECK(again.rows[0].calls == 1);
}

TEST_CASE("tensor: the profiler times only the outermost of nested calls, and drops a call that spans a restart") {
  const Tensor t = zeros({4});
  profile::start();
  {
    const profile::Scope outer("outer(t)", t);
    const profile::Scope inner("inner(t)", t);  // a kernel calling another through the dispatch
  }
  const profile::Report nested = profile::stop();
  REQUIRE(nested.rows.size() == 1);
  CHECK(nested.rows[0].kernel == "outer");
  CHECK(nested.rows[0].calls == 1);

  profile::start();
  {
    const profile::Scope first("first(t)", t);
    (void)profile::stop();
    profile::start();  // `first` began in the profile just stopped: the new one must not count it
  }
  { const profile::Scope after("after(t)", t); }
  const profile::Report r = profile::stop();
  REQUIRE(r.rows.size() == 1);
  CHECK(r.rows[0].kernel == "after");
  CHECK(r.rows[0].calls == 1);
  // The nesting depth came back to zero: a later profile times calls again.
  profile::start();
  { const profile::Scope again("again(t)", t); }
  const profile::Report later = profile::stop();
  REQUIRE(later.rows.size() == 1);
  CHECK(later.rows[0].kernel == "again");
}
