// border_probe: where does a B-cos classifier (as bcosify_resnet saves it) put its positive
// contributions -- on the image, or along the border? It explains a shuffled sample of test images
// for their labels and reports the share within 2 px of the edge (scaled with the input size) for
// the images as they are and for three probes that separate content from border effects:
//   constant   each image replaced by its mean colour: any structure is the frame against the
//              zero padding (the mean colour after normalisation, whose contribution is 0);
//   replicate  the centre kept, the border filled by repeating the centre's edge pixels;
//   mean frame the centre kept, the border in the image's mean colour.
//   border_probe --model out/bcosify/bcos_resnet20.safetensors [--arch resnet20] [--images 500]
#include <cstdio>

#include "autograd/ops.h"
#include "examples/cli.h"
#include "examples/classifier.h"
#include "models/bcosify.h"
#include "models/explain.h"
#include "models/factory.h"
#include "models/metrics.h"
#include "nn/bcos.h"
#include "nn/safetensors.h"

using namespace bcos;

namespace {
// Pads [N, C, H, W] by k on each side with copies of the edge rows and columns.
Tensor replicate_pad(const Tensor& x, int64_t k) {
  auto along = [k](const Tensor& t, int64_t dim) {
    const int64_t n = t.size(dim);
    std::vector<Tensor> parts(size_t(k), t.slice(dim, 0, 1));
    parts.push_back(t);
    for (int64_t i = 0; i < k; ++i) parts.push_back(t.slice(dim, n - 1, n));
    return cat(parts, dim);
  };
  return along(along(x, 2), 3);
}
}  // namespace

int main(int argc, char** argv) {
  cli::App app("Where a B-cos classifier's positive contributions lie: image or border.", "border_probe");
  examples::show_defaults(app);
  std::string model_path, arch = "resnet20", test_data = examples::data_root() + "/data/cifar10/cifar10-test-000000.tar";
  int64_t images = 500;
  uint64_t seed = 1;
  app.add_option("--model", model_path, "a B-cos model saved by bcosify_resnet (bcos_<arch>.safetensors)")
      ->required()
      ->check(cli::ExistingFile);
  app.add_option("--arch", arch, "its architecture");
  app.add_option("--test-data", test_data, "test data");
  app.add_option("--images", images, "how many (shuffled) test images")->check(cli::PositiveNumber);
  app.add_option("--seed", seed, "shuffling seed");
  return examples::run(app, argc, argv, [&] {
    const models::ModelSpec spec = models::model_spec(arch);
    models::BcosifyOptions o;
    o.mean = spec.mean, o.std = spec.std;
    auto model = models::bcosify(models::create_model(spec.arch), o);
    try {
      model->load_state_dict(nn::load_safetensors(model_path));
    } catch (const Error& e) {
      fail("border_probe: ", model_path, " is not a B-cos ", spec.arch, " saved by bcosify_resnet: ", e.what());
    }
    model->eval();
    const int64_t n = images, size = spec.input_size;
    BCOS_CHECK(n > 0, "border_probe: --images must be positive");
    using namespace data;
    const int64_t shorter = spec.resize_size > 0 ? spec.resize_size : size;
    auto loader = examples::make_loader(test_data, "test",
                                        Compose({Resize(shorter), CenterCrop(size), ToTensor()}),
                                        {.batch_size = n, .shuffle = true, .seed = seed});
    Tensor x, y;
    for (Batch& b : loader->epoch(0)) {
      x = b.images, y = b.labels;
      break;
    }
    BCOS_CHECK(x.defined(), "border_probe: no test images in ", test_data);
    const int64_t ring = std::max<int64_t>(1, std::llround(2.0 * double(size) / 32.0)), k = 2 * ring;
    Tensor colour = mean(x, {2, 3}, true).expand(x.shape()).contiguous();
    Tensor centre = x.slice(2, k, size - k).slice(3, k, size - k);
    Tensor mean_frame = colour.clone();
    {
      NoGradGuard no_grad;
      mean_frame.slice(2, k, size - k).slice(3, k, size - k).copy_(centre);
    }
    std::printf("%lld test images explained for their labels; share of the positive contributions within %lld px of "
                "the edge (spread evenly: %.3f)\n", static_cast<long long>(x.size(0)), static_cast<long long>(ring),
                models::border_area_share(size, size, ring));
    const std::pair<const char*, Tensor> probes[] = {{"images", x},
                                                     {"constant (mean colour)", colour},
                                                     {"replicate (centre, edge pixels repeated)", replicate_pad(centre, k)},
                                                     {"mean frame (centre, border in mean colour)", mean_frame}};
    for (const auto& [name, images] : probes) {
      models::Explanation e = models::explain(*model, nn::add_inverse(images), y);
      std::printf("  %-44s %.3f   (mean |contribution| %.3g)\n", name, models::border_share(e.contributions, ring),
                  mean(abs(e.contributions)).item());
    }
  });
}
