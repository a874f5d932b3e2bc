// DataLoader: order independent of the worker count, shuffling, drop_last, corrupt samples,
// early stops; the shared CIFAR-10 test shard end to end; the progress bar.
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "data/image.h"
#include "data/loader.h"
#include "tensor/transfer.h"
#include "data/progress.h"
#include "tests/data/tar_writer.h"
#include "tests/data/helpers.h"
#include "tests/golden.h"

using namespace bcos;
using namespace bcos::data;
using testdata::error_of;

namespace {

// n records of random-ish pictures of varying size, label = index % 10.
struct MemoryDataset : Dataset {
  std::vector<Record> records;
  std::set<int64_t> broken;  // indices whose image bytes are garbage
  explicit MemoryDataset(int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      Record r;
      r.name = "mem:" + std::to_string(i);
      const int64_t h = 20 + i % 7, w = 24 + i % 5;
      r.pixels = empty({h, w, 3}, DType::u8);
      uint8_t* p = r.pixels.data<uint8_t>();
      for (int64_t k = 0; k < h * w * 3; ++k) p[k] = uint8_t((k * 31 + i * 17) % 251);
      r.label = i % 10;
      records.push_back(r);
    }
  }
  int64_t size() const override { return int64_t(records.size()); }
  Record get(int64_t i) const override {
    Record r = records.at(size_t(i));
    if (broken.count(i)) {
      r.pixels = Tensor();
      r.image_bytes = "garbage";
    }
    return r;
  }
};

Transform augment() {
  return Compose({RandomResizedCrop(16), RandomHorizontalFlip(), ToTensor(), Normalize(kImageNetMean, kImageNetStd)});
}

// Every batch of an epoch, concatenated: (images, labels, names).
struct EpochData {
  std::vector<float> images;
  std::vector<int64_t> labels;
  std::vector<std::string> names;
  std::vector<int64_t> batch_sizes;
};

EpochData run(const DataLoader& loader, int64_t epoch) {
  EpochData d;
  for (Batch& b : loader.epoch(epoch)) {
    const auto im = b.images.to_vector<float>();
    d.images.insert(d.images.end(), im.begin(), im.end());
    const auto lb = b.labels.to_vector<int64_t>();
    CHECK(b.label_values == lb);  // (the host's copy)
    d.labels.insert(d.labels.end(), lb.begin(), lb.end());
    d.names.insert(d.names.end(), b.names.begin(), b.names.end());
    d.batch_sizes.push_back(b.size());
  }
  return d;
}


}  // namespace

TEST_CASE("loader: the batches for a seed are the same with 0, 1, 2 and 4 workers") {
  auto ds = std::make_shared<MemoryDataset>(103);
  LoaderOptions o{.batch_size = 8, .shuffle = true, .workers = 0, .seed = 42};
  const EpochData ref = run(DataLoader(ds, augment(), o), 3);
  REQUIRE(ref.labels.size() == 103);
  CHECK(ref.batch_sizes.size() == 13);
  CHECK(ref.batch_sizes.back() == 7);
  for (int workers : {1, 2, 4}) {
    CAPTURE(workers);
    o.workers = workers;
    const EpochData d = run(DataLoader(ds, augment(), o), 3);
    CHECK(d.names == ref.names);
    CHECK(d.images == ref.images);
    CHECK(d.batch_sizes == ref.batch_sizes);
  }
  // Another epoch: another order and other augmentations; without shuffle: dataset order.
  const EpochData next = run(DataLoader(ds, augment(), o), 4);
  CHECK(next.names != ref.names);
  o.shuffle = false;
  const EpochData plain = run(DataLoader(ds, augment(), o), 0);
  REQUIRE(plain.names.size() == 103);
  for (size_t i = 0; i < plain.names.size(); ++i) CHECK(plain.names[i] == "mem:" + std::to_string(i));
  // drop_last
  o.drop_last = true;
  DataLoader dropping(ds, augment(), o);
  CHECK(dropping.num_batches() == 12);
  CHECK(run(dropping, 0).labels.size() == 96);
  // limit: the first samples of the (shuffled) order
  o.drop_last = false;
  o.shuffle = true;
  o.limit = 50;
  DataLoader limited(ds, augment(), o);
  CHECK(limited.num_samples() == 50);
  CHECK(limited.num_batches() == 7);
  const EpochData lim = run(limited, 3);
  CHECK(lim.names == std::vector<std::string>(ref.names.begin(), ref.names.begin() + 50));
}

TEST_CASE("loader: batches delivered to a GPU (pinned, staged on a side stream) equal the host's; without one, a clear error") {
  auto ds = std::make_shared<MemoryDataset>(43);
  LoaderOptions o{.batch_size = 8, .shuffle = true, .workers = 2, .seed = 5};
  const EpochData host = run(DataLoader(ds, augment(), o), 1);
  o.device = Device::cuda(0);
  if (cuda_device_count() == 0) {
    CHECK(error_of([&] { DataLoader(ds, augment(), o); }).find("DataLoader: ") != std::string::npos);
    // Pinning without a GPU is an ordinary copy.
    const Tensor t = arange(6, kFloat32).reshape({2, 3});
    CHECK(pin_memory(t).to_vector<float>() == t.to_vector<float>());
    MESSAGE("no CUDA device: the GPU delivery path did not run");
    return;
  }
  DataLoader loader(ds, augment(), o);
  EpochData gpu;
  for (Batch& b : loader.epoch(1)) {
    CHECK(b.images.device() == Device::cuda(0));
    CHECK(b.labels.device() == Device::cuda(0));
    const auto im = b.images.to_vector<float>();
    gpu.images.insert(gpu.images.end(), im.begin(), im.end());
    const auto lb = b.labels.to_vector<int64_t>();
    CHECK(b.label_values == lb);  // the host's copy of the labels the GPU got
    gpu.labels.insert(gpu.labels.end(), lb.begin(), lb.end());
    gpu.names.insert(gpu.names.end(), b.names.begin(), b.names.end());
    gpu.batch_sizes.push_back(b.size());
  }
  CHECK(gpu.images == host.images);
  CHECK(gpu.labels == host.labels);
  CHECK(gpu.names == host.names);
  CHECK(gpu.batch_sizes == host.batch_sizes);  // the last, smaller batch re-sizes a slot
  // Batches kept on the device and read only after the epoch, as queued training steps read them:
  // a slot's buffers must not be overwritten before the copies out of them ran, nor its pinned
  // host blocks recycled for later batches before the copies out of them ran.
  LoaderOptions in_turn = o;
  in_turn.workers = 0;  // batches made on this thread, in turn: deterministic recycling
  std::vector<Batch> kept;
  for (Batch& b : DataLoader(ds, augment(), in_turn).epoch(1)) kept.push_back(b);
  std::vector<float> kept_images;
  std::vector<int64_t> kept_labels;
  for (const Batch& b : kept) {
    const auto im = b.images.to_vector<float>();
    kept_images.insert(kept_images.end(), im.begin(), im.end());
    const auto lb = b.labels.to_vector<int64_t>();
    kept_labels.insert(kept_labels.end(), lb.begin(), lb.end());
  }
  CHECK(kept_images == host.images);
  CHECK(kept_labels == host.labels);
  // Stopping after one batch (another staged, its copy in flight) shuts down cleanly.
  auto epoch = loader.epoch(2);
  Batch first;
  CHECK(epoch.next(first));
}

TEST_CASE("loader: WebDataset order is the same for any number of workers, with shuffling") {
  testdata::TempDir dir;
  for (int s = 0; s < 3; ++s) {
    std::vector<std::pair<std::string, std::string>> members;
    for (int i = 0; i < 20; ++i) {
      // (No "literal" + std::string here: GCC 12 gives a false -Wrestrict warning for it.)
      const std::string key = std::to_string(s) + "_" + std::to_string(i);
      Tensor img = full({10, 12, 3}, double((s * 20 + i) * 3), DType::u8);
      members.push_back({key + ".png", encode_png(img)});
      members.push_back({key + ".cls", std::to_string(i % 10)});
      members.push_back({key + ".txt", "sample " + key});
    }
    std::ofstream(dir / ("shard-" + std::to_string(s) + ".tar"), std::ios::binary) << testdata::make_tar(members);
  }
  auto ds = std::make_shared<WebDataset>(dir / "shard-{0..2}.tar");
  LoaderOptions o{.batch_size = 7, .shuffle = true, .workers = 0, .seed = 9, .shuffle_buffer = 10};
  DataLoader loader0(ds, RandomHorizontalFlip(), o);
  CHECK(loader0.num_samples() == 60);
  CHECK(loader0.num_batches() == 9);
  const EpochData ref = run(loader0, 1);
  CHECK(ref.names.size() == 60);
  for (int workers : {1, 2, 4}) {
    o.workers = workers;
    const EpochData d = run(DataLoader(ds, RandomHorizontalFlip(), o), 1);
    CHECK(d.names == ref.names);
    CHECK(d.images == ref.images);
  }
  // Stopping a shuffled WebDataset epoch early, while workers are reading, and moving epochs.
  o.workers = 4;
  DataLoader loader(ds, RandomHorizontalFlip(), o);
  for (int round = 0; round < 10; ++round) {
    auto epoch = loader.epoch(round);
    Batch b;
    REQUIRE(epoch.next(b));
    CHECK(b.size() == 7);
    epoch = loader.epoch(round + 1);  // move-assignment stops the first epoch's workers
    REQUIRE(epoch.next(b));
    auto moved = std::move(epoch);
    CHECK_THROWS_AS(epoch.next(b), Error);
    REQUIRE(moved.next(b));
  }
  o.limit = 25;
  CHECK(run(DataLoader(ds, RandomHorizontalFlip(), o), 1).names ==
        std::vector<std::string>(ref.names.begin(), ref.names.begin() + 25));
  o.limit = 0;
  // Texts travel with their images.
  for (Batch& b : DataLoader(ds, {}, o).epoch(0))
    for (int64_t i = 0; i < b.size(); ++i) {
      const std::string key = b.names[size_t(i)].substr(b.names[size_t(i)].rfind(' ') + 1);
      CHECK(b.texts[size_t(i)] == "sample " + key);
    }
}

TEST_CASE("loader: corrupt samples raise by default and are skipped and counted with skip_corrupt") {
  auto ds = std::make_shared<MemoryDataset>(30);
  ds->broken = {4, 17};
  LoaderOptions o{.batch_size = 8, .workers = 2, .seed = 1};
  const std::string err = error_of([&] { run(DataLoader(ds, augment(), o), 0); });
  CHECK(err.find("mem:4") != std::string::npos);
  CHECK(err.find("skip_corrupt") != std::string::npos);
  o.skip_corrupt = true;
  o.report_skipped = false;
  DataLoader loader(ds, augment(), o);
  auto epoch = loader.epoch(0);
  int64_t seen = 0;
  Batch b;
  while (epoch.next(b)) seen += b.size();
  CHECK(seen == 28);
  CHECK(epoch.skipped() == 2);

  // WebDataset: a corrupt JPEG, a sample without an image, a truncated shard.
  testdata::TempDir dir;
  const std::string good = encode_jpeg(full({8, 8, 3}, 100.0, DType::u8));
  std::string corrupt = good.substr(0, good.size() / 2);
  std::string tar = testdata::make_tar({{"a.jpg", good}, {"a.cls", "1"}, {"b.jpg", corrupt}, {"b.cls", "2"},
                                        {"c.cls", "3"}, {"d.jpg", good}, {"d.cls", "4"}});
  std::ofstream(dir / "w.tar", std::ios::binary) << tar;
  auto web = std::make_shared<WebDataset>(dir / "w.tar");
  LoaderOptions wo{.batch_size = 2, .workers = 2};
  const std::string werr = error_of([&] { run(DataLoader(web, {}, wo), 0); });
  CHECK(werr.find("w.tar: b") != std::string::npos);
  wo.skip_corrupt = true;
  wo.report_skipped = false;
  DataLoader wloader(web, {}, wo);
  auto wepoch = wloader.epoch(0);
  std::vector<int64_t> labels;
  while (wepoch.next(b))
    for (int64_t l : b.labels.to_vector<int64_t>()) labels.push_back(l);
  CHECK(labels == std::vector<int64_t>{1, 4});
  CHECK(wepoch.skipped() == 2);
  std::ofstream(dir / "cut.tar", std::ios::binary) << tar.substr(0, 512 * 5 + 40);
  auto cut = std::make_shared<WebDataset>(dir / "cut.tar");
  const std::string cerr = error_of([&] { run(DataLoader(cut, {}, wo), 0); });
  CHECK(cerr.find("cut.tar") != std::string::npos);
  CHECK(cerr.find("offset") != std::string::npos);
}

TEST_CASE("loader: stopping early shuts the workers down; errors name the sample") {
  auto ds = std::make_shared<MemoryDataset>(200);
  LoaderOptions o{.batch_size = 4, .shuffle = true, .workers = 4, .prefetch = 3};
  DataLoader loader(ds, augment(), o);
  for (int round = 0; round < 20; ++round) {
    auto epoch = loader.epoch(round);
    Batch b;
    REQUIRE(epoch.next(b));
    CHECK(b.images.shape() == Shape({4, 3, 16, 16}));
    CHECK(b.images.is_contiguous());
    CHECK(b.labels.dtype() == DType::i64);
  }  // each epoch is destroyed with batches in flight
  // Images of different sizes cannot be stacked without a Resize / crop.
  const std::string err = error_of([&] { run(DataLoader(ds, ToTensor(), o), 0); });
  CHECK(err.find("one size") != std::string::npos);
  CHECK_THROWS_AS(DataLoader(ds, {}, LoaderOptions{.batch_size = 0}), Error);
}

// The acceptance check: the whole shared test shard through the loader with 2 workers, pixels
// against Pillow's decoding (tools/golden/data.py), labels against the keys' class names.
TEST_CASE("cifar: the shared CIFAR-10 test shard loads through the DataLoader and matches Pillow") {
  const std::string shard = testdata::find("data/cifar10/cifar10-test-000000.tar");
  if (shard.empty()) return;
  std::vector<std::string> classes;
  {
    std::ifstream f(testdata::data_dir() + "/data/cifar10/classes.txt");
    for (std::string line; std::getline(f, line);)
      if (!line.empty()) classes.push_back(line);
  }
  REQUIRE(classes.size() == 10);
  golden::Fixtures gold(golden::golden_dir() + "/data.safetensors");
  const auto ref_mean = gold["cifar.mean"].to_vector<float>();
  const auto ref_labels = gold["cifar.labels"].to_vector<int64_t>();
  const auto ref_pixels = gold["cifar.pixels"].to_vector<uint8_t>();

  auto ds = std::make_shared<WebDataset>(shard);
  DataLoader loader(ds, {}, {.batch_size = 500, .workers = 2});
  const auto start = std::chrono::steady_clock::now();
  int64_t n = 0, worst_pixel = 0;
  double worst_mean = 0;
  for (Batch& b : loader.epoch(0)) {
    const auto labels = b.labels.to_vector<int64_t>();
    const auto images = b.images.to_vector<float>();  // [N, 3, 32, 32] in [0, 1]
    for (int64_t i = 0; i < b.size(); ++i, ++n) {
      const std::string& name = b.names[size_t(i)];
      const std::string key = name.substr(name.rfind(' ') + 1);
      const std::string cls = key.substr(0, key.rfind('_'));
      REQUIRE(labels[size_t(i)] >= 0);
      REQUIRE(labels[size_t(i)] < 10);
      CHECK(classes[size_t(labels[size_t(i)])] == cls);
      CHECK(labels[size_t(i)] == ref_labels[size_t(n)]);
      double sum = 0;
      for (int64_t k = 0; k < 3072; ++k) {
        const float v = images[size_t(i * 3072 + k)];
        sum += std::nearbyint(v * 255.0);
        if (n < 64) {  // [3, 32, 32] here, [32, 32, 3] in the fixture
          const int64_t c = k / 1024, p = k % 1024;
          const int ref = ref_pixels[size_t(n * 3072 + p * 3 + c)];
          worst_pixel = std::max<int64_t>(worst_pixel, std::abs(int64_t(std::nearbyint(v * 255.0)) - ref));
        }
      }
      worst_mean = std::max(worst_mean, std::abs(sum / 3072.0 - double(ref_mean[size_t(n)])));
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("CIFAR-10 test shard: " << n << " samples in " << seconds << " s with 2 workers; largest difference "
          "from Pillow: " << worst_pixel << " levels per pixel (first 64 images), " << worst_mean
          << " levels in an image's mean (all)");
  CHECK(n == 10000);
  // stb's JPEG decoder (IDCT, chroma upsampling) is not libjpeg-turbo's, which Pillow uses: the
  // largest differences measured are these bounds (3 levels in a pixel, 0.122 in an image mean).
  CHECK(worst_pixel <= 3);
  CHECK(worst_mean <= 0.125);
}

TEST_CASE("progress: plain lines off a terminal, with counts, rate, ETA and metrics") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  {
    ProgressBar bar(10, "eval", "img", f, ProgressBar::Mode::lines, 1000.0);
    for (int i = 0; i < 3; ++i) bar.update(1, {{"loss", 0.5}, {"acc", 81.25}});
    const std::string line = bar.render(100);
    CHECK(line.find("eval:  30%") != std::string::npos);
    CHECK(line.find("3/10") != std::string::npos);
    CHECK((line.find("img/s") != std::string::npos || line.find("s/img") != std::string::npos));
    CHECK(line.find("loss=0.5") != std::string::npos);
    CHECK(line.find("acc=81.25") != std::string::npos);
    CHECK(line.find('<') != std::string::npos);  // elapsed<remaining
    bar.update(7);
  }  // finish() on destruction writes the final line
  std::rewind(f);
  char buf[512] = {0};
  std::string all;
  while (std::fgets(buf, sizeof buf, f)) all += buf;
  std::fclose(f);
  CHECK(all.find("10/10") != std::string::npos);
  CHECK(all.find("100%") != std::string::npos);
  CHECK(all.find('\r') == std::string::npos);
  CHECK(std::count(all.begin(), all.end(), '\n') == 1);  // the interval (1000 s) never elapsed
  // On a terminal: one line redrawn in place (carriage return, clear to end of line).
  std::FILE* t = std::tmpfile();
  REQUIRE(t != nullptr);
  {
    ProgressBar bar(4, "train", "it", t, ProgressBar::Mode::terminal);
    bar.update(4, {{"loss", 1.5}});
  }
  std::rewind(t);
  std::string term;
  while (std::fgets(buf, sizeof buf, t)) term += buf;
  std::fclose(t);
  CHECK(term.rfind("\r", 0) == 0);
  CHECK(term.find("\033[K") != std::string::npos);
  CHECK(term.find("4/4") != std::string::npos);
  CHECK(term.find("loss=1.5") != std::string::npos);
  CHECK(term.back() == '\n');
  CHECK(format_duration(75) == "01:15");
  CHECK(format_duration(3725) == "1:02:05");
  std::FILE* g = std::tmpfile();
  REQUIRE(g != nullptr);
  {
    ProgressBar unknown(0, "", "it", g, ProgressBar::Mode::lines);
    unknown.update(5);
    CHECK(unknown.render().find("5 [") != std::string::npos);
    CHECK(unknown.render().find('%') == std::string::npos);
  }
  std::fclose(g);
}

// Data-parallel shares: every rank draws the same shuffle and takes every world-th sample, so the
// shares are disjoint, equal in size and together the epoch (map-style: padded with the shuffle's
// first samples, as PyTorch's DistributedSampler; WebDataset: cut to a multiple of the world).
TEST_CASE("loader: data-parallel shares are disjoint, equal, cover the epoch and agree on the shuffle") {
  auto ds = std::make_shared<MemoryDataset>(23);
  const Transform crop = CenterCrop(16);
  LoaderOptions o{.batch_size = 4, .shuffle = true, .workers = 2, .seed = 5};
  const EpochData whole = run(DataLoader(ds, crop, o), 3);
  for (int world : {2, 3, 5}) {
    std::vector<EpochData> shares;
    for (int rank = 0; rank < world; ++rank) {
      o.rank = rank, o.world_size = world;
      DataLoader loader(ds, crop, o);
      CHECK(loader.num_samples() == (23 + world - 1) / world);
      shares.push_back(run(loader, 3));
      CHECK(int64_t(shares.back().names.size()) == loader.num_samples());
    }
    // Interleaved back together, the shares are the one-process epoch, then its first samples again.
    for (size_t k = 0; k < size_t(world) * shares[0].names.size(); ++k) {
      const std::string& name = shares[size_t(k % world)].names[size_t(k / world)];
      CHECK(name == whole.names[size_t(k % 23)]);
    }
  }
  o.rank = 2, o.world_size = 2;
  CHECK(error_of([&] { DataLoader(ds, crop, o); }).find("rank 2 outside a world of 2") != std::string::npos);

  // Random transforms draw per global position: the ranks' crops differ, and are those of the
  // one-process epoch.
  o = LoaderOptions{.batch_size = 3, .shuffle = true, .workers = 0, .seed = 5};
  const EpochData augmented = run(DataLoader(ds, augment(), o), 1);
  const size_t per_image = 3 * 16 * 16;
  for (int rank = 0; rank < 2; ++rank) {
    o.rank = rank, o.world_size = 2;
    const EpochData d = run(DataLoader(ds, augment(), o), 1);
    for (size_t k = 0; k < d.names.size() && 2 * k + size_t(rank) < 23; ++k)
      CHECK(std::equal(d.images.begin() + long(k * per_image), d.images.begin() + long((k + 1) * per_image),
                       augmented.images.begin() + long((2 * k + size_t(rank)) * per_image)));
  }

  // WebDataset: the same stream on every rank, every world-th record, cut to equal shares.
  testdata::TempDir dir;
  std::vector<std::pair<std::string, std::string>> members;
  for (int i = 0; i < 17; ++i) {
    const std::string key = "s" + std::to_string(i);
    members.push_back({key + ".png", encode_png(full({4, 4, 3}, double(i), DType::u8))});
    members.push_back({key + ".cls", std::to_string(i % 10)});
  }
  std::ofstream(dir / "w.tar", std::ios::binary) << testdata::make_tar(members);
  auto web = std::make_shared<WebDataset>(dir / "w.tar");
  LoaderOptions wo{.batch_size = 2, .shuffle = true, .workers = 1, .seed = 1, .shuffle_buffer = 5};
  const EpochData stream = run(DataLoader(web, {}, wo), 2);
  REQUIRE(stream.names.size() == 17);
  for (int rank = 0; rank < 3; ++rank) {
    wo.rank = rank, wo.world_size = 3;
    DataLoader loader(web, {}, wo);
    CHECK(loader.num_samples() == 5);
    const EpochData d = run(loader, 2);
    REQUIRE(d.names.size() == 5);
    for (size_t k = 0; k < 5; ++k) CHECK(d.names[k] == stream.names[3 * k + size_t(rank)]);
  }

  // split_shards: each rank reads only its shards of the epoch's agreed shard order.
  std::vector<int64_t> sizes{3, 4, 5, 3, 6, 2, 4};
  for (size_t sh = 0; sh < sizes.size(); ++sh) {
    std::vector<std::pair<std::string, std::string>> items;
    for (int64_t i = 0; i < sizes[sh]; ++i) {
      const std::string key = "shard" + std::to_string(sh) + "_" + std::to_string(i);
      items.push_back({key + ".png", encode_png(full({4, 4, 3}, double(i), DType::u8))});
      items.push_back({key + ".cls", "1"});
    }
    std::ofstream(dir / ("p" + std::to_string(sh) + ".tar"), std::ios::binary) << testdata::make_tar(items);
  }
  auto many = std::make_shared<WebDataset>(dir / "p{0..6}.tar");
  CHECK(many->shard_counts() == sizes);
  CHECK(many->count() == 27);
  for (int64_t epoch : {0, 1}) {
    std::set<std::string> shards_seen;
    for (int rank = 0; rank < 3; ++rank) {
      LoaderOptions so{.batch_size = 2, .shuffle = true, .workers = 1, .seed = 4, .shuffle_buffer = 3, .rank = rank,
                       .world_size = 3, .split_shards = true};
      DataLoader loader(many, {}, so);
      CHECK(loader.num_samples() == 2 + 3);  // the floor(7 / 3) = 2 smallest shards: every rank has that many
      const EpochData d = run(loader, epoch);
      CHECK(d.names.size() == 5);
      std::set<std::string> mine;
      for (const auto& name : d.names) mine.insert(name.substr(0, name.find(':')));
      for (const auto& shard : mine) CHECK(shards_seen.insert(shard).second);  // no shard read by two ranks
    }
  }
  LoaderOptions too_many{.batch_size = 2, .rank = 0, .world_size = 8, .split_shards = true};
  CHECK(error_of([&] { DataLoader(many, {}, too_many).num_samples(); }).find("7 shard(s) for 8 ranks") != std::string::npos);
  LoaderOptions map_style{.batch_size = 2, .split_shards = true};
  CHECK(error_of([&] { DataLoader(ds, crop, map_style); }).find("split_shards is for WebDatasets") != std::string::npos);
}
