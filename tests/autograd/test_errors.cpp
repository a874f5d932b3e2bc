// Bad input raises bcos::Error whose message names the op and the shapes involved -- never a
// crash or a silently wrong result.
#include <doctest/doctest.h>

#include "autograd/ops.h"

using namespace bcos;

namespace {
// Runs f, expects a bcos::Error, and checks its message contains every fragment.
template <class F>
void expect_error(F&& f, std::initializer_list<const char*> fragments) {
  try {
    f();
    FAIL("no error raised");
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const char* frag : fragments) CHECK_MESSAGE(msg.find(frag) != std::string::npos, "'" << frag << "' not in: " << msg);
  }
}
}  // namespace

TEST_CASE("errors: shape mismatches name the op and both shapes") {
  expect_error([] { add(zeros({2, 3}), zeros({4})); }, {"add", "[2, 3]", "[4]"});
  expect_error([] { mul(zeros({2, 3}), zeros({3, 2})); }, {"mul", "[2, 3]", "[3, 2]"});
  expect_error([] { matmul(zeros({2, 3}), zeros({4, 5})); }, {"matmul", "[2, 3]", "[4, 5]"});
  expect_error([] { linear(zeros({2, 3}), zeros({4, 5})); }, {"linear", "[2, 3]", "[4, 5]"});
  expect_error([] { conv2d(zeros({1, 3, 8, 8}), zeros({4, 2, 3, 3})); }, {"conv2d", "[1, 3, 8, 8]", "[4, 2, 3, 3]"});
  expect_error([] { conv2d(zeros({3, 8, 8}), zeros({4, 3, 3, 3})); }, {"conv2d", "[3, 8, 8]"});
  expect_error([] { conv2d(zeros({1, 3, 2, 2}), zeros({4, 3, 3, 3})); }, {"conv2d", "too small"});
  expect_error([] { cat({zeros({2, 3}), zeros({3, 3})}, 1); }, {"cat", "[3, 3]", "[2, 3]"});
  expect_error([] { stack({zeros({2}), zeros({3})}); }, {"stack", "[3]", "[2]"});
  expect_error([] { cross_entropy(zeros({4, 5}), zeros({3}, kInt64)); }, {"cross_entropy", "[3]", "[4, 5]"});
  expect_error([] { layer_norm(zeros({2, 3}), {4}); }, {"layer_norm", "[4]", "[2, 3]"});
  expect_error([] { unit_rows(zeros({})); }, {"unit_rows", "at least one dim", "[]"});
  expect_error([] { unit_rows(zeros({2, 3}, kInt64)); }, {"unit_rows", "int64", "[2, 3]"});
  expect_error([] { batch_norm(zeros({2, 3}), Tensor(), Tensor(), ones({4}), Tensor(), true); }, {"batch_norm", "[4]", "[2, 3]"});
  const auto same = [](const Tensor& t) { return t; };
  expect_error([&] { batch_norm_synced(zeros({2, 3}), Tensor(), Tensor(), ones({4}), Tensor(), 0, 1e-5, false, true, same); },
               {"synced batch_norm", "[4]", "[2, 3]"});
  expect_error([&] { batch_norm_synced(zeros({1, 3}), Tensor(), Tensor(), Tensor(), Tensor(), 0, 1e-5, false, true, same); },
               {"synced batch_norm", "more than 1 value", "[1, 3]"});
  expect_error([] { batch_norm_synced(zeros({2, 3}), Tensor(), Tensor(), Tensor(), Tensor(), 0, 1e-5, false, true, {}); },
               {"synced batch_norm", "no sum over the replicas"});
  expect_error([] { group_norm(zeros({2, 6, 2}), 4); }, {"group_norm", "4 groups", "6 channels"});
  expect_error([] { max_pool2d(zeros({1, 1, 2, 2}), 5, 1, 3); }, {"max_pool2d", "padding"});
  expect_error([] { zeros({2, 3}).view({4, 2}); }, {"view", "[4, 2]", "[2, 3]"});
  expect_error([] { zeros({4, 6}).t().view({24}); }, {"view", "reshape"});
  expect_error([] { zeros({2, 3}).reshape({-1, -1}); }, {"reshape", "-1"});
  expect_error([] { zeros({2, 3}).narrow(1, 2, 2); }, {"narrow", "[2, 3]"});
  expect_error([] { zeros({2, 3}).expand({3, 3}); }, {"expand", "[2, 3]", "[3, 3]"});
  expect_error([] { zeros({2, 3}).permute({0, 0}); }, {"permute", "repeated"});
  expect_error([] { binary_cross_entropy_with_logits(zeros({2, 3}), zeros({3, 2})); },
               {"binary_cross_entropy_with_logits", "[3, 2]", "[2, 3]"});
}

TEST_CASE("errors: out-of-range dims and indices") {
  expect_error([] { sum(zeros({2, 3}), {2}); }, {"sum", "dim 2", "2 dims"});
  expect_error([] { softmax(zeros({2, 3}), -3); }, {"softmax", "dim -3"});
  expect_error([] { zeros({2, 3}).transpose(0, 5); }, {"transpose", "dim 5"});
  expect_error([] { zeros({2, 3}).select(0, 2); }, {"select", "index 2", "[2, 3]"});
  expect_error([] { index_select(zeros({3, 2}), 0, from_vector<int64_t>({0, 3}, {2})); }, {"index_select", "index 3", "size 3"});
  expect_error([] { gather(zeros({2, 3}), 1, from_vector<int64_t>({0, -1}, {2, 1})); }, {"gather", "-1"});
  expect_error([] { embedding(from_vector<int64_t>({7}, {1}), zeros({5, 2})); }, {"index_select", "7"});
  expect_error([] { cross_entropy(zeros({2, 3}), from_vector<int64_t>({0, 3}, {2})); }, {"cross_entropy", "target 3", "3 classes"});
  expect_error([] { topk(zeros({2, 3}), 4, 1); }, {"topk", "k = 4"});
  expect_error([] { one_hot(from_vector<int64_t>({1, 5}, {2}), 3); }, {"one_hot", "5", "3 classes"});
}

TEST_CASE("errors: dtype mismatches and unsupported dtypes") {
  expect_error([] { add(zeros({2}), zeros({2}, kFloat64)); }, {"add", "float32", "float64"});
  expect_error([] { exp(zeros({2}, kInt64)); }, {"exp", "int64"});
  expect_error([] { div(zeros({2}, kInt64), ones({2}, kInt64)); }, {"div", "int64"});
  expect_error([] { index_select(zeros({3}), 0, zeros({1})); }, {"index_select", "int64", "float32"});
  expect_error([] { where(zeros({2}), zeros({2}), zeros({2})); }, {"where", "bool"});
  expect_error([] { zeros({2}).data<double>(); }, {"float32", "float64"});
}

TEST_CASE("errors: devices") {
  if (cuda_device_count() == 0) {
    expect_error([] { zeros({2}, Device::cuda(0)); }, {"cuda:0"});
  } else {
    Tensor g = zeros({2}, Device::cuda(0));
    expect_error([&] { add(zeros({2}), g); }, {"add", "different devices", "cpu", "cuda:0"});
    expect_error([&] { conv2d(zeros({1, 1, 3, 3}, Device::cuda(0)), zeros({1, 1, 1, 1})); },
                 {"conv2d", "cpu", "cuda:0"});
    expect_error([&] { matmul(g.reshape({1, 2}), zeros({2, 1})); }, {"matmul", "cpu", "cuda:0"});
  }
  expect_error([] { Device::parse("tpu:0"); }, {"tpu:0"});
}

TEST_CASE("errors: item, undefined tensors and creation arguments") {
  expect_error([] { zeros({2}).item(); }, {"item", "[2]"});
  expect_error([] { Tensor().item(); }, {"undefined"});
  expect_error([] { add(Tensor(), zeros({1})); }, {"add", "undefined"});
  expect_error([] { arange(0, 5, 0); }, {"arange", "step"});
  expect_error([] { randint(3, 3, {2}); }, {"randint", "[3, 3)"});
  expect_error([] { from_vector<float>({1, 2, 3}, {2, 2}); }, {"from_vector", "[2, 2]"});
  expect_error([] { zeros({1, 1, 1, 1, 1, 1, 1, 1, 1}); }, {"8 dims"});
}

TEST_CASE("errors: windows larger than the input, empty planes, huge shapes") {
  expect_error([] { conv2d(ones({1, 1, 2, 2}), ones({1, 1, 3, 3}), Tensor(), 2); }, {"conv2d", "too small"});
  expect_error([] { max_pool2d(ones({1, 1, 2, 2}), 3, IntPair(2)); }, {"max_pool2d", "too small"});
  expect_error([] { avg_pool2d(ones({1, 1, 2, 2}), 3, IntPair(2)); }, {"avg_pool2d", "too small"});
  expect_error([] { max_pool2d(zeros({1, 1, 0, 0}), 3, 2, 1); }, {"max_pool2d", "empty"});
  expect_error([] { adaptive_avg_pool2d(zeros({1, 1, 0, 4}), 2); }, {"adaptive_avg_pool2d", "empty"});
  expect_error([] { zeros({1LL << 32, 1LL << 32}); }, {"too many elements"});
  expect_error([] { zeros({1LL << 61}); }, {"bytes"});
  expect_error([] { eye(2, -5); }, {"eye"});
  expect_error([] { scalar_tensor(5.0).size(0); }, {"size", "0-dim"});
  expect_error([] { scatter_add(randn({2, 3}), 0, zeros({2, 3}, kInt64), randn({4, 5}).select(1, 0)); },
               {"scatter_add", "src", "[4]", "[2, 3]"});
  expect_error([] { argmax(zeros({0})); }, {"argmax"});
  expect_error([] { batch_norm(zeros({2, 3}), zeros({3}), Tensor(), Tensor(), Tensor(), true); },
               {"batch_norm", "together"});
}

TEST_CASE("errors: integer tensors take only integral scalars") {
  expect_error([] { mul(from_vector<int64_t>({1, 2}, {2}), 2.5); }, {"mul", "int64", "2.5"});
  expect_error([] { eq(from_vector<int64_t>({0, 1}, {2}), 0.5); }, {"eq", "0.5"});
  CHECK(mul(from_vector<int64_t>({1, 2}, {2}), 3.0).to_vector<int64_t>() == std::vector<int64_t>{3, 6});
}

TEST_CASE("errors: changed pooling / max indices are caught before backward uses them") {
  Tensor x = randn({1, 1, 4, 4}).requires_grad_();
  ValuesIndices r = max_pool2d_with_indices(x, 2);
  r.indices.fill_(double(1LL << 40));
  expect_error([&] { sum(r.values).backward(); }, {"modified by an in-place operation"});
  Tensor y = randn({3, 4}).requires_grad_();
  ValuesIndices m = max(y, 1);
  m.indices.fill_(0);
  expect_error([&] { sum(m.values).backward(); }, {"modified by an in-place operation"});
}

TEST_CASE("errors: in-place writes to expanded views; overlapping sources are read first") {
  expect_error([] { zeros({1}).expand({5}).add_(ones({5})); }, {"add_", "expanded"});
  expect_error([] { zeros({1}).expand({5}).fill_(1); }, {"fill_", "expanded"});
  Tensor x = arange(4.0).reshape({2, 2});
  x.add_(x.t());
  CHECK(x.to_vector<double>() == std::vector<double>{0, 3, 3, 6});
  Tensor y = arange(6.0).reshape({2, 3});
  y.slice(1, 1, 3).copy_(y.slice(1, 0, 2));
  CHECK(y.to_vector<double>() == std::vector<double>{0, 0, 1, 3, 3, 4});
}
