#!/usr/bin/python3
"""Golden fixtures for the differentiable ops: PyTorch is the reference.

For every case below this writes, into tests/golden/ops.safetensors:
  <case>.in<i>    the inputs (float32, int64 or bool)
  <case>.out      the first output;  <case>.aux<k> further outputs (indices, running stats)
  <case>.gout     a random gradient for the first output (float outputs only)
  <case>.grad<i>  the gradient of each float input that requires grad
tests/autograd/test_golden.cpp holds the same case names with the bcos.cpp expressions and
fails if either side has a case the other lacks.

Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/ops.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
gen = torch.Generator().manual_seed(20261126)


# ---- input specs: each returns (tensor, requires_grad) -------------------------------------
def N(*s):  # standard normal
    return torch.randn(*s, generator=gen), True


def P(*s):  # positive, away from zero: [0.5, 2)
    return torch.rand(*s, generator=gen) * 1.5 + 0.5, True


def U(*s):  # uniform [0, 1), e.g. BCE targets
    return torch.rand(*s, generator=gen), True


def R(*s):  # small integers as floats, so comparisons see ties
    return torch.randint(-2, 3, s, generator=gen).float(), True


def C(*s):  # a float input that is a constant (no gradient): running statistics
    return torch.randn(*s, generator=gen) * 0.1, False


def V(*s):  # positive constant: running variances
    return torch.rand(*s, generator=gen) + 0.5, False


def I(lo, hi, *s):  # int64 indices
    return torch.randint(lo, hi, s, generator=gen), False


def T(classes, *s):  # class targets with about one in four set to ignore_index -100
    t = torch.randint(0, classes, s, generator=gen)
    drop = torch.rand(*s, generator=gen) < 0.25
    return torch.where(drop, torch.full_like(t, -100), t), False


def M(*s):  # bool mask
    return torch.rand(*s, generator=gen) < 0.5, False


def distinct(*s):  # a normal tensor without near-ties (max / min / topk / pooling)
    n = 1
    for d in s:
        n *= d
    perm = torch.randperm(n, generator=gen).float()
    return (perm / n * 4 - 2).reshape(*s), True


def bn_train(x, rm, rv, w, b):
    rm, rv = rm.clone(), rv.clone()
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
    return y, rm, rv


def bn_relu_train(x, rm, rv, w, b):  # bcos.cpp fuses the two (batch_norm(..., relu=true))
    y, rm, rv = bn_train(x, rm, rv, w, b)
    return F.relu(y), rm, rv


CASES = [
    # elementwise, binary (broadcast and non-contiguous operands)
    ("add_broadcast", [N(4, 5), N(5)], lambda a, b: a + b),
    ("add_alpha", [N(3, 1, 4), N(2, 4)], lambda a, b: torch.add(a, b, alpha=2.5)),
    ("sub_transposed", [N(5, 4), N(4, 5)], lambda a, b: a.t() - b),
    ("mul_broadcast", [N(2, 3, 4), N(3, 1)], lambda a, b: a * b),
    ("div_broadcast", [N(3, 4), P(4)], lambda a, b: a / b),
    ("pow_tensor", [P(3, 4), N(3, 4)], lambda a, b: torch.pow(a, b)),
    ("minimum", [distinct(3, 4), distinct(1, 4)], lambda a, b: torch.minimum(a, b)),
    ("maximum", [distinct(3, 4), distinct(3, 1)], lambda a, b: torch.maximum(a, b)),
    ("add_scalar", [N(3, 4)], lambda a: a + 1.5),
    ("rsub_scalar", [N(3, 4)], lambda a: 2.0 - a),
    ("mul_scalar", [N(3, 4)], lambda a: a * -0.75),
    ("div_scalar", [N(3, 4)], lambda a: a / 3.0),
    ("rdiv_scalar", [P(3, 4)], lambda a: 2.0 / a),
    ("pow_scalar", [P(3, 4)], lambda a: a ** 2.5),
    ("pow_square", [N(3, 4)], lambda a: a ** 2),
    ("pow_negative", [P(3, 4)], lambda a: a ** -0.5),
    # elementwise, unary
    ("neg", [N(3, 4)], torch.neg),
    ("abs", [N(3, 4)], torch.abs),
    ("sign", [N(3, 4)], torch.sign),
    ("exp_transposed", [N(5, 4)], lambda a: torch.exp(a.t())),
    ("log", [P(3, 4)], torch.log),
    ("log1p", [P(3, 4)], torch.log1p),
    ("sqrt", [P(3, 4)], torch.sqrt),
    ("rsqrt", [P(3, 4)], torch.rsqrt),
    ("square", [N(3, 4)], torch.square),
    ("reciprocal", [P(3, 4)], torch.reciprocal),
    ("sin", [N(3, 4)], torch.sin),
    ("cos", [N(3, 4)], torch.cos),
    ("tanh", [N(3, 4)], torch.tanh),
    ("sigmoid", [N(3, 4)], torch.sigmoid),
    ("relu", [N(3, 4)], torch.relu),
    ("gelu", [N(3, 4)], F.gelu),
    ("gelu_tanh", [N(3, 4)], lambda a: F.gelu(a, approximate="tanh")),
    ("silu", [N(3, 4)], F.silu),
    ("clamp", [N(3, 4)], lambda a: torch.clamp(a, -0.5, 0.5)),
    ("clamp_min", [N(3, 4)], lambda a: torch.clamp(a, min=0.1)),
    ("clamp_max", [N(3, 4)], lambda a: torch.clamp(a, max=0.2)),
    ("where", [M(3, 4), N(3, 4), N(4)], lambda m, a, b: torch.where(m, a, b)),
    ("eq", [R(3, 4), R(4)], lambda a, b: a == b),
    ("lt", [R(3, 4), R(4)], lambda a, b: a < b),
    ("ge_scalar", [R(3, 4)], lambda a: a >= 0.0),
    # reductions
    ("sum_all", [N(3, 4, 5)], lambda a: a.sum()),
    ("sum_dims", [N(3, 4, 5)], lambda a: a.sum(dim=(0, 2))),
    ("sum_keepdim", [N(3, 4, 5)], lambda a: a.sum(dim=1, keepdim=True)),
    ("sum_permuted", [N(3, 4, 5)], lambda a: a.permute(2, 0, 1).sum(dim=1)),
    ("mean_last", [N(3, 4, 5)], lambda a: a.mean(dim=-1)),
    ("mean_all", [N(3, 4, 5)], lambda a: a.mean()),
    ("var_unbiased", [N(3, 6)], lambda a: torch.var(a, dim=1, unbiased=True)),
    ("var_population", [N(3, 6)], lambda a: torch.var(a, unbiased=False)),
    ("std_dim0", [N(5, 3)], lambda a: torch.std(a, dim=0, unbiased=True)),
    ("prod", [P(3, 4)], lambda a: torch.prod(a, dim=1)),
    ("norm2", [N(3, 4)], lambda a: torch.linalg.vector_norm(a, 2, dim=1)),
    ("norm1", [N(3, 4)], lambda a: torch.linalg.vector_norm(a, 1)),
    ("logsumexp", [N(3, 5)], lambda a: torch.logsumexp(a, dim=1)),
    ("amax", [distinct(3, 4, 2)], lambda a: torch.amax(a, dim=(0, 2))),
    ("max_all", [distinct(3, 4)], lambda a: a.max()),
    ("min_all", [distinct(3, 4)], lambda a: a.min()),
    ("max_dim", [distinct(3, 5)], lambda a: tuple(torch.max(a, dim=1))),
    ("min_dim_keepdim", [distinct(4, 3)], lambda a: tuple(torch.min(a, dim=0, keepdim=True))),
    ("argmax", [distinct(3, 5)], lambda a: torch.argmax(a, dim=1)),
    ("argmin_all", [distinct(3, 5)], lambda a: torch.argmin(a)),
    # softmax and losses
    ("softmax", [N(4, 7)], lambda a: torch.softmax(a, dim=1)),
    ("softmax_dim0", [N(4, 7)], lambda a: torch.softmax(a, dim=0)),
    ("log_softmax", [N(2, 3, 5)], lambda a: torch.log_softmax(a, dim=1)),
    ("cross_entropy", [N(6, 5), I(0, 5, 6)], lambda x, t: F.cross_entropy(x, t)),
    ("cross_entropy_smooth", [N(6, 5), I(0, 5, 6)], lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1)),
    ("cross_entropy_ignore", [N(8, 5), T(5, 8)], lambda x, t: F.cross_entropy(x, t, ignore_index=-100)),
    ("cross_entropy_smooth_ignore_sum", [N(8, 5), T(5, 8)],
     lambda x, t: F.cross_entropy(x, t, label_smoothing=0.2, reduction="sum")),
    ("cross_entropy_none", [N(6, 5), I(0, 5, 6)], lambda x, t: F.cross_entropy(x, t, reduction="none")),
    ("cross_entropy_spatial", [N(2, 4, 3, 3), I(0, 4, 2, 3, 3)], lambda x, t: F.cross_entropy(x, t)),
    ("nll_loss", [N(6, 5), T(5, 6)], lambda x, t: F.nll_loss(torch.log_softmax(x, 1), t)),
    ("bce_with_logits", [N(4, 3), U(4, 3)], lambda x, t: F.binary_cross_entropy_with_logits(x, t)),
    ("bce_with_logits_weight_sum", [N(4, 3), U(4, 3), V(3)],
     lambda x, t, w: F.binary_cross_entropy_with_logits(x, t, weight=w, reduction="sum")),
    # matmul and linear
    ("mm", [N(5, 7), N(7, 3)], lambda a, b: a @ b),
    ("mm_transposed", [N(7, 5), N(3, 7)], lambda a, b: a.t() @ b.t()),
    ("mv", [N(5, 7), N(7)], lambda a, b: a @ b),
    ("vm", [N(5), N(5, 3)], lambda a, b: a @ b),
    ("dot", [N(7), N(7)], lambda a, b: a @ b),
    ("bmm", [N(2, 5, 7), N(2, 7, 3)], lambda a, b: a @ b),
    ("matmul_broadcast", [N(2, 1, 4, 5), N(3, 5, 6)], lambda a, b: a @ b),
    ("matmul_batched_2d", [N(2, 3, 4, 5), N(5, 6)], lambda a, b: a @ b),
    ("linear", [N(4, 6), N(3, 6), N(3)], lambda x, w, b: F.linear(x, w, b)),
    ("linear_3d_nobias", [N(2, 4, 6), N(3, 6)], lambda x, w: F.linear(x, w)),
    # convolution, pooling, padding
    ("conv2d", [N(2, 3, 8, 8), N(4, 3, 3, 3), N(4)], lambda x, w, b: F.conv2d(x, w, b, padding=1)),
    ("conv2d_stride2", [N(2, 4, 9, 9), N(6, 4, 3, 3)], lambda x, w: F.conv2d(x, w, stride=2, padding=1)),
    ("conv2d_dilated", [N(1, 2, 9, 9), N(3, 2, 3, 3), N(3)],
     lambda x, w, b: F.conv2d(x, w, b, padding=2, dilation=2)),
    ("conv2d_groups", [N(2, 4, 7, 7), N(6, 2, 3, 3), N(6)], lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2)),
    ("conv2d_depthwise", [N(2, 3, 6, 6), N(3, 1, 3, 3)], lambda x, w: F.conv2d(x, w, padding=1, groups=3)),
    ("conv2d_1x1", [N(2, 3, 5, 5), N(5, 3, 1, 1), N(5)], lambda x, w, b: F.conv2d(x, w, b)),
    ("conv2d_asymmetric", [N(2, 3, 7, 8), N(4, 3, 2, 3)],
     lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=(0, 1))),
    ("conv2d_permuted_input", [N(2, 6, 6, 3), N(4, 3, 3, 3)],
     lambda x, w: F.conv2d(x.permute(0, 3, 1, 2), w, padding=1)),
    ("max_pool2d", [distinct(2, 3, 8, 8)], lambda x: F.max_pool2d(x, 3, 2, 1)),
    ("max_pool2d_ceil", [distinct(1, 2, 8, 8)], lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True)),
    ("max_pool2d_dilated", [distinct(1, 2, 9, 9)], lambda x: F.max_pool2d(x, 2, 1, dilation=2)),
    ("max_pool2d_indices", [distinct(1, 2, 6, 6)], lambda x: tuple(F.max_pool2d(x, 2, 2, return_indices=True))),
    ("avg_pool2d", [N(2, 3, 8, 8)], lambda x: F.avg_pool2d(x, 3, 2, 1)),
    ("avg_pool2d_exclude_pad", [N(1, 2, 7, 7)], lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    ("avg_pool2d_divisor", [N(1, 2, 6, 6)], lambda x: F.avg_pool2d(x, 2, divisor_override=3)),
    ("avg_pool2d_ceil", [N(1, 2, 8, 8)], lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("adaptive_avg_pool2d", [N(2, 3, 7, 9)], lambda x: F.adaptive_avg_pool2d(x, (3, 4))),
    ("adaptive_avg_pool2d_global", [N(2, 3, 5, 5)], lambda x: F.adaptive_avg_pool2d(x, 1)),
    ("pad", [N(2, 3, 4, 5)], lambda x: F.pad(x, (1, 2, 0, 3), value=0.5)),
    # normalisation and embedding
    ("batch_norm_train", [N(4, 3, 5, 5), C(3), V(3), N(3), N(3)], bn_train),
    ("batch_norm_eval", [N(4, 3, 5, 5), C(3), V(3), N(3), N(3)],
     lambda x, rm, rv, w, b: F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5)),
    ("batch_norm_2d", [N(8, 5), C(5), V(5), N(5), N(5)], bn_train),
    ("batch_norm_relu_train", [N(4, 3, 5, 5), C(3), V(3), N(3), N(3)], bn_relu_train),
    ("batch_norm_relu_eval", [N(4, 3, 5, 5), C(3), V(3), N(3), N(3)],
     lambda x, rm, rv, w, b: F.relu(F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5))),
    ("layer_norm", [N(3, 4, 6), N(6), N(6)], lambda x, w, b: F.layer_norm(x, (6,), w, b, eps=1e-5)),
    ("layer_norm_2dims", [N(3, 4, 6), N(4, 6), N(4, 6)], lambda x, w, b: F.layer_norm(x, (4, 6), w, b, eps=1e-6)),
    ("group_norm", [N(2, 6, 3, 3), N(6), N(6)], lambda x, w, b: F.group_norm(x, 3, w, b, eps=1e-5)),
    ("embedding", [I(0, 10, 2, 3), N(10, 4)], lambda i, w: F.embedding(i, w)),
    # joining, views and indexing
    ("cat", [N(2, 3), N(2, 1), N(2, 4)], lambda a, b, c: torch.cat([a, b, c], dim=1)),
    ("stack", [N(2, 3), N(2, 3)], lambda a, b: torch.stack([a, b], dim=1)),
    ("split", [N(4, 5)], lambda a: torch.split(a, [2, 3], dim=1)[1]),
    ("chunk", [N(7, 2)], lambda a: torch.chunk(a, 3, dim=0)[1]),
    ("reshape_transposed", [N(4, 6)], lambda a: a.t().reshape(3, 8)),
    ("view", [N(4, 6)], lambda a: a.view(2, 3, 4) * 2),
    ("permute", [N(2, 3, 4)], lambda a: a.permute(2, 0, 1) * 2),
    ("narrow", [N(5, 4)], lambda a: a.narrow(0, 1, 3) * 2),
    ("slice_step", [N(6, 7)], lambda a: a[1:6:2, ::3] * 2),
    ("select", [N(3, 4)], lambda a: a[1] * 2),
    ("expand", [N(3, 1)], lambda a: a.expand(3, 4) * torch.arange(4.0)),
    ("squeeze_unsqueeze", [N(3, 1, 4)], lambda a: a.squeeze(1).unsqueeze(0) * 2),
    ("flatten", [N(2, 3, 4)], lambda a: a.flatten(1) * 2),
    ("index_select", [N(5, 4), I(0, 5, 6)], lambda a, i: torch.index_select(a, 0, i)),
    ("gather", [N(3, 5), I(0, 5, 3, 2)], lambda a, i: torch.gather(a, 1, i)),
    ("scatter_add", [N(3, 5), I(0, 5, 3, 2), N(3, 2)], lambda a, i, s: torch.scatter_add(a, 1, i, s)),
    ("masked_fill", [N(3, 4), M(3, 4)], lambda a, m: a.masked_fill(m, -1.0)),
    ("one_hot", [I(0, 5, 4)], lambda i: F.one_hot(i, 5)),
    ("topk", [distinct(3, 6)], lambda a: tuple(torch.topk(a, 2, dim=1))),
    ("topk_smallest_dim0", [distinct(5, 3)], lambda a: tuple(torch.topk(a, 3, dim=0, largest=False))),
    # bcos.cpp's add_relu: a residual block's sum and ReLU in one op
    ("add_relu", [N(2, 3, 4, 4), N(2, 3, 4, 4)], lambda a, b: F.relu(a + b)),
    # OpenAI CLIP's QuickGELU as its code composes it; bcos.cpp's quick_gelu is one op. Its input
    # from a generator of its own and its case last, so that every case above keeps its numbers.
    ("quick_gelu", [(torch.randn(4, 6, generator=torch.Generator().manual_seed(1702)) * 3, True)],
     lambda a: a * torch.sigmoid(1.702 * a)),
]


def main():
    out = {}
    for name, specs, fn in CASES:
        inputs = []
        for i, (t, grad) in enumerate(specs):
            out[f"{name}.in{i}"] = t
            t = t.clone()
            if grad:
                t.requires_grad_(True)
            inputs.append(t)
        result = fn(*inputs)
        results = list(result) if isinstance(result, tuple) else [result]
        first = results[0]
        out[f"{name}.out"] = first.detach()
        for k, extra in enumerate(results[1:]):
            out[f"{name}.aux{k}"] = extra.detach()
        if first.is_floating_point() and first.requires_grad:
            gout = torch.randn(first.shape, generator=gen)
            out[f"{name}.gout"] = gout
            first.backward(gout)
            for i, t in enumerate(inputs):
                if t.requires_grad:
                    g = t.grad if t.grad is not None else torch.zeros_like(t)
                    out[f"{name}.grad{i}"] = g
    path = os.path.join(ROOT, "tests", "golden", "ops.safetensors")
    save(out, path, {"generator": "tools/golden/ops.py", "torch": torch.__version__})
    print(f"wrote {len(CASES)} cases, {len(out)} tensors to {path}")


if __name__ == "__main__":
    main()
