#!/usr/bin/python3
"""Golden fixtures for the data pipeline: Pillow decodes, torchvision transforms.

Writes tests/golden/data.safetensors with three groups of tensors:
  cifar.*   the first test shard of CIFAR-10 decoded in tar order: the first 64 images'
            pixels (uint8 [N, 32, 32, 3]), every image's mean pixel value and every label
  photo.*   the three photos: shape, per-channel mean, and resizes of the uint8 and the
            float image (bilinear / bicubic, antialiased, shorter side or exact size)
  synth.*   random images made here (no data files needed) and the transforms applied to
            them: resizes down / up / mixed, crops, padding, flips, normalize, to_tensor
Layout: uint8 images are HWC [H, W, 3]; float32 images are CHW [3, H, W] in [0, 1].
Every resize is torchvision.transforms.functional.resize on a tensor with antialias=True;
for a uint8 input torchvision computes in float32 and rounds back to uint8 itself.

The data folder is $BCOS_DATA (default: <repo>/../shared).
Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/data.py
"""
import io
import os
import sys
import tarfile

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.environ.get("BCOS_DATA", os.path.join(os.path.dirname(ROOT), "shared"))
BILINEAR = InterpolationMode.BILINEAR
BICUBIC = InterpolationMode.BICUBIC
CIFAR_PIXELS = 64  # images whose pixels are stored; the rest are checked through their mean


def decode_rgb(raw):
    return np.array(Image.open(io.BytesIO(raw)).convert("RGB"))  # uint8 HWC, writable


def resize(img, size, mode):
    # img is CHW (uint8 or float32); an int size is the shorter side, a pair is exact (h, w)
    return F.resize(img, size, interpolation=mode, antialias=True)


def hwc(t):
    return t.permute(1, 2, 0).contiguous()


def chw(a):
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def cifar(out):
    folder = os.path.join(DATA, "data", "cifar10")
    with open(os.path.join(folder, "classes.txt")) as f:
        classes = [line.strip() for line in f if line.strip()]
    # group members by key (basename up to the first dot), keeping the order keys first appear
    samples = {}
    with tarfile.open(os.path.join(folder, "cifar10-test-000000.tar")) as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = os.path.basename(member.name)
            key, ext = base.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    pixels, means, labels = [], [], []
    for key, files in samples.items():
        img = decode_rgb(files["jpg"])
        assert img.shape == (32, 32, 3), (key, img.shape)
        label = int(files["cls"].decode("ascii").strip())
        # the label must agree with the class named in the key ("airplane_0001" -> airplane)
        assert label == classes.index(key.rsplit("_", 1)[0]), (key, label)
        if len(pixels) < CIFAR_PIXELS:
            pixels.append(img)
        means.append(img.mean(dtype=np.float64))
        labels.append(label)
    out["cifar.pixels"] = torch.from_numpy(np.stack(pixels))
    out["cifar.mean"] = torch.tensor(means, dtype=torch.float32)
    out["cifar.labels"] = torch.tensor(labels, dtype=torch.int64)


def photos(out):
    for p in ("astronaut", "chelsea", "coffee"):
        with open(os.path.join(DATA, "data", "photos", p + ".png"), "rb") as f:
            img = decode_rgb(f.read())
        out[f"photo.{p}.shape"] = torch.tensor(img.shape, dtype=torch.int64)
        out[f"photo.{p}.mean"] = torch.from_numpy(img.reshape(-1, 3).mean(axis=0, dtype=np.float64))
        u8 = chw(img)
        f32 = u8.float() / 255
        out[f"photo.{p}.bilinear_short96.u8"] = hwc(resize(u8, 96, BILINEAR))
        out[f"photo.{p}.bicubic_57x83.u8"] = hwc(resize(u8, [57, 83], BICUBIC))
        if p == "astronaut":  # the float path once (the uint8 path above covers all three)
            out[f"photo.{p}.bilinear_short64.f32"] = resize(f32, 64, BILINEAR)
            # a 40x40 crop blown up: upsampling, where the filters' own shapes show
            crop = f32[:, 100:140, 120:160]
            out["photo.astronaut.crop_up_bilinear.f32"] = resize(crop, [61, 61], BILINEAR)
            out["photo.astronaut.crop_up_bicubic.f32"] = resize(crop, [61, 61], BICUBIC)


def synth(out):
    gen = torch.Generator().manual_seed(20261127)
    in_u8 = torch.randint(0, 256, (23, 31, 3), generator=gen, dtype=torch.uint8)  # HWC
    x = torch.rand(3, 23, 31, generator=gen)  # CHW
    out["synth.in_u8"] = in_u8
    out["synth.in_f32"] = x
    # odd sizes so that no scale factor is a round number
    for mode, name in ((BILINEAR, "bilinear"), (BICUBIC, "bicubic")):
        out[f"synth.{name}_down.f32"] = resize(x, [11, 17], mode)
        out[f"synth.{name}_up.f32"] = resize(x, [37, 50], mode)
        out[f"synth.{name}_mixed.f32"] = resize(x, [40, 12], mode)  # up in height, down in width
        out[f"synth.{name}_short16.u8"] = hwc(resize(in_u8.permute(2, 0, 1), 16, mode))
    out["synth.center_crop.f32"] = F.center_crop(x, [15, 20])
    out["synth.center_crop_big.f32"] = F.center_crop(x, [27, 33])  # larger than the image: zero padded
    out["synth.center_crop_odd.f32"] = F.center_crop(x, [24, 34])  # odd padding: the extra row at the bottom
    out["synth.center_crop_mixed.f32"] = F.center_crop(x, [20, 36])  # crops rows, pads columns
    # portrait: the shorter side is the width (23 of [31, 23])
    out["synth.portrait_short16.f32"] = resize(x.transpose(1, 2).contiguous(), 16, BILINEAR)
    out["synth.resized_crop.f32"] = F.resized_crop(x, top=3, left=5, height=14, width=19, size=[8, 8],
                                                   interpolation=BILINEAR, antialias=True)
    # the usual CIFAR augmentation: pad 4 with zeros, then take a crop of the original size
    out["synth.pad4_crop.f32"] = F.crop(F.pad(x, 4), top=2, left=7, height=23, width=31)
    out["synth.hflip.f32"] = F.hflip(x)
    out["synth.hflip.u8"] = in_u8.flip(1)
    out["synth.normalize.f32"] = F.normalize(x, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    out["synth.to_tensor.f32"] = F.to_tensor(in_u8.numpy())
    # the B-cos input encoding: the image and its inverse as six channels
    out["synth.add_inverse.f32"] = torch.cat([x, 1 - x], 0)


def main():
    out = {}
    cifar(out)
    photos(out)
    synth(out)
    for name, t in out.items():
        # the layouts the C++ side expects: uint8 images HWC, float images CHW
        assert t.dtype in (torch.uint8, torch.float32, torch.float64, torch.int64), name
        assert t.dtype != torch.float32 or t.dim() != 3 or t.shape[0] in (3, 6), name
    path = os.path.join(ROOT, "tests", "golden", "data.safetensors")
    save(out, path, {"generator": "tools/golden/data.py", "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "pillow": Image.__version__})
    print(f"wrote {len(out)} tensors ({os.path.getsize(path)} bytes) to {path}")
    print(f"cifar: {len(out['cifar.labels'])} samples, "
          f"label counts {torch.bincount(out['cifar.labels'], minlength=10).tolist()}")
    for name in sorted(out):
        t = out[name]
        print(f"  {name:42s} {str(t.dtype).replace('torch.', ''):8s} {list(t.shape)}")


if __name__ == "__main__":
    main()
