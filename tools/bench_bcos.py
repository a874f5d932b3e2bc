#!/usr/bin/python3
"""PyTorch side of bench/bcos: images/s and peak resident memory of the B-cosified CIFAR ResNet-20,
torch (Debian's python3-torch) beside build/bench/bench_bcos, same machine, same run, same thread
count. Each (framework, mode) runs in its own process, so peak memory is that configuration's
alone. Modes:
  train    the fine-tuning step: train mode, AddInverse of 3-channel images [B, 3, 32, 32] inside
           the timed step, forward, BCE-with-logits against one-hot targets with off-labels
           clamped to >= 1/10 (mean), backward, adaptive gradient clipping (clip 0.01, eps 1e-3)
           on every parameter, AdamW (lr 1e-4, weight decay 0), zero_grad.
  explain  eval mode with the dynamic scales detached (B-cos |lin| / norm, batch-norm 1/std):
           forward of AddInverse(x), each sample's predicted-class logit summed, backward to the
           6-channel input only (the parameters do not require grad), the input gradient read.
  clip_distill  B-cos CLIP (tools/bcos_clip_reference.py: the default teacher's ModifiedResNet
           tower, [1, 1, 1] x 32 wide, 32 px, 256-d, B-cosified): the distillation step -- the
           frozen teacher on the normalised batch (no grad), the student on AddInverse(x), the
           sigmoid distillation loss, backward, adaptive gradient clipping, Adam (lr 1e-4).
  clip_explain  the student in explanation mode: cos(embedding, text) for 10 random text
           embeddings (the norm detached), each image's best text explained: input gradient.
Ratios are bcos / torch: above 1 means bcos.cpp is faster (images/s) or leaner (memory:
torch / bcos).
  bench/bcos [--threads N] [--seconds S] [--batch B] [--repeat R] [--modes train,explain,clip_distill,clip_explain]
             [--autocast bf16]
--autocast bf16 runs the training modes (train, clip_distill; the default modes then) with their
forward passes, the frozen teacher's included, under torch.autocast("cpu", torch.bfloat16) and
bench_bcos --autocast bf16; explanations are not meant to run in mixed precision and refuse it.

The model is written here from the B-cos formulas (bcosify of tools/golden/models.py's
CifarResNet(20), random init):
  - every Conv2d -> B-cos conv, same raw weight (not unit-normalised), no bias, b = 2:
      lin = conv2d(x, w);  n = sqrt(sum over the patch and channels of x^2 + 1e-6);
      y = |lin| / n * lin
  - input: AddInverse(x) = [x, 1 - x], normalised elementwise as (x6 - mu6) / sigma6 with
    mu6 = (mu, 1 - mu), sigma6 = (sigma, sigma) (ImageNet mean / std); the first conv takes 6
    channels with weight [W, -W] / 2
  - every BatchNorm2d -> uncentred batch norm, y = gamma * x / sqrt(var + eps) (no beta; training:
    biased batch variance, running stats updated as nn.BatchNorm2d does)
  - ReLUs and option-A shortcuts kept
  - the Linear -> 1x1 B-cos conv [10, 64, 1, 1] applied before global average pooling, then the
    constant logit bias -ln(9)
`--check` runs a small self-check of the conversion (float64): with b = 1 and the biases kept it
reproduces the original model's eval logits; with b = 2 in explain mode every logit equals
<d logit / d x6n, x6n> - ln 9 (dynamic linearity); the uncentred batch norm's running stats match
the B-cosification authors' layer (biased variance; running_mean left alone).
"""
import argparse
import copy
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

RESULT = re.compile(r"^images_per_s (\S+) peak_rss_mb (\S+)$")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODES = ("train", "explain", "clip_distill", "clip_explain")


class BcosConv2d(nn.Module):
    """B-cos conv with a raw (not unit-normalised) weight: lin = conv2d(x, w, bias); patch norm
    n = sqrt(sum of x^2 over the patch and channels + 1e-6); y = scale * lin with scale |lin| / n for
    b = 2, (|lin / n| + 1e-6) ** (b - 1) otherwise, none for b = 1; detached in explain mode."""

    def __init__(self, weight, bias, stride, padding, dilation, groups, b):
        super().__init__()
        assert groups == 1 and tuple(dilation) == (1, 1), "patch norm via avg_pool2d: groups 1, dilation 1"
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.kernel = tuple(weight.shape[2:])
        self.b = b
        self.explain = False

    def forward(self, x):
        lin = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.b == 1:
            return lin
        sq = (x * x).sum(1, keepdim=True)
        n = (F.avg_pool2d(sq, self.kernel, self.stride, self.padding, divisor_override=1) + 1e-6).sqrt()
        if self.b == 2:
            scale = lin.abs() / n
        else:
            scale = ((lin / n).abs() + 1e-6) ** (self.b - 1)
        if self.explain:
            scale = scale.detach()
        return scale * lin


class BatchNormUncentered2d(nn.Module):
    """y = gamma * x / sqrt(var + eps) (+ beta if kept); x is not mean-subtracted. Training: biased
    batch variance, which running_var follows (running_mean is left alone, as in the
    B-cosification authors' layer). Eval: running_var. 1/sqrt(var + eps) detached in explain mode."""

    def __init__(self, bn, keep_bias):
        super().__init__()
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone()) if keep_bias else None
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.momentum, self.eps = bn.momentum, bn.eps
        self.explain = False

    def forward(self, x):
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_var.mul_(1 - self.momentum).add_(var, alpha=self.momentum)
        else:
            var = self.running_var
        inv = (var + self.eps).rsqrt()
        if self.explain:
            inv = inv.detach()
        y = x * (self.weight * inv).view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


def set_explain(model, on):
    """Explanation mode on or off for every layer below `model` that has one; returns model."""
    for m in model.modules():
        if hasattr(m, "explain"):
            m.explain = on
    return model


def six_channel(mean, std):
    """mu6 = (mu, 1 - mu), sigma6 = (sigma, sigma) as [1, 6, 1, 1]: the (x, 1 - x) normalisation."""
    return (torch.tensor(tuple(mean) + tuple(1 - m for m in mean)).view(1, 6, 1, 1),
            torch.tensor(tuple(std) + tuple(std)).view(1, 6, 1, 1))


class BcosCifarResNet(nn.Module):
    """The converted CifarResNet; takes the 6-channel AddInverse(x) (un-normalised, in [0, 1]) and
    normalises it elementwise, (x6 - mu6) / sigma6."""

    def __init__(self, net, logit_bias):
        super().__init__()
        self.net = net
        mean6, std6 = six_channel(MEAN, STD)
        self.register_buffer("mean6", mean6)
        self.register_buffer("std6", std6)
        self.logit_bias = logit_bias

    def set_explain(self, on):
        return set_explain(self, on)

    def forward(self, x6):
        net = self.net
        out = F.relu(net.bn1(net.conv1((x6 - self.mean6) / self.std6)))
        out = net.layer3(net.layer2(net.layer1(out)))  # CifarBlock.forward on the swapped modules
        logits = F.adaptive_avg_pool2d(net.linear(out), 1).flatten(1)  # 1x1 B-cos conv, then pool
        return logits + self.logit_bias if self.logit_bias else logits


def cifar_resnet20(seed=0):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
    from models import CifarResNet  # the same definition the golden fixtures use
    torch.manual_seed(seed)
    return CifarResNet(20)


def bcos_conv_of(c, weight, b=2.0, keep_bias=False):
    """A BcosConv2d with conv c's geometry and the given weight."""
    return BcosConv2d(weight, c.bias if keep_bias else None, c.stride, c.padding, c.dilation, c.groups, b)


def convert_layers(module, b=2.0, keep_bias=False, fold_shift=False, keep=()):
    """In place, below `module`: every Conv2d -> BcosConv2d, every BatchNorm2d ->
    BatchNormUncentered2d (with fold_shift and keep_bias, its shift becomes
    beta - gamma mu / sqrt(var + eps), so that b = 1 reproduces the original); modules of the
    types in `keep` are left alone."""
    for name, child in list(module.named_children()):
        if keep and isinstance(child, keep):
            continue
        if isinstance(child, nn.Conv2d):
            setattr(module, name, bcos_conv_of(child, child.weight, b, keep_bias))
        elif isinstance(child, nn.BatchNorm2d):
            u = BatchNormUncentered2d(child, keep_bias)
            if keep_bias and fold_shift:
                with torch.no_grad():
                    u.bias.copy_(child.bias - child.weight * child.running_mean / (child.running_var + child.eps).sqrt())
            setattr(module, name, u)
        else:
            convert_layers(child, b, keep_bias, fold_shift, keep)


def adaptive_clip_(params, clip=0.01, eps=1e-3):
    """Adaptive gradient clipping (NFNets), per output unit, as nn::adaptive_clip_grad_."""
    def unitwise_norm(t):
        return t.norm(p=2) if t.dim() <= 1 else t.norm(p=2, dim=tuple(range(1, t.dim())), keepdim=True)
    with torch.no_grad():
        for p in params:
            max_norm = unitwise_norm(p).clamp(min=eps) * clip
            gn = unitwise_norm(p.grad)
            p.grad.copy_(torch.where(gn > max_norm, p.grad * (max_norm / gn.clamp(min=1e-6)), p.grad))


def bcosify(original, b=2.0, keep_bias=False, logit_bias=-math.log(9.0)):
    """A B-cos copy of a CifarResNet (the original is left alone). b = 1 with keep_bias and no
    logit bias gives back the original function on normalised inputs (see --check)."""
    net = copy.deepcopy(original)
    w = net.conv1.weight.detach()
    net.conv1 = bcos_conv_of(net.conv1, torch.cat([w, -w], 1) / 2, b, keep_bias)  # 6 input channels: [W, -W] / 2
    lin = net.linear
    net.linear = BcosConv2d(lin.weight.detach().view(lin.out_features, lin.in_features, 1, 1),
                            lin.bias if keep_bias else None, 1, 0, (1, 1), 1, b)
    convert_layers(net, b, keep_bias, keep=(BcosConv2d,))
    return BcosCifarResNet(net, logit_bias)


def add_inverse(x):
    return torch.cat([x, 1 - x], 1)


def mixed(amp):
    """torch.autocast on the CPU in `amp` (a torch dtype), or nothing where amp is None."""
    import contextlib
    return torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext()


def clip_step(mode, batch, amp=None):
    """The B-cos CLIP rows: returns the step to time."""
    from bcos_clip_reference import CLIP_MEAN, CLIP_STD, BcosClipTower, sigmoid_distillation_loss, small_tower
    teacher = small_tower().eval()
    student = BcosClipTower(teacher)
    torch.manual_seed(1)
    x = torch.rand(batch, 3, 32, 32)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    params = list(student.parameters())
    if mode == "clip_distill":
        student.train()
        opt = torch.optim.Adam(params, lr=1e-4)

        def step():
            with mixed(amp):
                with torch.no_grad():
                    target = teacher((x - mean) / std)
                loss = sigmoid_distillation_loss(student(add_inverse(x)).float(), target.float())
            loss.backward()
            adaptive_clip_(params)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    student.eval().set_explain(True)
    for p in params:
        p.requires_grad_(False)
    texts = F.normalize(torch.randn(10, 256), dim=-1)

    def step():
        x6 = add_inverse(x).requires_grad_()
        s = student(x6)
        cos = (s / s.norm(dim=-1, keepdim=True).detach()) @ texts.T
        cos.gather(1, cos.argmax(1, keepdim=True)).sum().backward()
        return x6.grad
    return step


def time_and_report(step, batch, seconds):
    """Two warm-up steps, then steps for `seconds` (at least 2); prints the result line."""
    for _ in range(2):
        step()
    iters, start = 0, time.perf_counter()
    while iters < 2 or time.perf_counter() - start < seconds:
        step()
        iters += 1
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"images_per_s {iters * batch / elapsed:.2f} peak_rss_mb {peak:.1f}")


def torch_child(mode, batch, seconds, threads, autocast="none"):
    """Runs in a child process: one configuration, prints the result line."""
    torch.set_num_threads(threads)
    amp = {"none": None, "bf16": torch.bfloat16}[autocast]
    if mode.startswith("clip_"):
        time_and_report(clip_step(mode, batch, amp), batch, seconds)
        return
    model = bcosify(cifar_resnet20())
    torch.manual_seed(1)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    params = list(model.parameters())

    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        target = F.one_hot(y, 10).float().clamp(min=1.0 / 10)

        def step():
            with mixed(amp):
                loss = F.binary_cross_entropy_with_logits(model(add_inverse(x)).float(), target)
            loss.backward()
            adaptive_clip_(params)  # clip 0.01, eps 1e-3
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval().set_explain(True)
        for p in params:  # only the input gradient is wanted
            p.requires_grad_(False)

        def step():
            x6 = add_inverse(x).requires_grad_()
            logits = model(x6)
            logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
            return x6.grad

    time_and_report(step, batch, seconds)


def self_check():
    """float64 checks of the conversion; prints each and exits non-zero on a failure."""
    torch.set_num_threads(1)
    ok = True

    def report(name, err, tol):
        nonlocal ok
        ok &= err < tol
        print(f"  {name:62s} max err {err:.2e}  {'ok' if err < tol else 'FAIL'}")

    # 1. b = 1, biases kept, no logit bias: the original's eval logits on normalised inputs. The
    #    uncentred BN equals nn.BatchNorm2d in eval only where running_mean = 0, so the BN weights,
    #    biases and running variances are randomised but the running means are left at zero.
    gen = torch.Generator().manual_seed(3)
    original = cifar_resnet20()
    with torch.no_grad():
        for m in original.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        original.linear.bias.copy_(torch.randn(10, generator=gen) * 0.1)
    original = original.double().eval()
    bcos = bcosify(original, b=1, keep_bias=True, logit_bias=0.0).double().eval()
    # float64 constants: float32 rounds mu and 1 - mu apart (~1e-8)
    bcos.mean6.copy_(torch.tensor(MEAN + tuple(1 - m for m in MEAN), dtype=torch.float64).view(1, 6, 1, 1))
    bcos.std6.copy_(torch.tensor(STD + STD, dtype=torch.float64).view(1, 6, 1, 1))
    x = torch.rand(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    xn = (x - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        ref, got = original(xn), bcos(add_inverse(x))
    report("b=1 + biases: logits == CifarResNet(20)(normalised x), eval", (ref - got).abs().max().item(), 1e-10)

    # 2. b = 2, no biases, explain mode (eval): each logit is linear in the normalised input with
    #    the dynamic weights: logit + ln 9 = <d logit / d x6n, x6n> = <d logit / d x6, x6 - mu6>.
    bcos = bcosify(cifar_resnet20()).double().eval().set_explain(True)
    x6 = add_inverse(x).requires_grad_()
    logits = bcos(x6)
    cls = logits.argmax(1, keepdim=True)
    picked = logits.gather(1, cls)
    picked.sum().backward()
    contrib = (x6.grad * (x6.detach() - bcos.mean6)).sum((1, 2, 3))
    err = (contrib - (picked.detach().squeeze(1) + math.log(9.0))).abs().max().item()
    report("b=2 explain: predicted logit + ln 9 == <grad, x6 - mu6> (rel.)", err / picked.abs().max().item(), 1e-9)
    # (b = 2 B-cos layers are positively homogeneous of degree 1, so the identity above nearly
    # holds without the detaching too; the gradients themselves must differ, though.)
    g_explain = x6.grad.clone()
    bcos.set_explain(False)
    x6.grad = None
    bcos(x6).gather(1, cls).sum().backward()
    rel = ((x6.grad - g_explain).norm() / g_explain.norm()).item()
    ok &= rel > 1e-2
    print(f"  {'b=2: explain input gradient differs from the plain one':62s} rel. diff {rel:.2e}"
          f"  {'ok' if rel > 1e-2 else 'FAIL'}")

    # 3. uncentred BN, training, as the B-cosification authors' layer: running_var follows the
    #    *biased* batch variance, running_mean stays as converted; output gamma * x / sqrt(var + eps)
    bnu = bcosify(cifar_resnet20()).net.layer2[0].bn1.double().train()
    c = bnu.weight.numel()
    mean0, var0 = bnu.running_mean.clone(), bnu.running_var.clone()
    xb = torch.randn(8, c, 5, 5, generator=gen, dtype=torch.float64) + 0.7
    y = bnu(xb)
    biased = xb.var(dim=(0, 2, 3), unbiased=False)
    report("uncentred BN train: running_mean left as converted", (bnu.running_mean - mean0).abs().max().item(), 1e-12)
    report("uncentred BN train: running_var follows the biased variance",
           (bnu.running_var - (0.9 * var0 + 0.1 * biased)).abs().max().item(), 1e-12)
    want = xb / (xb.var(dim=(0, 2, 3), unbiased=False).view(1, -1, 1, 1) + 1e-5).sqrt()
    report("uncentred BN train: output == x / sqrt(var + eps) (gamma = 1)", (y - want).abs().max().item(), 1e-12)
    print("self-check", "passed" if ok else "FAILED")
    sys.exit(0 if ok else 1)


def measure(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench/bcos: {' '.join(cmd)} failed:\n{out.stderr}")
    lines = [l for l in out.stdout.splitlines() if RESULT.match(l)]
    if len(lines) != 1:
        sys.exit(f"bench/bcos: unexpected output from {' '.join(cmd)}:\n{out.stdout}")
    m = RESULT.match(lines[0])
    return float(m.group(1)), float(m.group(2))


def alternate(run_torch, run_bcos, repeat):
    """Runs PyTorch's and bcos.cpp's measurement alternately `repeat` times. Returns the median
    (speed, memory) of each side (bcos: None without run_bcos) and the range of the paired speed
    ratios: this VM's speed drifts by 10 % and more over minutes, so one run each can mislead."""
    torch_runs, bcos_runs = [], []
    for _ in range(max(1, repeat)):
        torch_runs.append(run_torch())
        if run_bcos:
            bcos_runs.append(run_bcos())
    median = lambda runs, i: statistics.median(r[i] for r in runs)
    t = (median(torch_runs, 0), median(torch_runs, 1))
    if not bcos_runs:
        return t, None, ""
    ratios = [b[0] / tr[0] for tr, b in zip(torch_runs, bcos_runs)]
    spread = f" {min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
    return t, (median(bcos_runs, 0), median(bcos_runs, 1)), spread


def main():
    ap = argparse.ArgumentParser(description="B-cosified CIFAR ResNet-20: bcos.cpp beside PyTorch")
    ap.add_argument("--binary", default="build/bench/bench_bcos")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--check", action="store_true", help="run the conversion self-check and exit")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the two sides alternately this many times; report medians and the paired ratios' range")
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none",
                    help="bf16: the training modes in mixed precision on both sides (torch.autocast / AutocastGuard)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.autocast != "none" and a.modes == ",".join(MODES):
        a.modes = "train,clip_distill"
    if a.check:
        self_check()
    if a.child:
        torch_child(a.child, a.batch, a.seconds, a.threads, a.autocast)
        return
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {','.join(bad)}; choose from {','.join(MODES)}")
    if a.autocast != "none" and any(m.endswith("explain") for m in modes):
        ap.error(f"--autocast {a.autocast} applies to the training modes (train, clip_distill), not explanations")
    have_binary = os.path.isfile(a.binary) and os.access(a.binary, os.X_OK)
    env = dict(os.environ, BCOS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    amp_note = f", autocast {a.autocast}" if a.autocast != "none" else ""
    print(f"torch {torch.__version__}, {a.threads} threads{amp_note}, batch {a.batch}, ~{a.seconds:g} s per measurement,"
          f" each in its own process; B-cosified CIFAR ResNet-20 and CLIP RN tower (b = 2)")
    if not have_binary:
        print(f"bench/bcos: NOTE: {a.binary} not found (or not executable); reporting PyTorch only")
    print(f"{'mode':12s} {'torch img/s':>12s} {'bcos img/s':>11s} {'ratio':>6s}"
          f" {'torch MB':>9s} {'bcos MB':>8s} {'mem ratio':>9s}" + (" ratio range" if a.repeat > 1 else ""))
    for mode in modes:
        torch_cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(a.threads), "--seconds",
                     str(a.seconds), "--batch", str(a.batch), "--autocast", a.autocast, "--child", mode]
        bcos_cmd = [a.binary, "--threads", str(a.threads), "--seconds", str(a.seconds), "--batch", str(a.batch),
                    "--mode", mode, "--autocast", a.autocast]
        (t_speed, t_mem), b, spread = alternate(lambda: measure(torch_cmd, env),
                                                (lambda: measure(bcos_cmd, env)) if have_binary else None, a.repeat)
        if b:
            b_speed, b_mem = b
            print(f"{mode:12s} {t_speed:12.1f} {b_speed:11.1f} {b_speed / t_speed:6.2f}"
                  f" {t_mem:9.0f} {b_mem:8.0f} {t_mem / b_mem:9.2f}{spread}", flush=True)
        else:
            print(f"{mode:12s} {t_speed:12.1f} {'-':>11s} {'-':>6s} {t_mem:9.0f} {'-':>8s} {'-':>9s}", flush=True)


if __name__ == "__main__":
    main()
