#!/usr/bin/python3
"""Golden fixtures for autocast (autograd/autograd.h: AutocastGuard): products whose operands are
rounded to bfloat16 / float16 and summed in float32.

Writes tests/golden/autocast.safetensors. For each case <c> (linear, matmul, bmm, conv, conv_grouped):
  <c>.in<i>                 the float32 inputs (i = 0: the left operand / image, 1: the weight, 2: bias)
  <c>.gout                  the float32 gradient fed to the output
  <c>.<t>.out, <c>.<t>.grad<i>   t = bf16, f16: the exact answer of "round both operands of every
                            product (forward and backward, including the incoming gradient) to t,
                            then sum": float64 arithmetic on the rounded values, stored as float32
  <c>.torch.out, <c>.torch.grad<i>  what torch.autocast("cpu", torch.bfloat16) gives (PyTorch keeps
                            bf16 outputs, so these agree with ours to bf16's rounding only)
Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/autocast.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
gen = torch.Generator().manual_seed(20261201)


def N(*s):
    return torch.randn(*s, generator=gen)


CASES = {
    # name: (inputs, function of the inputs)
    "linear": ([N(6, 40), N(24, 40), N(24)], lambda x, w, b: F.linear(x, w, b)),
    "matmul": ([N(2, 3, 5, 36), N(36, 7)], lambda a, b: torch.matmul(a, b)),
    "bmm": ([N(3, 9, 33), N(3, 33, 6)], lambda a, b: torch.matmul(a, b)),
    "conv": ([N(2, 5, 9, 9), N(8, 5, 3, 3), N(8)], lambda x, w, b: F.conv2d(x, w, b, padding=1)),
    "conv_grouped": ([N(2, 8, 10, 10), N(6, 4, 3, 3)],
                     lambda x, w: F.conv2d(x, w, None, stride=2, padding=1, dilation=2, groups=2)),
}


def rounded(t, dtype):
    return t.to(dtype).double()


def main():
    out = {}
    for name, (inputs, fn) in CASES.items():
        for i, t in enumerate(inputs):
            out[f"{name}.in{i}"] = t
        probe = fn(*inputs)
        gout = N(*probe.shape)
        out[f"{name}.gout"] = gout
        # The exact answer for each operand type: every product sees rounded operands. The bias
        # is added, not multiplied: it stays as it is (float32 values, exact in float64).
        for tag, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16)):
            leaves = [rounded(t, dtype) if i < 2 else t.double() for i, t in enumerate(inputs)]
            for t in leaves:
                t.requires_grad_(True)
            y = fn(*leaves)
            y.backward(rounded(gout, dtype))
            out[f"{name}.{tag}.out"] = y.detach().float()  # float32 keeps 6e-8 of the exact value
            for i, t in enumerate(leaves):
                g = t.grad
                if i == 2:  # the bias gradient sums the incoming gradient: no product, not rounded
                    g = gout.double().sum(dim=[0] if gout.dim() == 2 else [0, 2, 3])
                out[f"{name}.{tag}.grad{i}"] = g.float()
        # PyTorch's own CPU autocast.
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(*leaves)
        assert y.dtype == torch.bfloat16, (name, y.dtype)
        (y.float() * gout).sum().backward()
        out[f"{name}.torch.out"] = y.detach().float()
        for i, t in enumerate(leaves):
            out[f"{name}.torch.grad{i}"] = t.grad
    path = os.path.join(ROOT, "tests", "golden", "autocast.safetensors")
    save(out, path, {"generator": "tools/golden/autocast.py", "torch": torch.__version__})
    print(f"wrote {len(CASES)} cases, {len(out)} tensors to {path}")


if __name__ == "__main__":
    main()
