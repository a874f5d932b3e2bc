#!/usr/bin/python3
"""Golden fixtures for scaled_dot_product_attention (autograd/attention.cpp).

PyTorch 2's torch.nn.functional.scaled_dot_product_attention is defined as
softmax(q kᵀ · scale + mask) v, with scale 1/sqrt(D) by default, a bool mask keeping a key where
True, and is_causal keeping key j for query i when j <= i (top-left aligned). Debian's torch (1.13)
predates the function, so this script evaluates that definition in float64 on the float32 inputs.

Writes tests/golden/attention.safetensors: for each case <c>
  <c>.q, <c>.k, <c>.v, <c>.mask (when it has one), <c>.gout   float32 inputs (mask bool or float32)
  <c>.out, <c>.grad_q, <c>.grad_k, <c>.grad_v                 float32 of the float64 answers
Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/attention.py
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
gen = torch.Generator().manual_seed(20261202)


def N(*s):
    return torch.randn(*s, generator=gen)


def padding_mask():  # [2, 1, 1, 10]: sample 1 has its last 3 keys padded away
    m = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    m[1, ..., 7:] = False
    return m


# name: (q, k, v, mask or None, causal, scale or None)
CASES = {
    "plain": (N(2, 3, 7, 16), N(2, 3, 9, 16), N(2, 3, 9, 12), None, False, None),
    "causal_two_blocks": (N(1, 2, 140, 8), N(1, 2, 140, 8), N(1, 2, 140, 8), None, True, None),
    "causal_fewer_queries": (N(1, 2, 5, 8), N(1, 2, 9, 8), N(1, 2, 9, 8), None, True, None),
    "bool_padding": (N(2, 3, 6, 8), N(2, 3, 10, 8), N(2, 3, 10, 8), padding_mask(), False, None),
    "float_mask": (N(2, 2, 6, 8), N(2, 2, 5, 8), N(2, 2, 5, 4), N(6, 5), False, None),
    "three_dims_scaled": (N(4, 5, 8), N(4, 6, 8), N(4, 6, 8), None, False, 0.3),
    "mask_and_causal": (N(1, 2, 6, 8), N(1, 2, 6, 8), N(1, 2, 6, 8), N(1, 2, 6, 6), True, None),
}


def attention(q, k, v, mask, causal, scale):
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    logits = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        keep = torch.ones(lq, lk, dtype=torch.bool).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    return torch.softmax(logits, -1) @ v


def main():
    out = {}
    for name, (q, k, v, mask, causal, scale) in CASES.items():
        out[f"{name}.q"], out[f"{name}.k"], out[f"{name}.v"] = q, k, v
        if mask is not None:
            out[f"{name}.mask"] = mask
        leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
        m = mask if mask is None or mask.dtype == torch.bool else mask.double()
        y = attention(*leaves, m, causal, scale)
        gout = N(*y.shape)
        y.backward(gout.double())
        out[f"{name}.gout"] = gout
        out[f"{name}.out"] = y.detach().float()
        for tag, t in zip(("q", "k", "v"), leaves):
            out[f"{name}.grad_{tag}"] = t.grad.float()
    path = os.path.join(ROOT, "tests", "golden", "attention.safetensors")
    save(out, path, {"generator": "tools/golden/attention.py", "torch": torch.__version__})
    print(f"wrote {len(CASES)} cases, {len(out)} tensors to {path}")


if __name__ == "__main__":
    main()
