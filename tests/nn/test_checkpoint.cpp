// PyTorch checkpoints: the fixtures written by tools/golden/checkpoints.py (zip, legacy,
// protocol 4, a module's state dict, legacy storage views), the shared CIFAR ResNets, archives
// written by hand to hit each error, and corrupted files (flipped bytes, truncation) that must
// load or raise a bcos::Error, never crash or throw anything else.
#include <doctest/doctest.h>

#include <random>

#include "nn/safetensors.h"
#include "nn/torch_checkpoint.h"
#include "nn/zip.h"
#include "tests/nn/helpers.h"

using namespace bcos;
using namespace bcos::nn;
using testdata::error_of;
using testdata::TempDir;
using testnn::golden;
using testnn::PickleWriter;
using testnn::ZipWriter;

namespace {

bool identical(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), size_t(x.numel()) * x.element_size()) == 0;
}

const StateDict& expected() {
  static const StateDict fixtures = load_safetensors(golden("checkpoints.safetensors"));
  return fixtures;
}

// Checks every tensor of `sd` against the fixture "<prefix><key>".
void check_against_fixtures(const StateDict& sd, const std::string& prefix) {
  for (const auto& [key, t] : sd) {
    const Tensor* want = find(expected(), prefix + key);
    REQUIRE_MESSAGE(want != nullptr, (prefix + key));
    CHECK_MESSAGE(identical(t, *want), key);
    if (t.numel() > 0) CHECK(t.is_contiguous());
    CHECK(t.is_cpu());
  }
}

const std::vector<std::string> kFixtureKeys = {"f32",   "f64",   "f16",  "bf16", "i64",  "i32",    "u8",    "bool",
                                               "param", "scalar", "count", "empty", "base", "base_t", "slice", "row"};

std::vector<std::string> keys_of(const StateDict& sd) {
  std::vector<std::string> keys;
  for (const auto& entry : sd) keys.push_back(entry.first);
  return keys;
}

// A zip checkpoint "a/..." whose data.pkl is `pickle` and whose storages are `storages`.
std::string checkpoint_zip(const std::string& pickle, const std::vector<std::pair<std::string, std::string>>& storages) {
  ZipWriter zip;
  zip.add("a/data.pkl", pickle);
  for (const auto& [key, bytes] : storages) zip.add("a/data/" + key, bytes);
  return zip.add("a/version", "3\n").bytes();
}

// {name: tensor} with one storage, as torch.save writes it.
std::string one_tensor_pickle(const std::string& key, int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                              const std::vector<int64_t>& stride, const std::string& cls = "FloatStorage") {
  return PickleWriter().op("}").mark().str("t").tensor(key, numel, offset, size, stride, cls).op("u").stop().out;
}

std::string floats(const std::vector<float>& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

}  // namespace

TEST_CASE("serialize: zip checkpoint from torch.save, wrapped in {state_dict, epoch}") {
  const StateDict sd = load_torch_checkpoint(golden("checkpoint_zip.pt"));
  CHECK(keys_of(sd) == kFixtureKeys);  // "version" (an int) is skipped
  check_against_fixtures(sd, "");
  CHECK(find(sd, "i32")->dtype() == DType::i64);  // widened
  CHECK(find(sd, "base_t")->shape() == Shape{6, 4});
  CHECK(find(sd, "slice")->to_vector<float>() == std::vector<float>{8, 9, 10, 14, 15, 16});
  CHECK(find(sd, "row")->to_vector<float>() == std::vector<float>{12, 13, 14, 15, 16, 17});
  CHECK(find(sd, "scalar")->dim() == 0);
  CHECK(find(sd, "empty")->shape() == Shape{0, 3});
  // Views of one storage come back as independent tensors.
  CHECK(find(sd, "base")->storage() != find(sd, "base_t")->storage());
}

TEST_CASE("serialize: legacy, protocol-4 and module checkpoints from torch.save") {
  const StateDict legacy = load_torch_checkpoint(golden("checkpoint_legacy.pt"));
  CHECK(keys_of(legacy) == kFixtureKeys);
  check_against_fixtures(legacy, "");

  const StateDict proto4 = load_torch_checkpoint(golden("checkpoint_proto4.pt"));
  CHECK(keys_of(proto4) == kFixtureKeys);
  check_against_fixtures(proto4, "");

  const StateDict module = load_torch_checkpoint(golden("checkpoint_module.pt"));
  CHECK(keys_of(module) == std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                                    "1.running_var", "1.num_batches_tracked"});
  check_against_fixtures(module, "module.");
  CHECK(find(module, "1.num_batches_tracked")->item<int64_t>() == 1);

  const StateDict views = load_torch_checkpoint(golden("checkpoint_view.pt"));
  CHECK(keys_of(views) == std::vector<std::string>{"whole", "part"});
  check_against_fixtures(views, "view.");
  CHECK(find(views, "part")->to_vector<float>() == std::vector<float>{13, 14});
}

TEST_CASE("serialize: load_checkpoint tells the formats apart") {
  TempDir dir;
  CHECK(keys_of(load_checkpoint(golden("checkpoint_zip.pt"))) == kFixtureKeys);
  CHECK(keys_of(load_checkpoint(golden("checkpoint_legacy.pt"))) == kFixtureKeys);
  const StateDict st = load_checkpoint(golden("checkpoints.safetensors"));
  CHECK(st.size() == expected().size());
  // A safetensors file whose header length starts with the byte a pickle starts with (0x80).
  for (size_t n = 1; n < 300; ++n) {
    save_safetensors(dir / "x.safetensors", {{std::string(n, 'k'), ones({1})}});
    if (static_cast<unsigned char>(testnn::read_bytes(dir / "x.safetensors")[0]) == 0x80) break;
  }
  CHECK(static_cast<unsigned char>(testnn::read_bytes(dir / "x.safetensors")[0]) == 0x80);
  CHECK(load_checkpoint(dir / "x.safetensors").size() == 1);

  testnn::write_bytes(dir / "text.pt", "hello, world");
  CHECK(error_of([&] { load_checkpoint(dir / "text.pt"); }).find("unrecognised format") != std::string::npos);
  testnn::write_bytes(dir / "empty.pt", "");
  CHECK(error_of([&] { load_checkpoint(dir / "empty.pt"); }).find(dir / "empty.pt") != std::string::npos);
  CHECK(error_of([&] { load_torch_checkpoint(golden("checkpoints.safetensors")); }).find("not a PyTorch checkpoint") !=
        std::string::npos);
  CHECK(error_of([&] { load_checkpoint(dir / "missing.pt"); }).find("cannot open") != std::string::npos);
}

TEST_CASE("serialize: the shared CIFAR ResNets load through the legacy reader") {
  const std::vector<std::pair<std::string, size_t>> models = {
      {"resnet20-12fca82f.th", 97}, {"resnet32-d509ac18.th", 157}, {"resnet44-014dd654.th", 217},
      {"resnet56-4bfd9763.th", 277}};
  for (const auto& [file, count] : models) {
    const std::string path = testdata::find("weights/resnet-cifar10/" + file);
    if (path.empty()) continue;
    const StateDict sd = load_checkpoint(path);
    CHECK_MESSAGE(sd.size() == count, file);
    REQUIRE(find(sd, "module.conv1.weight"));
    CHECK(find(sd, "module.conv1.weight")->shape() == Shape{16, 3, 3, 3});
    CHECK(find(sd, "module.linear.weight")->shape() == Shape{10, 64});
    CHECK(find(sd, "module.linear.bias")->shape() == Shape{10});
    CHECK(find(sd, "module.layer3.0.conv1.weight")->shape() == Shape{64, 32, 3, 3});
    for (const auto& [key, t] : sd) {
      CHECK(key.rfind("module.", 0) == 0);
      CHECK(t.dtype() == DType::f32);
    }
    const StateDict plain = strip_prefix(sd, "module.");
    CHECK(find(plain, "bn1.running_var") != nullptr);
    if (file.rfind("resnet20", 0) != 0) continue;
    if (!find(expected(), "resnet20.module.linear.bias")) {
      MESSAGE("skipped the value check: checkpoints.safetensors was written without ../shared");
      continue;
    }
    CHECK(identical(find(sd, "module.conv1.weight")->select(0, 0), *find(expected(), "resnet20.module.conv1.weight.0")));
    for (const char* key : {"module.layer3.2.bn2.running_var", "module.linear.bias"})
      CHECK_MESSAGE(identical(*find(sd, key), *find(expected(), std::string("resnet20.") + key)), key);
  }
}

TEST_CASE("serialize: hand-written zip checkpoints: layouts torch.save also writes") {
  TempDir dir;
  const std::string path = dir / "c.pt";
  // Int8 storage, a strided view with an offset: widened to int64.
  testnn::write_bytes(path, checkpoint_zip(one_tensor_pickle("0", 6, 1, {2, 2}, {1, 3}, "CharStorage"),
                                           {{"0", std::string("\xff\x02\xfd\x04\xfb\x06", 6)}}));
  StateDict sd = load_torch_checkpoint(path);
  REQUIRE(sd.size() == 1);
  CHECK(sd[0].second.dtype() == DType::i64);
  CHECK(sd[0].second.to_vector<int64_t>() == std::vector<int64_t>{2, -5, -3, 6});
  // A stride-0 (expanded) tensor.
  testnn::write_bytes(path, checkpoint_zip(one_tensor_pickle("0", 1, 0, {3, 2}, {0, 0}), {{"0", floats({7})}}));
  CHECK(load_torch_checkpoint(path)[0].second.to_vector<float>() == std::vector<float>(6, 7.f));
  // ZIP64 central directory and end record.
  ZipWriter zip64;
  zip64.zip64 = true;
  zip64.add("a/data.pkl", one_tensor_pickle("0", 2, 0, {2}, {1})).add("a/data/0", floats({1, 2}));
  testnn::write_bytes(path, zip64.bytes());
  CHECK(load_torch_checkpoint(path)[0].second.to_vector<float>() == std::vector<float>{1, 2});
  // byteorder "little" is accepted; a "model" wrapper is unwrapped.
  const std::string wrapped = PickleWriter().op("}").mark().str("model").op("}").mark().str("w")
                                  .tensor("0", 2, 0, {2}, {1}).op("u").str("epoch").integer(3).op("u").stop().out;
  testnn::write_bytes(path, ZipWriter().add("a/data.pkl", wrapped).add("a/byteorder", "little")
                                .add("a/data/0", floats({3, 4})).bytes());
  sd = load_torch_checkpoint(path);
  REQUIRE(sd.size() == 1);
  CHECK(sd[0].first == "w");
}

TEST_CASE("serialize: malformed torch checkpoints raise an error naming the file") {
  TempDir dir;
  const std::string ok_pickle = one_tensor_pickle("0", 4, 0, {4}, {1});
  const std::string four = floats({1, 2, 3, 4});
  const std::string good = checkpoint_zip(ok_pickle, {{"0", four}});
  std::string bad_crc = good;
  bad_crc[bad_crc.find(four) + 1] ^= 1;
  const std::string dict_with_list = PickleWriter().op("}").mark().str("w").tensor("0", 4, 0, {4}, {1})
                                         .str("x").op("]").op("u").stop().out;
  const std::string module_pid = PickleWriter().op("}").mark().str("m").mark().str("module").str("x").tuple()
                                     .op("Q").op("u").stop().out;
  const std::string reused = PickleWriter().op("}").mark().str("a").tensor("0", 4, 0, {4}, {1}).str("b")
                                 .tensor("0", 2, 0, {2}, {1}).op("u").stop().out;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {ZipWriter().add("a/data.pkl", ok_pickle, 8).bytes(), "compressed (method 8)"},
      {ZipWriter().add("a/other", "x").bytes(), "no 'a/data.pkl'"},
      {ZipWriter().add("data.pkl", ok_pickle).bytes(), "not inside an archive folder"},
      {checkpoint_zip(ok_pickle, {}), "no entry 'a/data/0'"},
      {checkpoint_zip(ok_pickle, {{"0", four + "xxxx"}}), "needs 16 bytes but 'a/data/0' holds 20"},
      {checkpoint_zip(one_tensor_pickle("0", 4, 0, {5}, {1}), {{"0", four}}), "reaches beyond its storage '0'"},
      {checkpoint_zip(one_tensor_pickle("0", 4, 3, {2}, {1}), {{"0", four}}), "reaches beyond"},
      {checkpoint_zip(one_tensor_pickle("0", 4, 0, {2, 2}, {3, 1}), {{"0", four}}), "reaches beyond"},
      {checkpoint_zip(one_tensor_pickle("0", 4, 5, {0}, {1}), {{"0", four}}), "reaches beyond"},
      {checkpoint_zip(one_tensor_pickle("0", 4, 0, {1 << 20, 1 << 20}, {0, 0}), {{"0", four}}), "zero strides"},
      {checkpoint_zip(one_tensor_pickle("0", 4, 0, {2, -1}, {1, 1}), {{"0", four}}), "size holds the integer -1"},
      {checkpoint_zip(one_tensor_pickle("0", 4, 0, {2, 1, 1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1, 1}),
                      {{"0", four}}), "9 dims"},
      {checkpoint_zip(one_tensor_pickle("0", int64_t(1) << 62, 0, {1}, {1}), {{"0", four}}), "too large"},
      {checkpoint_zip(one_tensor_pickle("0", 4, 0, {4}, {1}, "ComplexFloatStorage"), {{"0", four}}),
       "'torch.ComplexFloatStorage'"},
      {ZipWriter().add("a/data.pkl", ok_pickle).add("a/byteorder", "big").add("a/data/0", four).bytes(),
       "only little-endian"},
      {bad_crc, "CRC-32"},
      {good.substr(0, good.size() - 1), "no end-of-central-directory"},
      {checkpoint_zip(PickleWriter().op("]").stop().out, {}), "holds a list of 0 items, not a state dict"},
      {checkpoint_zip(PickleWriter().op("}").str("epoch").integer(3).op("s").stop().out, {}),
       "no state dict found: the top-level dict holds no tensors and no \"state_dict\", \"model_state_dict\" or "
       "\"model\" dict (its keys: 'epoch')"},
      {checkpoint_zip(dict_with_list, {{"0", four}}), "state dict entry 'x' is a list of 0 items, not a tensor"},
      {checkpoint_zip(module_pid, {}), "whole module"},
      {checkpoint_zip(reused, {{"0", four}}), "storage '0' appears as 2 x FloatStorage and as 4 x FloatStorage"},
  };
  for (const auto& [bytes, expect] : cases) {
    const std::string path = dir / "bad.pt";
    testnn::write_bytes(path, bytes);
    const std::string msg = error_of([&] { load_torch_checkpoint(path); });
    INFO(msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find(expect) != std::string::npos);
  }

  // Legacy files: a wrong magic number, protocol, storage count, missing data.
  const std::string legacy = testnn::read_bytes(golden("checkpoint_legacy.pt"));
  auto legacy_error = [&](std::string bytes) {
    testnn::write_bytes(dir / "legacy.pt", bytes);
    return error_of([&] { load_torch_checkpoint(dir / "legacy.pt"); });
  };
  std::string wrong_magic = legacy;
  wrong_magic[5] ^= 1;
  CHECK(legacy_error(wrong_magic).find("not the magic number") != std::string::npos);
  std::string wrong_protocol = legacy;
  wrong_protocol[18] ^= 1;  // the low byte of BININT2 1001 (the second pickle starts at byte 15)
  CHECK(legacy_error(wrong_protocol).find("protocol version") != std::string::npos);
  CHECK(legacy_error(legacy.substr(0, legacy.size() - 3)).find("truncated") != std::string::npos);
}

namespace {

// Loads `bytes` from a file: 0 when it loads, 1 on a bcos::Error; any other exception fails.
int load_outcome(const std::string& path, const std::string& bytes, const std::string& what) {
  testnn::write_bytes(path, bytes);
  try {
    load_checkpoint(path);
    return 0;
  } catch (const Error&) {
    return 1;
  } catch (const std::exception& e) {
    FAIL_CHECK(what << ": a non-bcos exception: " << e.what());
  } catch (...) {
    FAIL_CHECK(what << ": an exception that is not a std::exception");
  }
  return 2;
}

// Flips 1-4 random bytes of `bytes` in [0, region); returns where, for messages.
std::string flip_bytes(std::string& bytes, size_t region, std::mt19937_64& rng) {
  const int flips = 1 + int(rng() % 4);
  std::string where;
  for (int f = 0; f < flips; ++f) {
    const size_t at = size_t(rng() % std::min(region, bytes.size()));
    bytes[at] = char(bytes[at] ^ char(1 + rng() % 255));
    where += ' ';
    where += std::to_string(at);
  }
  return where;
}

int scaled(int trials) {  // $BCOS_FUZZ_SCALE multiplies the trials, for longer runs by hand
  const char* scale = std::getenv("BCOS_FUZZ_SCALE");
  return scale ? trials * std::max(1, std::atoi(scale)) : trials;
}

// Corrupts the first `region` bytes `trials` times (fixed seed); then cuts the file at every
// sixteenth of its length, which must always fail.
void fuzz(const std::string& original, size_t region, int trials, uint64_t seed, const std::string& name) {
  trials = scaled(trials);
  TempDir dir;
  const std::string path = dir / "fuzz.pt";
  std::mt19937_64 rng(seed);
  int errors = 0, clean = 0;
  for (int trial = 0; trial < trials; ++trial) {
    std::string bytes = original;
    const std::string where = flip_bytes(bytes, region, rng);
    const int outcome = load_outcome(path, bytes, name + " trial " + std::to_string(trial) + ", bytes" + where);
    errors += outcome == 1;
    clean += outcome == 0;
  }
  for (size_t k = 0; k < 16; ++k) {
    const size_t cut = original.size() * k / 16;
    CHECK_MESSAGE(load_outcome(path, original.substr(0, cut), name + " cut") == 1, name << " cut at " << cut);
  }
  MESSAGE(name << ": " << trials << " corrupted copies: " << errors << " raised bcos::Error, " << clean
               << " loaded cleanly");
}

}  // namespace

TEST_CASE("serialize: corrupted checkpoints raise bcos::Error or load, never crash") {
  const std::string zip = testnn::read_bytes(golden("checkpoint_zip.pt"));
  fuzz(zip, zip.size(), 400, 1, "checkpoint_zip.pt");
  {
    // The CRC stops most flips inside a zip's data.pkl; re-archive corrupted pickles instead.
    const ZipArchive archive(zip, "checkpoint_zip.pt");
    TempDir dir;
    std::mt19937_64 rng(6);
    int errors = 0;
    const int trials = scaled(300);
    for (int trial = 0; trial < trials; ++trial) {
      ZipWriter rebuilt;
      std::string where;
      for (const ZipEntry& e : archive.entries()) {
        std::string data(archive.read(e));
        if (e.name.find("data.pkl") != std::string::npos) where = flip_bytes(data, data.size(), rng);
        rebuilt.add(e.name, data);
      }
      errors += load_outcome(dir / "z.pt", rebuilt.bytes(), "data.pkl trial " + std::to_string(trial) + where) == 1;
    }
    MESSAGE("checkpoint_zip.pt data.pkl: " << trials << " corrupted pickles: " << errors << " raised bcos::Error");
  }
  const std::string legacy = testnn::read_bytes(golden("checkpoint_legacy.pt"));
  fuzz(legacy, legacy.size(), 300, 2, "checkpoint_legacy.pt");
  {
    TempDir dir;
    save_safetensors(dir / "s.safetensors", {{"a", randn({3, 2})}, {"b", ones({4}, DType::boolean)}, {"c", zeros({0})}},
                     {{"k", "v"}});
    const std::string st = testnn::read_bytes(dir / "s.safetensors");
    fuzz(st, st.size(), 300, 5, "safetensors");
  }
  const std::string path = testdata::find("weights/resnet-cifar10/resnet20-12fca82f.th");
  if (path.empty()) return;
  const std::string resnet = testnn::read_bytes(path);
  fuzz(resnet, 14100, 250, 3, "resnet20 (pickles and storage keys)");  // the pickles end at byte 14063
  fuzz(resnet, resnet.size(), 50, 4, "resnet20 (anywhere)");
}

TEST_CASE("serialize: TorchScript archives: __torch__ modules load as inert objects, flattened by attribute path") {
  TempDir dir;
  const std::string four = floats({1, 2, 3, 4});
  // CLIP-like: {weight, training, visual: {conv: {weight}}} as __torch__ instances built by NEWOBJ + BUILD.
  auto object = [](PickleWriter& w, const std::string& module, const std::string& cls) -> PickleWriter& {
    return w.global(module, cls).op(")").op("\x81").op("}").mark();
  };
  PickleWriter w;
  object(w, "__torch__", "CLIP").str("scale").tensor("0", 4, 0, {4}, {1}).str("training").op("\x89");
  w.str("visual");
  object(w, "__torch__.torch.nn.modules.conv.___torch_mangle_7", "Conv2d").str("weight").tensor("0", 4, 1, {3}, {1});
  w.str("bias").none().op("u").op("b");  // the Conv2d's attributes
  w.op("u").op("b").stop();              // the CLIP's
  auto script_zip = [&](const std::string& pickle) {
    ZipWriter zip;
    zip.add("m/data.pkl", pickle).add("m/constants.pkl", PickleWriter().mark().tuple().stop().out);
    zip.add("m/code/__torch__.py", "compressed code", 8).add("m/data/0", four);
    return zip.bytes();
  };
  testnn::write_bytes(dir / "script.pt", script_zip(w.out));
  const StateDict sd = load_torch_checkpoint(dir / "script.pt");
  REQUIRE(sd.size() == 2);
  CHECK(sd[0].first == "scale");
  CHECK(sd[1].first == "visual.weight");
  CHECK(sd[1].second.to_vector<float>() == std::vector<float>{2, 3, 4});

  // Outside a TorchScript archive (no constants.pkl) a __torch__ class is just another global.
  testnn::write_bytes(dir / "plain.pt", checkpoint_zip(w.out, {{"0", four}}));
  CHECK(error_of([&] { load_torch_checkpoint(dir / "plain.pt"); }).find("'__torch__.CLIP' is not on the allow-list") !=
        std::string::npos);
  // Calling a script class, or giving it constructor arguments, would run code.
  PickleWriter call;
  call.global("__torch__", "CLIP").mark().tuple().reduce().stop();
  testnn::write_bytes(dir / "call.pt", script_zip(call.out));
  CHECK(error_of([&] { load_torch_checkpoint(dir / "call.pt"); }).find("would run code") != std::string::npos);
  PickleWriter args;
  args.global("__torch__", "CLIP").mark().integer(1).tuple().op("\x81").stop();
  testnn::write_bytes(dir / "args.pt", script_zip(args.out));
  CHECK(error_of([&] { load_torch_checkpoint(dir / "args.pt"); }).find("would run code") != std::string::npos);
  // A data.pkl that is not a module; reading the deflated code is refused.
  testnn::write_bytes(dir / "dict.pt", script_zip(PickleWriter().op("}").stop().out));
  CHECK(error_of([&] { load_torch_checkpoint(dir / "dict.pt"); }).find("not a module") != std::string::npos);
  const std::string bytes = script_zip(w.out);
  ZipArchive zip(bytes, "in-memory");
  CHECK(error_of([&] { zip.read(*zip.find("m/code/__torch__.py")); }).find("is compressed (method 8)") !=
        std::string::npos);
}
