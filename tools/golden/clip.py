#!/usr/bin/python3
"""Golden fixtures for CLIP (models/clip.h): a PyTorch CLIP with OpenAI's architecture and
parameter names, written here from their published model description, saved the three ways
people have CLIP weights, and run on fixed inputs.

Files (tests/golden/):
  clip_rn.pt          a reduced ModifiedResNet CLIP (4 stages of 1 block, width 4, 64 px; text
                      width 64, 1 layer, 1 head, vocabulary 500), weights rounded to fp16 as
                      OpenAI's release (conv / linear / attention / projections in fp16, norms and
                      embeddings in fp32), saved as OpenAI's files are: torch.jit.trace of the
                      model's forward, then torch.jit.save (a TorchScript zip: <name>/data.pkl,
                      constants.pkl, code/, data/N), with the buffers input_resolution,
                      context_length and vocab_size beside the weights
  clip_vit.pt         a reduced ViT CLIP (width 64, patch 16, 32 px, 2 blocks; text width 64,
                      2 layers), fp16-rounded, as torch.save(model.state_dict()) under
                      {"state_dict": {"module." + key: ...}} (an open_clip training checkpoint)
  clip_vit_hf.safetensors  the same ViT CLIP in Hugging Face CLIPModel's names and layout
                      (separate q/k/v projections, transposed projections, pre_layrnorm, ...)
  clip.safetensors    inputs and expected outputs, f32:
      rn.images [2, 3, 64, 64], rn.text i64 [3, 77], rn.image_features [2, 128],
      rn.text_features [3, 128], rn.logits_per_image [2, 3]; vit.* likewise (images 32 px)
      full.*: full-size towers with pattern weights (tests/nn/pattern.h's formula): the image
      [1, 3, 224, 224] is pattern("full.images", -1, 1) too, not stored;
      full.text_ids i64 [2, 77] -> full.text_features [2, 1024] (RN50's text tower: width 512,
      12 layers, 8 heads, projected to 1024), full.rn50_features [1, 1024],
      full.vitb32_features [1, 512]
      train.*: the contrastive loss of a tiny CLIP in f64, and every parameter's gradient
      (training_step below)

Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/clip.py
"""
import math
import os
import sys
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden")


# ---- the architecture ------------------------------------------------------------------------
class LayerNorm(nn.LayerNorm):
    """OpenAI's LayerNorm: 16-bit inputs are normalised in float32 and returned in their own type
    (under CPU autocast, torch 1.13's layer_norm rejects bf16 input with float32 parameters, and the
    ViT tower's conv1 output reaches ln_pre in bf16); float32 / float64 inputs as nn.LayerNorm."""
    def forward(self, x):
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (average pool when strided) -> 1x1 x4; shortcut: pool, 1x1 conv, BN."""

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu3 = nn.ReLU()
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * 4))]))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + shortcut)


class AttentionPool2d(nn.Module):
    def __init__(self, side, dim, heads, out_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(side * side + 1, dim) / dim ** 0.5)
        self.k_proj, self.q_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)
        self.heads = heads

    def forward(self, x):
        x = x.flatten(2).permute(2, 0, 1)  # [HW, N, C]
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + self.positional_embedding[:, None, :]
        out, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training, need_weights=False)
        return out.squeeze(0)


class ModifiedResNet(nn.Module):
    def __init__(self, layers, output_dim, heads, resolution, width):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for s, blocks in enumerate(layers):
            planes = width * 2 ** s
            stage = [Bottleneck(inplanes, planes, 1 if s == 0 else 2)]
            inplanes = planes * 4
            stage += [Bottleneck(inplanes, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*stage))
        self.stages = len(layers)
        self.attnpool = AttentionPool2d(resolution // (4 * 2 ** (len(layers) - 1)), inplanes, heads, output_dim)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu3(self.bn3(self.conv3(x))))
        for s in range(self.stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.attnpool(x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, attn_mask=None, quick_gelu=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)),
                                              ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x):  # x: [L, N, width], as OpenAI's
        h = self.ln_1(x)
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, attn_mask=None, quick_gelu=True):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask, quick_gelu) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, resolution, patch, width, layers, heads, output_dim, quick_gelu=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu=quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(0, 2, 1)  # [N, grid², width]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, embed_dim, resolution, vision_layers, vision_width, patch, context, vocab, text_width,
                 text_heads, text_layers, vision_heads=None, quick_gelu=True):
        super().__init__()

        if patch is None:
            self.visual = ModifiedResNet(vision_layers, embed_dim, vision_heads or vision_width * 32 // 64,
                                         resolution, vision_width)
        else:
            self.visual = VisionTransformer(resolution, patch, vision_width, vision_layers,
                                            vision_heads or vision_width // 64, embed_dim, quick_gelu)
        mask = torch.full((context, context), float("-inf")).triu_(1)
        self.transformer = Transformer(text_width, text_layers, text_heads, mask, quick_gelu)

        self.token_embedding = nn.Embedding(vocab, text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context, text_width))
        self.ln_final = LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.empty(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=text_width ** -0.5)

    def encode_image(self, image):
        return self.visual(image)

    def encode_text(self, text):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        img = self.encode_image(image)
        txt = self.encode_text(text)
        img = img / img.norm(dim=1, keepdim=True)
        txt = txt / txt.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()


# ---- weights ----------------------------------------------------------------------------------
def randomize(model, gen):
    """Every parameter and BN statistic random (so no default init hides a mismatch)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            if name.endswith("weight") and ("ln" in name or "bn" in name or name.endswith("downsample.1.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan = p.shape[-1] if p.dim() > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(fan, 1)))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def half_like_openai(model):
    """OpenAI's convert_weights: conv / linear weights and biases, attention projections and
    text_projection / proj in fp16; everything else (norms, embeddings) stays fp32."""
    def convert(m):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            m.weight.data = m.weight.data.half()
            if m.bias is not None:
                m.bias.data = m.bias.data.half()
        if isinstance(m, nn.MultiheadAttention):
            for attr in ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias"]:
                t = getattr(m, attr)
                if t is not None:
                    t.data = t.data.half()
        for name in ["text_projection", "proj"]:
            if hasattr(m, name) and isinstance(getattr(m, name), torch.Tensor):
                getattr(m, name).data = getattr(m, name).data.half()
    model.apply(convert)


def as_float(model):
    for p in model.parameters():
        p.data = p.data.float()
    return model


def texts(vocab, n, gen):
    """Token rows as tokenize gives them: start, ids, end (the largest id), zeros."""
    rows = torch.zeros(n, 77, dtype=torch.int64)
    for i in range(n):
        length = 3 + 5 * i
        rows[i, 0] = vocab - 2
        rows[i, 1:length + 1] = torch.randint(1, vocab - 2, (length,), generator=gen)
        rows[i, length + 1] = vocab - 1
    return rows


def hf_state_dict(sd, vision_layers, text_layers):
    """The ViT CLIP in Hugging Face CLIPModel's names and layout."""
    out = {}

    def tower(prefix_ours, prefix_hf, layers):
        for i in range(layers):
            o, h = f"{prefix_ours}resblocks.{i}.", f"{prefix_hf}encoder.layers.{i}."
            q, k, v = sd[o + "attn.in_proj_weight"].chunk(3, 0)
            qb, kb, vb = sd[o + "attn.in_proj_bias"].chunk(3, 0)
            for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
                out[h + f"self_attn.{name}.weight"], out[h + f"self_attn.{name}.bias"] = w, b
            out[h + "self_attn.out_proj.weight"] = sd[o + "attn.out_proj.weight"]
            out[h + "self_attn.out_proj.bias"] = sd[o + "attn.out_proj.bias"]
            for ours, theirs in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                                 ("mlp.c_proj", "mlp.fc2")):
                out[h + theirs + ".weight"] = sd[o + ours + ".weight"]
                out[h + theirs + ".bias"] = sd[o + ours + ".bias"]

    tower("visual.transformer.", "vision_model.", vision_layers)
    out["vision_model.embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    out["vision_model.embeddings.class_embedding"] = sd["visual.class_embedding"]
    out["vision_model.embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    out["vision_model.embeddings.position_ids"] = torch.arange(sd["visual.positional_embedding"].shape[0])[None]
    out["vision_model.pre_layrnorm.weight"], out["vision_model.pre_layrnorm.bias"] = sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"]
    out["vision_model.post_layernorm.weight"] = sd["visual.ln_post.weight"]
    out["vision_model.post_layernorm.bias"] = sd["visual.ln_post.bias"]
    out["visual_projection.weight"] = sd["visual.proj"].t().contiguous()
    tower("transformer.", "text_model.", text_layers)
    out["text_model.embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = sd["positional_embedding"]
    out["text_model.embeddings.position_ids"] = torch.arange(sd["positional_embedding"].shape[0])[None]
    out["text_model.final_layer_norm.weight"], out["text_model.final_layer_norm.bias"] = sd["ln_final.weight"], sd["ln_final.bias"]
    out["text_projection.weight"] = sd["text_projection"].t().contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return out


def run(model, images, text):
    model.eval()
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(text)
        logits, _ = model(images, text)
    return img, txt, logits


def full_size(fixtures, gen):
    """RN50 and ViT-B/32 at full size with pattern weights (models.py's fill_pattern, which
    tests/nn/pattern.h computes too): only inputs and outputs are stored."""
    from models import fill_pattern, uniform
    text_ids = texts(49408, 2, gen)
    image = torch.from_numpy(uniform("full.images", 3 * 224 * 224, -1.0, 1.0)).view(1, 3, 224, 224)
    rn50 = CLIP(1024, 224, [3, 4, 6, 3], 64, None, 77, 49408, 512, 8, 12)
    fill_pattern(rn50)
    rn50.eval()
    with torch.no_grad():
        fixtures["full.rn50_features"] = rn50.encode_image(image)
        fixtures["full.text_ids"] = text_ids
        fixtures["full.text_features"] = rn50.encode_text(text_ids)
    del rn50
    vit = CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)
    fill_pattern(vit)
    vit.eval()
    with torch.no_grad():
        fixtures["full.vitb32_features"] = vit.encode_image(image)


def training_step(fixtures, gen):
    """One step of CLIP's symmetric contrastive loss in float64 on a tiny ModifiedResNet CLIP
    (2 stages of 1 block, width 8, 16 px; text width 32, 2 heads, 1 layer, vocabulary 64), BN in
    training mode: the loss and every parameter's gradient."""
    from models import fill_pattern
    model = CLIP(16, 16, [1, 1], 8, None, 77, 64, 32, 2, 1, vision_heads=2)
    fill_pattern(model)
    model.double().train()
    images = torch.rand(4, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    ids = texts(64, 4, gen)
    logits_per_image, logits_per_text = model(images, ids)
    labels = torch.arange(4)
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    loss.backward()
    fixtures["train.images"], fixtures["train.text"] = images, ids
    fixtures["train.loss"] = loss.detach()
    fixtures["train.logits_per_image"] = logits_per_image.detach()
    for name, p in model.named_parameters():
        fixtures["train.grad." + name] = p.grad


def main():
    gen = torch.Generator().manual_seed(20261130)
    torch.manual_seed(0)
    fixtures = {}

    # A reduced ModifiedResNet CLIP, saved as OpenAI's TorchScript release files.
    rn = CLIP(embed_dim=128, resolution=64, vision_layers=[1, 1, 1, 1], vision_width=4, patch=None, context=77,
              vocab=500, text_width=64, text_heads=1, text_layers=1)
    randomize(rn, gen)
    half_like_openai(rn)
    half_names = {k for k, v in rn.state_dict().items() if v.dtype == torch.float16}
    as_float(rn)  # the fp16-rounded weights, computed in fp32
    rn_images = torch.randn(2, 3, 64, 64, generator=gen)
    rn_text = texts(500, 3, gen)
    img, txt, logits = run(rn, rn_images, rn_text)
    fixtures.update({"rn.images": rn_images, "rn.text": rn_text, "rn.image_features": img,
                     "rn.text_features": txt, "rn.logits_per_image": logits})
    rn.register_buffer("input_resolution", torch.tensor(64))
    rn.register_buffer("context_length", torch.tensor(77))
    rn.register_buffer("vocab_size", torch.tensor(500))
    traced = torch.jit.trace(rn, (rn_images, rn_text), check_trace=False)
    for name, p in traced.named_parameters():  # stored as OpenAI's release stores them
        if name in half_names:
            p.data = p.data.half()
    torch.jit.save(traced, os.path.join(OUT, "clip_rn.pt"))

    # A reduced ViT CLIP: an open_clip-style torch.save checkpoint and a Hugging Face file.
    vit = CLIP(embed_dim=48, resolution=32, vision_layers=2, vision_width=64, patch=16, context=77, vocab=500,
               text_width=64, text_heads=1, text_layers=2)
    randomize(vit, gen)
    half_like_openai(vit)
    half_names = {k for k, v in vit.state_dict().items() if v.dtype == torch.float16}
    vit_images = torch.randn(2, 3, 32, 32, generator=gen)
    vit_text = texts(500, 3, gen)
    img, txt, logits = run(as_float(vit), vit_images, vit_text)
    fixtures.update({"vit.images": vit_images, "vit.text": vit_text, "vit.image_features": img,
                     "vit.text_features": txt, "vit.logits_per_image": logits})
    sd = OrderedDict((k, v.half() if k in half_names else v) for k, v in vit.state_dict().items())
    torch.save({"epoch": 3, "state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())},
               os.path.join(OUT, "clip_vit.pt"))
    save(hf_state_dict(sd, len(vit.visual.transformer.resblocks), len(vit.transformer.resblocks)), os.path.join(OUT, "clip_vit_hf.safetensors"),
         {"format": "pt", "generator": "tools/golden/clip.py"})

    full_size(fixtures, gen)
    training_step(fixtures, gen)
    save(fixtures, os.path.join(OUT, "clip.safetensors"), {"generator": "tools/golden/clip.py",
                                                           "torch": torch.__version__})
    print("wrote clip_rn.pt, clip_vit.pt, clip_vit_hf.safetensors and clip.safetensors")


if __name__ == "__main__":
    main()
