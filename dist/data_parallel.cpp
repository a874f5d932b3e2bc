// DataParallel: bucketed gradient all-reduces overlapped with the backward (see data_parallel.h).
#include "dist/data_parallel.h"

#include <chrono>

#include "autograd/autograd.h"
#include "autograd/ops.h"
#include "nn/bcos.h"
#include "nn/norm.h"

namespace bcos::dist {

namespace {
struct Bucket {
  std::vector<size_t> params;  // indices into State::params
  std::vector<int64_t> offsets;
  Tensor flat;                 // [numel of all its parameters], one dtype and device
  int64_t pending = 0;         // gradients still to arrive in this backward
  Work work;
};
}  // namespace

struct DataParallel::State {
  std::vector<Tensor> params;   // in bucket order
  std::vector<std::string> names;
  std::vector<size_t> bucket_of;
  std::vector<size_t> slot_of;  // position within its bucket
  std::vector<bool> arrived;
  std::vector<Bucket> buckets;
  size_t next_launch = 0;
  uint64_t backward_id = 0;  // the backward the buckets are filling for (autograd's id)
  bool sync = true, find_unused = false;
  DataParallelStats stats;

  Tensor slice(size_t i) const {  // parameter i's part of its bucket, in the parameter's shape
    const Bucket& b = buckets[bucket_of[i]];
    return b.flat.narrow(0, b.offsets[slot_of[i]], params[i].numel()).view(params[i].shape());
  }

  // Starts the all-reduce of every full bucket, in bucket order on every rank.
  void launch_ready() {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
      Bucket& b = buckets[next_launch++];
      b.work = all_reduce_async(b.flat, ReduceOp::sum);
    }
    for (size_t k = 0; k < next_launch; ++k) buckets[k].work.done();  // drives MPI's progress
  }

  void on_gradient(size_t i, const Tensor& grad) {
    if (!sync) return;
    if (backward_id != current_backward_id()) {  // the first gradient of a new backward
      backward_id = current_backward_id();
      for (Bucket& b : buckets) b.pending = int64_t(b.params.size());
      std::fill(arrived.begin(), arrived.end(), false);
      next_launch = 0;
      queue_backward_callback([this] { finish_backward(); });
    }
    if (arrived[i]) return;  // (a second accumulation in one backward: the slice has the sum already)
    arrived[i] = true;
    slice(i).copy_(grad);
    --buckets[bucket_of[i]].pending;
    launch_ready();
  }

  void finish_backward() {
    const auto start = std::chrono::steady_clock::now();
    std::vector<bool> used(params.size(), true);
    const bool all_arrived = std::find(arrived.begin(), arrived.end(), false) == arrived.end();
    if (find_unused) {
      // Which parameters got a gradient on any rank: those used nowhere keep no .grad (as
      // on one process); the others average with zeros from the ranks that did not use them.
      std::vector<uint8_t> mine(params.size());
      for (size_t i = 0; i < params.size(); ++i) mine[i] = arrived[i];
      // On the parameters' device: a GPU job started torchrun-style has NCCL only.
      Tensor flags = from_vector(mine, {int64_t(mine.size())}).to(params[0].device());
      all_reduce(flags, ReduceOp::max);
      const std::vector<uint8_t> any = flags.to_vector<uint8_t>();
      for (size_t i = 0; i < params.size(); ++i) used[i] = any[i] != 0;
    } else if (!all_arrived) {
      std::string missing;
      for (size_t i = 0, shown = 0; i < params.size(); ++i)
        if (!arrived[i] && shown++ < 8) missing += (missing.empty() ? "" : ", ") + names[i];
      fail("DataParallel: parameters that got no gradient in this backward: ", missing,
           " (every rank must produce a gradient for every parameter; set find_unused_parameters)");
    }
    for (size_t i = 0; i < params.size(); ++i)
      if (!arrived[i]) {
        slice(i).zero_();
        --buckets[bucket_of[i]].pending;
      }
    launch_ready();
    const double scale = 1.0 / double(world_size());
    for (Bucket& b : buckets) {
      b.work.wait();
      b.flat.mul_(scale);
    }
    for (size_t i = 0; i < params.size(); ++i)
      if (used[i]) params[i].set_grad(slice(i));  // the grad is a view of its bucket: no copy back
    stats.steps++;
    stats.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
};

DataParallel::DataParallel(nn::Module& module, DataParallelOptions options)
    : module_(module), options_(options), state_(std::make_shared<State>()) {
  BCOS_CHECK(options.bucket_mb > 0 && options.first_bucket_mb > 0, "DataParallel: bucket sizes must be positive (got ",
             options.bucket_mb, " and ", options.first_bucket_mb, " MB)");
  State& s = *state_;
  s.find_unused = options.find_unused_parameters;
  // Reverse registration order: roughly the order backward produces the gradients.
  auto named = module.named_parameters();
  for (auto it = named.rbegin(); it != named.rend(); ++it)
    if (it->second.requires_grad()) {
      s.names.push_back(it->first);
      s.params.push_back(it->second);
    }
  BCOS_CHECK(!s.params.empty(), "DataParallel: the module has no parameters that require grad");

  {  // rank 0's weights everywhere, so every replica starts equal
    NoGradGuard no_grad;
    for (const Tensor& p : s.params) {
      Tensor data = p.detach();
      broadcast(data, 0);
    }
  }
  broadcast_buffers();

  const double mb = 1024.0 * 1024.0;
  for (size_t i = 0; i < s.params.size(); ++i) {
    const Tensor& p = s.params[i];
    const double cap = (s.buckets.size() <= 1 ? options.first_bucket_mb : options.bucket_mb) * mb;
    bool fresh = s.buckets.empty();
    if (!fresh) {
      const Bucket& b = s.buckets.back();
      const Tensor& first = s.params[b.params[0]];
      const double bytes = double(b.offsets.back() + s.params[b.params.back()].numel()) * double(p.element_size());
      fresh = first.dtype() != p.dtype() || first.device() != p.device() || bytes >= cap;
    }
    if (fresh) s.buckets.emplace_back();
    Bucket& b = s.buckets.back();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + s.params[b.params.back()].numel());
    b.params.push_back(i);
    s.bucket_of.push_back(s.buckets.size() - 1);
    s.slot_of.push_back(b.params.size() - 1);
  }
  for (Bucket& b : s.buckets) {
    const Tensor& first = s.params[b.params[0]];
    b.flat = zeros({b.offsets.back() + s.params[b.params.back()].numel()}, {first.dtype(), first.device()});
    s.stats.bytes_per_step += double(b.flat.numel()) * double(b.flat.element_size());
    s.stats.bucket_mb.push_back(double(b.flat.numel()) * double(b.flat.element_size()) / mb);
  }
  s.stats.buckets = int64_t(s.buckets.size());
  s.arrived.assign(s.params.size(), false);

  std::weak_ptr<State> weak = state_;  // the hooks outlive this object: they then do nothing
  for (size_t i = 0; i < s.params.size(); ++i)
    add_post_accumulate_grad_hook(s.params[i], [weak, i](const Tensor& grad) {
      if (auto st = weak.lock(); st && world_size() > 1) st->on_gradient(i, grad);
    });
}

DataParallel::~DataParallel() = default;

Tensor DataParallel::operator()(const Tensor& x) {
  if (options_.broadcast_buffers && module_.is_training()) broadcast_buffers();
  return module_(x);
}

const DataParallelStats& DataParallel::stats() const { return state_->stats; }

void DataParallel::set_sync(bool on) { state_->sync = on; }

void DataParallel::broadcast_buffers() {
  if (world_size() == 1) return;
  NoGradGuard no_grad;
  for (auto& [name, buffer] : module_.named_buffers())
    if (buffer.defined() && buffer.numel() > 0) broadcast(buffer, 0);
}

void use_sync_batch_norm(nn::Module& module, bool on) {
  std::function<Tensor(const Tensor&)> reduce;
  if (on) reduce = [](const Tensor& t) { return all_reduce_sum_autograd(t); };
  for (auto& [name, m] : module.named_modules()) {
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(m)) bn->replica_sum = reduce;
    if (auto* bn = dynamic_cast<nn::BatchNormUncentered2d*>(m)) bn->replica_sum = reduce;
  }
}

}  // namespace bcos::dist
