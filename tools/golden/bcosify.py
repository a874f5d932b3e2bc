#!/usr/bin/python3
"""End-to-end golden of a B-cosified CIFAR ResNet-20: the conversion, the eval forward, the
explanation-mode input gradient and one fine-tuning step (BCE, AGC, AdamW), against PyTorch.

The original is tools/golden/models.py's CifarResNet(20) with fill_pattern's deterministic
weights (the same ones tests/nn/test_models.cpp computes), converted in float64:
  - input x6 = (x, 1 - x) for x in [0, 1]; normalised by the bias-free 6 x 6 1x1 map that
    models/bcosify.cpp's InverseNormalize builds (per colour c, with mu / sigma ImageNet's):
        z_c     =  ((1 - mu_c) x_c - mu_c x'_c) / sigma_c
        z_{c+3} = (-(1 - mu_c) x_c + mu_c x'_c) / sigma_c        (x'_c = 1 - x_c)
    which for x6 = (x, 1 - x) equals (x6 - (mu, 1 - mu)) / (sigma, sigma) (asserted here). The
    coefficients are float64 (the C++ computes them in float32: ~1e-7 relative apart).
  - every Conv2d -> B-cos conv, same raw weights, no bias, b = 2: lin = conv2d(x, W);
    n = sqrt(sum over the zero-padded k x k window and all input channels of x^2 + 1e-6);
    y = |lin| / n * lin. The stem takes 6 channels: W6 = cat([W, -W], 1) / 2.
  - every BatchNorm2d -> uncentred BN, y = gamma * x / sqrt(var + 1e-5), no beta; training: var =
    biased batch variance over (0, 2, 3), which running_var follows (momentum 0.1; running_mean
    is left as converted, as in the B-cosification authors' layer); eval: running_var. gamma and
    running stats copied.
  - ReLUs and option-A shortcuts kept; Linear(64, 10) -> 1x1 B-cos conv ([10, 64, 1, 1], b = 2, no
    bias) on the last feature map, then the mean over H, W, then + (-ln 9).
The modules are tools/bench_bcos.py's (bcosify, BcosConv2d, BatchNormUncentered2d), imported; the
forward with the 6 x 6 map is written here (bench_bcos normalises elementwise, which gives the
same values but another gradient with respect to x6). Loss and AGC are tools/golden/bcos.py's
reference functions. A second, functional forward built from bcos.py's bcos_conv2d /
bn_uncentered2d re-checks the eval logits, the explanation gradient and the training gradients.

Everything is computed in float64 and stored as float32 (targets int64), in
tests/golden/bcosify.safetensors:
  x                  float32 [4, 3, 32, 32]: torch.rand with torch.Generator().manual_seed(20261205);
                     used as float64 of these float32 values; x6 = cat([x, 1 - x], 1) in float64
                     (1 - x is exact in float32 too: torch.rand gives multiples of 2^-24)
  targets            int64 [4]: torch.randint(0, 10, (4,)) from the same generator, after x
  eval_logits        [4, 10]: eval mode, model(x6)
  explain_grad       [4, 6, 32, 32]: eval + explanation mode (B-cos scales |lin| / n and the BN
                     1 / sqrt(var + eps) detached): d/dx6 of sum_i logit[i, targets[i]]
  explain_contrib_sum [4]: (x6 * explain_grad).sum((1, 2, 3)); asserted equal to
                     logit[i, targets[i]] + ln 9 to 1e-10 relative (dynamic linearity)
  train_logits       [4, 10]: train mode (batch statistics), model(x6), on the unchanged model
  train_loss         []: BCE-with-logits against one_hot(targets) clamped below at 1/10, mean
  grad.<name>        the gradient of train_loss after AGC (on every parameter: unit norm u over
                     dims 1.. for ndim >= 2, whole tensor for ndim <= 1; max_norm =
                     clamp(u(p), min=1e-3) * 0.01; g *= max_norm / clamp(u(g), min=1e-6) where
                     u(g) > max_norm)
  step.<name>        the parameter after one AdamW step (lr 1e-3, betas (0.9, 0.999), eps 1e-8,
                     weight_decay 0) over all parameters, from those clipped gradients
     <name>: model.conv1.weight [16, 6, 3, 3], model.bn1.weight [16],
             model.layer2.0.conv1.weight [32, 16, 3, 3], model.layer3.2.bn2.weight [64],
             model.linear.weight [10, 64, 1, 1]  (the C++ BcosClassifier's state-dict keys)
  running_mean.model.layer1.0.bn1, running_var.model.layer1.0.bn1  [16]: after that train forward
Metadata: generator, torch version, the conversion, the AGC / AdamW settings, and per stored
parameter whether AGC clipped it (agc_clipped.<name>: clipped units / units).

Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/bcosify.py
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # tools/, for bench_bcos
from safetensors_io import save  # noqa: E402
from models import CifarResNet, fill_pattern  # noqa: E402
from bcos import agc, bcos_conv2d, bn_uncentered2d, uniform_off_labels_bce  # noqa: E402
import bench_bcos  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LOGIT_BIAS = -math.log(9.0)
WATCH = ["model.conv1.weight", "model.bn1.weight", "model.layer2.0.conv1.weight",
         "model.layer3.2.bn2.weight", "model.linear.weight"]
BN_WATCH = "model.layer1.0.bn1"


def inverse_normalize_weight():
    """The bias-free 6 x 6 1x1 map of models/bcosify.cpp's InverseNormalize (float64)."""
    w = torch.zeros(6, 6, dtype=torch.float64)
    for c, (mu, sigma) in enumerate(zip(MEAN, STD)):
        w[c, c], w[c, c + 3] = (1 - mu) / sigma, -mu / sigma
        w[c + 3, c], w[c + 3, c + 3] = -(1 - mu) / sigma, mu / sigma
    return w.view(6, 6, 1, 1)


class BcosifiedResNet20(nn.Module):
    """The converted network under "model" (so parameter names are the C++ keys), the 6 x 6 input
    map, the 1x1 B-cos head before pooling and the logit bias."""

    def __init__(self, net):
        super().__init__()
        self.model = net
        self.register_buffer("norm6", inverse_normalize_weight())

    def set_explain(self, on):
        for m in self.modules():
            if hasattr(m, "explain"):
                m.explain = on
        return self

    def forward(self, x6):
        net = self.model
        out = F.relu(net.bn1(net.conv1(F.conv2d(x6, self.norm6))))
        out = net.layer3(net.layer2(net.layer1(out)))  # models.CifarBlock.forward on the swapped modules
        return net.linear(out).mean((2, 3)) + LOGIT_BIAS


def functional_forward(model, x6, training, explain):
    """An independent forward from tools/golden/bcos.py's reference functions, on the same
    parameters (running stats are cloned, not updated)."""
    net = model.model

    def conv(m, x):
        return bcos_conv2d(x, m.weight, 2, 1, False, m.stride, m.padding, explain=explain)

    def bn(m, x):
        return bn_uncentered2d(x, m.weight, None, m.running_mean.clone(), m.running_var.clone(), training,
                               explain=explain)

    z = F.conv2d(x6, model.norm6)  # checked against the elementwise normalisation in main()
    out = F.relu(bn(net.bn1, conv(net.conv1, z)))
    for layer in (net.layer1, net.layer2, net.layer3):
        for blk in layer:
            y = F.relu(bn(blk.bn1, conv(blk.conv1, out)))
            y = bn(blk.bn2, conv(blk.conv2, y))
            short = out if blk.pad == 0 else F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, blk.pad, blk.pad))
            out = F.relu(y + short)
    return conv(net.linear, out).mean((2, 3)) + LOGIT_BIAS


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def build():
    original = CifarResNet(20)
    fill_pattern(original)
    original = original.double()
    net = bench_bcos.bcosify(original).net  # b = 2, no biases (the logit bias is added here)
    model = BcosifiedResNet20(net).double()
    # the conversion as the spec says
    names = dict(model.named_parameters())
    w = original.conv1.weight.detach()
    assert torch.equal(names["model.conv1.weight"], torch.cat([w, -w], 1) / 2)
    assert torch.equal(names["model.linear.weight"], original.linear.weight.detach().view(10, 64, 1, 1))
    assert all(n.endswith(".weight") for n in names), "biases must be gone"
    n_conv = n_bn = 0
    for m in model.modules():
        if isinstance(m, bench_bcos.BcosConv2d):
            assert m.b == 2 and m.bias is None
            n_conv += 1
        elif isinstance(m, bench_bcos.BatchNormUncentered2d):
            assert m.bias is None and m.momentum == 0.1 and m.eps == 1e-5
            n_bn += 1
        assert not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))
    assert (n_conv, n_bn) == (20, 19), (n_conv, n_bn)
    sd = original.state_dict()
    for key, t in model.state_dict().items():
        if key.startswith("model.") and ("bn" in key):
            assert torch.equal(t, sd[key[len("model."):]]), key
    return model


def main():
    torch.set_num_threads(1)
    out = {}
    gen = torch.Generator().manual_seed(20261205)
    x = torch.rand(4, 3, 32, 32, generator=gen)
    targets = torch.randint(0, 10, (4,), generator=gen)
    out["x"], out["targets"] = x, targets
    xd = x.double()
    assert torch.equal((1 - x).double(), 1 - xd)
    x6 = torch.cat([xd, 1 - xd], 1)

    model = build()
    # the 6 x 6 map equals the elementwise normalisation on x6 = (x, 1 - x)
    z_ref = (x6 - torch.tensor(MEAN + tuple(1 - m for m in MEAN), dtype=torch.float64).view(1, 6, 1, 1)) / \
        torch.tensor(STD + STD, dtype=torch.float64).view(1, 6, 1, 1)
    assert rel_err(F.conv2d(x6, model.norm6), z_ref) < 1e-14

    # ---- eval ----
    model.eval()
    with torch.no_grad():
        eval_logits = model(x6)
        assert rel_err(functional_forward(model, x6, False, False), eval_logits) < 1e-12
    out["eval_logits"] = eval_logits

    # ---- explanation ----
    model.set_explain(True)
    xg = x6.clone().requires_grad_(True)
    logits = model(xg)
    assert rel_err(logits.detach(), eval_logits) < 1e-14
    picked = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    (grad,) = torch.autograd.grad(picked.sum(), xg)
    contrib = (x6 * grad).sum((1, 2, 3))
    want = picked.detach() - LOGIT_BIAS
    assert ((contrib - want).abs() / want.abs()).max().item() < 1e-10, (contrib, want)
    xf = x6.clone().requires_grad_(True)
    (grad_f,) = torch.autograd.grad(
        functional_forward(model, xf, False, True).gather(1, targets.view(-1, 1)).sum(), xf)
    assert rel_err(grad_f, grad) < 1e-10
    # the explanation gradient is not the plain one
    xp = x6.clone().requires_grad_(True)
    model.set_explain(False)
    (grad_plain,) = torch.autograd.grad(model(xp).gather(1, targets.view(-1, 1)).sum(), xp)
    assert ((grad_plain - grad).norm() / grad.norm()).item() > 1e-2
    out["explain_grad"], out["explain_contrib_sum"] = grad, contrib

    # ---- one training step ----
    params = dict(model.named_parameters())
    for p in params.values():
        assert p.grad is None
    model.train()
    logits = model(x6)
    loss = uniform_off_labels_bce(logits, targets)
    loss.backward()
    # re-check the raw gradients with the functional forward (train mode: batch statistics)
    f_loss = uniform_off_labels_bce(functional_forward(model, x6, True, False), targets)
    f_grads = torch.autograd.grad(f_loss, list(params.values()))
    assert rel_err(f_loss.detach(), loss.detach()) < 1e-12
    for (name, p), g in zip(params.items(), f_grads):
        assert rel_err(g, p.grad) < 1e-9, name
    out["train_logits"], out["train_loss"] = logits, loss

    clipped, masks = agc([p.detach() for p in params.values()], [p.grad for p in params.values()])
    with torch.no_grad():
        for p, g in zip(params.values(), clipped):
            p.grad.copy_(g)
    meta_clip = {}
    for (name, p), m in zip(params.items(), masks):
        if name in WATCH:
            out[f"grad.{name}"] = p.grad
            meta_clip[f"agc_clipped.{name}"] = f"{int(m.sum())}/{m.numel()}"
    opt = torch.optim.AdamW(params.values(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    opt.step()
    for name in WATCH:
        out[f"step.{name}"] = params[name]
    buffers = dict(model.named_buffers())
    out[f"running_mean.{BN_WATCH}"] = buffers[f"{BN_WATCH}.running_mean"]
    out[f"running_var.{BN_WATCH}"] = buffers[f"{BN_WATCH}.running_var"]

    out = {k: (t.detach() if t.dtype == torch.int64 else t.detach().to(torch.float32)) for k, t in out.items()}
    meta = {
        "generator": "tools/golden/bcosify.py",
        "torch": torch.__version__,
        "model": "fill_pattern(CifarResNet(20)) (tools/golden/models.py), bcosified with b = 2, no biases, "
                 "logit bias -ln 9, 1x1 B-cos head before the mean over H, W; computed in float64",
        "input": "x6 = cat([x, 1 - x], 1); z = 6x6 bias-free 1x1 map (InverseNormalize) with ImageNet mean / std",
        "seed": "torch.Generator().manual_seed(20261205): x = rand(4, 3, 32, 32), then targets = randint(0, 10, (4,))",
        "loss": "BCE-with-logits vs one_hot(targets).clamp(min=1/10), mean",
        "agc": "clip 0.01, eps 1e-3, every parameter",
        "adamw": "lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0, one step",
        "explain_identity_max_rel_err": f"{((contrib - want).abs() / want.abs()).max().item():.2e}",
        **meta_clip,
    }
    path = os.path.join(ROOT, "tests", "golden", "bcosify.safetensors")
    save(out, path, meta)
    print(f"wrote {len(out)} tensors ({os.path.getsize(path)} bytes) to {path}")
    for k in sorted(out):
        print(f"  {k:42s} {str(out[k].dtype):14s} {list(out[k].shape)}")
    for k, v in meta_clip.items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
