#!/usr/bin/python3
"""Golden fixtures for autocast (autograd/autograd.h: AutocastGuard): products whose operands are
rounded to bfloat16 / float16 and summed in float32.

Writes tests/golden/autocast.safetensors. For each case <c> (linear, matmul, bmm, conv, conv_grouped):
  <c>.in<i>                 the float32 inputs (i = 0: the left operand / image, 1: the weight, 2: bias)
  <c>.gout                  the float32 gradient fed to the output
  <c>.<t>.out, <c>.<t>.grad<i>   t = bf16, f16: the exact answer of "round both operands of every
                            product (forward and backward, including the incoming gradient) to t,
                            then sum": float64 arithmetic on the rounded values, stored as float32
  <c>.torch.out, <c>.torch.grad<i>  what torch.autocast("cpu", torch.bfloat16) gives (a bf16
                            output, as ours)
and two small networks under torch.autocast (conv_net, block_net: see networks()).
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


# Two small networks run whole under torch.autocast("cpu", bfloat16): the dtype after each stage
# (0: float32, 1: bfloat16) is what the lists give, the loss and the parameters' gradients what the
# numbers do. <net>.x, <net>.target, <net>.p<i> (parameters), <net>.dtypes, <net>.loss,
# <net>.grad<i>.
def conv_net(x, target, w1, b1, bnw, bnb, w2, fw, fb):
    d = []
    h = F.conv2d(x, w1, b1, padding=1); d.append(h)
    h = F.batch_norm(h, None, None, bnw, bnb, training=True); d.append(h)
    h = F.max_pool2d(F.relu(h), 2); d.append(h)
    h = h + F.conv2d(h, w2, None, padding=1); d.append(h)
    h = F.adaptive_avg_pool2d(h, 1).flatten(1); d.append(h)
    y = F.linear(h, fw, fb); d.append(y)
    loss = F.cross_entropy(y, target); d.append(loss)
    return loss, d


def block_net(x, target, wqkv, bqkv, wo, lnw, lnb, wfc, wout):
    d = []
    h = F.linear(x, wqkv, bqkv); d.append(h)  # [2, 5, 48]
    q, k, v = (t.reshape(2, 5, 2, 8).transpose(1, 2) for t in h.split(16, -1))
    s = torch.matmul(q, k.transpose(-2, -1)) * 8 ** -0.5; d.append(s)
    a = torch.softmax(s, -1); d.append(a)
    o = torch.matmul(a, v).transpose(1, 2).reshape(2, 5, 16); d.append(o)
    r = x + F.linear(o, wo); d.append(r)
    m = F.gelu(F.linear(F.layer_norm(r, (16,), lnw, lnb), wfc)); d.append(m)
    m = F.layer_norm(m, (32,)); d.append(m)
    y = F.linear(m, wout).mean(1); d.append(y)
    loss = F.cross_entropy(y, target); d.append(loss)
    return loss, d


def networks():
    conv = ([N(2, 3, 8, 8), torch.tensor([1, 4])],
            [N(8, 3, 3, 3) * 0.3, N(8) * 0.1, 1 + 0.1 * N(8), 0.1 * N(8), N(8, 8, 3, 3) * 0.15, N(5, 8) * 0.3,
             N(5) * 0.1], conv_net)
    block = ([N(2, 5, 16), torch.tensor([0, 3])],
             [N(48, 16) * 0.25, N(48) * 0.1, N(16, 16) * 0.25, 1 + 0.1 * N(16), 0.1 * N(16), N(32, 16) * 0.25,
              N(4, 32) * 0.2], block_net)
    return {"conv_net": conv, "block_net": block}


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
    for name, (data, params, fn) in networks().items():
        out[f"{name}.x"], out[f"{name}.target"] = data
        for i, p in enumerate(params):
            out[f"{name}.p{i}"] = p
        leaves = [p.clone().requires_grad_(True) for p in params]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, stages = fn(*data, *leaves)
        loss.backward()
        out[f"{name}.dtypes"] = torch.tensor([float(t.dtype == torch.bfloat16) for t in stages])
        out[f"{name}.loss"] = loss.detach().float()
        for i, p in enumerate(leaves):
            out[f"{name}.grad{i}"] = p.grad
    path = os.path.join(ROOT, "tests", "golden", "autocast.safetensors")
    save(out, path, {"generator": "tools/golden/autocast.py", "torch": torch.__version__})
    print(f"wrote {len(CASES)} cases, {len(out)} tensors to {path}")


if __name__ == "__main__":
    main()
