#!/usr/bin/python3
"""Golden fixtures for 16-bit floating tensors (tensor/dtype.h: is_half_float): elementwise maps,
binary ops with PyTorch's type promotion, reductions and their gradients on bfloat16 / float16.

The rule both PyTorch (its "opmath" kernels) and bcos.cpp follow: a 16-bit op widens its inputs to
float32, computes there, and rounds the result once. Writes tests/golden/half.safetensors with that
rule's answers, for t in bf16, f16:
  unary.<op>.<t>.{x, gout, out, grad}          op(x) and d op / dx · gout (all type t)
  binary.<op>.<t>.{a, b, gout, out, ga, gb}    a [5, 7] op b [7] (broadcast), gradients of both
  scalar.<op>.<t>.{x, gout, out, grad}         x op s with a Python scalar s (the scalar is not
                                               rounded to t: x * 0.1 is float(x) * 0.1f, rounded)
  mixed.<op>.{a, b, gout, out, ga, gb}         bf16 a [4, 6] op float32 b [4, 6]: a float32 result,
                                               a's gradient bf16, b's float32 (PyTorch's own run)
  reduce.<op>.<t>.{x, out[, gout, grad]}       reductions of x [6, 9, 5] (sums exact: float64);
                                               sum / mean / amax with gradients
  engine.<t>.{x, w, gout, grad_x, grad_w}      x used twice (its gradients accumulate in type t)
The answers are PyTorch float32 (float64) ops on the 16-bit values, rounded once; a gradient that
PyTorch takes from the op's output (exp, sqrt, rsqrt, reciprocal, tanh, sigmoid: grad * f(y)) uses
the output as stored, rounded to t. PyTorch 1.13's own CPU bfloat16 kernels are compared with these
answers and the largest distances printed: most agree to 1 ulp; some (gelu's tanh form, prod) are
missing or compute in bfloat16 there, which later PyTorch releases do not.
Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/half.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
gen = torch.Generator().manual_seed(20261206)
TYPES = (("bf16", torch.bfloat16), ("f16", torch.float16))


def N(*s):
    return torch.randn(*s, generator=gen)


def positive(*s):
    return torch.rand(*s, generator=gen) * 3 + 0.05


UNARY = {
    # name: (input maker, function)
    "neg": (N, torch.neg),
    "abs": (N, torch.abs),
    "sign": (N, torch.sign),
    "exp": (N, torch.exp),
    "log": (positive, torch.log),
    "log1p": (positive, torch.log1p),
    "sqrt": (positive, torch.sqrt),
    "rsqrt": (positive, torch.rsqrt),
    "square": (N, torch.square),
    "reciprocal": (positive, torch.reciprocal),
    "sin": (N, torch.sin),
    "cos": (N, torch.cos),
    "tanh": (N, torch.tanh),
    "sigmoid": (N, torch.sigmoid),
    "relu": (N, torch.relu),
    "gelu": (N, F.gelu),
    "gelu_tanh": (N, lambda x: F.gelu(x, approximate="tanh")),
    "silu": (N, F.silu),
    "pow2_5": (positive, lambda x: torch.pow(x, 2.5)),
    "clamp": (N, lambda x: torch.clamp(x, -0.5, 0.7)),
}

BINARY = {
    "add": (N, N, torch.add),
    "sub": (N, N, torch.sub),
    "mul": (N, N, torch.mul),
    "div": (N, positive, torch.div),
    "pow": (positive, N, torch.pow),
    "maximum": (N, N, torch.maximum),
    "minimum": (N, N, torch.minimum),
}

SCALAR = {
    "mul0_1": lambda x: x * 0.1,
    "add0_3": lambda x: x + 0.3,
    "div3_7": lambda x: x / 3.7,
    "rsub2_5": lambda x: 2.5 - x,
    "rdiv1_3": lambda x: 1.3 / x,
}

REDUCE = {
    # name: (function, has a gradient case)
    "sum": (lambda x: x.sum(1), True),
    "mean": (lambda x: x.mean((0, 2)), True),
    "amax": (lambda x: x.amax(2), True),
    "var": (lambda x: x.var(1), False),
    "norm": (lambda x: torch.linalg.vector_norm(x, 2, dim=2), False),
    "logsumexp": (lambda x: torch.logsumexp(x, 1), False),
    "prod": (lambda x: x.prod(2), False),
}


def grad_of(fn, inputs, gout):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(gout)
    return out.detach(), [t.grad for t in leaves]


# PyTorch's derivatives in terms of the output y: grad * FROM_OUTPUT[op](y).
FROM_OUTPUT = {
    "exp": lambda y: y,
    "sqrt": lambda y: 0.5 / y,
    "rsqrt": lambda y: -0.5 * y * y * y,
    "reciprocal": lambda y: -y * y,
    "tanh": lambda y: 1 - y * y,
    "sigmoid": lambda y: y * (1 - y),
}


def opmath(fn, inputs, gout, dtype, wide=torch.float32, name=None):
    """The op on wide copies of the 16-bit inputs, each result rounded once to dtype."""
    out, grads = grad_of(fn, [t.to(wide) for t in inputs], gout.to(wide))
    out = out.to(dtype)
    if name in FROM_OUTPUT:
        grads = [gout.to(wide) * FROM_OUTPUT[name](out.to(wide))]
    return out, [g.to(dtype) for g in grads]


def ulps(a, b):
    """The largest |a - b| in units in the last place of b (of its 16-bit type), where values
    much smaller than the tensor's largest count in units of 2^-16 of that instead (near zero a
    difference of float32 terms is no longer small against the result's own ulp). As
    tests/autograd/test_half.cpp measures."""
    bits = 7 if b.dtype == torch.bfloat16 else 10
    low = -126 if b.dtype == torch.bfloat16 else -14
    a, b = a.double(), b.double()
    floor = 2.0 ** -16 * float(b.abs().max())
    exponent = torch.floor(torch.log2(b.abs().clamp_min(1e-300))).clamp_min(low)
    unit = torch.maximum(2.0 ** (exponent - bits), torch.full_like(b, floor))
    return float(((a - b).abs() / unit).max())


torch_distance = {}


def cross_check(key, fn, inputs, gout, out, grads):
    """How far PyTorch's own bfloat16 kernels are from the opmath answer (printed, not stored)."""
    try:
        t_out, t_grads = grad_of(fn, inputs, gout)
    except RuntimeError:
        torch_distance[key] = "missing"
        return
    torch_distance[key] = max([ulps(t_out, out)] + [ulps(a, b) for a, b in zip(t_grads, grads) if a.dtype == b.dtype])


def main():
    out = {}
    for tag, dtype in TYPES:
        for name, (make, fn) in UNARY.items():
            x = make(257).to(dtype)
            if name == "clamp":
                x[:4] = torch.tensor([-0.5, 0.7, 0.0, 2.0])
            gout = N(257).to(dtype)
            y, (g,) = opmath(fn, [x], gout, dtype, name=name)
            if dtype == torch.bfloat16:
                cross_check(f"unary.{name}", fn, [x], gout, y, [g])
            out.update({f"unary.{name}.{tag}.x": x, f"unary.{name}.{tag}.gout": gout,
                        f"unary.{name}.{tag}.out": y, f"unary.{name}.{tag}.grad": g})
        for name, (make_a, make_b, fn) in BINARY.items():
            a, b = make_a(5, 7).to(dtype), make_b(7).to(dtype)
            if name in ("maximum", "minimum"):
                a[0] = b  # ties: the gradient is shared
            gout = N(5, 7).to(dtype)
            y, (ga, gb) = opmath(fn, [a, b], gout, dtype)
            if dtype == torch.bfloat16:
                cross_check(f"binary.{name}", fn, [a, b], gout, y, [ga, gb])
            out.update({f"binary.{name}.{tag}.a": a, f"binary.{name}.{tag}.b": b,
                        f"binary.{name}.{tag}.gout": gout, f"binary.{name}.{tag}.out": y,
                        f"binary.{name}.{tag}.ga": ga, f"binary.{name}.{tag}.gb": gb})
        for name, fn in SCALAR.items():
            x = positive(64).to(dtype)
            gout = N(64).to(dtype)
            y, (g,) = opmath(fn, [x], gout, dtype)
            if dtype == torch.bfloat16:
                cross_check(f"scalar.{name}", fn, [x], gout, y, [g])
            out.update({f"scalar.{name}.{tag}.x": x, f"scalar.{name}.{tag}.gout": gout,
                        f"scalar.{name}.{tag}.out": y, f"scalar.{name}.{tag}.grad": g})
        for name, (fn, with_grad) in REDUCE.items():
            x = (positive(6, 9, 5) * 0.5 + 0.6) if name == "prod" else N(6, 9, 5)
            x = x.to(dtype)
            out[f"reduce.{name}.{tag}.x"] = x
            probe = fn(x.double()).to(dtype)
            out[f"reduce.{name}.{tag}.out"] = probe
            gout = N(*probe.shape).to(dtype)
            _, (g,) = opmath(fn, [x], gout, dtype, torch.float64)
            if dtype == torch.bfloat16:
                cross_check(f"reduce.{name}", fn, [x], gout, probe, [g] if with_grad else [])
            if with_grad:
                out[f"reduce.{name}.{tag}.gout"] = gout
                out[f"reduce.{name}.{tag}.grad"] = g
        # The engine: x feeds two ops, so its gradient is a sum of two 16-bit gradients.
        x, w = N(3, 8).to(dtype), N(8).to(dtype)
        gout = N(3, 8).to(dtype)

        def engine(x, w):
            return x * w + torch.tanh(x)

        # Each of x's two gradients rounded, then their sum rounded (an accumulation of 16-bit
        # gradients); w's: the products rounded, then their sum over the broadcast rows.
        g1 = (gout.float() * w.float()).to(dtype)
        g2 = (gout.float() * (1 - torch.tanh(x.float()).to(dtype).float() ** 2)).to(dtype)
        gx = (g1.float() + g2.float()).to(dtype)
        gw = (gout.float() * x.float()).to(dtype).double().sum(0).to(dtype)
        if dtype == torch.bfloat16:
            cross_check("engine", engine, [x, w], gout, engine(x, w), [gx, gw])
        out.update({f"engine.{tag}.x": x, f"engine.{tag}.w": w, f"engine.{tag}.gout": gout,
                    f"engine.{tag}.grad_x": gx, f"engine.{tag}.grad_w": gw})
    for name, (make_a, make_b, fn) in BINARY.items():
        a, b = make_a(4, 6).to(torch.bfloat16), make_b(4, 6)
        gout = N(4, 6)
        y, (ga, gb) = grad_of(fn, [a, b], gout)
        assert y.dtype == torch.float32 and ga.dtype == torch.bfloat16 and gb.dtype == torch.float32
        out.update({f"mixed.{name}.a": a, f"mixed.{name}.b": b, f"mixed.{name}.gout": gout,
                    f"mixed.{name}.out": y, f"mixed.{name}.ga": ga, f"mixed.{name}.gb": gb})
    path = os.path.join(ROOT, "tests", "golden", "half.safetensors")
    save(out, path)
    print(f"wrote {len(out)} tensors to {path}")
    print("PyTorch's own bfloat16 kernels against these answers (largest distance in ulps):")
    for key, d in torch_distance.items():
        print(f"  {key}: {d if isinstance(d, str) else round(d, 2)}")


if __name__ == "__main__":
    main()
