#!/usr/bin/python3
"""Golden fixtures for the B-cos layers, losses and adaptive gradient clipping: plain PyTorch
functions written below (from the B-cos formulas) are the reference.

Everything is computed in float64 from float32-rounded inputs and stored as float32 (int64 for
class targets), in tests/golden/bcos.safetensors.  "gout" is a random standard-normal gradient of
the output; every gradient below is that of  loss = (out * gout).sum()  unless said otherwise.
"*_explain" gradients are the same loss run with explain=True (the dynamic scale / normaliser is
detached, so the layer is a linear map W(x) x and the input gradient is W(x)^T gout).

B-cos linear cases (x [3, 2, 6], K = 6, O = 4, w [4*M, 6]):
  linear_b1_m1     b=1   M=1 normalize      linear_b1_m2     b=1   M=2 normalize
  linear_b1.5_m1   b=1.5 M=1 normalize      linear_b2_m2     b=2   M=2 normalize
  linear_b2_m1     b=2   M=1 normalize      linear_b2.5_m2   b=2.5 M=2 no normalize
  linear_b2.5_m1   b=2.5 M=1 normalize      linear_b2_bias   b=2   M=1 no normalize, bias [4]
  keys: <c>.x <c>.w [<c>.bias] <c>.out <c>.gout <c>.gx <c>.gw [<c>.gbias] <c>.gx_explain <c>.gw_explain

B-cos conv cases (x [2, C, 7, 6], w [O*M, C/groups, kh, kw]; out has O channels):
  conv_b2 / conv_b1 / conv_b1.5 / conv_b2.5   C=4 O=3 k3 s1 p1 M=1 normalize, b = 2 / 1 / 1.5 / 2.5
  conv_m2_b2 / conv_m2_b1                     C=4 O=3 k3 s1 p1 M=2 normalize, b = 2 / 1
  conv_stride2     C=3 O=4 k3 stride 2 pad 0          b=2.5 M=2 normalize
  conv_dilation2   C=3 O=2 k3 s1 pad 2 dilation 2     b=2   M=1 no normalize
  conv_groups2     C=4 O=4 k3 s1 p1 groups 2          b=2   M=2 normalize
  conv_depthwise   C=4 O=4 k3 s1 p1 groups 4          b=1.5 M=1 normalize
  conv_rect        C=3 O=2 kernel (3,1) stride (2,1) padding (1,0)  b=2 M=1 normalize
  conv_1x1         C=5 O=3 k1 s1 p0                   b=2   M=1 no normalize
  conv_bias        C=3 O=2 k3 s1 p1                   b=2   M=1 no normalize, bias [2]
  keys: as for the linear cases.

unit_rows_linear, unit_rows_conv: w / ||w||_2 per row, w [5, 7] / [4, 3, 3, 3] randn with row 1
  scaled by 1000.  keys .w .out .gout .gw

Module cases:
  bnu_train         BatchNormUncentered2d, training: x [4,3,5,5] = randn + 0.7, weight [3] = rand + 0.5,
                    bias [3] randn, running_mean [3] randn*0.1, running_var [3] rand + 0.5, momentum 0.1,
                    eps 1e-5.  keys .x .weight .bias .running_mean .running_var .out .gout .gx .gweight
                    .gbias .gx_explain .running_var_after (running_mean is not updated)
  bnu_eval          the same in eval mode.  keys .x .weight .bias .running_mean .running_var .out .gout
                    .gx .gweight .gbias
  bnu_relu_train, bnu_relu_eval  as bnu_train / bnu_eval with a ReLU after the norm (the same keys).
  conv_bnu_relu_eval     B-cos conv (x [2,4,7,6], C=4 O=3 k3 s1 p1, b=2, M=1, normalize) -> uncentred
                         batch norm in eval (weight [3] = rand + 0.5, bias [3] randn, running_var [3] =
                         rand + 0.5, eps 1e-5) -> ReLU; conv_bnu_eval_b2.5_m2: b=2.5, M=2, no ReLU.
                         keys .x .w .weight .bias .running_var .out .gout .gx .gw .gx_explain .gw_explain
  bnu_nobias_train  training, no bias.  keys .x .weight .running_mean .running_var .out .gout .gx
                    .gweight .gx_explain .running_var_after
  dln               DetachableLayerNorm over the last dim, x [2,5,8], weight [8] = rand + 0.5, bias [8]
                    randn, eps 1e-5.  keys .x .weight .bias .out .gout .gx .gweight .gbias .gx_explain
  dgelu             DetachableGELU, x [3,7].  keys .x .out .gout .gx .gx_explain
  bce               UniformOffLabelsBCE: logits [5,10] randn, target [5] int64 in [0,10).
                    keys .logits .target .loss (0-dim) .glogits (the gradient of the loss itself)
  agc               adaptive gradient clipping, clip 0.01, eps 1e-3, on p0 [4,3,3,3], p1 [5,6], p2 [5];
                    grad g<i> = randn * a per-unit factor from {1e-4, 1} (both branches occur in p0, p1).
                    keys agc.p0 agc.p1 agc.p2 agc.g0 agc.g1 agc.g2 agc.clipped0 agc.clipped1 agc.clipped2

The file's metadata holds the generator, the torch version and each case's parameters.
The script ends with a float64 self-check of the explanation-mode input gradients of two linear
and two conv cases against the explicit map  gx = sum_o gout_o * s_o * w_hat_o  (via unfold / fold
for conv).

Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/bcos.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
gen = torch.Generator().manual_seed(20261203)


# ---- reference functions (float64 in, float64 out) ------------------------------------------
def _max_out(out, max_out, dim):
    """Max over each group of `max_out` consecutive channels (channel o*M + m) along `dim`."""
    if max_out <= 1:
        return out
    dim = dim % out.dim()
    return out.unflatten(dim, (-1, max_out)).max(dim + 1).values


def _bcos_scale(out, norm, b, explain):
    """The dynamic scale: |out| / norm for b == 2, else (|out / norm| + 1e-6) ** (b - 1)."""
    if b == 2:
        s = out.abs() / norm
    else:
        s = ((out / norm).abs() + 1e-6) ** (b - 1)
    return s.detach() if explain else s


def bcos_linear(x, w, b, max_out, normalize, bias=None, explain=False):
    """B-cos linear map: x [..., K], w [O*M, K] (rows unit-normalised if normalize), optional
    bias [O*M], max-out over M consecutive outputs, then scaled by |cos|^(b-1)."""
    w_hat = w / w.norm(p=2, dim=1, keepdim=True) if normalize else w
    out = x @ w_hat.t()
    if bias is not None:
        out = out + bias
    out = _max_out(out, max_out, -1)
    if b == 1:
        return out
    norm = (x ** 2).sum(-1, keepdim=True).sqrt() + 1e-12
    return _bcos_scale(out, norm, b, explain) * out


def bcos_conv2d(x, w, b, max_out, normalize, stride=1, padding=0, dilation=1, groups=1,
                bias=None, explain=False):
    """B-cos conv: x [N, C, H, W], w [O*M, C/groups, kh, kw]; the norm is that of each input patch
    (per group, over the conv's own taps: zero padding, dilation, stride), sqrt(sum + 1e-6)."""
    w_hat = w / w.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1) if normalize else w
    out = F.conv2d(x, w_hat, bias, stride, padding, dilation, groups)
    out = _max_out(out, max_out, 1)
    if b == 1:
        return out
    n, c, h, wd = x.shape
    sq = (x ** 2).view(n, groups, c // groups, h, wd).sum(2)
    ones = torch.ones(groups, 1, w.shape[2], w.shape[3], dtype=x.dtype)
    norm = (F.conv2d(sq, ones, None, stride, padding, dilation, groups) + 1e-6).sqrt()
    norm = norm.repeat_interleave(out.shape[1] // groups, dim=1)
    return _bcos_scale(out, norm, b, explain) * out


def bn_uncentered2d(x, weight, bias, running_mean, running_var, training, momentum=0.1,
                    eps=1e-5, explain=False):
    """BatchNormUncentered2d: y = weight * x / sqrt(var + eps) (+ bias), x not mean-subtracted.
    Training uses the biased batch variance and moves running_var towards it in place, as the
    B-cosification authors' layer does (running_mean is left alone); eval uses running_var."""
    if training:
        var = x.var(dim=(0, 2, 3), unbiased=False)
        with torch.no_grad():
            running_var.mul_(1 - momentum).add_(momentum * var)
    else:
        var = running_var
    inv = 1.0 / (var + eps).sqrt()
    if explain:
        inv = inv.detach()
    y = weight.view(1, -1, 1, 1) * x * inv.view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y


def detachable_layer_norm(x, weight, bias, eps=1e-5, explain=False):
    """LayerNorm over the last dim whose 1/std is detached in explain mode (the mean is not)."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    inv = 1.0 / (var + eps).sqrt()
    if explain:
        inv = inv.detach()
    return (x - mean) * inv * weight + bias


def detachable_gelu(x, explain=False):
    """GELU x * Phi(x) (exact erf form) with Phi detached in explain mode."""
    phi = 0.5 * (1.0 + torch.erf(x / 2.0 ** 0.5))
    if explain:
        phi = phi.detach()
    return x * phi


def logit_layer(x, logit_bias, logit_temperature=None):
    """LogitLayer: x / T + b (no division when T is None).  Not stored: trivial."""
    if logit_temperature is not None:
        x = x / logit_temperature
    return x + logit_bias


def uniform_off_labels_bce(logits, target):
    """BCE-with-logits against one_hot(target) clamped below at 1/C, mean over all N*C elements."""
    c = logits.shape[1]
    t = F.one_hot(target, c).to(logits.dtype).clamp(min=1.0 / c)
    return F.binary_cross_entropy_with_logits(logits, t)


def _unitwise_norm(t):
    """Norm over dims 1..ndim-1 (keepdim) for ndim >= 2, the whole-tensor norm for ndim <= 1."""
    if t.dim() <= 1:
        return t.norm(p=2)
    return t.norm(p=2, dim=tuple(range(1, t.dim())), keepdim=True)


def agc(params, grads, clip=0.01, eps=1e-3):
    """Adaptive gradient clipping; returns the clipped grads and, per tensor, the clipped mask."""
    result, masks = [], []
    for p, g in zip(params, grads):
        max_norm = _unitwise_norm(p).clamp(min=eps) * clip
        gn = _unitwise_norm(g)
        clipped = gn > max_norm
        result.append(torch.where(clipped, g * (max_norm / gn.clamp(min=1e-6)), g))
        masks.append(clipped)
    return result, masks


# ---- helpers --------------------------------------------------------------------------------
def randn(*s):
    return torch.randn(*s, generator=gen)


def rand(*s):
    return torch.rand(*s, generator=gen)


def f32(t):
    return t.detach().to(torch.float32)


def run_grads(fn, inputs, gout):
    """fn(*inputs) in float64 with grads on every input; returns (out, [grad per input])."""
    leaves = [t.double().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    (out * gout.double()).sum().backward()
    return out.detach(), [t.grad.detach() for t in leaves]


# ---- cases ----------------------------------------------------------------------------------
LINEAR = [  # name, b, M, normalize, bias
    ("linear_b1_m1", 1, 1, True, False),
    ("linear_b1.5_m1", 1.5, 1, True, False),
    ("linear_b2_m1", 2, 1, True, False),
    ("linear_b2.5_m1", 2.5, 1, True, False),
    ("linear_b1_m2", 1, 2, True, False),
    ("linear_b2_m2", 2, 2, True, False),
    ("linear_b2.5_m2", 2.5, 2, False, False),
    ("linear_b2_bias", 2, 1, False, True),
]

CONV = [  # name, C, O, kernel, stride, padding, dilation, groups, b, M, normalize, bias
    ("conv_b2", 4, 3, (3, 3), 1, 1, 1, 1, 2, 1, True, False),
    ("conv_b1", 4, 3, (3, 3), 1, 1, 1, 1, 1, 1, True, False),
    ("conv_b1.5", 4, 3, (3, 3), 1, 1, 1, 1, 1.5, 1, True, False),
    ("conv_b2.5", 4, 3, (3, 3), 1, 1, 1, 1, 2.5, 1, True, False),
    ("conv_m2_b2", 4, 3, (3, 3), 1, 1, 1, 1, 2, 2, True, False),
    ("conv_m2_b1", 4, 3, (3, 3), 1, 1, 1, 1, 1, 2, True, False),
    ("conv_stride2", 3, 4, (3, 3), 2, 0, 1, 1, 2.5, 2, True, False),
    ("conv_dilation2", 3, 2, (3, 3), 1, 2, 2, 1, 2, 1, False, False),
    ("conv_groups2", 4, 4, (3, 3), 1, 1, 1, 2, 2, 2, True, False),
    ("conv_depthwise", 4, 4, (3, 3), 1, 1, 1, 4, 1.5, 1, True, False),
    ("conv_rect", 3, 2, (3, 1), (2, 1), (1, 0), 1, 1, 2, 1, True, False),
    ("conv_1x1", 5, 3, (1, 1), 1, 0, 1, 1, 2, 1, False, False),
    ("conv_bias", 3, 2, (3, 3), 1, 1, 1, 1, 2, 1, False, True),
]


def bcos_case(out, meta, keep, name, fn, x, w, bias, params):
    """Stores one B-cos case (linear or conv): inputs, out, gout, normal and explain gradients."""
    inputs = [x, w] + ([bias] if bias is not None else [])
    y, _ = run_grads(lambda *t: fn(*t, explain=False), inputs, torch.zeros(1))
    gout = randn(*y.shape)
    y, grads = run_grads(lambda *t: fn(*t, explain=False), inputs, gout)
    y_e, grads_e = run_grads(lambda *t: fn(*t, explain=True), inputs, gout)
    assert torch.equal(y, y_e), name
    out[f"{name}.x"], out[f"{name}.w"] = x, w
    out[f"{name}.out"], out[f"{name}.gout"] = f32(y), gout
    out[f"{name}.gx"], out[f"{name}.gw"] = f32(grads[0]), f32(grads[1])
    if bias is not None:
        out[f"{name}.bias"], out[f"{name}.gbias"] = bias, f32(grads[2])
    out[f"{name}.gx_explain"], out[f"{name}.gw_explain"] = f32(grads_e[0]), f32(grads_e[1])
    meta[name] = params
    keep[name] = dict(x=x.double(), w=w.double(), gout=gout.double(), gx_explain=grads_e[0])


def linear_cases(out, meta, keep):
    for name, b, m, normalize, has_bias in LINEAR:
        o, k = 4, 6
        x, w = randn(3, 2, k), randn(o * m, k)
        bias = randn(o * m) if has_bias else None

        def fn(x, w, *rest, explain, b=b, m=m, normalize=normalize):
            return bcos_linear(x, w, b, m, normalize, rest[0] if rest else None, explain)

        params = dict(b=b, max_out=m, normalize=normalize, bias=has_bias)
        bcos_case(out, meta, keep, name, fn, x, w, bias, params)


def conv_cases(out, meta, keep):
    for name, c, o, ks, stride, padding, dilation, groups, b, m, normalize, has_bias in CONV:
        x, w = randn(2, c, 7, 6), randn(o * m, c // groups, *ks)
        bias = randn(o * m) if has_bias else None

        def fn(x, w, *rest, explain, b=b, m=m, normalize=normalize, stride=stride,
               padding=padding, dilation=dilation, groups=groups):
            return bcos_conv2d(x, w, b, m, normalize, stride, padding, dilation, groups,
                               rest[0] if rest else None, explain)

        params = dict(C=c, O=o, kernel=ks, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, b=b, max_out=m, normalize=normalize, bias=has_bias)
        bcos_case(out, meta, keep, name, fn, x, w, bias, params)


def bnu_case(out, meta, name, training, has_bias, relu=False):
    x = randn(4, 3, 5, 5) + 0.7
    weight = rand(3) + 0.5
    bias = randn(3) if has_bias else None
    rm, rv = randn(3) * 0.1, rand(3) + 0.5

    def fn(explain, rm_out=None, rv_out=None):
        def f(x, weight, *rest):
            rm_, rv_ = rm.double().clone(), rv.double().clone()
            y = bn_uncentered2d(x, weight, rest[0] if rest else None, rm_, rv_, training,
                                explain=explain)
            if relu:  # bcos.cpp fuses the ResNet block's ReLU into the norm
                y = torch.relu(y)
            if rm_out is not None:
                rm_out.append(rm_)
                rv_out.append(rv_)
            return y
        return f

    inputs = [x, weight] + ([bias] if has_bias else [])
    y, _ = run_grads(fn(False), inputs, torch.zeros(1))
    gout = randn(*y.shape)
    rm_after, rv_after = [], []
    y, grads = run_grads(fn(False, rm_after, rv_after), inputs, gout)
    out[f"{name}.x"], out[f"{name}.weight"] = x, weight
    out[f"{name}.running_mean"], out[f"{name}.running_var"] = rm, rv
    out[f"{name}.out"], out[f"{name}.gout"] = f32(y), gout
    out[f"{name}.gx"], out[f"{name}.gweight"] = f32(grads[0]), f32(grads[1])
    if has_bias:
        out[f"{name}.bias"], out[f"{name}.gbias"] = bias, f32(grads[2])
    if training:
        _, grads_e = run_grads(fn(True), inputs, gout)
        out[f"{name}.gx_explain"] = f32(grads_e[0])
        out[f"{name}.running_var_after"] = f32(rv_after[0])
    meta[name] = dict(training=training, bias=has_bias, momentum=0.1, eps=1e-5, relu=relu)


def conv_bnu_case(out, meta, name, b, m, relu):
    """A B-cos conv (C=4 O=3 k3 s1 p1, normalize) followed by an evaluation-mode uncentred batch
    norm (and a ReLU): the conv -> norm (-> ReLU) of a B-cosified ResNet block, which bcos.cpp runs
    as one conv with the norm folded into its scale pass. Gradients for x and w (the norm's
    parameters are constants there)."""
    x, w = randn(2, 4, 7, 6), randn(3 * m, 4, 3, 3)
    weight, bias, rv = rand(3) + 0.5, randn(3), rand(3) + 0.5

    def fn(x, w, explain):
        y = bcos_conv2d(x, w, b, m, True, 1, 1, explain=explain)
        y = bn_uncentered2d(y, weight.double(), bias.double(), None, rv.double(), False, explain=explain)
        return torch.relu(y) if relu else y

    y, _ = run_grads(lambda *t: fn(*t, explain=False), [x, w], torch.zeros(1))
    gout = randn(*y.shape)
    y, grads = run_grads(lambda *t: fn(*t, explain=False), [x, w], gout)
    _, grads_e = run_grads(lambda *t: fn(*t, explain=True), [x, w], gout)
    if relu:
        assert 0.1 < (y == 0).double().mean() < 0.9, name  # the mask matters
    out.update({f"{name}.x": x, f"{name}.w": w, f"{name}.weight": weight, f"{name}.bias": bias,
                f"{name}.running_var": rv, f"{name}.out": f32(y), f"{name}.gout": gout,
                f"{name}.gx": f32(grads[0]), f"{name}.gw": f32(grads[1]),
                f"{name}.gx_explain": f32(grads_e[0]), f"{name}.gw_explain": f32(grads_e[1])})
    meta[name] = dict(C=4, O=3, kernel=3, padding=1, b=b, max_out=m, normalize=True, eps=1e-5, relu=relu)


def dln_case(out, meta):
    x, weight, bias = randn(2, 5, 8), rand(8) + 0.5, randn(8)
    inputs = [x, weight, bias]
    gout = randn(2, 5, 8)
    y, g = run_grads(lambda *t: detachable_layer_norm(*t), inputs, gout)
    _, g_e = run_grads(lambda *t: detachable_layer_norm(*t, explain=True), inputs, gout)
    out.update({"dln.x": x, "dln.weight": weight, "dln.bias": bias, "dln.out": f32(y),
                "dln.gout": gout, "dln.gx": f32(g[0]), "dln.gweight": f32(g[1]),
                "dln.gbias": f32(g[2]), "dln.gx_explain": f32(g_e[0])})
    meta["dln"] = dict(eps=1e-5)


def dgelu_case(out, meta):
    x, gout = randn(3, 7), randn(3, 7)
    y, g = run_grads(lambda t: detachable_gelu(t), [x], gout)
    _, g_e = run_grads(lambda t: detachable_gelu(t, explain=True), [x], gout)
    out.update({"dgelu.x": x, "dgelu.out": f32(y), "dgelu.gout": gout, "dgelu.gx": f32(g[0]),
                "dgelu.gx_explain": f32(g_e[0])})
    meta["dgelu"] = dict()


def bce_case(out, meta):
    logits, target = randn(5, 10), torch.randint(0, 10, (5,), generator=gen)
    lg = logits.double().requires_grad_(True)
    loss = uniform_off_labels_bce(lg, target)
    loss.backward()
    out.update({"bce.logits": logits, "bce.target": target, "bce.loss": f32(loss),
                "bce.glogits": f32(lg.grad)})
    meta["bce"] = dict(classes=10, reduction="mean")


def agc_case(out, meta):
    params = [randn(4, 3, 3, 3), randn(5, 6), randn(5)]
    factors = [torch.tensor([1.0, 1e-4, 1.0, 1e-4]).view(4, 1, 1, 1),
               torch.tensor([1e-4, 1.0, 1.0, 1e-4, 1.0]).view(5, 1),
               torch.tensor(1.0)]
    grads = [randn(*p.shape) * f for p, f in zip(params, factors)]
    clipped, masks = agc([p.double() for p in params], [g.double() for g in grads])
    for i in (0, 1):
        assert masks[i].any() and not masks[i].all(), f"agc: p{i} lacks a branch"
    for i in range(3):
        out[f"agc.p{i}"], out[f"agc.g{i}"], out[f"agc.clipped{i}"] = params[i], grads[i], f32(clipped[i])
    meta["agc"] = dict(clip=0.01, eps=1e-3, clipped_units=[m.flatten().int().tolist() for m in masks])


# ---- self-check: explanation-mode input gradients against the explicit linear map -----------
def _check_linear(name, b, m, normalize, d):
    x, w, gout = d["x"], d["w"], d["gout"]
    w_hat = w / w.norm(dim=1, keepdim=True) if normalize else w
    full = x @ w_hat.t()                                     # [..., O*M]
    idx = full.unflatten(-1, (-1, m)).argmax(-1)             # [..., O]
    rows = idx + torch.arange(0, full.shape[-1], m)          # selected row o*M + m*
    w_sel = w_hat[rows]                                      # [..., O, K]
    lin = (w_sel * x.unsqueeze(-2)).sum(-1)
    norm = x.norm(dim=-1, keepdim=True) + 1e-12
    s = lin.abs() / norm if b == 2 else ((lin / norm).abs() + 1e-6) ** (b - 1)
    expect = ((gout * s).unsqueeze(-1) * w_sel).sum(-2)
    assert torch.allclose(d["gx_explain"], expect, rtol=1e-10, atol=1e-12), name


def _check_conv(name, b, m, normalize, ks, stride, padding, d):
    x, w, gout = d["x"], d["w"], d["gout"]
    w_hat = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1) if normalize else w
    patches = F.unfold(x, ks, padding=padding, stride=stride)      # [N, C*kh*kw, L]
    wf = w_hat.flatten(1)                                           # [O*M, C*kh*kw]
    full = torch.einsum("jp,npl->njl", wf, patches)                 # [N, O*M, L]
    idx = full.unflatten(1, (-1, m)).argmax(2)                      # [N, O, L]
    rows = idx + torch.arange(0, full.shape[1], m).view(1, -1, 1)
    w_sel = wf[rows]                                                # [N, O, L, P]
    lin = torch.einsum("nolp,npl->nol", w_sel, patches)
    norm = (patches ** 2).sum(1, keepdim=True).add(1e-6).sqrt()     # [N, 1, L]
    s = lin.abs() / norm if b == 2 else ((lin / norm).abs() + 1e-6) ** (b - 1)
    g = gout.flatten(2) * s                                         # [N, O, L]
    gpatch = torch.einsum("nol,nolp->npl", g, w_sel)
    expect = F.fold(gpatch, x.shape[2:], ks, padding=padding, stride=stride)
    assert torch.allclose(d["gx_explain"], expect, rtol=1e-10, atol=1e-12), name


def self_check(keep):
    _check_linear("linear_b2_m1", 2, 1, True, keep["linear_b2_m1"])
    _check_linear("linear_b2.5_m1", 2.5, 1, True, keep["linear_b2.5_m1"])
    _check_linear("linear_b2.5_m2", 2.5, 2, False, keep["linear_b2.5_m2"])
    _check_conv("conv_b2", 2, 1, True, (3, 3), 1, 1, keep["conv_b2"])
    _check_conv("conv_stride2", 2.5, 2, True, (3, 3), 2, 0, keep["conv_stride2"])
    _check_conv("conv_rect", 2, 1, True, (3, 1), (2, 1), (1, 0), keep["conv_rect"])


def unit_rows_cases(out, meta):
    """w / ||w|| per row (norm over every dim but the first), the authors' weight normalisation."""
    for name, shape in (("unit_rows_linear", (5, 7)), ("unit_rows_conv", (4, 3, 3, 3))):
        w = randn(*shape)
        w[1] *= 1000.0  # rows of very different norms
        gout = randn(*shape)
        wd = w.double().requires_grad_(True)
        y = wd / wd.flatten(1).norm(dim=1).view(-1, *([1] * (wd.dim() - 1)))
        (y * gout.double()).sum().backward()
        out[f"{name}.w"], out[f"{name}.out"] = w, f32(y)
        out[f"{name}.gout"], out[f"{name}.gw"] = gout, f32(wd.grad)
        meta[name] = f"w {list(shape)} (row 1 scaled by 1000)"


def main():
    out, meta, keep = {}, {}, {}
    linear_cases(out, meta, keep)
    conv_cases(out, meta, keep)
    bnu_case(out, meta, "bnu_train", True, True)
    bnu_case(out, meta, "bnu_eval", False, True)
    bnu_case(out, meta, "bnu_nobias_train", True, False)
    dln_case(out, meta)
    dgelu_case(out, meta)
    bce_case(out, meta)
    agc_case(out, meta)
    bnu_case(out, meta, "bnu_relu_train", True, True, relu=True)
    bnu_case(out, meta, "bnu_relu_eval", False, True, relu=True)
    conv_bnu_case(out, meta, "conv_bnu_relu_eval", 2, 1, relu=True)
    conv_bnu_case(out, meta, "conv_bnu_eval_b2.5_m2", 2.5, 2, relu=False)
    unit_rows_cases(out, meta)
    for k, t in out.items():
        assert t.dtype in (torch.float32, torch.int64), k
    path = os.path.join(ROOT, "tests", "golden", "bcos.safetensors")
    save(out, path, {"generator": "tools/golden/bcos.py", "torch": torch.__version__, **meta})
    print(f"wrote {len(meta)} cases, {len(out)} tensors ({os.path.getsize(path)} bytes) to {path}")
    self_check(keep)
    print("self-check: explanation-mode input gradients match the explicit linear map")


if __name__ == "__main__":
    main()
