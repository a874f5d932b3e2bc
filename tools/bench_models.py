#!/usr/bin/python3
"""PyTorch side of bench/models: images/s and peak resident memory of whole models, torch
(Debian's python3-torch + torchvision) beside build/bench/bench_models, same machine, same run,
same thread count. Each (framework, model, mode) runs in its own process, so peak memory is that
configuration's alone. Modes: infer (eval, no grad) and train (train mode: forward,
cross-entropy, backward, SGD momentum 0.9). Ratios are bcos / torch: above 1 means bcos.cpp is
faster (images/s) or leaner (memory: torch / bcos).
CLIP rows: the image towers of OpenAI's RN50 and ViT-B/32 (batch 8; training: cross-entropy of
the embedding as logits, SGD on the tower) and the text tower (batch 64 texts of 77 tokens,
inference), PyTorch running tools/golden/clip.py's reference CLIP.
B-cos rows (the B-cos BCE loss, one-hot targets clamped to 1 / C): bcos_vit_b_16, the B-cosified
ViT-B/16 (bcos_torchvision_vit below: models/bcosify.h's ViT conversion); bcos_clip_rn50, B-cos
CLIP's RN50 tower (tools/bcos_clip_reference.py), whose training step is the distillation step
(frozen RN50 tower on the normalised images, the student on (x, 1 - x), sigmoid distillation
loss, adaptive gradient clipping, Adam lr 1e-4).
  bench/models [--threads N] [--seconds S] [--repeat R] [--only resnet18,resnet50,resnet20,vit_b_16,clip_rn50,clip_vit_b_32,clip_text,bcos_vit_b_16,bcos_clip_rn50]
--autocast bf16 (or f16): both sides in mixed precision, torch.autocast beside AutocastGuard.
--dtype bf16 (or f16): both models and their inputs converted whole, module.to(dtype) on each side.
--cudnn-benchmark: both sides time cuDNN's algorithms per convolution shape (torch.backends.cudnn.benchmark).
--cudnn-api graph|legacy: which of cuDNN's APIs runs bcos.cpp's convolutions (PyTorch takes its graph API).
--no-tf32: float32 matmuls and convolutions in full float32 on both sides; by default both sides
take TF32 for both (bcos.cpp's default; PyTorch's for convolutions, set here for its matmuls too).
--cuda-graph (GPU): each step captured once as a CUDA graph and replayed on both sides
(torch.cuda.CUDAGraph beside tensor/cuda_graph.h): the whole step with its optimizer, as PyTorch's
whole-network capture (the distillation rows' Adam with capturable=True); --batch N: every row
at batch N (the launches a graph saves weigh most at small batches).
On a GPU (--device cuda): ResNet-50 and its B-cosified form, ViT-B/16, CLIP's RN50 image tower
and text tower, the B-cos ViT-B/16 and B-cos CLIP RN50 at batch 64, inference and training step, both frameworks synchronising after
every step; memory is the peak of tensor memory
(torch.cuda.max_memory_allocated, bcos.cpp's caching allocator's peak in use). The B-cos ResNet-50
in PyTorch is tools/bench_bcos.py's layers on torchvision's ResNet-50, converted as
models/bcosify.h converts it (6-channel first conv, uncentred BN, max-pool -> avg-pool, fc as a
1x1 B-cos conv before pooling, logit bias -ln 999), trained with the same B-cos BCE loss.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import time

CONFIGS = [("resnet18", 8, 224), ("resnet50", 8, 224), ("resnet20", 128, 32), ("vit_b_16", 8, 224), ("clip_rn50", 8, 224),
           ("clip_vit_b_32", 8, 224), ("clip_text", 64, 77), ("bcos_vit_b_16", 8, 224), ("bcos_clip_rn50", 8, 224)]
GPU_CONFIGS = [("resnet50", 64, 224), ("bcos_resnet50", 64, 224), ("vit_b_16", 64, 224), ("clip_rn50", 64, 224),
               ("clip_text", 64, 77), ("bcos_vit_b_16", 64, 224), ("bcos_clip_rn50", 64, 224)]
MODES = {"clip_text": ("infer",)}
RESULT = re.compile(r"^images_per_s (\S+) peak_rss_mb (\S+)(?: peak_gpu_mb (\S+))?$")


def bcos_torchvision_resnet(net, num_classes):
    """models/bcosify.h's conversion of a torchvision ResNet, in PyTorch (bench only: timing)."""
    import math
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from bench_bcos import MEAN, STD, BcosConv2d, bcos_conv_of, convert_layers, six_channel

    w = net.conv1.weight.detach()
    net.conv1 = bcos_conv_of(net.conv1, torch.cat([w, -w], 1) / 2)
    head = BcosConv2d(net.fc.weight.detach().view(num_classes, -1, 1, 1), None, 1, 0, (1, 1), 1, 2.0)
    convert_layers(net, keep=(BcosConv2d,))

    class BcosResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.head = net, head
            mean6, std6 = six_channel(MEAN, STD)
            self.register_buffer("mean6", mean6)
            self.register_buffer("std6", std6)

        def forward(self, x6):
            n = self.net
            x = F.relu(n.bn1(n.conv1((x6 - self.mean6) / self.std6)))
            x = F.avg_pool2d(x, 3, 2, 1)
            x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
            return F.adaptive_avg_pool2d(self.head(x), 1).flatten(1) - math.log(num_classes - 1)

    return BcosResNet()


def bcos_torchvision_vit(net, num_classes):
    """models/bcosify.h's conversion of a torchvision ViT, in PyTorch (bench only: timing): the
    patch embedding a B-cos conv on (x, 1 - x) with [W, -W] / 2, every Linear a B-cos linear with
    the raw weight and no bias (y = |lin| / n * lin, n = sqrt(sum x^2 + 1e-12)) except the packed
    q/k/v projection, which stays linear (no bias); LayerNorms without their shift; GELU kept;
    the head reads the class token; logit bias -ln(C - 1)."""
    import math
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from bench_bcos import MEAN, STD, bcos_conv_of, six_channel

    class BcosLinear(nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.weight = nn.Parameter(linear.weight.detach().clone())

        def forward(self, x):
            lin = F.linear(x, self.weight)
            return lin.abs() / ((x * x).sum(-1, keepdim=True) + 1e-12).sqrt() * lin

    class LayerNormNoShift(nn.Module):
        def __init__(self, ln):
            super().__init__()
            self.weight, self.eps, self.shape = nn.Parameter(ln.weight.detach().clone()), ln.eps, ln.normalized_shape

        def forward(self, x):
            return F.layer_norm(x, self.shape, self.weight, None, self.eps)

    class BcosSelfAttention(nn.Module):  # called as torchvision's EncoderBlock calls its MultiheadAttention
        def __init__(self, mha):
            super().__init__()
            self.in_proj_weight = nn.Parameter(mha.in_proj_weight.detach().clone())
            self.heads, self.out_proj = mha.num_heads, BcosLinear(mha.out_proj)

        def forward(self, query, key=None, value=None, need_weights=False):  # self-attention: key = value = query
            x = query
            n, l, e = x.shape
            q, k, v = F.linear(x, self.in_proj_weight).view(n, l, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
            if hasattr(F, "scaled_dot_product_attention"):  # PyTorch >= 2.0: its fused kernels
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                o = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v
            return self.out_proj(o.transpose(1, 2).reshape(n, l, e)), None

    def convert(module):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, name, BcosSelfAttention(child))
            elif isinstance(child, nn.LayerNorm):
                setattr(module, name, LayerNormNoShift(child))
            elif isinstance(child, nn.Linear):
                setattr(module, name, BcosLinear(child))
            else:
                convert(child)

    w = net.conv_proj.weight.detach()
    net.conv_proj = bcos_conv_of(net.conv_proj, torch.cat([w, -w], 1) / 2)
    convert(net)

    class BcosViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            mean6, std6 = six_channel(MEAN, STD)
            self.register_buffer("mean6", mean6)
            self.register_buffer("std6", std6)

        def forward(self, x6):
            return self.net((x6 - self.mean6) / self.std6) - math.log(num_classes - 1)

    return BcosViT()


def torch_child(arch, batch, size, mode, seconds, threads, device, autocast="none", profile=0, cudnn_benchmark=False,
                dtype="f32", tf32=True, cuda_graph=False):
    """Runs in a child process: one configuration, prints the result line."""
    import torch
    import torch.nn.functional as F
    import torchvision

    torch.backends.cudnn.benchmark = cudnn_benchmark
    # Float32 products on the GPU in the same precision as bcos.cpp's (set_allow_tf32, --tf32):
    # PyTorch's defaults differ between its two switches -- cuDNN's convolutions take TF32, its
    # cuBLAS matmuls do not (torch.backends.cuda.matmul.allow_tf32 is False since 1.12) -- so
    # without this a float32 transformer row would time TF32 GEMMs against full-float32 ones.
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from models import CifarResNet  # the same definition the golden fixtures use

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params, teacher = None, None
    if arch == "bcos_clip_rn50":  # B-cos CLIP's distillation step (tools/bcos_clip_reference.py)
        from bcos_clip_reference import CLIP_MEAN, CLIP_STD, BcosClipTower, sigmoid_distillation_loss
        from bench_bcos import adaptive_clip_
        from clip import ModifiedResNet
        teacher = ModifiedResNet([3, 4, 6, 3], 1024, 32, size, 64).eval()
        module = model = BcosClipTower(ModifiedResNet([3, 4, 6, 3], 1024, 32, size, 64))
        x = torch.rand(batch, 3, size, size)
        y = torch.zeros(batch, dtype=torch.long)  # unused
        params = list(model.parameters())
        clip_mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1).to(device)
        clip_std = torch.tensor(CLIP_STD).view(1, 3, 1, 1).to(device)
        teacher.to(device)
    elif arch.startswith("clip_"):
        from clip import CLIP  # tools/golden/clip.py: OpenAI's architecture
        if arch == "clip_vit_b_32":
            clip = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
        else:
            clip = CLIP(1024, 224, [3, 4, 6, 3], 64, None, 77, 49408, 512, 8, 12)
        embed = clip.text_projection.shape[1]
        if arch == "clip_text":
            x = torch.randint(1, 49406, (batch, size))
            model, params = clip.encode_text, list(clip.parameters())
        else:
            x = torch.randn(batch, 3, size, size)
            model, params = clip.encode_image, list(clip.visual.parameters())
        y = torch.randint(0, embed, (batch,))
        module = clip
    else:
        base = arch[len("bcos_"):] if arch.startswith("bcos_") else arch
        module = model = CifarResNet(20) if base == "resnet20" else getattr(torchvision.models, base)()
        classes = 10 if base == "resnet20" else 1000  # vit_b_16: torchvision's, as models/vit.h
        if arch.startswith("bcos_"):
            convert = bcos_torchvision_vit if base.startswith("vit") else bcos_torchvision_resnet
            module = model = convert(model, classes)
            x = torch.rand(batch, 3, size, size)
            x = torch.cat([x, 1 - x], 1)
        else:
            x = torch.randn(batch, 3, size, size)
        y = torch.randint(0, classes, (batch,))
        params = list(model.parameters())
    module.to(device)
    x, y = x.to(device), y.to(device)
    whole = {"bf16": torch.bfloat16, "f16": torch.float16}.get(dtype)
    if whole is not None:  # the model and its input converted whole (module.to(dtype))
        module.to(whole)
        if teacher is not None:
            teacher.to(whole)
            clip_mean, clip_std = clip_mean.to(whole), clip_std.to(whole)
        if x.is_floating_point():
            x = x.to(whole)
    if teacher is None:
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    else:  # the distillation recipe's optimiser (capturable: its step inside a CUDA graph)
        opt = torch.optim.Adam(params, lr=1e-4, **({"capturable": True} if cuda_graph else {}))

    def loss_of(out):
        if arch.startswith("bcos_"):  # the B-cos BCE: one-hot targets clamped to 1 / C
            target = F.one_hot(y, out.shape[1]).to(out.dtype).clamp(min=1.0 / out.shape[1])
            return F.binary_cross_entropy_with_logits(out, target)
        return F.cross_entropy(out, y)

    amp = {"bf16": torch.bfloat16, "f16": torch.float16}.get(autocast)

    def forward():
        inputs = x if teacher is None else torch.cat([x, 1 - x], 1)
        if amp is None:
            return model(inputs)
        with torch.autocast(device_type=device.split(":")[0], dtype=amp):
            return model(inputs)

    def gradients():  # a step but its optimizer update
        if mode == "infer":
            with torch.no_grad():
                forward()
        elif teacher is not None:
            with torch.no_grad():
                if amp is None:
                    target = teacher((x - clip_mean) / clip_std)
                else:
                    with torch.autocast(device_type=device.split(":")[0], dtype=amp):
                        target = teacher((x - clip_mean) / clip_std)
            opt.zero_grad(set_to_none=True)
            sigmoid_distillation_loss(forward().float(), target.float()).backward()
            adaptive_clip_(params)
        else:
            opt.zero_grad(set_to_none=True)
            loss_of(forward().float()).backward()

    def update():
        if mode != "infer":
            opt.step()

    def run():
        gradients()
        update()

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    module.train(mode == "train")
    try:
        run()
    except RuntimeError as e:
        # torch 1.13's MultiheadAttention fast path (evaluation mode, no grad) rejects CPU
        # autocast ("expected scalar type BFloat16 but found Float"). In training mode the module
        # takes its regular path, the same computation where no dropout is active and no batch
        # norm would use batch statistics (torchvision's ViT: dropout 0): measure that instead.
        inert = all(m.p == 0 for m in module.modules() if isinstance(m, torch.nn.Dropout)) and \
            all(m.dropout == 0 for m in module.modules() if isinstance(m, torch.nn.MultiheadAttention)) and \
            not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
        if not (mode == "infer" and amp is not None and inert):
            print(f"torch failed: {str(e).splitlines()[0]}", file=sys.stderr)
            print("images_per_s nan peak_rss_mb nan")
            return
        module.train(True)
        try:
            run()
        except RuntimeError as e2:
            print(f"torch failed: {str(e2).splitlines()[0]}", file=sys.stderr)
            print("images_per_s nan peak_rss_mb nan")
            return
        print(f"torch: {str(e).splitlines()[0]} in evaluation mode; measured in training mode "
              "(no dropout, no batch norm: the same computation)", file=sys.stderr)
    if cuda_graph:  # PyTorch's recipe (torch.cuda.graphs): warm up on a side stream, capture, replay
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # the whole step, the optimizer's included
            run()
        run = graph.replay  # noqa: F811 (the timed step)
    run()
    sync()
    iters, start = 0, time.perf_counter()
    while iters < 2 or time.perf_counter() - start < seconds:
        run()
        iters += 1
        sync()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu = f" peak_gpu_mb {torch.cuda.max_memory_allocated() / 2**20:.1f}" if device != "cpu" else ""
    print(f"images_per_s {iters * batch / elapsed:.2f} peak_rss_mb {peak:.1f}{gpu}")
    if profile > 0:  # the same steps under torch.profiler: time per operator, as bench_models --profile
        from torch.profiler import ProfilerActivity
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
        start = time.perf_counter()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(profile):
                run()
            sync()
        per_step = (time.perf_counter() - start) * 1e3 / profile
        key = "self_cuda_time_total" if device != "cpu" else "self_cpu_time_total"
        print(f"profile of {profile} steps ({per_step:.2f} ms per step, under the profiler):")
        print(prof.key_averages().table(sort_by=key, row_limit=25))


NOTES_SHOWN = set()
PROFILES = {}  # label -> the profile's lines (the last repeat's), printed after the row they belong to


def measure(cmd, env, label=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench/models: {' '.join(cmd)} failed:\n{out.stderr}")
    for note in out.stderr.splitlines():  # a child's notes on how it measured, once each
        if note.startswith(("torch: ", "bcos: ")) and note not in NOTES_SHOWN:
            NOTES_SHOWN.add(note)
            print(f"({note})", flush=True)
    lines = [l for l in out.stdout.splitlines() if RESULT.match(l)]
    if len(lines) != 1:
        sys.exit(f"bench/models: unexpected output from {' '.join(cmd)}:\n{out.stdout}")
    m = RESULT.match(lines[0])
    rest = out.stdout.split(lines[0], 1)[1].strip("\n")
    if label and rest:
        PROFILES[label] = rest
    return float(m.group(1)), float(m.group(3) or m.group(2))  # GPU: peak tensor memory


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="build/bench/bench_models")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", default="")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ResNet-50 and B-cos ResNet-50 at batch 64)")
    ap.add_argument("--python", default=sys.executable, help="the Python that runs PyTorch's side")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the two sides alternately this many times; report medians and the paired ratios' range")
    ap.add_argument("--autocast", default="none", choices=["none", "bf16", "f16"],
                    help="mixed precision on both sides: torch.autocast and bcos.cpp's AutocastGuard")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"],
                    help="both models and their inputs converted whole (module.to(dtype) on each side)")
    ap.add_argument("--profile", type=int, default=0,
                    help="then N more steps per row profiled on both sides (torch.profiler, bench_models --profile), "
                         "printed after the row")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="cuDNN's algorithms timed per convolution shape on both sides (torch.backends.cudnn.benchmark, "
                         "bench_models --cudnn-benchmark 1)")
    ap.add_argument("--cudnn-api", default="", choices=["", "graph", "legacy"],
                    help="which cuDNN API runs bcos.cpp's convolutions (bench_models --cudnn-api; default: "
                         "bcos.cpp's default, BCOS_CUDNN_API); PyTorch runs its own (the graph API)")
    ap.add_argument("--no-tf32", dest="tf32", action="store_false",
                    help="GPU float32 matmuls and convolutions in full float32 on both sides (default: TF32 on both, "
                         "torch.backends.cuda.matmul.allow_tf32 / cudnn.allow_tf32 and bench_models --tf32)")
    ap.add_argument("--batch", type=int, default=0, help="every row at this batch size (default: the table's)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="each step captured once as a CUDA graph and replayed, on both sides (torch.cuda.CUDAGraph, "
                         "bench_models --cuda-graph 1; the optimizer's step inside, Adam capturable)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        arch, batch, size, mode = a.child
        torch_child(arch, int(batch), int(size), mode, a.seconds, a.threads, a.device, a.autocast, a.profile,
                    a.cudnn_benchmark, a.dtype, a.tf32, a.cuda_graph)
        return
    from bench_bcos import alternate

    env = dict(os.environ, BCOS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    only = set(filter(None, a.only.split(",")))
    import torch
    where = f"{a.threads} threads" if a.device == "cpu" else torch.cuda.get_device_name(0)
    amp = ("" if a.autocast == "none" else f", autocast {a.autocast}") + (", cudnn benchmark" if a.cudnn_benchmark else "") + \
        (f", bcos cuDNN {a.cudnn_api} API" if a.cudnn_api else "") + (", CUDA graphs" if a.cuda_graph else "") + \
        ("" if a.dtype == "f32" else f", models in {a.dtype}") + \
        ("" if a.device == "cpu" else ", float32 products in TF32 on both sides" if a.tf32 else
         ", float32 products in full float32 on both sides (no TF32)")
    print(f"torch {torch.__version__}, {where}{amp}, ~{a.seconds:.0f} s per measurement, each in its own process")
    mem = "MB" if a.device == "cpu" else "GPU MB"
    print(f"{'model':14s} {'batch':>5s} {'mode':6s} {'torch img/s':>12s} {'bcos img/s':>11s} {'ratio':>6s}"
          f" {'torch ' + mem:>12s} {'bcos ' + mem:>11s} {'mem ratio':>9s}" + (" ratio range" if a.repeat > 1 else ""))
    for arch, batch, size in (CONFIGS if a.device == "cpu" else GPU_CONFIGS):
        if only and arch not in only:
            continue
        batch = a.batch or batch
        for mode in MODES.get(arch, ("infer", "train")):
            torch_cmd = [a.python, __file__, "--threads", str(a.threads), "--seconds", str(a.seconds),
                         "--device", a.device, "--autocast", a.autocast, "--profile", str(a.profile), "--dtype", a.dtype,
                         "--child", arch, str(batch), str(size), mode] + (["--cudnn-benchmark"] if a.cudnn_benchmark else []) + \
                        ([] if a.tf32 else ["--no-tf32"]) + (["--cuda-graph"] if a.cuda_graph else [])
            bcos_cmd = [a.binary, "--arch", arch, "--batch", str(batch), "--mode", mode, "--seconds", str(a.seconds),
                        "--device", a.device, "--autocast", a.autocast, "--dtype", a.dtype, "--tf32", "1" if a.tf32 else "0"] + \
                       (["--profile", str(a.profile)] if a.profile else []) + \
                       (["--cudnn-benchmark", "1"] if a.cudnn_benchmark else []) + \
                       (["--cudnn-api", a.cudnn_api] if a.cudnn_api else []) + \
                       (["--cuda-graph", "1"] if a.cuda_graph else [])
            row = f"{arch} {mode}"
            (t_speed, t_mem), (b_speed, b_mem), spread = alternate(lambda: measure(torch_cmd, env, "torch " + row),
                                                                   lambda: measure(bcos_cmd, env, "bcos " + row),
                                                                   a.repeat)
            print(f"{arch:14s} {batch:5d} {mode:6s} {t_speed:12.1f} {b_speed:11.1f} {b_speed / t_speed:6.2f}"
                  f" {t_mem:12.0f} {b_mem:11.0f} {t_mem / b_mem:9.2f}{spread}", flush=True)
            for label, text in PROFILES.items():
                print(f"--- {label}: " + text.replace("\n", "\n    "), flush=True)
            PROFILES.clear()


if __name__ == "__main__":
    main()
