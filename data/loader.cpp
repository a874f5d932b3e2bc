// The DataLoader's machinery: a job source (under the lock), workers that turn jobs into
// batches, and an in-order hand-over to the consumer with a bound on batches in flight.
#include "data/loader.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <thread>
#include <utility>

#include "tensor/transfer.h"

namespace bcos::data {

namespace {

// One batch's worth of samples: dataset indices (map-style) or records already read from the
// shards (WebDataset), with what each record misses.
struct Job {
  int64_t index = 0;         // batch number within the epoch
  int64_t first_sample = 0;  // position of its first sample within the epoch
  std::vector<int64_t> indices;
  std::vector<Record> records;
  std::vector<std::string> missing;
  int64_t size() const { return int64_t(indices.empty() ? records.size() : indices.size()); }
};

struct Result {
  Batch batch;
  std::exception_ptr error;
  int64_t skipped = 0;
  std::string first_skip;
};

}  // namespace

struct DataLoader::State {
  std::shared_ptr<const Dataset> dataset;
  std::shared_ptr<const WebDataset> web;
  Transform transform;
  LoaderOptions options;
  int64_t epoch = 0;
  std::function<bool(Job&)> source;  // fills the next job; false when the epoch has no more

  std::mutex source_mutex, mutex;
  std::condition_variable work_ready, result_ready;
  int64_t issued = 0, consumed = 0;
  bool source_done = false, stop = false;
  std::map<int64_t, Result> results;
  std::vector<std::thread> workers;
  int64_t skipped = 0;
  std::string first_skip;
  bool finished = false;
  // GPU delivery: the next batch, already staged (its copy under way), and an error met while
  // fetching it, raised on the call after the batch before it was handed out.
  std::unique_ptr<DeviceStager> stager;
  std::optional<Batch> staged;
  std::exception_ptr deferred;

  // Reads, decodes and transforms a job's samples, then stacks them into one batch.
  Result build(Job& job) const {
    Result res;
    std::vector<Tensor> images;
    std::vector<int64_t> labels;
    Batch& b = res.batch;
    for (int64_t k = 0; k < job.size(); ++k) {
      try {
        Record r = job.indices.empty() ? std::move(job.records[size_t(k)]) : dataset->get(job.indices[size_t(k)]);
        if (job.indices.empty() && !job.missing[size_t(k)].empty()) fail(r.name, ": ", job.missing[size_t(k)]);
        // The sample's position in the whole epoch (all ranks), so ranks draw different crops.
        Rng rng(options.seed, uint64_t(epoch), uint64_t((job.first_sample + k) * options.world_size + options.rank));
        Tensor image = record_image(r);
        if (transform) image = transform(image, rng);
        if (image.dtype() == DType::u8) image = to_tensor(image);
        BCOS_CHECK(image.is_cpu() && image.dtype() == DType::f32 && image.dim() == 3, r.name,
                   ": the transform returned ", dtype_name(image.dtype()), " ", image.shape(), " on ",
                   image.device(), "; the loader needs f32 [C, H, W] on the CPU");
        images.push_back(image.contiguous());
        labels.push_back(r.label);
        b.texts.push_back(std::move(r.text));
        b.jsons.push_back(std::move(r.json));
        b.names.push_back(std::move(r.name));
      } catch (const Error& e) {
        if (!options.skip_corrupt)
          throw Error(str(e.what(), " [DataLoader: set skip_corrupt to skip such samples]"));
        if (res.skipped++ == 0) res.first_skip = e.what();
      }
    }
    if (images.empty()) return res;
    const Shape shape = images[0].shape();
    const Shape batch_shape{int64_t(images.size()), shape[0], shape[1], shape[2]};
    // Bound for a GPU: pinned, so the copy there runs while the GPU is busy.
    b.images = options.device.is_cuda() ? empty_pinned(batch_shape, DType::f32, options.device)
                                        : empty(batch_shape, DType::f32);
    float* dst = b.images.data<float>();
    const int64_t per = shape.numel();
    for (size_t i = 0; i < images.size(); ++i) {
      BCOS_CHECK(images[i].shape() == shape, "DataLoader: ", b.names[i], " is ", images[i].shape(),
                 " after the transform but ", b.names[0], " is ", shape,
                 "; images in a batch must have one size (add Resize / CenterCrop)");
      std::memcpy(dst + int64_t(i) * per, images[i].data<float>(), size_t(per) * sizeof(float));
    }
    b.labels = from_vector(labels, {int64_t(labels.size())});
    if (options.device.is_cuda()) b.labels = pin_memory(b.labels, options.device);
    b.label_values = std::move(labels);
    return res;
  }

  // Reading is serialised by source_mutex (so batch numbers follow the order records are read
  // in), separately from `mutex`, which guards only the hand-over: the consumer and the other
  // workers never wait for a read.
  void worker_loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> reading(source_mutex);
        {
          std::unique_lock<std::mutex> lock(mutex);
          work_ready.wait(lock, [&] {
            return stop || source_done || issued < consumed + int64_t(options.workers) * options.prefetch;
          });
          if (stop || source_done) return;
        }
        bool got = false;
        std::exception_ptr error;
        try {
          got = source(job);
        } catch (...) {
          error = std::current_exception();
        }
        std::lock_guard<std::mutex> lock(mutex);
        if (error) results[issued++].error = error;  // a broken shard takes the next batch's place
        if (error || !got) {
          source_done = true;
          result_ready.notify_all();
          work_ready.notify_all();
          return;
        }
        job.index = issued++;
      }
      Result res;
      try {
        res = build(job);
      } catch (...) {
        res.error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mutex);
        results[job.index] = std::move(res);
      }
      result_ready.notify_all();
    }
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    work_ready.notify_all();
    for (std::thread& t : workers) t.join();
    workers.clear();
  }

  // The next result in order, or false at the end of the epoch.
  bool take(Result& res) {
    if (options.workers == 0) {  // errors propagate from here; Epoch::next ends the epoch
      Job job;
      if (source_done || !source(job)) return source_done = true, false;
      job.index = issued++;
      ++consumed;
      res = build(job);
      return true;
    }
    std::unique_lock<std::mutex> lock(mutex);
    result_ready.wait(lock, [&] { return results.count(consumed) || (source_done && issued == consumed); });
    auto it = results.find(consumed);
    if (it == results.end()) return false;
    res = std::move(it->second);
    results.erase(it);
    ++consumed;
    lock.unlock();
    work_ready.notify_all();
    return true;
  }

  void report_end() {
    if (finished) return;
    finished = true;
    if (skipped > 0 && options.report_skipped)
      std::fprintf(stderr, "DataLoader: epoch %lld skipped %lld corrupt sample(s); the first: %s\n",
                   static_cast<long long>(epoch), static_cast<long long>(skipped), first_skip.c_str());
  }
};

namespace {

void check_options(bool has_dataset, const LoaderOptions& o) {
  BCOS_CHECK(has_dataset, "DataLoader: no dataset");
  BCOS_CHECK(o.batch_size >= 1, "DataLoader: batch_size ", o.batch_size, " must be >= 1");
  BCOS_CHECK(o.workers >= 0 && o.prefetch >= 1, "DataLoader: workers ", o.workers, " and prefetch ", o.prefetch,
             " must be >= 0 and >= 1");
  BCOS_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "DataLoader: rank ", o.rank,
             " outside a world of ", o.world_size);
  if (o.device.is_cuda()) {
    BCOS_CHECK(cuda_compiled(), "DataLoader: cannot deliver batches to ", o.device, ": bcos was built without CUDA");
    BCOS_CHECK(o.device.index >= 0 && o.device.index < cuda_device_count(), "DataLoader: no device ", o.device, " (",
               cuda_device_count(), " CUDA devices visible)");
  }
}

}  // namespace

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, Transform transform, LoaderOptions options)
    : dataset_(std::move(dataset)), transform_(std::move(transform)), options_(options) {
  check_options(dataset_ != nullptr, options_);
  BCOS_CHECK(!options_.split_shards, "DataLoader: split_shards is for WebDatasets; a map-style dataset is split by sample");
}

DataLoader::DataLoader(std::shared_ptr<const WebDataset> dataset, Transform transform, LoaderOptions options)
    : web_(std::move(dataset)), transform_(std::move(transform)), options_(options) {
  check_options(web_ != nullptr, options_);
}

int64_t DataLoader::num_samples() const {
  const int64_t w = options_.world_size;
  if (web_ && options_.split_shards && w > 1) {  // the share every rank is sure to have
    std::vector<int64_t> counts = web_->shard_counts();
    BCOS_CHECK(int64_t(counts.size()) >= w, "DataLoader: split_shards: ", counts.size(), " shard(s) for ", w, " ranks");
    std::sort(counts.begin(), counts.end());
    const int64_t share = std::accumulate(counts.begin(), counts.begin() + int64_t(counts.size()) / w, int64_t(0));
    return options_.limit > 0 ? std::min(share, options_.limit / w) : share;
  }
  const int64_t all = dataset_ ? dataset_->size() : web_->count();
  const int64_t n = options_.limit > 0 ? std::min(all, options_.limit) : all;
  return dataset_ ? (n + w - 1) / w : n / w;  // padded / cut to equal shares (see LoaderOptions)
}

int64_t DataLoader::num_batches() const {
  const int64_t n = num_samples(), b = options_.batch_size;
  return options_.drop_last ? n / b : n / b + (n % b != 0);
}

DataLoader::Epoch DataLoader::epoch(int64_t epoch_index) const {
  auto s = std::make_unique<State>();
  s->dataset = dataset_;
  s->web = web_;
  s->transform = transform_;
  s->options = options_;
  s->epoch = epoch_index;
  const int64_t batch = options_.batch_size;
  const bool drop_last = options_.drop_last;
  if (dataset_) {
    const int64_t all = dataset_->size();
    auto order = std::make_shared<std::vector<int64_t>>(size_t(all));
    std::iota(order->begin(), order->end(), int64_t(0));
    if (options_.shuffle) {  // Fisher-Yates from the epoch's own generator
      Rng rng(options_.seed ^ 0x9E3779B97F4A7C15ull, uint64_t(epoch_index), ~uint64_t(0));
      for (int64_t i = all - 1; i > 0; --i) std::swap((*order)[size_t(i)], (*order)[size_t(rng.randint(0, i + 1))]);
    }
    int64_t n = options_.limit > 0 ? std::min(all, options_.limit) : all;
    order->resize(size_t(n));
    if (const int64_t w = options_.world_size; w > 1 && n > 0) {  // this rank's share, padded
      const int64_t share = (n + w - 1) / w;
      std::vector<int64_t> mine(static_cast<size_t>(share));
      for (int64_t k = 0; k < share; ++k) mine[size_t(k)] = (*order)[size_t((k * w + options_.rank) % n)];
      *order = std::move(mine);
      n = share;
    }
    const int64_t batches = drop_last ? n / batch : n / batch + (n % batch != 0);
    s->source = [order, batches, batch, next = int64_t(0)](Job& job) mutable {
      if (next >= batches) return false;
      const int64_t lo = next * batch, hi = std::min<int64_t>(lo + batch, int64_t(order->size()));
      job.first_sample = lo;
      job.indices.assign(order->begin() + lo, order->begin() + hi);
      ++next;
      return true;
    };
  } else {
    // This rank's share: its shards (split_shards), or every world-th record of the stream that
    // every rank reads.
    const bool by_shard = options_.split_shards && options_.world_size > 1;
    auto stream = std::make_shared<WebDataset::Stream>(
        web_->stream(options_.shuffle, options_.seed + uint64_t(epoch_index) * 0x9E3779B97F4A7C15ull,
                     options_.shuffle_buffer, by_shard ? options_.rank : 0, by_shard ? options_.world_size : 1));
    const int64_t w = by_shard ? 1 : options_.world_size, rank = by_shard ? 0 : options_.rank;
    const int64_t limit = options_.world_size > 1 ? num_samples() : options_.limit > 0 ? options_.limit : INT64_MAX;
    s->source = [stream, batch, drop_last, limit, w, rank, read = int64_t(0), position = int64_t(0)](Job& job) mutable {
      job.first_sample = read;
      for (int64_t k = 0; k < batch && read + k < limit; ++k) {
        Record r;
        std::string missing;
        bool more = true;
        while ((more = stream->next(r, &missing)) && position++ % w != rank) {
        }
        if (!more) break;
        job.records.push_back(std::move(r));
        job.missing.push_back(std::move(missing));
      }
      read += int64_t(job.records.size());
      if (job.records.empty() || (drop_last && int64_t(job.records.size()) < batch)) return false;
      return true;
    };
  }
  if (options_.device.is_cuda()) s->stager = std::make_unique<DeviceStager>(options_.device);
  State* raw = s.get();
  Epoch epoch(std::move(s));  // from here on its destructor joins whatever threads started
  for (int w = 0; w < options_.workers; ++w) raw->workers.emplace_back([raw] { raw->worker_loop(); });
  return epoch;
}

DataLoader::Epoch::Epoch(std::unique_ptr<State> state) : state_(std::move(state)) {}
DataLoader::Epoch::Epoch(Epoch&&) noexcept = default;
DataLoader::Epoch& DataLoader::Epoch::operator=(Epoch&& other) noexcept {
  if (this != &other) {
    if (state_) state_->shutdown();
    state_ = std::move(other.state_);
  }
  return *this;
}

DataLoader::Epoch::~Epoch() {
  if (state_) state_->shutdown();
}

namespace {
// The next batch on the host, in order; false at the end of the epoch.
bool next_on_host(DataLoader::State& s, Batch& batch) {
  if (s.finished) return false;
  for (;;) {
    Result res;
    bool more = false;
    try {
      more = s.take(res);
    } catch (...) {
      res.error = std::current_exception();
      more = true;
    }
    if (!more) {
      s.report_end();
      return false;
    }
    if (res.error) {  // the epoch ends with its first error
      s.shutdown();
      s.source_done = true;
      s.finished = true;
      std::rethrow_exception(res.error);
    }
    if (res.skipped > 0 && s.skipped == 0) s.first_skip = res.first_skip;
    s.skipped += res.skipped;
    if (res.batch.size() == 0) continue;  // every sample of this batch was skipped
    batch = std::move(res.batch);
    return true;
  }
}

}  // namespace

bool DataLoader::Epoch::next(Batch& batch) {
  BCOS_CHECK(state_, "DataLoader::Epoch: used after being moved from");
  State& s = *state_;
  if (!s.stager) return next_on_host(s, batch);
  // On a GPU one batch is always staged ahead, so its copy overlaps the caller's work on this one.
  if (s.deferred) std::rethrow_exception(std::exchange(s.deferred, nullptr));
  if (!s.staged) {
    Batch first;
    if (!next_on_host(s, first)) return false;
    s.stager->stage({first.images, first.labels});
    s.staged = std::move(first);
  }
  Batch out = std::move(*s.staged);
  s.staged.reset();
  std::vector<Tensor> on_device = s.stager->take();
  out.images = on_device[0], out.labels = on_device[1];
  try {
    Batch ahead;
    if (next_on_host(s, ahead)) {
      s.stager->stage({ahead.images, ahead.labels});
      s.staged = std::move(ahead);
    }
  } catch (...) {
    s.deferred = std::current_exception();
  }
  batch = std::move(out);
  return true;
}

int64_t DataLoader::Epoch::skipped() const {
  BCOS_CHECK(state_, "DataLoader::Epoch: used after being moved from");
  return state_->skipped;
}

DataLoader::Epoch::Iterator DataLoader::Epoch::begin() {
  Iterator it{this, {}, false};
  it.done = !next(it.batch);
  return it;
}

}  // namespace bcos::data
