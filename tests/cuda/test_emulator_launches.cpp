// Which launches the CUDA backend makes, counted on the emulator (tensor/cuda/emulator/): on a GPU
// a launch's shape decides its speed and every launch costs a few microseconds of an otherwise
// idle device, and no result shows either. So these cases count the launches a step makes by
// kernel (runtime::kernels_run), and check the trace (BCOS_CUDA_EMULATOR_TRACE,
// tools/emu_trace.py) that lists each launch with its grid and its longest thread.
#include <doctest/doctest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "models/clip.h"
#include "nn/bcos.h"
#include "nn/norm.h"
#include "nn/optim.h"
#include "tensor/cuda/emulator/device.h"
#include "tensor/cuda/emulator/runtime.h"
#include "tests/cuda/small_models.h"
#include "tests/golden.h"

TEST_CASE("emulator: sums over rows into few outputs (linear's and layer norm's parameter gradients) run as coalesced columns") {
  // Which launch a shape takes decides its speed on a GPU, which no result shows: the run counts
  // do. Here linear's and layer_norm's parameter gradients, [600 rows, 40 channels] summed over
  // the rows: 40 outputs, fewer than the threads of the GPU, each over 600 elements.
  namespace rt = bcos::emu::runtime;
  bcos::manual_seed(32);
  const bcos::DType f64 = bcos::DType::f64;
  const bcos::Tensor x = bcos::randn({600, 48}, f64), w = bcos::randn({40, 48}, f64), b = bcos::randn({40}, f64);
  const bcos::Tensor gamma = bcos::randn({40}, f64), beta = bcos::randn({40}, f64);
  auto grads = [&](bcos::Device dev) {
    std::vector<bcos::Tensor> leaves = {w.to(dev), b.to(dev), gamma.to(dev), beta.to(dev)};
    for (bcos::Tensor& t : leaves) t.requires_grad_();
    bcos::Tensor y = bcos::layer_norm(bcos::linear(x.to(dev), leaves[0], leaves[1]), {40}, leaves[2], leaves[3]);
    bcos::sum(y * y).backward();
    std::vector<bcos::Tensor> out;
    for (const bcos::Tensor& t : leaves) out.push_back(t.grad().to(bcos::Device()));
    return out;
  };
  const auto cpu = grads(bcos::Device());
  const int64_t columns = rt::kernels_run("reduce_columns"), blocks = rt::kernels_run("reduce_block_per_output");
  const int64_t affine = rt::kernels_run("row_norm_affine_partials");
  const auto gpu = grads(bcos::Device::cuda(0));
  for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu[i], cpu[i]) <= 1e-10);
  CHECK(rt::kernels_run("reduce_columns") - columns == 1);  // b's (w's is a product)
  CHECK(rt::kernels_run("row_norm_affine_partials") - affine == 1);  // gamma's and beta's together
  CHECK(rt::kernels_run("reduce_block_per_output") == blocks);
}

TEST_CASE("emulator: a trace gives each launch its grid and each thread its own time, and each GEMM its shape") {
  // BCOS_CUDA_EMULATOR_TRACE (tools/emu_trace.py): what a launch's longest thread costs beside its
  // work is what says a GPU would wait on one thread, so the time must land on the thread that
  // ran it: one spinning thread among 192 is most of its launch's work; 192 equal ones are not.
  namespace rt = bcos::emu::runtime;
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("bcos_emu_trace_" + std::to_string(::getpid()) + ".tsv")).string();
  auto spin = [](int64_t n) {
    volatile int64_t sink = 0;
    for (int64_t i = 0; i < n; ++i) sink = sink + i;
  };
  auto run = [&](const char* name, bool one_thread) {  // queued: the kernel captures by value
    bcos::emu::launch(name, [one_thread, spin](auto&&... a) {
      auto body = [one_thread, spin](int) {
        const bool long_one = blockIdx.x == 1 && threadIdx.x == 5;
        // Long enough that a preemption on a loaded machine (a few ms, charged to one thread)
        // cannot decide a check below.
        if (!one_thread) spin(2000000);
        else if (long_one) spin(200000000);
      };
      body(a...);
    }, 3, 64)(0);
  };
  rt::set_trace(path);
  REQUIRE(rt::tracing());
  run("trace_even", false);
  run("trace_one_long", true);
  const bcos::Tensor a = bcos::randn({5, 7}).to(bcos::Device::cuda(0)), b = bcos::randn({7, 3}).to(bcos::Device::cuda(0));
  const bcos::Tensor c = bcos::matmul(a, b);
  bcos::synchronize(bcos::Device::cuda(0));
  rt::set_trace("");
  CHECK_FALSE(rt::tracing());
  run("trace_after", false);  // not traced
  cudaDeviceSynchronize();
  std::ifstream in(path);
  std::vector<std::vector<std::string>> lines;
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> fields;
    std::stringstream ss(line);
    for (std::string f; std::getline(ss, f, '\t');) fields.push_back(f);
    lines.push_back(fields);
  }
  std::filesystem::remove(path);
  REQUIRE(lines.size() >= 4);
  CHECK(lines[0] == std::vector<std::string>{"kernel", "grid", "block", "blocks", "threads", "work_ns", "max_block_ns",
                                             "max_thread_ns", "block_path_ns"});
  auto find = [&](const std::string& prefix) -> const std::vector<std::string>* {
    for (const auto& l : lines)
      if (!l.empty() && l[0].starts_with(prefix)) return &l;
    return nullptr;
  };
  for (const char* name : {"trace_even", "trace_one_long"}) {
    const auto* l = find(name);
    REQUIRE(l != nullptr);
    REQUIRE(l->size() == 9);
    CHECK((*l)[1] == "3,1,1");
    CHECK((*l)[2] == "64,1,1");
    CHECK((*l)[3] == "3");
    CHECK((*l)[4] == "64");
    const double work = std::stod((*l)[5]), block = std::stod((*l)[6]), thread = std::stod((*l)[7]);
    const double path = std::stod((*l)[8]);  // mean over the 3 blocks of each one's longest thread
    CHECK(work > 0);
    CHECK(block <= work);
    CHECK(thread <= block);
    CHECK(path <= thread);
    if (std::string(name) == "trace_one_long") {
      CHECK(thread >= 0.5 * work);  // the spinning thread's own time
      CHECK(path >= thread / 3);    // in one block of three
      CHECK(path <= 0.5 * thread);
    } else {
      CHECK(thread <= 0.1 * work);  // one of 192 equal threads
      CHECK(block <= 0.6 * work);   // one of 3 equal blocks
    }
  }
  CHECK(find("trace_after") == nullptr);
  // The product [5, 7] x [7, 3] as cuBLAS sees it, column-major: C^T = B^T A^T, m 3, n 5, k 7.
  const auto* gemm = find("cublas");
  REQUIRE(gemm != nullptr);
  CHECK((*gemm)[1].starts_with("3,5,7,1,NN,"));
  CHECK(c.shape() == bcos::Shape{5, 3});
}

TEST_CASE("emulator: an optimizer step and adaptive clipping launch once per 32 parameters of a dtype, not once per "
          "parameter") {
  // 161 float32 parameters (a ResNet-50's count) and 3 float64 ones: ceil(161 / 32) + 1 launches
  // per step, where the per-parameter step launched 164; a 16-bit parameter steps through float32
  // copies in the float32 launches (its widening and narrowing are copies, not step launches).
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  bcos::manual_seed(8);
  std::vector<bcos::Tensor> params;
  for (int i = 0; i < 164; ++i)
    params.push_back(bcos::randn({i % 5 == 0 ? 3000 : 17}, i < 3 ? bcos::DType::f64 : i == 7 ? bcos::DType::bf16
                                                                                            : bcos::DType::f32)
                         .to(gpu)
                         .requires_grad_());
  for (const bool adam : {false, true}) {
    CAPTURE(adam);
    std::unique_ptr<bcos::nn::Optimizer> opt;
    if (adam) opt = std::make_unique<bcos::nn::Adam>(params, bcos::nn::AdamOptions{.lr = 1e-3});
    else opt = std::make_unique<bcos::nn::SGD>(params, bcos::nn::SGDOptions{.lr = 0.1, .momentum = 0.9});
    for (const bcos::Tensor& p : params) p.set_grad(bcos::ones_like(p));
    for (int step = 0; step < 2; ++step) {
      const char* kernel = adam ? "adam_kernel" : "sgd_kernel";
      bcos::synchronize(gpu);  // (queued launches are counted when they run)
      const int64_t before = rt::kernels_run(kernel);
      opt->step();
      bcos::synchronize(gpu);
      CHECK(rt::kernels_run(kernel) - before == 6 + 1);
    }
  }
  // Adaptive gradient clipping likewise: a launch per 32 float32 / float64 parameters (the bf16
  // one clips through the composed ops).
  bcos::synchronize(gpu);
  const int64_t before = rt::kernels_run("adaptive_clip_kernel");
  bcos::nn::adaptive_clip_grad_(params, 0.01, 1e-3);
  bcos::synchronize(gpu);
  CHECK(rt::kernels_run("adaptive_clip_kernel") - before == 5 + 1);
}

TEST_CASE("emulator: a batch norm's training step counts its batch in the statistics' kernel: no fill, no add") {
  // PyTorch's module adds 1 to num_batches_tracked in a launch of its own per norm per step (and
  // this backend used to make a one for it first: two launches, 53 norms in a ResNet-50).
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  bcos::manual_seed(9);
  const bcos::Tensor x = bcos::randn({4, 3, 5, 5}).to(gpu);
  bcos::nn::BatchNorm2d bn(3);
  bcos::nn::BatchNormUncentered2d bnu(3);
  bn.to(gpu), bnu.to(gpu);
  for (bcos::nn::Module* m : {static_cast<bcos::nn::Module*>(&bn), static_cast<bcos::nn::Module*>(&bnu)}) {
    bcos::synchronize(gpu);
    const int64_t fills = rt::kernels_run("fill_kernel"), maps = rt::kernels_run("map2_kernel");
    (*m)(x);
    bcos::synchronize(gpu);
    CHECK(rt::kernels_run("map2_kernel") == maps);
    CHECK(rt::kernels_run("fill_kernel") - fills <= (m == &bnu ? 2 : 0));  // (the uncentred norm's zero means)
  }
  CHECK(bn.num_batches_tracked.to(bcos::Device()).item<int64_t>() == 1);
  CHECK(bnu.num_batches_tracked.to(bcos::Device()).item<int64_t>() == 1);
}

TEST_CASE("emulator: an evaluation-mode batch norm with nothing to keep for a backward is one launch") {
  // Inference (ResNet-50: 53 norms a forward) made each norm's invstd = 1 / sqrt(var + eps) in a
  // launch of its own before the pass over x (and the uncentred norm a zero mean in another); the
  // pass now makes it per channel by the finish kernel's formula: the same bits as the launches it
  // replaces, which still run where a backward needs invstd (x or a parameter wants a gradient).
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  bcos::manual_seed(11);
  for (bcos::DType dt : {bcos::kFloat32, bcos::kBFloat16, bcos::kFloat64}) {
    CAPTURE(dt);
    const bcos::DType stats = dt == bcos::kBFloat16 ? bcos::kFloat32 : dt;
    for (int64_t plane : {16, 7}) {  // planes of 80 (packs), of 35 (an element per thread)
      CAPTURE(plane);
      const bcos::Tensor x = (bcos::randn({2, 3, plane, 5}) * 3.0 + 1.0).to(dt).to(gpu);
      const bcos::Tensor rm = bcos::randn({3}).to(stats).to(gpu), rv = (bcos::rand({3}) * 2.0 + 1e-3).to(stats).to(gpu);
      const bcos::Tensor w = bcos::randn({3}).to(stats).to(gpu), b = bcos::randn({3}).to(stats).to(gpu);
      for (bool uncentred : {false, true}) {
        if (uncentred && dt == bcos::kBFloat16) continue;  // the uncentred norm takes one dtype throughout
        for (bool relu : {false, true}) {
          CAPTURE(uncentred);
          CAPTURE(relu);
          auto norm = [&](const bcos::Tensor& weight) {
            return uncentred ? bcos::batch_norm_uncentered(x, rv, weight, b, false, 0.1, 1e-3, relu)
                             : bcos::batch_norm(x, rm, rv, weight, b, false, 0.1, 1e-3, relu);
          };
          bcos::synchronize(gpu);
          const int64_t all = rt::kernels_run(""), passes = rt::kernels_run("forward_kernel");
          const int64_t packs = rt::pack_accesses("forward_kernel");
          const bcos::Tensor alone = norm(w);
          bcos::synchronize(gpu);
          CHECK(rt::kernels_run("") - all == 1);
          CHECK(rt::kernels_run("forward_kernel") - passes == 1);
          // packed: a pack of x read and one of y written per P elements
          const int64_t pack = 16 / int64_t(bcos::dtype_size(dt));
          CHECK(rt::pack_accesses("forward_kernel") - packs == (plane == 16 ? 2 * x.numel() / pack : 0));
          const bcos::Tensor kept = norm(w.detach().requires_grad_());  // invstd kept for a backward
          bcos::synchronize(gpu);
          CHECK(rt::kernels_run("") - all >= 3);
          CHECK(golden::equal(alone.to(bcos::Device()), kept.to(bcos::Device())));
          const bcos::Tensor on_cpu = uncentred
              ? bcos::batch_norm_uncentered(x.to(bcos::Device()), rv.to(bcos::Device()), w.to(bcos::Device()),
                                            b.to(bcos::Device()), false, 0.1, 1e-3, relu)
              : bcos::batch_norm(x.to(bcos::Device()), rm.to(bcos::Device()), rv.to(bcos::Device()),
                                 w.to(bcos::Device()), b.to(bcos::Device()), false, 0.1, 1e-3, relu);
          CHECK(golden::equal(alone.to(bcos::Device()), on_cpu));  // the CPU's fma, the same bits
        }
      }
    }
  }
}

TEST_CASE("emulator: a batch norm's backward finishes its sums and coefficients in one per-channel launch") {
  // Per channel, the backward's sums give the parameter gradients and grad_x's coefficients: one
  // tiny launch for both where the sums are this process's own; a synchronised norm, whose
  // coefficients come from the replicas' summed ones, keeps the two. Values: the CUDA parity cases.
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  bcos::manual_seed(10);
  const bcos::Tensor x = bcos::randn({4, 3, 5, 5}, bcos::kFloat64);
  bcos::nn::BatchNorm2d bn(3);
  bcos::nn::BatchNormUncentered2d bnu(3);
  bn.to(bcos::kFloat64), bnu.to(bcos::kFloat64);
  auto grads = [&](bcos::nn::Module& m, bcos::Device dev) {
    m.to(dev);
    const bcos::Tensor xi = x.to(dev).requires_grad_();
    bcos::sum((m)(xi) * bcos::arange(0, 300, 1, {bcos::kFloat64}).reshape({4, 3, 5, 5}).to(dev)).backward();
    std::vector<bcos::Tensor> out{xi.grad().to(bcos::Device())};
    for (const bcos::Tensor& p : m.parameters()) out.push_back(p.grad().to(bcos::Device()));
    return out;
  };
  for (bcos::nn::Module* m : {static_cast<bcos::nn::Module*>(&bn), static_cast<bcos::nn::Module*>(&bnu)}) {
    const auto cpu = grads(*m, bcos::Device());
    m->zero_grad();
    bcos::synchronize(gpu);
    const int64_t fused = rt::kernels_run("grad_finish_coefficients_kernel"),
                  apart = rt::kernels_run("coefficients_kernel") + rt::kernels_run("grad_finish_kernel");
    const auto gpu_grads = grads(*m, gpu);
    bcos::synchronize(gpu);
    CHECK(rt::kernels_run("grad_finish_coefficients_kernel") - fused == 1);
    CHECK(rt::kernels_run("coefficients_kernel") + rt::kernels_run("grad_finish_kernel") == apart);
    REQUIRE(gpu_grads.size() == cpu.size());
    for (size_t i = 0; i < cpu.size(); ++i) CHECK(golden::relative_error(gpu_grads[i], cpu[i]) <= 1e-12);
    m->to(bcos::Device());
  }
}

TEST_CASE("emulator: batch norm's passes over the activations move 16-byte packs where the plane allows") {
  // A GPU keeps its memory busy only with enough bytes in flight; a thread per 4-byte element
  // leaves it about half idle. Where P = 16 bytes / element divides the plane (a pack then never
  // straddles two channels) and the tensors are aligned, the forward and grad_x passes take a
  // pack per thread (1/P of the threads: the trace's grid) with the element-wise path's bits,
  // and the statistics' and gradient sums add a pack at a time (another order, within rounding;
  // their grid is per channel either way: the emulator's count of pack accesses shows them).
  // A view one element into its storage (not 16-byte aligned) takes the element-wise paths.
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("bcos_emu_bn_packs_" + std::to_string(::getpid()) + ".tsv")).string();
  bcos::manual_seed(12);
  for (bcos::DType dt : {bcos::kFloat32, bcos::kBFloat16, bcos::kFloat64}) {
    CAPTURE(dt);
    const int64_t pack = 16 / int64_t(bcos::dtype_size(dt)), count = 2 * 4 * 16 * 16;  // planes of 256
    const bcos::Tensor data = (bcos::randn({count}) * 2.0 + 0.5).to(dt).to(gpu);
    const bcos::Tensor shifted = bcos::cat({bcos::zeros({1}, {dt, gpu}), data}, 0);  // the same values, an element on
    const bcos::DType per_channel = dt == bcos::kBFloat16 ? bcos::kFloat32 : dt;  // a 16-bit input's are float32
    const bcos::Tensor w = bcos::randn({4}).to(per_channel), b = bcos::randn({4}).to(per_channel);
    const bcos::Tensor rm = bcos::randn({4}).to(per_channel), rv = (bcos::rand({4}) + 0.5).to(per_channel);
    const bcos::Tensor weights = bcos::randn({2, 4, 16, 16}).to(dt);
    auto run = [&](const bcos::Tensor& x_in, bool training) {  // y, grad_x, grad_w, grad_b
      const bcos::Device dev = x_in.device();
      const bcos::Tensor x = x_in.detach().requires_grad_();
      const bcos::Tensor wd = w.to(dev).requires_grad_(), bd = b.to(dev).requires_grad_();
      const bcos::Tensor y = bcos::batch_norm(x, training ? bcos::Tensor() : rm.to(dev), training ? bcos::Tensor() : rv.to(dev),
                                              wd, bd, training, 0.1, 1e-5, /*relu=*/true);
      bcos::sum((y * weights.to(dev)).to(bcos::kFloat32)).backward();
      std::vector<bcos::Tensor> out;
      for (const bcos::Tensor& t : {y, x.grad(), wd.grad(), bd.grad()}) out.push_back(t.to(bcos::Device()));
      return out;
    };
    auto blocks = [&](const std::string& kernel) -> int64_t {  // the traced launch's blocks
      std::ifstream in(path);
      for (std::string line; std::getline(in, line);)
        if (line.starts_with(kernel + "<")) return std::stoll(line.substr(line.find('\t') + 1));
      return int64_t(-1);
    };
    const bcos::Tensor aligned = data.view({2, 4, 16, 16}), off = shifted.narrow(0, 1, count).view({2, 4, 16, 16});
    for (bool training : {true, false}) {
      CAPTURE(training);
      bcos::synchronize(gpu);
      int64_t sums = rt::pack_accesses("partial_sums_kernel");  // the sums' packs: not in the grid
      rt::set_trace(path);
      const auto packed = run(aligned, training);
      bcos::synchronize(gpu);
      rt::set_trace("");
      CHECK(blocks("forward_kernel") == count / pack / 256);
      CHECK(blocks("grad_x_kernel") == count / pack / 256);
      // training: x for the statistics, g and x for the backward's sums; evaluation: g and x
      CHECK(rt::pack_accesses("partial_sums_kernel") - sums == (training ? 3 : 2) * count / pack);
      sums = rt::pack_accesses("partial_sums_kernel");
      rt::set_trace(path);
      const auto single = run(off, training);
      bcos::synchronize(gpu);
      rt::set_trace("");
      CHECK(blocks("forward_kernel") == count / 256);
      CHECK(blocks("grad_x_kernel") == count / 256);
      CHECK(rt::pack_accesses("partial_sums_kernel") == sums);
      ::setenv("BCOS_CUDA_PACKS", "0", 1);  // the A/B switch for a GPU's timings: aligned, element by element
      rt::set_trace(path);
      const auto switched_off = run(aligned, training);
      bcos::synchronize(gpu);
      rt::set_trace("");
      ::unsetenv("BCOS_CUDA_PACKS");
      CHECK(blocks("forward_kernel") == count / 256);
      CHECK(rt::pack_accesses("partial_sums_kernel") == sums);
      if (!training) CHECK(golden::equal(switched_off[0], packed[0]));
      const auto cpu = run(aligned.to(bcos::Device()), training);
      for (size_t i = 0; i < packed.size(); ++i) {
        CAPTURE(i);
        if (!training && i < 2) CHECK(golden::equal(packed[i], single[i]));  // y, grad_x: no sums in them
        const double tolerance = dt == bcos::kFloat64 ? 1e-12 : dt == bcos::kFloat32 ? 1e-5 : 1e-2;
        CHECK(golden::relative_error(packed[i], cpu[i]) <= tolerance);
        CHECK(golden::relative_error(single[i], cpu[i]) <= tolerance);
      }
    }
    std::filesystem::remove(path);
  }
}

TEST_CASE("emulator: a B-cos conv's patch norms, scale and norm gradient move 16-byte packs where the plane allows") {
  // As batch norm's passes (above): the trace's grids show the packed launches, a tile of 32
  // packs of positions for the scale and for the channels' sums of x² (8 x 8 maps: one tile,
  // where 32 positions a tile take two) and a pack per thread for the patch norms' gradient into
  // x; max-out keeps 32 positions a tile for the scale.
  // Values: the B-cos CUDA parity cases, which run both paths.
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("bcos_emu_bcos_packs_" + std::to_string(::getpid()) + ".tsv")).string();
  bcos::manual_seed(13);
  const bcos::Tensor x = bcos::randn({2, 16, 8, 8}).to(gpu).requires_grad_();
  auto grids = [&](const std::string& kernel) {  // each traced launch's grid, in order
    std::vector<std::string> out;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);)
      if (line.starts_with(kernel + "<")) {
        const size_t tab = line.find('\t');
        out.push_back(line.substr(tab + 1, line.find('\t', tab + 1) - tab - 1));
      }
    return out;
  };
  for (int64_t max_out : {1, 2}) {
    CAPTURE(max_out);
    const bcos::Tensor w = bcos::randn({8 * max_out, 16, 3, 3}).to(gpu).requires_grad_();
    bcos::synchronize(gpu);
    rt::set_trace(path);
    bcos::Tensor y = bcos::bcos_conv2d(x, w, bcos::Tensor(), 1, 1, 1, 1, 2.0, max_out);
    bcos::sum(y * y).backward();
    bcos::synchronize(gpu);
    rt::set_trace("");
    const std::vector<std::string> scale = grids("scale_wide_kernel"), patch = grids("patch_grad_kernel");
    const std::vector<std::string> sums = grids("channel_sumsq_kernel");
    REQUIRE(scale.size() == 2);  // forward, backward
    REQUIRE(patch.size() == 1);
    for (const std::string& g : scale) CHECK(g.starts_with(max_out == 1 ? "1," : "2,"));
    CHECK(patch[0] == "2,1,1");  // 2,048 elements of x: 512 packs of 4, blocks of 256 threads
    CHECK(sums == std::vector<std::string>{"1,2,1"});  // x's channel sums: one tile of 32 packs per sample
  }
  // BCOS_CUDA_PACKS=0 (the A/B switch for a GPU's timings): the element paths' grids.
  ::setenv("BCOS_CUDA_PACKS", "0", 1);
  const bcos::Tensor w = bcos::randn({8, 16, 3, 3}).to(gpu).requires_grad_();
  rt::set_trace(path);
  bcos::Tensor y = bcos::bcos_conv2d(x, w, bcos::Tensor(), 1, 1, 1, 1, 2.0, 1);
  bcos::sum(y * y).backward();
  bcos::synchronize(gpu);
  rt::set_trace("");
  ::unsetenv("BCOS_CUDA_PACKS");
  for (const std::string& g : grids("scale_wide_kernel")) CHECK(g.starts_with("2,"));
  CHECK(grids("patch_grad_kernel") == std::vector<std::string>{"8,1,1"});
  CHECK(grids("channel_sumsq_kernel") == std::vector<std::string>{"2,2,1"});
  std::filesystem::remove(path);
}

TEST_CASE("emulator: layer norm and a B-cos linear layer's row passes read 16-byte packs where the rows allow") {
  // A warp per row, as before; where the rows are whole packs and the tensors aligned each lane
  // reads a pack at a time (the grid does not change: the emulator counts pack accesses). A view
  // one element into its storage, or rows of an odd length, take an element at a time.
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  bcos::manual_seed(14);
  const bcos::Tensor data = bcos::randn({16 * 64}).to(gpu), shifted = bcos::cat({bcos::zeros({1}).to(gpu), data}, 0);
  const bcos::Tensor w = bcos::randn({64}).to(gpu), wl = bcos::randn({32, 64}).to(gpu);
  auto packs = [&](const bcos::Tensor& x_in) {  // each row kernel's pack accesses in a forward + backward
    const bcos::Tensor x = x_in.detach().requires_grad_();
    const char* kernels[] = {"row_norm_kernel", "row_norm_backward_kernel", "row_sumsq_kernel", "scale_narrow_kernel"};
    bcos::synchronize(gpu);
    std::vector<int64_t> before;
    for (const char* k : kernels) before.push_back(rt::pack_accesses(k));
    const bcos::Tensor y = bcos::layer_norm(x, {x.size(1)}, w.narrow(0, 0, x.size(1)), bcos::Tensor());
    const bcos::Tensor z = bcos::bcos_linear(x, wl.narrow(1, 0, x.size(1)).contiguous());
    bcos::sum(y * y + y).backward();
    bcos::sum(z * z).backward();
    bcos::synchronize(gpu);
    std::vector<int64_t> made;
    for (size_t i = 0; i < before.size(); ++i) made.push_back(rt::pack_accesses(kernels[i]) - before[i]);
    return made;
  };
  const std::vector<int64_t> aligned = packs(data.view({16, 64}));
  CHECK(aligned[0] == 4 * 16 * 64 / 4);  // per pack: read for the sum, the squares, the output; written
  CHECK(aligned[1] == 5 * 16 * 64 / 4);  // g and x read for the sums and again for grad_x, written
  CHECK(aligned[2] == 16 * 64 / 4);
  CHECK(aligned[3] > 0);  // the scale's rows of 32 outputs (its lin comes from the GEMM: aligned)
  const std::vector<int64_t> off = packs(shifted.narrow(0, 1, 16 * 64).view({16, 64}));
  CHECK(off[0] == 0);
  CHECK(off[1] == 0);
  CHECK(off[2] == 0);
  const std::vector<int64_t> odd = packs(data.narrow(0, 0, 16 * 63).view({16, 63}));
  for (size_t i = 0; i < 3; ++i) CHECK(odd[i] == 0);  // (the scale's rows are still 32 outputs)
  // BCOS_CUDA_PACKS=0 (the A/B switch for a GPU's timings): every one an element at a time.
  ::setenv("BCOS_CUDA_PACKS", "0", 1);
  const std::vector<int64_t> switched_off = packs(data.view({16, 64}));
  ::unsetenv("BCOS_CUDA_PACKS");
  for (int64_t n : switched_off) CHECK(n == 0);
}

TEST_CASE("emulator: a float32 op with a 16-bit operand reads it as it is: one launch, no widened copy") {
  // Under autocast a bf16 linear's output is added to the float32 residual stream (twice per
  // transformer block): a widened copy first was a pass over the activation and a launch more.
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  bcos::manual_seed(43);
  const bcos::Tensor wide = bcos::randn({64, 48}), row = bcos::randn({48});
  for (bcos::DType h : {bcos::DType::bf16, bcos::DType::f16}) {
    const bcos::Tensor half = bcos::randn({64, 48}).to(h);
    const bcos::Tensor want = bcos::add(wide, half.to(bcos::DType::f32));
    const bcos::Tensor want_row = bcos::mul(half.to(bcos::DType::f32), row);
    const bcos::Tensor w = wide.to(gpu), hg = half.to(gpu), r = row.to(gpu);
    bcos::synchronize(gpu);
    const int64_t converts = rt::kernels_run("convert_copy"), maps = rt::kernels_run("map2_kernel");
    const bcos::Tensor got = bcos::add(w, hg), got_row = bcos::mul(hg, r);
    bcos::synchronize(gpu);
    CHECK(rt::kernels_run("convert_copy") == converts);
    CHECK(rt::kernels_run("map2_kernel") - maps == 2);
    REQUIRE(got.dtype() == bcos::DType::f32);
    CHECK(golden::equal(got.to(bcos::Device()), want));  // float32 sums of exactly widened values
    CHECK(golden::equal(got_row.to(bcos::Device()), want_row));
  }
}

TEST_CASE("emulator: quick_gelu is one launch each way on the GPU, with the composed ops' 16-bit bits") {
  // CLIP's QuickGELU composed (x * sigmoid(x * 1.702)) is 3 launches forward and 5 backward over
  // the MLP's widest activation; quick_gelu is one each way, rounding as the composed ops do.
  namespace rt = bcos::emu::runtime;
  const bcos::Device gpu = bcos::Device::cuda(0);
  bcos::manual_seed(44);
  for (bcos::DType dt : {bcos::DType::f32, bcos::DType::bf16, bcos::DType::f16}) {
    CAPTURE(std::string(bcos::dtype_name(dt)));
    const bcos::Tensor x0 = (bcos::randn({24, 40}) * 4.0).to(dt).to(gpu), g = bcos::randn({24, 40}).to(dt).to(gpu);
    bcos::Tensor xa = x0.clone().requires_grad_(), xb = x0.clone().requires_grad_();
    bcos::synchronize(gpu);
    const int64_t before = rt::kernels_run("");
    const bcos::Tensor fused = bcos::quick_gelu(xa);
    fused.backward(g);
    bcos::synchronize(gpu);
    const int64_t launches = rt::kernels_run("") - before;
    const bcos::Tensor composed = xb * bcos::sigmoid(xb * 1.702);
    composed.backward(g);
    CHECK(launches <= 3);  // forward, backward (and a gradient buffer's fill at most)
    if (dt == bcos::DType::f32) {  // the backward's last step one fma: within an ulp or so
      CHECK(golden::relative_error(fused.to(bcos::Device()), composed.to(bcos::Device())) <= 4e-7);
      CHECK(golden::relative_error(xa.grad().to(bcos::Device()), xb.grad().to(bcos::Device())) <= 4e-7);
    } else {
      CHECK(golden::equal(fused.to(bcos::Device()), composed.to(bcos::Device())));
      CHECK(golden::equal(xa.grad().to(bcos::Device()), xb.grad().to(bcos::Device())));
    }
  }
}

TEST_CASE("emulator: a training step on the GPU waits for the device nowhere (cross-entropy, the B-cos loss's one_hot, gradient clipping, synchronised batch norm, CLIP's token ids)") {
  // Each wait (a copy to the host, a synchronisation, cudaFree) stalls the host until the GPU has
  // caught up, and the GPU then idles while the host queues the next kernels. Index checks
  // (the loss's targets, gather, scatter_add) are made inside the kernels (tensor/cuda/fault.cu),
  // so a warmed-up step (cuDNN's choices made, the allocator's cache filled) makes none.
  namespace rt = bcos::emu::runtime;
  using namespace bcos;
  const Device gpu = Device::cuda(0);
  auto waits_of_third = [](const std::function<void()>& step) {  // after two warm-up steps
    step();
    step();
    const int64_t before = rt::host_waits();
    step();
    return rt::host_waits() - before;
  };
  for (const int config : {0, 1, 2, 3}) {
    const bool bcos = config % 2 == 1, synced = config >= 2;
    CAPTURE(bcos);
    CAPTURE(synced);
    manual_seed(43);
    std::shared_ptr<nn::Module> m = small_models::resnet20(bcos);
    if (synced) {  // --sync-bn's batch norms; a doubled sum stands for a second, identical replica
      auto twice = [](const Tensor& t) { return t * 2.0; };
      for (auto& [name, sub] : m->named_modules()) {
        if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(sub)) bn->replica_sum = twice;
        if (auto* bn = dynamic_cast<nn::BatchNormUncentered2d*>(sub)) bn->replica_sum = twice;
      }
    }
    m->to(gpu);
    m->train();
    nn::SGD sgd(m->parameters(), {.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-4});
    const Tensor x = (bcos ? nn::add_inverse(rand({4, 3, 32, 32})) : rand({4, 3, 32, 32})).to(gpu);
    const Tensor y = from_vector(std::vector<int64_t>{3, 0, 9, 5}, {4}).to(gpu);
    Tensor loss;
    auto step = [&] {
      sgd.zero_grad();
      const Tensor logits = (*m)(x);
      loss = bcos ? nn::uniform_off_labels_bce(logits, y) : cross_entropy(logits, y);
      loss.backward();
      (void)nn::clip_grad_norm_(m->parameters(), 1.0, bcos ? INFINITY : 2.0);  // (the norm stays on the device)
      sgd.step();
    };
    CHECK(waits_of_third(step) == 0);
    const int64_t before = rt::host_waits();
    CHECK(std::isfinite(loss.item<double>()));  // (reading the loss waits: the counter counts)
    CHECK(rt::host_waits() > before);
  }
  // A small CLIP's contrastive step with AdamW: the text tower's token ids are checked by the
  // embedding's kernel, the loss's targets made on the device.
  manual_seed(44);
  models::Clip clip(small_models::clip_config());
  clip.to(gpu);
  clip.train();
  nn::AdamW adamw(clip.parameters(), {.lr = 1e-3, .weight_decay = 1e-2});
  const Tensor images = randn({2, 3, 32, 32}).to(gpu), tokens = randint(1, 63, {2, 9}).to(gpu);
  auto step = [&] {
    adamw.zero_grad();
    models::clip_contrastive_loss(clip.logits(clip.encode_image(images), clip.encode_text(tokens))).backward();
    adamw.step();
  };
  CHECK(waits_of_third(step) == 0);
}
