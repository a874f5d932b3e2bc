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
  bench/models [--threads N] [--seconds S] [--only resnet18,resnet50,resnet20,clip_rn50,clip_vit_b_32,clip_text]
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import time

CONFIGS = [("resnet18", 8, 224), ("resnet50", 8, 224), ("resnet20", 128, 32), ("clip_rn50", 8, 224),
           ("clip_vit_b_32", 8, 224), ("clip_text", 64, 77)]
MODES = {"clip_text": ("infer",)}
RESULT = re.compile(r"^images_per_s (\S+) peak_rss_mb (\S+)$")


def torch_child(arch, batch, size, mode, seconds, threads):
    """Runs in a child process: one configuration, prints the result line."""
    import torch
    import torch.nn.functional as F
    import torchvision

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
    from models import CifarResNet  # the same definition the golden fixtures use

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = None
    if arch.startswith("clip_"):
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
        module = model = CifarResNet(20) if arch == "resnet20" else getattr(torchvision.models, arch)()
        classes = 10 if arch == "resnet20" else 1000
        x = torch.randn(batch, 3, size, size)
        y = torch.randint(0, classes, (batch,))
        params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def run():
        if mode == "infer":
            with torch.no_grad():
                model(x)
        else:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    module.train(mode == "train")
    run()
    iters, start = 0, time.perf_counter()
    while iters < 2 or time.perf_counter() - start < seconds:
        run()
        iters += 1
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"images_per_s {iters * batch / elapsed:.2f} peak_rss_mb {peak:.1f}")


def measure(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench/models: {' '.join(cmd)} failed:\n{out.stderr}")
    lines = [l for l in out.stdout.splitlines() if RESULT.match(l)]
    if len(lines) != 1:
        sys.exit(f"bench/models: unexpected output from {' '.join(cmd)}:\n{out.stdout}")
    m = RESULT.match(lines[0])
    return float(m.group(1)), float(m.group(2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="build/bench/bench_models")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", default="")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        arch, batch, size, mode = a.child
        torch_child(arch, int(batch), int(size), mode, a.seconds, a.threads)
        return
    env = dict(os.environ, BCOS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    only = set(filter(None, a.only.split(",")))
    import torch
    print(f"torch {torch.__version__}, {a.threads} threads, ~{a.seconds:.0f} s per measurement, each in its own process")
    print(f"{'model':13s} {'batch':>5s} {'mode':6s} {'torch img/s':>12s} {'bcos img/s':>11s} {'ratio':>6s}"
          f" {'torch MB':>9s} {'bcos MB':>8s} {'mem ratio':>9s}")
    for arch, batch, size in CONFIGS:
        if only and arch not in only:
            continue
        for mode in MODES.get(arch, ("infer", "train")):
            t_speed, t_mem = measure([sys.executable, __file__, "--threads", str(a.threads), "--seconds",
                                      str(a.seconds), "--child", arch, str(batch), str(size), mode], env)
            b_speed, b_mem = measure([a.binary, "--arch", arch, "--batch", str(batch), "--mode", mode,
                                      "--seconds", str(a.seconds)], env)
            print(f"{arch:13s} {batch:5d} {mode:6s} {t_speed:12.1f} {b_speed:11.1f} {b_speed / t_speed:6.2f}"
                  f" {t_mem:9.0f} {b_mem:8.0f} {t_mem / b_mem:9.2f}", flush=True)


if __name__ == "__main__":
    main()
