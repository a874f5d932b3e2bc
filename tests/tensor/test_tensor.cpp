// Tensor handle, creation, views, conversions, random numbers and printing.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "autograd/ops.h"
#include "tests/golden.h"

using namespace bcos;

namespace {
std::vector<double> v(const Tensor& t) { return t.to_vector<double>(); }
}

TEST_CASE("tensor: creation functions") {
  CHECK(v(zeros({2, 2})) == std::vector<double>{0, 0, 0, 0});
  CHECK(v(ones({3}, kFloat64)) == std::vector<double>{1, 1, 1});
  CHECK(v(full({2}, -2.5)) == std::vector<double>{-2.5, -2.5});
  CHECK(v(arange(5.0)) == std::vector<double>{0, 1, 2, 3, 4});
  CHECK(v(arange(1, 2, 0.25)) == std::vector<double>{1, 1.25, 1.5, 1.75});
  CHECK(arange(0, 10, 3, kInt64).dtype() == kInt64);
  CHECK(v(linspace(0, 1, 5)) == std::vector<double>{0, 0.25, 0.5, 0.75, 1});
  CHECK(v(linspace(0, 10, 1)) == std::vector<double>{0});
  CHECK(v(eye(2, 3)) == std::vector<double>{1, 0, 0, 0, 1, 0});
  CHECK(scalar_tensor(3.0).dim() == 0);
  CHECK(scalar_tensor(3.0).item() == 3.0);
  Tensor e = empty({0, 3});
  CHECK(e.numel() == 0);
  CHECK(from_vector<int64_t>({1LL << 60}, {1}).item<int64_t>() == (1LL << 60));
}

TEST_CASE("tensor: strides, contiguity and views share storage") {
  Tensor a = arange(12.0).reshape({3, 4});
  CHECK(a.strides() == Strides{4, 1});
  Tensor t = a.t();
  CHECK(t.strides() == Strides{1, 4});
  CHECK_FALSE(t.is_contiguous());
  CHECK(t.storage() == a.storage());
  Tensor c = t.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.storage() != a.storage());
  // empty tensors are contiguous whatever their strides (as PyTorch): a transposed or sliced one too
  CHECK(empty({0, 3}).t().is_contiguous());
  CHECK(empty({2, 0, 3}).permute({2, 0, 1}).is_contiguous());
  CHECK(a.slice(1, 2, 2).is_contiguous());
  CHECK(a.slice(1, 2, 2).contiguous().shape() == Shape{3, 0});
  CHECK(v(c) == std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
  // reshape is a view whenever possible, a copy otherwise
  CHECK(a.reshape({2, 6}).storage() == a.storage());
  CHECK(a.reshape({4, 3}).storage() == a.storage());
  CHECK(t.reshape({12}).storage() != a.storage());
  CHECK(a.slice(1, 1, 4, 2).strides() == Strides{4, 2});
  CHECK(v(a.slice(1, 1, 4, 2)) == std::vector<double>{1, 3, 5, 7, 9, 11});
  CHECK(v(a.slice(0, -2, 3)) == std::vector<double>{4, 5, 6, 7, 8, 9, 10, 11});
  CHECK(v(a.select(1, 2)) == std::vector<double>{2, 6, 10});
  CHECK(a.unsqueeze(0).shape() == Shape{1, 3, 4});
  CHECK(a.unsqueeze(-1).shape() == Shape{3, 4, 1});
  CHECK(ones({2, 1, 3, 1}).squeeze().shape() == Shape{2, 3});
  CHECK(ones({2, 3, 4}).flatten(1).shape() == Shape{2, 12});
  Tensor x = from_vector<float>({1, 2}, {2, 1});
  Tensor ex = x.expand({2, 3});
  CHECK(ex.strides() == Strides{1, 0});
  CHECK(v(ex) == std::vector<double>{1, 1, 1, 2, 2, 2});
  // a view of a view of a transposed tensor
  Tensor b = arange(24.0).reshape({2, 3, 4}).permute({2, 0, 1});
  CHECK(b.shape() == Shape{4, 2, 3});
  CHECK(v(b.select(0, 1).select(0, 1)) == std::vector<double>{13, 17, 21});
}

TEST_CASE("tensor: split / chunk sizes match PyTorch") {
  Tensor a = arange(10.0);
  auto parts = split(a, 4);
  REQUIRE(parts.size() == 3);
  CHECK(parts[2].numel() == 2);
  auto chunks = chunk(arange(5.0), 3);
  REQUIRE(chunks.size() == 3);  // sizes 2, 2, 1
  CHECK(chunks[2].numel() == 1);
}

TEST_CASE("tensor: copy_, fill_, clone and dtype conversion") {
  Tensor a = zeros({2, 3});
  a.slice(1, 1, 3).fill_(7);
  CHECK(v(a) == std::vector<double>{0, 7, 7, 0, 7, 7});
  Tensor b = zeros({3, 2});
  b.copy_(a.t());
  CHECK(v(b) == std::vector<double>{0, 0, 7, 7, 7, 7});
  b.copy_(from_vector<float>({1, 2}, {2}));  // broadcast source
  CHECK(v(b) == std::vector<double>{1, 2, 1, 2, 1, 2});
  Tensor c = b.clone();
  c.fill_(0);
  CHECK(v(b)[1] == 2);
  CHECK(from_vector<double>({1.7, -2.2}, {2}, kFloat64).to(kInt64).to_vector<int64_t>() ==
        std::vector<int64_t>{1, -2});
  CHECK(v(from_vector<float>({0, 3}, {2}).to(kBool)) == std::vector<double>{0, 1});
  CHECK(v(from_vector<int64_t>({255, 7}, {2}).to(kUInt8)) == std::vector<double>{255, 7});
}

TEST_CASE("tensor: float16 and bfloat16 storage round-trips") {
  std::vector<float> values = {0.0f, 1.0f, -2.5f, 65504.0f, 1e-7f, 0.1f, 3.14159f};
  Tensor h = from_vector(values, {7}).to(kFloat16);
  std::vector<double> back = v(h.to(kFloat32));
  CHECK(back[1] == 1.0);
  CHECK(back[2] == -2.5);
  CHECK(back[3] == 65504.0);  // largest half
  CHECK(back[4] == doctest::Approx(1.1920929e-7).epsilon(1e-3));  // subnormal half
  CHECK(back[5] == doctest::Approx(0.0999755859375));              // nearest half to 0.1
  CHECK(std::isinf(v(from_vector<float>({70000.f}, {1}).to(kFloat16).to(kFloat32))[0]));
  Tensor bf = from_vector(values, {7}).to(kBFloat16);
  std::vector<double> bback = v(bf.to(kFloat32));
  CHECK(bback[2] == -2.5);
  CHECK(bback[6] == doctest::Approx(3.140625));  // 8 significant bits
  CHECK(Half(1.0f).bits == 0x3c00);
  CHECK(BFloat16(1.0f).bits == 0x3f80);
  CHECK(std::isnan(float(BFloat16(NAN))));
}

TEST_CASE("tensor: the tests' fixture reader takes float16 / bfloat16 tensors and refuses unknown dtypes") {
  // A hand-written safetensors file: 1 and -2 as F16 (0x3c00, 0xc000) and BF16 (0x3f80, 0xc000).
  auto write = [](const std::string& path, const std::string& header, const std::vector<uint8_t>& data) {
    std::ofstream f(path, std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(header.data(), std::streamsize(n));
    f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size()));
  };
  const std::string path = (std::filesystem::temp_directory_path() / "bcos_test_half_fixture.safetensors").string();
  write(path, R"({"h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}, )"
              R"("b": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]}})",
        {0x00, 0x3c, 0x00, 0xc0, 0x80, 0x3f, 0x00, 0xc0});
  golden::Fixtures fx(path);
  CHECK(fx["h"].dtype() == kFloat16);
  CHECK(fx["b"].dtype() == kBFloat16);
  CHECK(v(fx["h"].to(kFloat32)) == std::vector<double>{1.0, -2.0});
  CHECK(v(fx["b"].to(kFloat32)) == std::vector<double>{1.0, -2.0});
  write(path, R"({"i": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}})", {1, 0, 0, 0});
  CHECK_THROWS_WITH_AS(golden::Fixtures{path}, doctest::Contains("I32"), Error);
  std::filesystem::remove(path);
}

TEST_CASE("tensor: the seeded generator is deterministic and restorable") {
  manual_seed(42);
  Tensor a = randn({100});
  GeneratorState s = get_rng_state();
  Tensor b = rand({50});
  manual_seed(42);
  CHECK(v(randn({100})) == v(a));
  set_rng_state(s);
  CHECK(v(rand({50})) == v(b));
  std::vector<double> u = v(rand({10000}, kFloat64));
  double lo = *std::min_element(u.begin(), u.end()), hi = *std::max_element(u.begin(), u.end());
  CHECK(lo >= 0.0);
  CHECK(hi < 1.0);
  Tensor n = randn({20000}, kFloat64);
  CHECK(mean(n).item() == doctest::Approx(0.0).epsilon(0.03).scale(1));
  CHECK(bcos::std(n).item() == doctest::Approx(1.0).epsilon(0.03));
  std::vector<int64_t> r = randint(-3, 4, {5000}).to_vector<int64_t>();
  CHECK(*std::min_element(r.begin(), r.end()) == -3);
  CHECK(*std::max_element(r.begin(), r.end()) == 3);
}

TEST_CASE("tensor: draws are counter ranges of one stream -- split draws equal one draw, normals use word pairs") {
  manual_seed(7);
  const std::vector<double> whole = v(rand({10}, kFloat64));
  manual_seed(7);
  std::vector<double> parts = v(rand({4}, kFloat64));
  for (double x : v(rand({6}, kFloat64))) parts.push_back(x);
  CHECK(parts == whole);
  // The raw words behind rand: the top 53 bits scaled into [0, 1).
  manual_seed(7);
  std::vector<uint64_t> words(10);
  random_bits(words.data(), 10);
  for (size_t i = 0; i < words.size(); ++i) CHECK(whole[i] == double(words[i] >> 11) * 0x1.0p-53);
  // Three normals take four words (Box-Muller pairs), so the next draw starts at word 4.
  manual_seed(7);
  (void)randn({3}, kFloat64);
  CHECK(get_rng_state().counter == 4);
  CHECK(v(rand({6}, kFloat64)) == std::vector<double>(whole.begin() + 4, whole.end()));
  // A float32 draw keeps 24 bits of the same words.
  manual_seed(7);
  const std::vector<double> narrow = v(rand({10}));
  for (size_t i = 0; i < words.size(); ++i) CHECK(narrow[i] == double(words[i] >> 40) * 0x1.0p-24);
}

// Run again by tests/meson.build with BCOS_TF32=0 BCOS_CUDNN_API=graph, and with values that are
// neither of a switch's two.
TEST_CASE("tensor: BCOS_TF32 and BCOS_CUDNN_API in the environment set the switches' start") {
  auto env_is = [](const char* name, const char* value) {
    const char* v = std::getenv(name);
    return v != nullptr && std::string(v) == value;
  };
  CHECK(allow_tf32() == !env_is("BCOS_TF32", "0"));  // unset, 1 or anything else: on
  CHECK(cudnn_graph_api() == env_is("BCOS_CUDNN_API", "graph"));  // unset, legacy or anything else: off
}

TEST_CASE("tensor: the GPU numerics switches default to PyTorch's (TF32 on, nondeterministic) and toggle") {
  const char* tf32 = std::getenv("BCOS_TF32");
  if (tf32 != nullptr && std::string(tf32) == "0") set_allow_tf32(true);  // (the case above checks that start)
  CHECK(allow_tf32());
  CHECK_FALSE(deterministic_algorithms());
  set_deterministic_algorithms(true);
  set_allow_tf32(false);
  CHECK(deterministic_algorithms());
  CHECK_FALSE(allow_tf32());
  set_deterministic_algorithms(false);
  set_allow_tf32(true);
}

TEST_CASE("tensor: from_blob borrows memory and keeps its owner alive") {
  auto owner = std::make_shared<std::vector<float>>(std::vector<float>{1, 2, 3, 4});
  Tensor t = from_blob(owner->data(), {2, 2}, kFloat32, Device(), owner);
  std::weak_ptr<std::vector<float>> watch = owner;
  owner.reset();
  CHECK_FALSE(watch.expired());
  CHECK(v(t.t()) == std::vector<double>{1, 3, 2, 4});
  t.fill_(0);
  t = Tensor();
  CHECK(watch.expired());
}

TEST_CASE("tensor: printing matches PyTorch") {
  CHECK(from_vector<float>({1, 2, 3, 4}, {2, 2}).to_string() == "tensor([[1., 2.],\n        [3., 4.]])");
  CHECK(from_vector<float>({0.1f, -2.5f}, {2}).to_string() == "tensor([ 0.1000, -2.5000])");
  CHECK(from_vector<float>({1e-5f, 1.0f}, {2}).to_string() == "tensor([1.0000e-05, 1.0000e+00])");
  CHECK(from_vector<int64_t>({1, 2}, {2}).to_string() == "tensor([1, 2])");
  CHECK(from_vector<bool>({true, false}, {2}).to_string() == "tensor([ True, False])");
  CHECK(from_vector<double>({1.5}, {1}, kFloat64).to_string() == "tensor([1.5000], dtype=torch.float64)");
  CHECK(scalar_tensor(2.5).to_string() == "tensor(2.5000)");
  CHECK(zeros({2, 2, 2}).to_string() ==
        "tensor([[[0., 0.],\n         [0., 0.]],\n\n        [[0., 0.],\n         [0., 0.]]])");
  CHECK(zeros({0, 3}).to_string() == "tensor([], size=[0, 3])");
  CHECK(from_vector<uint8_t>({1, 2}, {2}).to_string() == "tensor([1, 2], dtype=torch.uint8)");
  CHECK(ones({2}).requires_grad_().to_string() == "tensor([1., 1.], requires_grad=True)");
  std::string big = arange(2000.0).to_string();
  CHECK(big.rfind("tensor([0.0000e+00, 1.0000e+00, 2.0000e+00,  ..., 1.9970e+03, 1.9980e+03,\n"
                  "        1.9990e+03]", 0) == 0);
}
