"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/): small, valid examples of each
format as the original tools write them (torch.save zip and legacy, torch.jit.save, Python's
tarfile in ustar / pax / GNU form, Pillow's PNG / JPEG / BMP), so that libFuzzer starts from
inputs that reach deep into each reader. Run with Debian's Python: /usr/bin/python3 tools/fuzz_seeds.py"""
import collections
import io
import os
import pickle
import shutil
import sys
import tarfile
import zipfile

import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
import safetensors_io  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "corpus")


def out(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def small_state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return collections.OrderedDict(
        [
            ("conv.weight", torch.randn(2, 1, 3, 3, generator=g)),
            ("bn.running_mean", torch.zeros(2, dtype=torch.float64)),
            ("bn.num_batches_tracked", torch.tensor(7)),
            ("half", torch.randn(3, generator=g).half()),
            ("bf16", torch.randn(3, generator=g).bfloat16()),
            ("mask", torch.tensor([True, False, True])),
            ("bytes", torch.arange(5, dtype=torch.uint8)),
            ("ints", torch.arange(4, dtype=torch.int32)),
            ("view_t", base.t()),  # strided view of a shared storage
            ("view_slice", base[1:3, 2:]),
            ("scalar", torch.tensor(1.5)),
            ("empty", torch.zeros(0, 3)),
        ]
    )


def torch_bytes(obj, **kw):
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.tensor([0.5]))

    def forward(self, x):
        return self.fc(x) * self.scale


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    sd = small_state_dict()

    # safetensors: every dtype the reader knows, metadata, and an empty file of tensors.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "a.safetensors")
        safetensors_io.save({k: v.contiguous() for k, v in sd.items() if v.dtype != torch.int32}, p,
                            metadata={"format": "pt", "epoch": "3"})
        out("safetensors", "dtypes.safetensors", open(p, "rb").read())
        safetensors_io.save({}, p)
        out("safetensors", "empty.safetensors", open(p, "rb").read())
        safetensors_io.save({"w": torch.ones(2, 2)}, p)
        st_small = open(p, "rb").read()
        out("safetensors", "one.safetensors", st_small)

    # torch.save: zip (current), legacy, wrapped in a training dict, and a TorchScript archive.
    zip_sd = torch_bytes(sd)
    legacy_sd = torch_bytes(sd, _use_new_zipfile_serialization=False)
    wrapped = torch_bytes({"epoch": 3, "state_dict": collections.OrderedDict(list(sd.items())[:3]), "best_prec1": 0.5})
    script = io.BytesIO()
    torch.jit.save(torch.jit.script(Tiny()), script)
    script = script.getvalue()
    for name, data in [("zip.pt", zip_sd), ("legacy.pt", legacy_sd), ("wrapped.pt", wrapped),
                       ("script.pt", script), ("weights.safetensors", st_small)]:
        out("checkpoint", name, data)
    for name, data in [("zip.pt", zip_sd), ("script.pt", script), ("wrapped.pt", wrapped)]:
        out("zip", name, data)
    # A plain zip as Python writes it (deflated and stored entries, a directory).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/data.pkl", pickle.dumps({"x": 1}, protocol=2))
        z.writestr(zipfile.ZipInfo("a/dir/"), b"")
        z.writestr("a/deflated.txt", b"hello " * 20, compress_type=zipfile.ZIP_DEFLATED)
    out("zip", "python.zip", buf.getvalue())

    # pickle: the first byte of each input is the target's flag (bit 0: TorchScript objects).
    for name, data in [("zip.pt", zip_sd), ("script.pt", script), ("wrapped.pt", wrapped)]:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            flag = b"\x01" if name == "script.pt" else b"\x00"
            out("pickle", name.replace(".pt", ".pkl"), flag + z.read(pkl))
    plain = {"none": None, "t": True, "i": -5, "big": 1 << 70, "f": 2.5, "s": "héllo", "b": b"\x00\xff",
             "l": [1, 2, [3, (4, 5)]], "shared": None}
    lst = [1, 2]
    plain["shared"] = (lst, lst)
    for proto in (0, 2, 4):
        out("pickle", f"plain_p{proto}.pkl", b"\x00" + pickle.dumps(plain, protocol=proto))
    out("pickle", "ordered.pkl", b"\x00" + pickle.dumps(collections.OrderedDict(a=1, b=[2.0]), protocol=2))

    # tar: ustar, pax (long name, long size field), GNU long names, directories, empty members.
    def tar_bytes(fmt, members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            for name, data in members:
                info = tarfile.TarInfo(name)
                if data is None:
                    info.type = tarfile.DIRTYPE
                    t.addfile(info)
                else:
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    long_name = "d/" + "x" * 150 + ".txt"
    out("tar", "ustar.tar", tar_bytes(tarfile.USTAR_FORMAT, [("dir", None), ("dir/a.txt", b"abc"), ("e", b"")]))
    out("tar", "pax.tar", tar_bytes(tarfile.PAX_FORMAT, [(long_name, b"long"), ("ü.txt", b"x" * 700)]))
    out("tar", "gnu.tar", tar_bytes(tarfile.GNU_FORMAT, [(long_name, b"gnu"), ("b", b"y" * 513)]))

    # images: PNG (RGB, grey, RGBA, palette, 16-bit), JPEG (baseline, progressive, grey), BMP.
    g = torch.Generator().manual_seed(1)
    rgb = Image.fromarray(torch.randint(0, 256, (6, 7, 3), dtype=torch.uint8, generator=g).numpy())

    def img_bytes(im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    images = {
        "rgb.png": img_bytes(rgb, "PNG"),
        "grey.png": img_bytes(rgb.convert("L"), "PNG"),
        "rgba.png": img_bytes(rgb.convert("RGBA"), "PNG"),
        "palette.png": img_bytes(rgb.convert("P"), "PNG"),
        "grey16.png": img_bytes(rgb.convert("L").convert("I").point(lambda v: v * 257), "PNG"),
        "baseline.jpg": img_bytes(rgb, "JPEG", quality=80),
        "progressive.jpg": img_bytes(rgb, "JPEG", quality=80, progressive=True),
        "grey.jpg": img_bytes(rgb.convert("L"), "JPEG"),
        "rgb.bmp": img_bytes(rgb, "BMP"),
        "palette.bmp": img_bytes(rgb.convert("P"), "BMP"),
    }
    for name, data in images.items():
        out("image", name, data)

    # WebDataset shards: image + label (+ text / json) per key, and a sample without a label.
    out("webdataset", "shard.tar", tar_bytes(tarfile.USTAR_FORMAT, [
        ("s0.png", images["rgb.png"]), ("s0.cls", b"3"),
        ("s1.jpg", images["baseline.jpg"]), ("s1.cls", b"7"), ("s1.txt", b"a photo of a cat"),
        ("s2.bmp", images["rgb.bmp"]), ("s2.cls", b"1"), ("s2.json", b'{"k": 1}'),
        ("s3.png", images["grey.png"]),
    ]))

    # tokenizer: captions, HTML references, Unicode case rules, contractions, digits, specials.
    texts = [
        "a photo of a cat.",
        "A &amp;lt;b&amp;gt; photo &#x27;quoted&#39; &nbsp;&copy;&notanentity;",
        "İstanbul ΣΊΣΥΦΟΣ straße ǅ ﬁ",
        "it's they're we've I'm you'll he'd 1234 3.14",
        "<|startoftext|>hello<|endoftext|>",
        "emoji 😀👍🏽 中文字符 日本語 한국어 \t\n  spaces  ",
    ]
    for i, t in enumerate(texts):
        out("tokenizer", f"text{i}.txt", t.encode("utf-8"))

    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(ROOT) for f in fs)
    print(f"wrote {ROOT}: {total} bytes")


if __name__ == "__main__":
    main()
