// evaluate: top-1 / top-5 accuracy of a classifier on a labelled dataset, from a checkpoint as
// users have it (torchvision .pth, the CIFAR ResNets' legacy .th, safetensors).
//   evaluate --arch resnet20 --weights resnet20-12fca82f.th --data cifar10-test-000000.tar
// --data takes WebDataset shards (a .tar path or a brace pattern), a CIFAR-10 binary folder
// (data_batch_*.bin / test_batch.bin), or an ImageFolder root. The input transform follows the
// architecture (models/factory.h).
#include <chrono>
#include <cstdio>
#include <thread>

#include "autograd/ops.h"
#include "data/loader.h"
#include "data/progress.h"
#include "examples/args.h"
#include "examples/classifier.h"
#include "models/factory.h"
#include "nn/safetensors.h"

using namespace bcos;


int main(int argc, char** argv) {
  examples::Args args("evaluate", "Top-1 / top-5 accuracy of a pretrained classifier.");
  examples::model_options(args);
  args.option("data", "", "WebDataset shards (.tar, brace patterns), a CIFAR-10 binary folder or an ImageFolder", true)
      .option("split", "test", "CIFAR-10 binary folders: test or train")
      .option("batch", "256", "batch size")
      .option("workers", std::to_string(std::max(1u, std::thread::hardware_concurrency())), "decoding threads")
      .option("limit", "0", "evaluate only the first N samples (0: all)")
      .option("save-logits", "", "write logits [N, classes] and labels [N] here (safetensors), in dataset order")
      .option("save-inputs", "", "write the network's inputs [N, 3, H, W] here (safetensors), to check other tools on them");
  try {
    args.parse(argc, argv);
    const models::ModelSpec spec = models::model_spec(args.get("arch"));
    auto model = models::create_model(spec.arch);
    models::load_pretrained(*model, args.get("weights"));
    model->eval();

    data::LoaderOptions options{.batch_size = args.integer("batch"), .workers = int(args.integer("workers")),
                                .limit = args.integer("limit")};
    auto loader = examples::make_loader(args.get("data"), args.get("split"),
                                        examples::eval_transform(spec, args.integer("resize")), options);

    const bool keep = !args.get("save-logits").empty(), keep_inputs = !args.get("save-inputs").empty();
    std::vector<Tensor> all_logits, all_labels, all_inputs;
    int64_t seen = 0, top1 = 0, top5 = 0;
    data::ProgressBar bar(loader->num_samples(), "evaluate " + spec.arch, "img");
    const auto start = std::chrono::steady_clock::now();
    NoGradGuard no_grad;
    for (data::Batch& b : loader->epoch(0)) {
      const Tensor logits = (*model)(b.images);
      BCOS_CHECK(logits.dim() == 2 && logits.size(1) == spec.num_classes, "evaluate: the model gave logits ",
                 logits.shape(), ", expected [", b.size(), ", ", spec.num_classes, "]");
      const auto labels = b.labels.to_vector<int64_t>();
      const int64_t k = std::min<int64_t>(5, logits.size(1));
      const auto best = topk(logits, k, 1).indices.to_vector<int64_t>();
      for (size_t i = 0; i < labels.size(); ++i) {
        BCOS_CHECK(labels[i] >= 0 && labels[i] < spec.num_classes, "evaluate: ", b.names[i], " has label ",
                   labels[i], ", outside the model's ", spec.num_classes, " classes");
        for (int64_t j = 0; j < k; ++j)
          if (best[i * size_t(k) + size_t(j)] == labels[i]) {
            top1 += j == 0;
            ++top5;
          }
      }
      seen += b.size();
      if (keep) {
        all_logits.push_back(logits);
        all_labels.push_back(b.labels);
      }
      if (keep_inputs) all_inputs.push_back(b.images);
      bar.update(b.size(), {{"top1", 100.0 * double(top1) / double(seen)}});
    }
    bar.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    BCOS_CHECK(seen > 0, "evaluate: the dataset ", args.get("data"), " has no samples");
    std::printf("%s on %s: top-1 %.2f %% (%lld / %lld), top-5 %.2f %%, %.0f images/s\n", spec.arch.c_str(),
                args.get("data").c_str(), 100.0 * double(top1) / double(seen), static_cast<long long>(top1),
                static_cast<long long>(seen), 100.0 * double(top5) / double(seen), double(seen) / seconds);
    if (keep) {
      nn::save_safetensors(args.get("save-logits"), {{"logits", cat(all_logits, 0)}, {"labels", cat(all_labels, 0)}},
                           {{"arch", spec.arch}, {"weights", args.get("weights")}, {"data", args.get("data")}});
      std::printf("wrote logits and labels to %s\n", args.get("save-logits").c_str());
    }
    if (keep_inputs) {
      nn::save_safetensors(args.get("save-inputs"), {{"inputs", cat(all_inputs, 0)}}, {{"arch", spec.arch}});
      std::printf("wrote the inputs to %s\n", args.get("save-inputs").c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
