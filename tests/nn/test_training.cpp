// Training checkpoints: stopping, saving, loading into fresh objects and going on gives exactly
// the run that never stopped.
#include <doctest/doctest.h>

#include <filesystem>

#include <unistd.h>

#include "autograd/ops.h"
#include "nn/checkpoint.h"
#include "nn/layers.h"
#include "nn/linear.h"
#include "nn/norm.h"

using namespace bcos;
using namespace bcos::nn;

namespace {

std::shared_ptr<Sequential> small_net() {
  return std::make_shared<Sequential>(std::vector<ModulePtr>{
      std::make_shared<Conv2d>(3, 8, 3, Conv2dOptions{.padding = 1}), std::make_shared<BatchNorm2d>(8),
      std::make_shared<ReLU>(), std::make_shared<Dropout>(0.3), std::make_shared<AdaptiveAvgPool2d>(1),
      std::make_shared<Flatten>(), std::make_shared<Linear>(8, 5)});
}

// One step on a batch drawn from the global generator (as augmentation would draw), with dropout.
void train_step(Module& model, Optimizer& opt, Scheduler& sched) {
  const Tensor x = randn({4, 3, 6, 6});
  const Tensor y = randint(0, 5, {4});
  opt.zero_grad();
  cross_entropy(model(x), y).backward();
  opt.step();
  sched.step();
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("bcos-" + std::to_string(::getpid()) + "-" + name)).string();
}

}  // namespace

TEST_CASE("training: 3 steps, save, load into new objects, 3 steps = 6 steps straight, bit for bit") {
  for (const char* kind : {"sgd", "adamw"}) {
    CAPTURE(kind);
    auto make_opt = [&](Module& m) -> std::unique_ptr<Optimizer> {
      if (std::string(kind) == "sgd") return std::make_unique<SGD>(m.parameters(), SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-4});
      return std::make_unique<AdamW>(m.parameters(), AdamOptions{.lr = 1e-2, .weight_decay = 0.05});
    };
    manual_seed(11);
    auto straight = small_net();
    auto opt_a = make_opt(*straight);
    Scheduler sched_a(*opt_a, cosine_schedule(opt_a->lr, 6, 0.0, 2));
    for (int i = 0; i < 6; ++i) train_step(*straight, *opt_a, sched_a);

    manual_seed(11);
    auto first = small_net();
    auto opt_b = make_opt(*first);
    Scheduler sched_b(*opt_b, cosine_schedule(opt_b->lr, 6, 0.0, 2));
    for (int i = 0; i < 3; ++i) train_step(*first, *opt_b, sched_b);
    const std::string path = temp_path(std::string(kind) + ".safetensors");
    save_training_checkpoint(path, *first, *opt_b, &sched_b, {.epoch = 1, .step = 3, .extra = {{"best", "0.5"}}});

    manual_seed(999);  // everything below must come from the checkpoint
    randn({17});
    auto resumed = small_net();
    auto opt_c = make_opt(*resumed);
    const double base_lr = std::string(kind) == "sgd" ? 0.1 : 1e-2;
    Scheduler sched_c(*opt_c, cosine_schedule(base_lr, 6, 0.0, 2));
    const TrainingState st = load_training_checkpoint(path, *resumed, *opt_c, &sched_c);
    CHECK(st.epoch == 1);
    CHECK(st.step == 3);
    CHECK(st.extra.at("best") == "0.5");
    for (int i = 0; i < 3; ++i) train_step(*resumed, *opt_c, sched_c);

    const StateDict a = straight->state_dict(), c = resumed->state_dict();
    REQUIRE(a.size() == c.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(a[i].first);
      CHECK(a[i].second.to_vector<double>() == c[i].second.to_vector<double>());
    }
    CHECK(opt_a->lr == opt_c->lr);
    std::filesystem::remove(path);
  }
}

TEST_CASE("training: a checkpoint that does not fit is refused with a clear error") {
  manual_seed(1);
  auto net = small_net();
  SGD sgd(net->parameters(), {.lr = 0.1, .momentum = 0.9});
  Scheduler sched(sgd, step_schedule(0.1, 2));
  train_step(*net, sgd, sched);
  const std::string path = temp_path("fit.safetensors");
  save_training_checkpoint(path, *net, sgd, &sched, {});
  Adam adam(net->parameters(), {});
  CHECK_THROWS_WITH_AS(load_training_checkpoint(path, *net, adam, nullptr), doctest::Contains("SGD"), Error);
  Sequential other({std::make_shared<Linear>(3, 4)});
  SGD sgd2(other.parameters(), {.lr = 0.1});
  CHECK_THROWS_AS(load_training_checkpoint(path, other, sgd2, nullptr), Error);
  std::filesystem::remove(path);
}
