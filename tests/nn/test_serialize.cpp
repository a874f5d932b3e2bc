// State-dict helpers and safetensors: round trips for every dtype and layout, files written by
// the Python fixture scripts, and malformed files (each must raise a bcos::Error naming it).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include "nn/safetensors.h"
#include "tests/golden.h"
#include "tests/nn/helpers.h"

using namespace bcos;
using namespace bcos::nn;
using testdata::error_of;
using testdata::TempDir;
using testnn::le;
using testnn::write_bytes;

namespace {

// Same dtype, shape and bytes (NaN payloads included).
bool identical(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), size_t(x.numel()) * x.element_size()) == 0;
}

std::string safetensors_file(const std::string& header, const std::string& data) {
  return le(header.size(), 8) + header + data;
}

}  // namespace

TEST_CASE("serialize: state dict helpers") {
  StateDict sd = {{"module.conv.weight", ones({2})}, {"module.fc.bias", zeros({3})}, {"extra", ones({1})}};
  CHECK(find(sd, "module.fc.bias") != nullptr);
  CHECK(find(sd, "module.fc.bias")->numel() == 3);
  CHECK(find(sd, "fc.bias") == nullptr);

  StateDict stripped = strip_prefix(sd, "module.");
  REQUIRE(stripped.size() == 3);
  CHECK(stripped[0].first == "conv.weight");
  CHECK(stripped[1].first == "fc.bias");
  CHECK(stripped[2].first == "extra");
  CHECK(stripped[0].second.storage() == sd[0].second.storage());  // tensors are not copied

  StateDict renamed = rename_keys(stripped, {{"conv.", "features.0."}, {"fc.", "head."}, {"conv", "never"}});
  CHECK(renamed[0].first == "features.0.weight");
  CHECK(renamed[1].first == "head.bias");
  CHECK(renamed[2].first == "extra");

  const std::string clash = error_of([&] { strip_prefix({{"module.a", ones({1})}, {"a", ones({1})}}, "module."); });
  CHECK(clash.find("'module.a'") != std::string::npos);
  CHECK(clash.find("'a'") != std::string::npos);
  CHECK(error_of([&] { rename_keys(sd, {{"module.conv.weight", "extra"}}); }).find("would both become 'extra'") !=
        std::string::npos);

  // Wrapper prefixes go only when every key has them; "model.module." goes in two steps.
  CHECK(strip_wrapper_prefixes(sd)[0].first == "module.conv.weight");  // "extra" has none
  const StateDict wrapped = strip_wrapper_prefixes({{"model.module.a", ones({1})}, {"model.module.b", ones({1})}});
  CHECK(wrapped[0].first == "a");
  CHECK(wrapped[1].first == "b");
  CHECK(strip_wrapper_prefixes({}).empty());
}

TEST_CASE("serialize: safetensors round trip, every dtype and layout") {
  TempDir dir;
  manual_seed(7);
  Tensor base = randn({4, 6});
  Tensor half = empty({5}, DType::f16), bf = empty({5}, DType::bf16);
  const float specials[] = {0.f, -0.f, 65504.f, 1e-7f, INFINITY};
  for (int i = 0; i < 5; ++i) {
    half.data<Half>()[i] = Half(specials[i]);
    bf.data<BFloat16>()[i] = BFloat16(i == 2 ? NAN : specials[i]);
  }
  StateDict sd = {
      {"z.f32", randn({3, 4})},
      {"a.f64", randn({2, 2}, DType::f64)},
      {"f16", half},
      {"bf16", bf},
      {"i64", from_vector<int64_t>({0, -1, int64_t(1) << 62, -7}, {4})},
      {"u8", from_vector<uint8_t>({0, 255, 17}, {3})},
      {"bool", from_vector<bool>({true, false, true}, {3})},
      {"empty", zeros({0, 3})},
      {"empty.i64", zeros({2, 0}, DType::i64)},
      {"scalar", scalar_tensor(3.25)},
      {"transposed", base.t()},
      {"slice", base.slice(0, 1, 3).slice(1, 2, 5)},
      {"\xce\xb1 \"quoted\"\n", ones({1})},  // non-ASCII and escaped characters in a name
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "line\nbreak \"q\" \\ \xe2\x82\xac"}};
  const std::string path = dir / "all.safetensors";
  save_safetensors(path, sd, meta);

  std::map<std::string, std::string> meta_back;
  StateDict back = load_safetensors(path, &meta_back);
  CHECK(meta_back == meta);
  REQUIRE(back.size() == sd.size());
  for (size_t i = 1; i < back.size(); ++i) CHECK(back[i - 1].first < back[i].first);  // sorted by name
  for (const auto& [key, t] : sd) {
    const Tensor* b = find(back, key);
    REQUIRE_MESSAGE(b != nullptr, key);
    CHECK_MESSAGE(identical(*b, t), key);
    if (b->numel() > 0) CHECK(b->is_contiguous());  // (Tensor::is_contiguous says no for some empty shapes)
  }
  const std::string bytes = testnn::read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK(header_len % 8 == 0);

  // Overwriting goes through a temporary file; no leftovers.
  save_safetensors(path, {{"only", ones({2})}});
  CHECK(load_safetensors(path).size() == 1);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path)) files += e.is_regular_file();
  CHECK(files == 1);

  // An empty state dict is a valid file.
  save_safetensors(path, {});
  std::map<std::string, std::string> none = {{"stale", "x"}};
  CHECK(load_safetensors(path, &none).empty());
  CHECK(none.empty());

  CHECK(error_of([&] { save_safetensors(dir / "d.safetensors", {{"a", ones({1})}, {"a", ones({1})}}); })
            .find("duplicate tensor name 'a'") != std::string::npos);
  CHECK_FALSE(error_of([&] { save_safetensors(dir / "d.safetensors", {{"__metadata__", ones({1})}}); }).empty());
  CHECK_FALSE(error_of([&] { save_safetensors(dir / "d.safetensors", {{"u", Tensor()}}); }).empty());
  CHECK_FALSE(error_of([&] { save_safetensors(dir / "no/such/dir.safetensors", sd); }).empty());
}

TEST_CASE("serialize: safetensors written by Python read as the fixture reader reads them") {
  for (const char* name : {"ops.safetensors", "data.safetensors"}) {
    const std::string path = testnn::golden(name);
    golden::Fixtures fx(path);
    std::map<std::string, std::string> meta;
    StateDict sd = load_safetensors(path, &meta);
    CHECK(sd.size() == fx.keys().size());
    for (const auto& [key, t] : sd) {
      REQUIRE(fx.has(key));
      CHECK_MESSAGE(identical(t, fx[key]), key);
    }
  }
}

TEST_CASE("serialize: malformed safetensors raise an error naming the file") {
  TempDir dir;
  const std::string good = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data8(8, '\x01');
  struct Case {
    const char* what;
    std::string bytes;
    const char* expect;  // a piece of the message
  };
  const std::string two = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  const std::vector<Case> cases = {
      {"empty file", "", "too short"},
      {"short length", "\x08\x00\x00", "too short"},
      {"header longer than the file", le(1000, 8) + good + data8, "header claims 1000 bytes"},
      {"huge header length", le(~uint64_t(0), 8) + good, "header claims"},
      {"not JSON", safetensors_file("[1,2]   ", ""), "does not start with '{'"},
      {"unterminated object", safetensors_file(R"({"a":{"dtype":"F32")", data8), "unexpected end"},
      {"trailing garbage", safetensors_file(good + "x", data8), "trailing characters"},
      {"two documents", safetensors_file(good + "{}", data8), "trailing characters"},
      {"float in shape", safetensors_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data8),
       "fractional"},
      {"leading zero", safetensors_file(R"({"a":{"dtype":"F32","shape":[02],"data_offsets":[0,8]}})", data8),
       "leading zero"},
      {"true literal", safetensors_file(R"({"a":true})", ""), "unexpected 't'"},
      {"bad escape", safetensors_file(R"({"a\q":{}})", ""), "unknown escape"},
      {"lone surrogate", safetensors_file(R"({"\udc00":{}})", ""), "surrogate"},
      {"control character", safetensors_file("{\"a\tb\":{}}", ""), "control character"},
      {"invalid UTF-8", safetensors_file("{\"\xff\":{}}", ""), "UTF-8"},
      {"duplicate key", safetensors_file(R"({"a":{},"a":{}})", ""), "duplicate key"},
      {"deep nesting", safetensors_file(std::string(50, '[') + std::string(50, ']'), ""), "does not start"},
      {"deep object", safetensors_file("{\"a\":" + std::string(20, '[') + std::string(20, ']') + "}", ""), "nested"},
      {"huge integer", safetensors_file(R"({"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]}})", data8),
       "too large"},
      {"bad dtype", safetensors_file(R"({"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", data8),
       "unsupported dtype \"I32\""},
      {"dtype not a string", safetensors_file(R"({"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", data8),
       "not a string"},
      {"negative shape", safetensors_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8),
       "non-negative"},
      {"missing field", safetensors_file(R"({"a":{"dtype":"F32","shape":[2]}})", data8), "needs"},
      {"unknown field", safetensors_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", data8),
       "unknown field"},
      {"numel vs bytes", safetensors_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8),
       "needs 3 x 4 bytes"},
      {"reversed offsets", safetensors_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data8),
       "bad data_offsets"},
      {"offsets out of bounds", safetensors_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", data8),
       "outside the data section"},
      {"overlapping ranges", safetensors_file(two, std::string(12, '\0')), "overlap"},
      {"a hole", safetensors_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8),
       "belong to no tensor"},
      {"bytes after the last tensor", safetensors_file(good, data8 + "xx"), "belong to no tensor"},
      {"truncated data", safetensors_file(good, data8.substr(0, 5)), "outside the data section"},
      {"metadata not a map", safetensors_file(R"({"__metadata__":[1]})", ""), "__metadata__"},
      {"metadata value not a string", safetensors_file(R"({"__metadata__":{"k":1}})", ""), "'k'"},
      {"entry not an object", safetensors_file(R"({"a":[0,8]})", ""), "expected an object"},
      {"bad bool", safetensors_file(R"({"a":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", "\x01\x02"),
       "not 0 or 1"},
      {"too many dims", safetensors_file(R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", "x"),
       "dims"},
  };
  for (const Case& c : cases) {
    const std::string path = dir / "bad.safetensors";
    write_bytes(path, c.bytes);
    const std::string msg = error_of([&] { load_safetensors(path); });
    INFO(c.what << ": " << msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find(c.expect) != std::string::npos);
  }
  CHECK(error_of([&] { load_safetensors(dir / "missing.safetensors"); }).find("cannot open") != std::string::npos);
  CHECK(error_of([&] { load_safetensors(dir.path.string()); }).find("not a regular file") != std::string::npos);

  // The key is named when a tensor's entry is wrong.
  write_bytes(dir / "k.safetensors",
              safetensors_file(R"({"conv.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8));
  CHECK(error_of([&] { load_safetensors(dir / "k.safetensors"); }).find("'conv.weight'") != std::string::npos);

  // A valid file truncated anywhere raises.
  save_safetensors(dir / "ok.safetensors", {{"a", randn({5})}, {"b", ones({3}, DType::i64)}}, {{"m", "v"}});
  const std::string whole = testnn::read_bytes(dir / "ok.safetensors");
  for (size_t cut = 0; cut < whole.size(); ++cut) {
    write_bytes(dir / "cut.safetensors", whole.substr(0, cut));
    CHECK_FALSE(error_of([&] { load_safetensors(dir / "cut.safetensors"); }).empty());
  }
}
