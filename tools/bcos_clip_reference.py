#!/usr/bin/python3
"""B-cos CLIP's image tower written in PyTorch: the reference that bench/bcos times beside
models/bcos_clip.cpp. The conversion is the one models/bcos_clip.h describes for OpenAI's
ModifiedResNet (tools/golden/clip.py): (x, 1 - x) through CLIP's mean and std, the stem conv with
[W, -W] / 2, every conv a B-cos conv with the pretrained weights (tools/bench_bcos.py's layer:
patch norms through avg_pool2d), BN -> uncentred BN, biases removed, and the attention pool a
B-cos attention pool (the mean token queries all tokens; no positional embedding or biases; q
and k detached in explanation mode; value and output projections linear).
  /usr/bin/python3 tools/bcos_clip_reference.py   checks that b = 1 with biases and positions kept
                                                  reproduces the original tower.
"""
import copy
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "golden"))
from bench_bcos import BcosConv2d, bcos_conv_of, convert_layers, set_explain, six_channel  # noqa: E402
from clip import ModifiedResNet  # noqa: E402  (tools/golden/clip.py: OpenAI's architecture)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BcosAttentionPool(nn.Module):
    def __init__(self, pool, keep_bias=False, keep_position=False):
        super().__init__()
        def linear(l):
            out = nn.Linear(l.in_features, l.out_features, bias=keep_bias)
            out.weight = nn.Parameter(l.weight.detach().clone())
            if keep_bias:
                out.bias = nn.Parameter(l.bias.detach().clone())
            return out
        self.q_proj, self.k_proj, self.v_proj, self.c_proj = (linear(pool.q_proj), linear(pool.k_proj),
                                                              linear(pool.v_proj), linear(pool.c_proj))
        self.positional_embedding = (nn.Parameter(pool.positional_embedding.detach().clone())
                                     if keep_position else None)
        self.heads = pool.heads
        self.explain = False

    def forward(self, x):
        n, c = x.shape[:2]
        d = c // self.heads
        t = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        t = torch.cat([t.mean(1, keepdim=True), t], 1)
        if self.positional_embedding is not None:
            t = t + self.positional_embedding
        split = lambda proj, u: proj(u).reshape(n, u.shape[1], self.heads, d).transpose(1, 2)
        q, k, v = split(self.q_proj, t[:, :1]), split(self.k_proj, t), split(self.v_proj, t)
        if self.explain:
            q, k = q.detach(), k.detach()
        attn = torch.softmax(q / math.sqrt(d) @ k.transpose(2, 3), -1)
        return self.c_proj((attn @ v).transpose(1, 2).reshape(n, c))


class BcosClipTower(nn.Module):
    """x6 [N, 6, R, R] -> embeddings [N, E]."""

    def __init__(self, tower, b=2.0, keep_bias=False, keep_position=False):
        super().__init__()
        net = copy.deepcopy(tower)
        w = net.conv1.weight.detach()
        net.conv1 = bcos_conv_of(net.conv1, torch.cat([w, -w], 1) / 2, b, keep_bias)
        net.attnpool = BcosAttentionPool(net.attnpool, keep_bias, keep_position)
        convert_layers(net, b, keep_bias, fold_shift=True, keep=(BcosConv2d, BcosAttentionPool))
        self.net = net
        mean6, std6 = six_channel(CLIP_MEAN, CLIP_STD)
        self.register_buffer("mean6", mean6)
        self.register_buffer("std6", std6)

    def set_explain(self, on):
        return set_explain(self, on)

    def forward(self, x6):
        return self.net((x6 - self.mean6) / self.std6)


def sigmoid_distillation_loss(s, t):
    s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    logits = 10 * s @ t.T - 10
    labels = 2 * torch.eye(len(s), dtype=s.dtype, device=s.device) - 1
    return -F.logsigmoid(labels * logits).sum() / len(s)


def small_tower(seed=0):
    """The default teacher's image tower: ModifiedResNet [1, 1, 1], width 32, 8 heads, 32 px, 256-d."""
    torch.manual_seed(seed)
    return ModifiedResNet([1, 1, 1], 256, 8, 32, 32)


def check():
    torch.manual_seed(1)
    tower = small_tower().double().eval()
    with torch.no_grad():
        for m in tower.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = tower((x - mean) / std)
        got = BcosClipTower(tower, b=1.0, keep_bias=True, keep_position=True).double().eval()(torch.cat([x, 1 - x], 1))
    err = ((got - want).norm() / want.norm()).item()
    print(f"b = 1 B-cos CLIP tower vs the original: relative error {err:.2e}")
    sys.exit(0 if err < 1e-8 else 1)  # float64 through ~20 layers: rounding is ~1e-10


if __name__ == "__main__":
    check()
