#!/usr/bin/python3
"""PyTorch side of bench/ops: times the same matmul, conv2d, attention and layer norm (forward +
backward) shapes with torch and with build/bench/bench_ops, in one run and with one thread count,
and prints GFLOP/s (layer norm: milliseconds) for both and their ratio (torch time / bcos time;
above 1 means bcos.cpp is faster)."""
import argparse
import math
import os
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

# [M, K] x [K, N]. The ResNet-50 rows are its convolutions in im2col form for one 224x224 image
# (M = out channels, K = in channels * kh * kw, N = output pixels) and its classifier at batch 8.
MATMUL = [
    ("square 512", 512, 512, 512),
    ("square 1024", 1024, 1024, 1024),
    ("square 2048", 2048, 2048, 2048),
    ("r50 stem 7x7", 64, 147, 12544),
    ("r50 layer1 1x1 reduce", 64, 256, 3136),
    ("r50 layer1 3x3", 64, 576, 3136),
    ("r50 layer1 1x1 expand", 256, 64, 3136),
    ("r50 layer2 3x3", 128, 1152, 784),
    ("r50 layer3 3x3", 256, 2304, 196),
    ("r50 layer4 3x3", 512, 4608, 49),
    ("r50 fc batch 8", 8, 2048, 1000),
]
# batch N, in channels C, input H x H, out channels O, kernel K x K, stride, padding
# (name, N, heads, L, D, causal): ViT-B/16 and ViT-B/32 self-attention at batch 8, CLIP's text
# tower (causal) at 64 texts.
ATTENTION = [
    ("ViT-B/16", 8, 12, 197, 64, 0),
    ("ViT-B/32", 8, 12, 50, 64, 0),
    ("CLIP text, causal", 64, 8, 77, 64, 1),
]

# (name, rows, inner): layer norm over the channels of ViT-B/16's tokens at batch 8 (197 x 8 rows)
# and of CLIP's text tower at 64 texts of 77 tokens.
LAYER_NORM = [
    ("ViT-B/16 tokens", 1576, 768),
    ("CLIP text tokens", 4928, 512),
]

CONV = [
    ("stem 7x7/2", 8, 3, 224, 64, 7, 2, 3),
    ("layer1 3x3", 8, 64, 56, 64, 3, 1, 1),
    ("layer1 1x1 expand", 8, 64, 56, 256, 1, 1, 0),
    ("layer2 3x3/2", 8, 128, 56, 128, 3, 2, 1),
    ("layer2 3x3", 8, 128, 28, 128, 3, 1, 1),
    ("layer3 3x3", 8, 256, 14, 256, 3, 1, 1),
    ("layer4 3x3", 8, 512, 7, 512, 3, 1, 1),
    ("layer4 1x1 expand", 8, 512, 7, 2048, 1, 1, 0),
]


def median_seconds(step):
    step()
    times, total = [], 0.0
    while len(times) < 3 or (total < 1.0 and len(times) < 50):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        total += times[-1]
    return statistics.median(times)


def torch_matmul(m, k, n):
    a, b = torch.randn(m, k), torch.randn(k, n)
    with torch.no_grad():
        return median_seconds(lambda: torch.matmul(a, b))


def torch_conv(n, c, h, o, k, s, p):
    x = torch.randn(n, c, h, h, requires_grad=True)
    w = (torch.randn(o, c, k, k) * 0.05).requires_grad_()
    g = torch.randn(F.conv2d(x, w, stride=s, padding=p).shape)

    def step():
        F.conv2d(x, w, stride=s, padding=p).backward(g)
        x.grad = None
        w.grad = None
    return median_seconds(step)


def torch_attention(n, h, length, d, causal):
    """PyTorch's math form of scaled dot-product attention (Debian's torch 1.13 predates the fused one)."""
    q, k, v = (torch.randn(n, h, length, d, requires_grad=True) for _ in range(3))
    g = torch.randn(n, h, length, d)
    hidden = torch.ones(length, length, dtype=torch.bool).triu(1) if causal else None

    def step():
        logits = q @ k.transpose(-2, -1) / math.sqrt(d)
        if hidden is not None:
            logits = logits.masked_fill(hidden, float("-inf"))
        (torch.softmax(logits, -1) @ v).backward(g)
        q.grad = k.grad = v.grad = None
    return median_seconds(step)


def torch_layer_norm(rows, inner):
    x = torch.randn(rows, inner, requires_grad=True)
    w, b = torch.randn(inner, requires_grad=True), torch.randn(inner, requires_grad=True)
    g = torch.randn(rows, inner)

    def step():
        F.layer_norm(x, (inner,), w, b).backward(g)
        x.grad = w.grad = b.grad = None
    return median_seconds(step)


def bcos_seconds(binary, threads, args):
    env = dict(os.environ, BCOS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([binary] + [str(a) for a in args], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="build/bench/bench_ops")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", choices=["matmul", "conv", "attention", "layer_norm"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = dict(os.environ, BCOS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    peak_line = subprocess.run([args.binary, "peak"], env=env, check=True, capture_output=True, text=True).stdout.split()
    peak = float(peak_line[1])
    print(f"torch {torch.__version__}, {args.threads} threads, float32; GFLOP/s (higher is better)")
    print(f"CPU peak (FMA chains, {peak_line[5]}): {peak:.0f} GFLOP/s on {args.threads} threads;"
          f" bcos GEMM kernel: {' '.join(peak_line[7:-2])}")
    rows = []
    if args.only in (None, "matmul"):
        for name, m, k, n in MATMUL:
            flops = 2.0 * m * k * n
            rows.append(("matmul", f"{name} [{m}x{k}]x[{k}x{n}]", flops,
                         bcos_seconds(args.binary, args.threads, ["matmul", m, k, n]),
                         torch_matmul(m, k, n), 0.7))
    if args.only in (None, "conv"):
        for name, n, c, h, o, k, s, p in CONV:
            ho = (h + 2 * p - k) // s + 1
            flops = 3 * 2.0 * n * o * ho * ho * c * k * k  # forward, input grad, weight grad
            rows.append(("conv fwd+bwd", f"{name} x[{n},{c},{h},{h}] w[{o},{c},{k},{k}]", flops,
                         bcos_seconds(args.binary, args.threads, ["conv", n, c, h, o, k, s, p]),
                         torch_conv(n, c, h, o, k, s, p), 0.5))
    if args.only in (None, "attention"):
        for name, n, h, length, d, causal in ATTENTION:
            flops = 2 * 2.0 * n * h * length * length * d * 3.5  # two products forward, five backward
            for fused in (1, 0):
                rows.append(("attn " + ("fused" if fused else "composed"), f"{name} [{n},{h},{length},{d}]", flops,
                             bcos_seconds(args.binary, args.threads, ["attention", n, h, length, d, causal, fused]),
                             torch_attention(n, h, length, d, causal), 0.7))
    misses = 0
    if rows:
        width = max(len(r[1]) for r in rows)
        print(f"{'op':13} {'shape':{width}}  {'bcos':>8} {'torch':>8}  {'ratio':>6}  {'bcos/peak':>9}  bar")
        for kind, label, flops, ours, theirs, bar in rows:
            ratio = theirs / ours
            ok = ratio >= bar
            misses += not ok
            print(f"{kind:13} {label:{width}}  {flops / ours / 1e9:8.1f} {flops / theirs / 1e9:8.1f}  "
                  f"{ratio:6.2f}  {flops / ours / 1e9 / peak:8.0%}  {'ok' if ok else 'MISS'} (>= {bar})")
    # Layer norm moves memory rather than multiplying: milliseconds per forward + backward instead.
    norm_rows = []
    if args.only in (None, "layer_norm"):
        for name, r, inner in LAYER_NORM:
            norm_rows.append((f"{name} [{r}, {inner}]", bcos_seconds(args.binary, args.threads, ["layer_norm", r, inner]),
                              torch_layer_norm(r, inner)))
        width = max(len(r[0]) for r in norm_rows)
        print(f"\nlayer_norm forward + backward (weight, bias), ms (lower is better)")
        print(f"{'shape':{width}}  {'bcos':>8} {'torch':>8}  {'ratio':>6}  bar")
        for label, ours, theirs in norm_rows:
            ok = theirs / ours >= 1.0
            misses += not ok
            print(f"{label:{width}}  {ours * 1e3:8.3f} {theirs * 1e3:8.3f}  {theirs / ours:6.2f}  "
                  f"{'ok' if ok else 'MISS'} (>= 1.0)")
    total = len(rows) + len(norm_rows)
    print(f"{total - misses}/{total} shapes meet the bar")


if __name__ == "__main__":
    main()
