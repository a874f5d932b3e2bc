#!/usr/bin/python3
"""Whole-model golden fixtures: torchvision's ResNet-18 and ResNet-50 and the CIFAR ResNet-20
(defined below, as in Idelbayev's pytorch_resnet_cifar10), full size.

Full-size weights would take tens of MB, so every model gets *deterministic* weights from a
counter-based hash of (state-dict key, element index) that tests/nn/test_models.cpp computes the
same way (see fill_pattern); only inputs, outputs and a few gradients are stored. The weights
follow the usual scales (conv / linear U(+-sqrt(3 / fan_in)), BatchNorm gamma U(0.5, 1), biases
and running means U(+-0.1), running variances U(0.5, 1.5)).

Writes tests/golden/models.safetensors:
  input224, input32  uint8 [N, H, W, 3]: photos from $BCOS_DATA/data/photos through the evaluation
                     transform (torchvision: Resize(256) + CenterCrop(224) on uint8 tensors), or
                     resized to 32 x 32 for the CIFAR model
  <model>.logits     eval-mode logits for the input normalised with ImageNet's mean and std
  <model>.loss       train mode, float64: cross-entropy for labels <model>.labels
  <model>.delta.<key>  the change one torch.optim.SGD(lr=0.1) step makes to parameter <key> (float64)
  <model>.running_mean.<key>  a BatchNorm running mean after that train-mode forward (float64)
and, as metadata, keys.<model>: every state-dict key with its shape, in order.
Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/models.py
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("BCOS_DATA", os.path.join(os.path.dirname(ROOT), "shared"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MASK = (1 << 64) - 1


# ---- the CIFAR ResNet (option A shortcuts), written from the paper's description -------------
class CifarBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad == 0 else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for s, planes in enumerate((16, 32, 64)):
            blocks = []
            for b in range(n):
                blocks.append(CifarBlock(in_planes, planes, 2 if (b == 0 and s > 0) else 1))
                in_planes = planes
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.avg_pool2d(out, out.size(3)).flatten(1))


# ---- deterministic weights ------------------------------------------------------------------
def fnv1a(text):
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def uniform(key, n, low, high):
    """n values in [low, high): SplitMix64 of (fnv1a(key) + (i + 1) * golden ratio)."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a(key)) + (np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return (low + (high - low) * u).astype(np.float32)


def fill_pattern(model):
    state = model.state_dict()
    for key, t in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        n = t.numel()
        if key.endswith("running_mean") or key.endswith("bias"):
            v = uniform(key, n, -0.1, 0.1)
        elif key.endswith("running_var"):
            v = uniform(key, n, 0.5, 1.5)
        elif t.dim() >= 2:
            fan_in = t[0].numel()
            b = (3.0 / fan_in) ** 0.5
            v = uniform(key, n, -b, b)
        else:  # BatchNorm / LayerNorm weights
            v = uniform(key, n, 0.5, 1.0)
        t.copy_(torch.from_numpy(v).view(t.shape))


# ---- inputs ----------------------------------------------------------------------------------
def photo_u8(name, size):
    img = Image.open(os.path.join(DATA, "data", "photos", name + ".png")).convert("RGB")
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # uint8 CHW
    if size == 224:
        x = TF.center_crop(TF.resize(x, 256, antialias=True), [224, 224])
    else:
        x = TF.resize(x, [size, size], antialias=True)
    return x.permute(1, 2, 0).contiguous()  # HWC


def run(out, meta, name, model, size, labels, watch, running):
    fill_pattern(model)
    meta[f"keys.{name}"] = ";".join(f"{k}:{list(t.shape)}" for k, t in model.state_dict().items())
    u8 = torch.stack([photo_u8(p, size) for p in ("chelsea", "coffee")])
    x = TF.normalize(u8.permute(0, 3, 1, 2).float() / 255, MEAN, STD)
    out[f"input{size}"] = u8  # shared by the models of one input size
    model.eval()
    with torch.no_grad():
        out[f"{name}.logits"] = model(x)
    # The training step runs in float64: at 224 x 224 a few hundred thousand activations meet each
    # ReLU, and some land within float32 rounding of zero, where the two libraries' summation
    # orders decide the side -- each such flip moves a gradient by up to percents. In float64 no
    # value comes that close, so the step checks the gradients themselves.
    model.double().train()
    x = x.double()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.tensor(labels)
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    opt.step()
    out[f"{name}.labels"] = target
    out[f"{name}.loss"] = loss.detach()
    params = dict(model.named_parameters())
    for key in watch:
        out[f"{name}.delta.{key}"] = params[key].detach() - before[key]
    buffers = dict(model.named_buffers())
    for key in running:
        out[f"{name}.running_mean.{key}"] = buffers[key].clone()


def mha(out):
    """nn.MultiheadAttention (batch first) with an additive float mask and a boolean mask."""
    attn = nn.MultiheadAttention(16, 4, batch_first=True)
    fill_pattern(attn)
    gen = torch.Generator().manual_seed(7)
    q, kv = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 7, 16, generator=gen)
    float_mask = torch.randn(5, 7, generator=gen)
    bool_mask = torch.rand(5, 7, generator=gen) < 0.3
    bool_mask[:, 0] = False  # every query keeps a key
    out["mha.query"], out["mha.kv"], out["mha.float_mask"], out["mha.bool_mask"] = q, kv, float_mask, bool_mask
    with torch.no_grad():
        out["mha.out_float"] = attn(q, kv, kv, attn_mask=float_mask, need_weights=False)[0]
        out["mha.out_bool"] = attn(q, kv, kv, attn_mask=bool_mask, need_weights=False)[0]
        out["mha.out_self"] = attn(q, q, q, need_weights=False)[0]


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out, meta = {}, {"generator": "tools/golden/models.py", "torch": torch.__version__,
                     "torchvision": torchvision.__version__}
    run(out, meta, "resnet18", torchvision.models.resnet18(), 224, [281, 967],
        ["conv1.weight", "layer1.0.bn1.weight", "layer2.0.downsample.1.weight", "fc.bias"], ["bn1.running_mean"])
    run(out, meta, "resnet50", torchvision.models.resnet50(), 224, [281, 967],
        ["conv1.weight", "layer3.2.bn2.weight", "layer4.0.downsample.1.weight", "fc.bias"],
        ["layer4.2.bn3.running_mean"])
    # ViT-B/16's structure (12 layers, 12 heads, patch 16, 224 px) at a quarter of its width
    vit = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=12,
                                               hidden_dim=192, mlp_dim=768)
    run(out, meta, "vit", vit, 224, [281, 967],
        ["conv_proj.bias", "class_token",
         "encoder.layers.encoder_layer_3.self_attention.in_proj_bias", "encoder.layers.encoder_layer_11.mlp.3.bias",
         "encoder.ln.weight", "heads.head.bias"], [])
    mha(out)
    run(out, meta, "resnet20", CifarResNet(20), 32, [3, 1],
        ["conv1.weight", "layer2.0.conv1.weight", "layer3.2.bn2.bias", "linear.weight", "linear.bias"],
        ["layer3.2.bn2.running_mean"])
    path = os.path.join(ROOT, "tests", "golden", "models.safetensors")
    save(out, path, meta)
    print(f"wrote {len(out)} tensors ({os.path.getsize(path)} bytes) to {path}")
    for k in sorted(out):
        print(f"  {k:48s} {str(out[k].dtype):14s} {list(out[k].shape)}")


if __name__ == "__main__":
    main()
