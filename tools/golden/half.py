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
  product.<op>.<t>.{in<i>, gout, out, grad<i>} linear, matmul, bmm, conv2d (padded; grouped,
                                               strided, dilated): exact sums, rounded once
  engine.<t>.{x, w, gout, grad_x, grad_w}      x used twice (its gradients accumulate in type t)
  widened.<op>.<t>.{in<i>, gout, out, grad<i>} ops without 16-bit kernels (norms, softmax, losses,
                                               pooling, attention, embedding): PyTorch float32 on
                                               the widened values, rounded once; batch_norm_train
                                               also its float32 running statistics after the step
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
    return torch.randn(tuple(s), generator=gen)


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


PRODUCTS = {
    # name: (input shapes, function): the answers are exact sums (float64) of the 16-bit values
    "linear": ([(6, 40), (24, 40), (24,)], lambda x, w, b: F.linear(x, w, b)),
    "matmul": ([(2, 3, 36), (36, 7)], torch.matmul),
    "bmm": ([(3, 9, 33), (3, 33, 6)], torch.matmul),
    "conv": ([(2, 5, 9, 9), (8, 5, 3, 3), (8,)], lambda x, w, b: F.conv2d(x, w, b, padding=1)),
    "conv_grouped": ([(2, 8, 10, 10), (6, 4, 3, 3)],
                     lambda x, w: F.conv2d(x, w, None, stride=2, padding=1, dilation=2, groups=2)),
}


# Ops computed in float32 (their inputs' 16-bit values widened), each result rounded once: norms,
# softmax, losses, pooling, attention, embedding. Inputs: (shape, kind); kind "x": 16-bit, "p":
# float32 parameters (batch norm's, as PyTorch allows beside a 16-bit input), "u": 16-bit values
# in [0, 1) (targets), "i<n>": indices < n.
WIDENED = {
    "softmax": ([((4, 9), "x")], lambda x: torch.softmax(x, -1)),
    "log_softmax": ([((4, 9), "x")], lambda x: torch.log_softmax(x, 1)),
    "layer_norm": ([((3, 5, 8), "x"), ((8,), "x"), ((8,), "x")], lambda x, w, b: F.layer_norm(x, (8,), w, b)),
    "group_norm": ([((2, 6, 3, 3), "x"), ((6,), "x"), ((6,), "x")], lambda x, w, b: F.group_norm(x, 3, w, b)),
    "batch_norm_eval": ([((4, 3, 5, 5), "x"), ((3,), "p"), ((3,), "p")],
                        lambda x, w, b: F.batch_norm(x, torch.linspace(-0.5, 0.5, 3, dtype=x.dtype),
                                                     torch.linspace(0.5, 2, 3, dtype=x.dtype), w, b, False)),
    "max_pool2d": ([((2, 3, 7, 7), "x")], lambda x: F.max_pool2d(x, 3, 2, 1)),
    "avg_pool2d": ([((2, 3, 7, 7), "x")], lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    "adaptive_avg_pool2d": ([((2, 3, 7, 7), "x")], lambda x: F.adaptive_avg_pool2d(x, (3, 2))),
    "cross_entropy": ([((6, 5), "x"), ((6,), "i5")], lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1)),
    "bce_with_logits": ([((4, 6), "x"), ((4, 6), "u")], F.binary_cross_entropy_with_logits),
    "attention": ([((2, 3, 7, 16), "x"), ((2, 3, 7, 16), "x"), ((2, 3, 7, 16), "x")],
                  lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
                  if hasattr(F, "scaled_dot_product_attention") else
                  torch.softmax((q @ k.transpose(-1, -2) / 4).masked_fill(torch.ones(7, 7).triu(1).bool(), float("-inf")), -1) @ v),
    "embedding": ([((10, 4), "x"), ((3, 5), "i10")], lambda w, i: F.embedding(i, w)),
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
        for name, (shapes, fn) in PRODUCTS.items():
            inputs = [N(*shape).to(dtype) for shape in shapes]
            probe = fn(*[t.double() for t in inputs])
            gout = N(*probe.shape).to(dtype)
            y, grads = opmath(fn, inputs, gout, dtype, torch.float64)
            key = f"product.{name}.{tag}"
            out.update({f"{key}.in{i}": t for i, t in enumerate(inputs)})
            out.update({f"{key}.grad{i}": g for i, g in enumerate(grads)})
            out.update({f"{key}.gout": gout, f"{key}.out": y})
            if dtype == torch.bfloat16:
                cross_check(f"product.{name}", fn, inputs, gout, y, grads)
        for name, (specs, fn) in WIDENED.items():
            inputs = []
            for shape, kind in specs:
                if kind.startswith("i"):
                    inputs.append(torch.randint(0, int(kind[1:]), shape, generator=gen))
                elif kind == "u":  # targets in [0, 1]
                    inputs.append(torch.rand(shape, generator=gen).to(dtype))
                else:
                    inputs.append(N(*shape).to(dtype if kind == "x" else torch.float32))
            key = f"widened.{name}.{tag}"
            differentiable = [i for i, t in enumerate(inputs) if t.is_floating_point()]

            def on(*diff, inputs=inputs, differentiable=differentiable, fn=fn):
                args = list(inputs)
                for i, t in zip(differentiable, diff):
                    args[i] = t
                return fn(*args)

            diff_inputs = [inputs[i] for i in differentiable]
            probe = on(*[t.float() for t in diff_inputs])
            gout = N(*probe.shape).to(dtype)
            leaves = [t.float().requires_grad_(True) for t in diff_inputs]
            y = on(*leaves)
            y.backward(gout.float())
            out.update({f"{key}.in{i}": t for i, t in enumerate(inputs)})
            out.update({f"{key}.grad{i}": leaf.grad.to(inputs[i].dtype) for i, leaf in zip(differentiable, leaves)})
            out.update({f"{key}.gout": gout, f"{key}.out": y.detach().to(dtype)})
        # Batch norm in training: a 16-bit input, float32 parameters and running statistics
        # (stepped in float32 as PyTorch's are), and the same with 16-bit running statistics.
        x, w, b = N(4, 3, 5, 5).to(dtype), N(3), N(3)
        rm, rv = torch.linspace(-0.5, 0.5, 3), torch.linspace(0.5, 2, 3)
        gout = N(4, 3, 5, 5).to(dtype)
        leaves = [x.float().requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True)]
        y = F.batch_norm(leaves[0], rm, rv, leaves[1], leaves[2], True, 0.1, 1e-5)
        y.backward(gout.float())
        key = f"widened.batch_norm_train.{tag}"
        out.update({f"{key}.in0": x, f"{key}.in1": w, f"{key}.in2": b, f"{key}.gout": gout,
                    f"{key}.out": y.detach().to(dtype), f"{key}.grad0": leaves[0].grad.to(dtype),
                    f"{key}.grad1": leaves[1].grad, f"{key}.grad2": leaves[2].grad,
                    f"{key}.running_mean": rm, f"{key}.running_var": rv})
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
