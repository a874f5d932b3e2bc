// bcos::dist within one process: the launcher environment, collectives over a world of one, the
// TCP rendezvous (two threads as two ranks), synchronised batch norm against the fused kernels,
// DataParallel on one rank. The multi-process tests: tests/dist/dist_worker.cpp under mpirun.
#include <doctest/doctest.h>

#include <cstdlib>
#include <thread>

#include "autograd/ops.h"
#include "dist/data_parallel.h"
#include "dist/internal.h"
#include "models/bcosify.h"
#include "models/factory.h"
#include "nn/bcos.h"
#include "nn/norm.h"
#include "tests/errors.h"
#include "tests/golden.h"

using namespace bcos;
using testing::error_of;

namespace {

// Sets environment variables for its lifetime and removes every launcher variable around it.
struct Env {
  std::vector<std::string> names;
  explicit Env(std::vector<std::pair<std::string, std::string>> vars) {
    for (const char* n : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_RANK",
                          "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "RANK", "WORLD_SIZE",
                          "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"})
      ::unsetenv(n);
    for (auto& [k, v] : vars) {
      ::setenv(k.c_str(), v.c_str(), 1);
      names.push_back(k);
    }
  }
  ~Env() {
    for (auto& n : names) ::unsetenv(n.c_str());
  }
};

double max_diff(const Tensor& a, const Tensor& b) { return max(abs(a - b)).item(); }

}  // namespace

TEST_CASE("dist: the launcher's environment gives rank, world size and local rank") {
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {  // the test must not change a real launch's view
    MESSAGE("running under mpirun: skipped");
    return;
  }
  {
    Env e({});
    const dist::LaunchInfo i = dist::launch_info();
    CHECK(i.launcher == "none");
    CHECK(i.world_size == 1);
  }
  {
    Env e({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
           {"RANK", "0"}, {"WORLD_SIZE", "9"}});
    const dist::LaunchInfo i = dist::launch_info();
    CHECK(i.launcher == "mpirun");  // MPI's variables win over torchrun's
    CHECK(i.rank == 3);
    CHECK(i.world_size == 4);
    CHECK(i.local_rank == 1);
  }
  {
    Env e({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"}});
    const dist::LaunchInfo i = dist::launch_info();
    CHECK(i.launcher == "srun");
    CHECK(i.rank == 5);
    CHECK(i.local_rank == 1);
  }
  {
    Env e({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "29500"}});
    const dist::LaunchInfo i = dist::launch_info();
    CHECK(i.launcher == "torchrun");
    CHECK(i.master_addr == "10.0.0.1");
    CHECK(i.master_port == 29500);
  }
  {
    Env e({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
    CHECK(error_of([] { dist::launch_info(); }).find("MASTER_ADDR / MASTER_PORT are not") != std::string::npos);
  }
  {
    Env e({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "x"}, {"MASTER_PORT", "1"}});
    CHECK(error_of([] { dist::launch_info(); }).find("RANK=2 with WORLD_SIZE=2") != std::string::npos);
  }
  {
    Env e({{"OMPI_COMM_WORLD_RANK", "zero"}, {"OMPI_COMM_WORLD_SIZE", "2"}});
    CHECK(error_of([] { dist::launch_info(); }).find("OMPI_COMM_WORLD_RANK=zero is not a valid rank") != std::string::npos);
  }
}

TEST_CASE("dist: collectives over a world of one are what their definitions give") {
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) {
    MESSAGE("running under mpirun: skipped");
    return;
  }
  Env e({});
  dist::init();
  CHECK(dist::world_size() == 1);
  CHECK(dist::rank() == 0);
  Tensor t = arange(6.0).reshape({2, 3});
  dist::all_reduce(t, dist::ReduceOp::sum);
  CHECK(max_diff(t, arange(6.0).reshape({2, 3})) == 0);
  dist::all_reduce(t, dist::ReduceOp::avg);
  dist::broadcast(t, 0);
  CHECK(max_diff(t, arange(6.0).reshape({2, 3})) == 0);
  Tensor g = dist::all_gather(t);
  CHECK(g.shape() == Shape{1, 2, 3});
  dist::barrier();
  // Errors name the collective and the problem, also on one rank.
  CHECK(error_of([&] { dist::all_reduce(t.t()); }).find("dist::all_reduce: needs a contiguous tensor") != std::string::npos);
  CHECK(error_of([&] { dist::broadcast(t, 1); }).find("root 1 outside the 1 ranks") != std::string::npos);
  CHECK(error_of([&] { dist::all_reduce(zeros({2}, DType::i64), dist::ReduceOp::avg); }).find("avg needs a float") !=
        std::string::npos);
  // The differentiable sum is the identity with an identity backward.
  Tensor x = randn({4}).requires_grad_();
  Tensor y = dist::all_reduce_sum_autograd(x);
  sum(y * 3.0).backward();
  CHECK(max_diff(x.grad(), full({4}, 3.0)) == 0);
  Tensor rows = randn({3, 2}).requires_grad_();
  Tensor gathered = dist::all_gather_autograd(rows);
  CHECK(gathered.shape() == Shape{3, 2});
  sum(gathered * 2.0).backward();
  CHECK(max_diff(rows.grad(), full({3, 2}, 2.0)) == 0);
  CHECK(error_of([] { dist::all_gather_autograd(zeros({})); }).find("at least one dim") != std::string::npos);
}

TEST_CASE("dist: the TCP rendezvous hands rank 0's bytes to the others, and times out when no rank 0 comes") {
  // A port from the pid: parallel test runs do not collide (a taken port fails loudly).
  dist::LaunchInfo info;
  info.launcher = "torchrun";
  info.world_size = 3;
  info.master_addr = "127.0.0.1";
  info.master_port = 29000 + int(::getpid() % 3000);
  char id[128];
  for (int i = 0; i < 128; ++i) id[i] = char(i * 7 + 1);
  char got[2][128] = {};
  std::string errors[3];
  std::vector<std::thread> ranks;
  for (int r = 0; r < 3; ++r)
    ranks.emplace_back([&, r] {
      dist::LaunchInfo mine = info;
      mine.rank = r;
      if (r > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50 * (2 - r)));  // either may come first
      else std::this_thread::sleep_for(std::chrono::milliseconds(150));                 // rank 0 late: others retry
      errors[r] = error_of([&] { dist::detail::tcp_share(r == 0 ? id : got[r - 1], 128, mine, 20); });
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 3; ++r) CHECK(errors[r] == "");
  CHECK(std::equal(id, id + 128, got[0]));
  CHECK(std::equal(id, id + 128, got[1]));

  dist::LaunchInfo lonely = info;
  lonely.rank = 1;
  lonely.master_port = info.master_port + 1;
  const std::string err = error_of([&] { dist::detail::tcp_share(got[0], 128, lonely, 0.5); });
  CHECK(err.find("could not reach rank 0 at 127.0.0.1:") != std::string::npos);
}

// Synchronised batch norm over one replica is batch norm: the composed path against the fused
// kernels, forward, gradients and running statistics, for the plain and the uncentred norm.
TEST_CASE("dist: synchronised batch norm on one replica equals the fused batch norms") {
  manual_seed(4);
  for (bool uncentred : {false, true})
    for (bool relu : {false, true}) {
      CAPTURE(uncentred);
      CAPTURE(relu);
      std::shared_ptr<nn::Module> a, b;
      if (uncentred) {
        a = std::make_shared<nn::BatchNormUncentered2d>(5);
        b = std::make_shared<nn::BatchNormUncentered2d>(5);
      } else {
        a = std::make_shared<nn::BatchNorm2d>(5);
        b = std::make_shared<nn::BatchNorm2d>(5);
      }
      a->to(DType::f64);
      b->to(DType::f64);
      {
        NoGradGuard no_grad;
        for (auto* m : {a.get(), b.get()}) {
          auto params = m->parameters();
          params[0].copy_(arange(5.0, DType::f64) * 0.3 + 0.5);
          params[1].copy_(arange(5.0, DType::f64) * -0.1);
        }
      }
      dist::use_sync_batch_norm(*b);  // the reducer is the identity on one rank
      for (int step = 0; step < 2; ++step) {
        Tensor x = (randn({4, 5, 3, 3}, DType::f64) * 2.0 + 1.0).requires_grad_();
        Tensor xb = x.detach().clone().requires_grad_();
        Tensor ya, yb;
        if (uncentred) {
          ya = relu ? static_cast<nn::BatchNormUncentered2d&>(*a).forward_relu(x) : (*a)(x);
          yb = relu ? static_cast<nn::BatchNormUncentered2d&>(*b).forward_relu(xb) : (*b)(xb);
        } else {
          ya = relu ? static_cast<nn::BatchNorm2d&>(*a).forward_relu(x) : (*a)(x);
          yb = relu ? static_cast<nn::BatchNorm2d&>(*b).forward_relu(xb) : (*b)(xb);
        }
        CHECK(max_diff(ya, yb) < 1e-12);
        Tensor w = randn(ya.shape(), DType::f64);
        sum(ya * w).backward();
        sum(yb * w).backward();
        CHECK(max_diff(x.grad(), xb.grad()) < 1e-12);
        const auto pa = a->parameters(), pb = b->parameters();
        for (size_t i = 0; i < pa.size(); ++i) CHECK(max_diff(pa[i].grad(), pb[i].grad()) < 1e-12);
        const auto sa = a->state_dict(), sb = b->state_dict();
        for (size_t i = 0; i < sa.size(); ++i) {
          CAPTURE(sa[i].first);
          CHECK(max_diff(sa[i].second.to(DType::f64), sb[i].second.to(DType::f64)) < 1e-12);
        }
        a->zero_grad();
        b->zero_grad();
      }
    }
}

TEST_CASE("dist: DataParallel on one rank leaves training exactly as without it") {
  auto make = [] {
    manual_seed(8);
    return models::create_model("resnet20", 10);
  };
  auto plain = make(), wrapped = make();
  dist::DataParallel ddp(*wrapped, {.bucket_mb = 0.01, .first_bucket_mb = 0.001});
  manual_seed(9);
  Tensor x = randn({4, 3, 32, 32});
  Tensor y = randint(0, 10, {4});
  cross_entropy((*plain)(x), y).backward();
  cross_entropy(ddp(x), y).backward();
  const auto a = plain->named_parameters(), b = wrapped->named_parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].first);
    CHECK(max_diff(a[i].second.grad(), b[i].second.grad()) == 0);
  }
  // Buckets: the first closes past 0.001 MB, the others past 0.01 MB; together every gradient once.
  const dist::DataParallelStats& st = ddp.stats();
  REQUIRE(st.bucket_mb.size() == size_t(st.buckets));
  CHECK(st.buckets > 10);
  double total_mb = 0;
  for (double mb : st.bucket_mb) total_mb += mb;
  CHECK(std::abs(total_mb * 1024 * 1024 - double(wrapped->num_parameters()) * 4) < 1);
  CHECK(std::abs(st.bytes_per_step - double(wrapped->num_parameters()) * 4) < 1);
  for (size_t k = 1; k + 1 < st.bucket_mb.size(); ++k) CHECK(st.bucket_mb[k] >= 0.01);
  CHECK(error_of([&] { dist::DataParallel bad(*wrapped, {.bucket_mb = 0}); }).find("bucket sizes must be positive") !=
        std::string::npos);
  nn::Sequential empty_model;
  CHECK(error_of([&] { dist::DataParallel bad(empty_model); }).find("no parameters that require grad") !=
        std::string::npos);
}

// NCCL on this GPU as a world of one (one GPU cannot hold two ranks): the communicator, each
// collective on its side stream, the events that order the caller's stream after it, every dtype.
TEST_CASE("dist: NCCL collectives on one GPU, a world of one") {
#ifndef BCOS_WITH_NCCL
  MESSAGE("built without NCCL (-Dnccl): not run");
#else
  if (cuda_device_count() == 0) {
    MESSAGE("no CUDA device: the NCCL test did not run");
    return;
  }
  if (!dist::detail::nccl::active())
    dist::detail::nccl::init(0, 1, 0, [](void*, int) {});  // rank 0 of 1 makes the id itself
  const Device gpu = Device::cuda(0);
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i64}) {
    CAPTURE(dt);
    Tensor host = arange(0.0, 12.0, 1.0, DType::f64).reshape({3, 4});
    Tensor t = host.to(dt).to(gpu);
    dist::Work(dist::detail::nccl::all_reduce(t, dist::ReduceOp::sum)).wait();
    CHECK(max_diff(t.to(Device()).to(DType::f64), host) == 0);
    if (dt != DType::i64) {
      dist::Work(dist::detail::nccl::all_reduce(t, dist::ReduceOp::avg)).wait();
      CHECK(max_diff(t.to(Device()).to(DType::f64), host) == 0);
    }
    dist::Work(dist::detail::nccl::broadcast(t, 0)).wait();
    CHECK(max_diff(t.to(Device()).to(DType::f64), host) == 0);
    Tensor gathered = empty({1, 3, 4}, {dt, gpu});
    dist::Work(dist::detail::nccl::all_gather(t, gathered)).wait();
    CHECK(max_diff(gathered.to(Device()).to(DType::f64).reshape({3, 4}), host) == 0);
  }
  // The caller's stream is ordered after each collective: a chain of all-reduces (side stream)
  // and additions (caller's stream) on a large tensor, read back once at the end.
  Tensor t = ones({1 << 20}, {DType::f32, gpu});
  for (int i = 0; i < 4; ++i) {
    dist::Work w(dist::detail::nccl::all_reduce(t, dist::ReduceOp::sum));
    w.wait();
    t.add_(ones({1 << 20}, {DType::f32, gpu}));
  }
  CHECK(t.to(Device()).to_vector<float>()[12345] == 5.0f);
  CHECK(error_of([&] { dist::detail::nccl::all_reduce(zeros({2}), dist::ReduceOp::sum); }).find("is on cpu") !=
        std::string::npos);
#endif
}
