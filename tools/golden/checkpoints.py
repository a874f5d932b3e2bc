#!/usr/bin/python3
"""Golden fixtures for nn/ serialization: small PyTorch checkpoints, and what they hold.

Writes into tests/golden/:
  checkpoint_zip.pt       torch.save({"state_dict": SD, "epoch": 3})   (zip format, protocol 2)
  checkpoint_legacy.pt    torch.save(SD, _use_new_zipfile_serialization=False)
  checkpoint_proto4.pt    torch.save(SD, pickle_protocol=4): FRAME, STACK_GLOBAL, MEMOIZE, ...
  checkpoint_module.pt    torch.save(module.state_dict()): an OrderedDict carrying _metadata (BUILD)
  checkpoint_view.pt      a legacy file written by hand whose tensor views part of a storage through
                          the old storage-view persistent id (torch.load reads it; checked below)
  checkpoints.safetensors the expected tensors, as torch.load returns them, contiguous:
                            <key>          SD's tensors (int32 as int64, as bcos widens them)
                            module.<key>   the module's state dict
                            view.<key>     checkpoint_view.pt's tensors
                            resnet20.<key> a few tensors of ../shared's ResNet-20 (if present)

SD mixes dtypes (f32, f64, f16, bf16, i64, i32, u8, bool), a parameter (_rebuild_parameter),
0-dim and empty tensors, and views of one storage: a transpose, a slice with a storage offset
and a row. Run with Debian's PyTorch:  /usr/bin/python3 tools/golden/checkpoints.py
"""
import collections
import io
import os
import pickle
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden")
SHARED = os.environ.get("BCOS_DATA", os.path.join(ROOT, "..", "shared"))
gen = torch.Generator().manual_seed(20261127)


def state_dict():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = collections.OrderedDict()
    sd["f32"] = torch.randn(3, 4, generator=gen)
    sd["f64"] = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    sd["f16"] = torch.randn(5, generator=gen).half()
    sd["bf16"] = torch.randn(5, generator=gen).bfloat16()
    sd["i64"] = torch.tensor([0, -1, 2**40, -(2**62), 7])
    sd["i32"] = torch.tensor([[1, -2], [2**31 - 1, -(2**31)]], dtype=torch.int32)
    sd["u8"] = torch.randint(0, 256, (2, 2, 3), generator=gen, dtype=torch.uint8)
    sd["bool"] = torch.rand(7, generator=gen) < 0.5
    sd["param"] = torch.nn.Parameter(torch.randn(3, generator=gen))
    sd["scalar"] = torch.tensor(2.5)
    sd["count"] = torch.tensor(11)  # like BatchNorm's num_batches_tracked
    sd["empty"] = torch.zeros(0, 3)
    sd["base"] = base
    sd["base_t"] = base.t()            # non-contiguous, shares base's storage
    sd["slice"] = base[1:3, 2:5]       # storage offset 8, non-contiguous
    sd["row"] = base[2]                # storage offset 12, contiguous
    sd["version"] = 2                  # a non-tensor entry: skipped by the reader
    return sd


def expected(sd, prefix=""):
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        v = v.detach().contiguous()
        if v.dtype == torch.int32:
            v = v.long()
        out[prefix + k] = v.clone()
    return out


def check_same(path, sd):
    loaded = torch.load(path)
    loaded = loaded.get("state_dict", loaded)
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(loaded[k], v), (path, k)


def write_view_checkpoint(path):
    """The legacy format by hand: magic, protocol, sys info, the object, the storage keys, then
    each storage's int64 element count and bytes. The tensor 'part' views elements [2, 5) of the
    6-element storage 'root' through a view persistent id ('storage', FloatStorage, 'root',
    'cpu', 6, ('root_view', 2, 3)), as PyTorch before 1.0 wrote storage views."""

    class StorageId:
        def __init__(self, pid):
            self.pid = pid

    class Rebuild:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride)

        def __reduce__(self):
            return (torch._utils._rebuild_tensor, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.pid if isinstance(obj, StorageId) else None

    whole = StorageId(("storage", torch.FloatStorage, "root", "cpu", 6, None))
    view = StorageId(("storage", torch.FloatStorage, "root", "cpu", 6, ("root_view", 2, 3)))
    obj = collections.OrderedDict()
    obj["whole"] = Rebuild(whole, 0, (2, 3), (3, 1))
    obj["part"] = Rebuild(view, 1, (2,), (1,))  # elements 3, 4 of root
    buf = io.BytesIO()
    for value in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                  "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(value, buf, protocol=2)
    Pickler(buf, protocol=2).dump(obj)
    pickle.dump(["root"], buf, protocol=2)
    buf.write(struct.pack("<q", 6))
    buf.write(struct.pack("<6f", 10, 11, 12, 13, 14, 15))
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    loaded = torch.load(path)
    assert torch.equal(loaded["whole"], torch.tensor([[10.0, 11, 12], [13, 14, 15]]))
    assert torch.equal(loaded["part"], torch.tensor([13.0, 14]))
    return loaded


def main():
    fixtures = {}
    sd = state_dict()
    fixtures.update(expected(sd))

    path = os.path.join(OUT, "checkpoint_zip.pt")
    torch.save({"state_dict": sd, "epoch": 3}, path)
    check_same(path, sd)
    path = os.path.join(OUT, "checkpoint_legacy.pt")
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    check_same(path, sd)
    path = os.path.join(OUT, "checkpoint_proto4.pt")
    torch.save(sd, path, pickle_protocol=4)
    check_same(path, sd)

    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    module(torch.randn(4, 2, 2, 2))  # moves the running statistics, counts a batch
    msd = module.state_dict()
    torch.save(msd, os.path.join(OUT, "checkpoint_module.pt"))
    fixtures.update(expected(msd, "module."))

    fixtures.update(expected(write_view_checkpoint(os.path.join(OUT, "checkpoint_view.pt")), "view."))

    resnet = os.path.join(SHARED, "weights", "resnet-cifar10", "resnet20-12fca82f.th")
    if os.path.exists(resnet):
        r = torch.load(resnet, map_location="cpu")["state_dict"]
        fixtures["resnet20.module.conv1.weight.0"] = r["module.conv1.weight"][0].clone()
        fixtures["resnet20.module.layer3.2.bn2.running_var"] = r["module.layer3.2.bn2.running_var"].clone()
        fixtures["resnet20.module.linear.bias"] = r["module.linear.bias"].clone()
    else:
        print(f"warning: {resnet} not found; the ResNet-20 values are left out", file=sys.stderr)

    save(fixtures, os.path.join(OUT, "checkpoints.safetensors"))
    print(f"wrote {len(fixtures)} tensors to tests/golden/checkpoints.safetensors and 5 checkpoints")


if __name__ == "__main__":
    main()
