#!/usr/bin/python3
"""Golden fixtures for nn/optim and nn/schedule: PyTorch's optimizers and LR schedulers.

Writes tests/golden/optim.safetensors:
  params.in<i>, grads.step<s>.<i>   two parameters and the gradients fed at steps 1..3
  <opt>.step<s>.<i>                 parameter i after step s, for each optimizer configuration
  clip.grads.<i>, clip.norm         clip_grad_norm_(max_norm=0.5) of the step-1 gradients
  clip_inf.grads.<i>, clip_inf.norm the same with norm_type=inf
  lr.<schedule>                     float64 learning rates at steps 0..N-1
Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/optim.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
gen = torch.Generator().manual_seed(20261127)
STEPS = 3

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.1),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_wd_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=3e-3, eps=1e-6, amsgrad=True),
}


def schedules():
    def run(make, n):
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=0.1)
        sched = make(opt)
        lrs = []
        for _ in range(n):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return torch.tensor(lrs, dtype=torch.float64)

    S = torch.optim.lr_scheduler
    out = {}
    # 5 warmup steps from lr / 3, then cosine down to 1e-4 over 15 steps (20 in all)
    out["lr.cosine_warmup"] = run(lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=1 / 3, total_iters=5), S.CosineAnnealingLR(o, T_max=15, eta_min=1e-4)],
        milestones=[5]), 21)
    out["lr.cosine"] = run(lambda o: S.CosineAnnealingLR(o, T_max=12), 13)
    out["lr.step"] = run(lambda o: S.StepLR(o, step_size=3, gamma=0.5), 10)
    out["lr.multistep"] = run(lambda o: S.MultiStepLR(o, milestones=[2, 5], gamma=0.1), 8)
    return out


def main():
    out = {}
    params = [torch.randn(5, 4, generator=gen), torch.randn(3, generator=gen)]
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(STEPS)]
    for i, p in enumerate(params):
        out[f"params.in{i}"] = p
    for s, gs in enumerate(grads):
        for i, g in enumerate(gs):
            out[f"grads.step{s + 1}.{i}"] = g
    for name, make in OPTIMIZERS.items():
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = make(ps)
        for s in range(STEPS):
            for p, g in zip(ps, grads[s]):
                p.grad = g.clone()
            opt.step()
            for i, p in enumerate(ps):
                out[f"{name}.step{s + 1}.{i}"] = p.detach().clone()
    for tag, norm_type in (("clip", 2.0), ("clip_inf", float("inf"))):
        ps = [p.clone().requires_grad_(True) for p in params]
        for p, g in zip(ps, grads[0]):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm=0.5, norm_type=norm_type)
        out[f"{tag}.norm"] = total.reshape(1)
        for i, p in enumerate(ps):
            out[f"{tag}.grads.{i}"] = p.grad.clone()
    out.update(schedules())
    path = os.path.join(ROOT, "tests", "golden", "optim.safetensors")
    save(out, path, {"generator": "tools/golden/optim.py", "torch": torch.__version__})
    print(f"wrote {len(out)} tensors ({os.path.getsize(path)} bytes) to {path}")
    for k in ("lr.cosine_warmup", "lr.cosine"):
        print(k, [round(v, 6) for v in out[k].tolist()])


if __name__ == "__main__":
    main()
