// evaluate: top-1 / top-5 accuracy of a classifier on a labelled dataset, from a checkpoint as
// users have it (torchvision .pth, the CIFAR ResNets' legacy .th, safetensors).
//   evaluate --arch resnet20 --weights resnet20-12fca82f.th --data cifar10-test-000000.tar
// --data takes WebDataset shards (a .tar path or a brace pattern), a CIFAR-10 binary folder
// (data_batch_*.bin / test_batch.bin), or an ImageFolder root. The input transform follows the
// architecture (models/factory.h). --cuda-graph (with --device cuda): every full batch's forward
// replayed from one CUDA graph (tensor/cuda_graph.h), captured at the second full batch.
#include <chrono>
#include <cstdio>
#include <thread>

#include "autograd/ops.h"
#include "data/loader.h"
#include "data/progress.h"
#include "examples/classifier.h"
#include "models/factory.h"
#include "nn/safetensors.h"
#include "tensor/cuda_graph.h"
#include "tensor/parallel.h"

using namespace bcos;


int main(int argc, char** argv) {
  cli::App app("Top-1 / top-5 accuracy of a pretrained classifier.", "evaluate");
  examples::show_defaults(app);
  examples::ModelArgs m;
  std::string data_path, split = "test", save_logits, save_inputs;
  int64_t batch = 256, limit = 0;
  bool json = false, bf16 = false, cuda_graph = false;
  int workers = int(std::max(1u, std::thread::hardware_concurrency()));
  examples::model_options(app, m);
  app.add_option("--data", data_path, "WebDataset shards (.tar, brace patterns), a CIFAR-10 binary folder or an ImageFolder")
      ->required();
  app.add_option("--split", split, "CIFAR-10 binary folders: test or train")->check(cli::IsMember({"test", "train"}));
  app.add_option("--batch", batch, "batch size")->check(cli::PositiveNumber);
  app.add_option("--workers", workers, "decoding threads")->check(cli::PositiveNumber);
  app.add_option("--limit", limit, "evaluate only the first N samples (0: all)")->check(cli::NonNegativeNumber);
  app.add_option("--save-logits", save_logits, "write logits [N, classes] and labels [N] here (safetensors), in dataset order");
  app.add_option("--save-inputs", save_inputs, "write the network's inputs [N, 3, H, W] here (safetensors), to check other tools on them");
  app.add_flag("--json", json, "print the result as JSON (progress stays on stderr)");
  app.add_flag("--cuda-graph", cuda_graph, "GPU: replay each full batch's forward from one CUDA graph (the host "
               "then queues one launch per batch instead of hundreds)");
  app.add_flag("--bf16", bf16, "CPU: bfloat16 matrix products with float32 sums (AMX or AVX-512 BF16; ignored, with a warning, without)");
  return examples::run(app, argc, argv, [&] {
    const models::ModelSpec spec = models::model_spec(m.arch);
    const Device device = examples::parse_device(m.device);
    BCOS_CHECK(!cuda_graph || device.is_cuda(), "evaluate: --cuda-graph needs --device cuda");
    if (bf16 && !cpu_bf16_supported())
      std::fprintf(stderr, "evaluate: --bf16: this CPU has neither AMX-BF16 nor AVX-512 BF16, products stay float32\n");
    CpuBf16Guard bf16_products(bf16);
    auto model = models::create_model(spec.arch);
    models::load_pretrained(*model, m.weights);
    model->eval();
    model->to(device);

    data::LoaderOptions options{.batch_size = batch, .workers = workers,
                                .limit = limit};
    auto loader = examples::make_loader(data_path, split,
                                        examples::eval_transform(spec, m.resize), options);

    const bool keep = !save_logits.empty(), keep_inputs = !save_inputs.empty();
    std::vector<Tensor> all_logits, all_labels, all_inputs;
    int64_t seen = 0, top1 = 0, top5 = 0;
    data::ProgressBar bar(loader->num_samples(), "evaluate " + spec.arch, "img");
    const auto start = std::chrono::steady_clock::now();
    NoGradGuard no_grad;
    // The model's logits for a batch: with --cuda-graph, a full batch after the first replays the
    // graph captured from the second one (its input copied into the tensor the capture read).
    CudaGraph graph;
    Tensor graph_input, graph_logits;
    int64_t full_batches = 0;
    auto logits_of = [&](const Tensor& images) {
      const Tensor x = images.to(device);
      if (!cuda_graph || x.size(0) != batch || full_batches++ == 0) return (*model)(x);  // (the first warms up)
      if (!graph.captured()) {
        graph_input = x;
        graph.capture(device, [&] { graph_logits = (*model)(graph_input); });
      } else {
        graph_input.copy_(x);
      }
      graph.replay();
      return graph_logits;
    };
    for (data::Batch& b : loader->epoch(0)) {
      const Tensor logits = logits_of(b.images).to(Device());
      BCOS_CHECK(logits.dim() == 2 && logits.size(1) == spec.num_classes, "evaluate: the model gave logits ",
                 logits.shape(), ", expected [", b.size(), ", ", spec.num_classes, "]");
      const std::vector<int64_t>& labels = b.label_values;
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
    BCOS_CHECK(seen > 0, "evaluate: the dataset ", data_path, " has no samples");
    if (json) {
      const examples::Json result = {{"arch", spec.arch}, {"weights", m.weights}, {"data", data_path},
                                     {"samples", seen}, {"top1", 100.0 * double(top1) / double(seen)},
                                     {"top5", 100.0 * double(top5) / double(seen)},
                                     {"images_per_s", double(seen) / seconds}};
      std::printf("%s\n", examples::dump(result).c_str());
    } else {
      std::printf("%s on %s: top-1 %.2f %% (%lld / %lld), top-5 %.2f %%, %.0f images/s\n", spec.arch.c_str(),
                  data_path.c_str(), 100.0 * double(top1) / double(seen), static_cast<long long>(top1),
                  static_cast<long long>(seen), 100.0 * double(top5) / double(seen), double(seen) / seconds);
    }
    if (keep) {
      nn::save_safetensors(save_logits, {{"logits", cat(all_logits, 0)}, {"labels", cat(all_labels, 0)}},
                           {{"arch", spec.arch}, {"weights", m.weights}, {"data", data_path}});
      std::printf("wrote logits and labels to %s\n", save_logits.c_str());
    }
    if (keep_inputs) {
      nn::save_safetensors(save_inputs, {{"inputs", cat(all_inputs, 0)}}, {{"arch", spec.arch}});
      std::printf("wrote the inputs to %s\n", save_inputs.c_str());
    }
  });
}
