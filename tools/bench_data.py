#!/usr/bin/python3
"""PyTorch side of bench/data: images/s of a training input pipeline, torch (torch.utils.data
DataLoader + PIL + torchvision transforms) beside build/bench/bench_data, in one run with the
same number of workers and the same batch size, and their ratio (bcos / torch; above 1 means
bcos.cpp is faster). Two pipelines:

  cifar   decode JPEG + RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize
          over the CIFAR-10 train shards $DATA/data/cifar10/cifar10-train-00000{0..4}.tar
          (50,000 samples, or the first --limit N in shard order).
  photos  decode PNG + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize
          over $DATA/data/photos/{astronaut,chelsea,coffee}.png, cycled to --photo-samples.

Normalize uses the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

What is timed: one epoch, from creating the DataLoader iterator (so worker start-up counts) to
receiving its last batch; DataLoader(shuffle=True, drop_last=False, num_workers=W, batch_size=B).
What is not timed, on the torch side: reading the tar members / PNG files into memory, which
happens once beforehand, so torch's workers only decode and transform in-memory bytes. This
favours torch. The bcos.cpp binary reports its own time for the same epoch, by the contract
  bench_data --pipeline P --data DIR --workers W --batch B [--limit N] [--photo-samples N]
  -> one line on stdout: images_per_s <float> images <int> seconds <float>
Order: for each pipeline and each of --repeat R rounds, torch runs first and then the binary
(interleaved); each side's best round is reported. The torch read happens before any timing, so
the binary also finds the files in the page cache.
The main process calls torch.set_num_threads(W), and the binary runs with BCOS_NUM_THREADS and
OMP_NUM_THREADS set to W; the DataLoader workers are left at torch's defaults.
$DATA is --data, else $BCOS_DATA, else ../shared beside the repository; missing files are
reported and the pipeline is skipped (exit status 0).
"""
import argparse
import io
import os
import re
import subprocess
import sys
import tarfile
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CIFAR_SHARDS = [f"data/cifar10/cifar10-train-{i:06d}.tar" for i in range(5)]
PHOTOS = [f"data/photos/{name}.png" for name in ("astronaut", "chelsea", "coffee")]
DEFAULT_BATCH = {"cifar": 256, "photos": 32}
RESULT = re.compile(r"^images_per_s (\S+) images (\d+) seconds (\S+)$")


class EncodedImages(Dataset):
    """Map-style dataset over in-memory encoded images: (bytes, label) pairs."""

    def __init__(self, samples, transform):
        self.samples = samples
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        data, label = self.samples[i]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        return self.transform(image), label


def read_cifar(data_dir, limit):
    """(jpg bytes, label) for each sample of the train shards, in shard order, up to limit."""
    samples = []
    for shard in CIFAR_SHARDS:
        members = {}  # key -> {ext: bytes}, in first-seen order
        with tarfile.open(os.path.join(data_dir, shard)) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = os.path.basename(member.name).partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key, parts in members.items():
            if "jpg" not in parts or "cls" not in parts:
                sys.exit(f"bench_data: {shard}: sample {key} lacks its .jpg or .cls member")
            samples.append((parts["jpg"], int(parts["cls"].strip())))
            if limit is not None and len(samples) == limit:
                return samples
    return samples


def read_photos(data_dir, count):
    encoded = []
    for path in PHOTOS:
        with open(os.path.join(data_dir, path), "rb") as f:
            encoded.append(f.read())
    return [(encoded[i % len(encoded)], i % len(encoded)) for i in range(count)]


def torch_dataset(pipeline, data_dir, args):
    if pipeline == "cifar":
        transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])
        return EncodedImages(read_cifar(data_dir, args.limit), transform)
    transform = transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    return EncodedImages(read_photos(data_dir, args.photo_samples), transform)


def torch_epoch(dataset, workers, batch):
    """(images, seconds) for one epoch, worker start-up included."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=False)
    images = 0
    t0 = time.perf_counter()
    for x, _ in loader:
        images += x.shape[0]
    return images, time.perf_counter() - t0


def bcos_epoch(pipeline, data_dir, workers, batch, args):
    """(images, images/s) for one epoch as the binary reports it."""
    cmd = [args.binary, "--pipeline", pipeline, "--data", data_dir, "--workers", str(workers),
           "--batch", str(batch)]
    if pipeline == "cifar" and args.limit is not None:
        cmd += ["--limit", str(args.limit)]
    if pipeline == "photos":
        cmd += ["--photo-samples", str(args.photo_samples)]
    env = dict(os.environ, BCOS_NUM_THREADS=str(workers), OMP_NUM_THREADS=str(workers))
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"bench_data: {' '.join(cmd)} failed with status {run.returncode}:\n"
                 f"{run.stderr.strip()}")
    lines = run.stdout.strip().splitlines()
    match = RESULT.match(lines[0].strip()) if len(lines) == 1 else None
    if match is None:
        sys.exit(f"bench_data: expected one line 'images_per_s <f> images <n> seconds <f>' "
                 f"from {' '.join(cmd)}, got:\n{run.stdout}")
    return int(match.group(2)), float(match.group(1))


def missing_files(pipeline, data_dir):
    paths = CIFAR_SHARDS if pipeline == "cifar" else PHOTOS
    return [p for p in paths if not os.path.isfile(os.path.join(data_dir, p))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build/bench/bench_data"))
    ap.add_argument("--data", default=os.environ.get("BCOS_DATA",
                                                     os.path.join(ROOT, "..", "shared")))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, help="default 256 for cifar, 32 for photos")
    ap.add_argument("--limit", type=int, help="cifar samples (default all 50,000)")
    ap.add_argument("--photo-samples", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=1, help="epochs per side; the best counts")
    ap.add_argument("--only", choices=["cifar", "photos"])
    args = ap.parse_args()
    if args.workers < 0 or args.repeat < 1 or (args.batch is not None and args.batch < 1) \
            or (args.limit is not None and args.limit < 1) or args.photo_samples < 1:
        ap.error("--workers must be >= 0; --repeat, --batch, --limit, --photo-samples >= 1")
    data_dir = os.path.normpath(args.data)

    pipelines = []
    for pipeline in ("cifar", "photos"):
        if args.only not in (None, pipeline):
            continue
        missing = missing_files(pipeline, data_dir)
        if missing:
            print(f"bench_data: skipping {pipeline}: missing {', '.join(missing)} under "
                  f"{data_dir} (set --data or BCOS_DATA)")
        else:
            pipelines.append(pipeline)
    if not pipelines:
        return
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"bench_data: no executable {args.binary} (bench/data builds it)")

    torch.set_num_threads(max(args.workers, 1))
    print(f"torch {torch.__version__}, {args.workers} workers, best of {args.repeat} epoch(s) "
          f"each, torch then bcos; images/s (higher is better)", flush=True)
    rows = []
    for pipeline in pipelines:
        batch = args.batch or DEFAULT_BATCH[pipeline]
        dataset = torch_dataset(pipeline, data_dir, args)  # not timed
        best_torch = best_bcos = None
        for _ in range(args.repeat):
            images, seconds = torch_epoch(dataset, args.workers, batch)
            if images != len(dataset):
                sys.exit(f"bench_data: torch {pipeline} epoch gave {images} of {len(dataset)} images")
            best_torch = max(best_torch or 0.0, images / seconds)
            images, rate = bcos_epoch(pipeline, data_dir, args.workers, batch, args)
            if images != len(dataset):
                sys.exit(f"bench_data: bcos {pipeline} epoch gave {images} images, "
                         f"torch's dataset has {len(dataset)}")
            best_bcos = max(best_bcos or 0.0, rate)
        rows.append((pipeline, args.workers, batch, len(dataset), best_torch, best_bcos))

    print(f"{'pipeline':8} {'workers':>7} {'batch':>5} {'images':>6}  {'torch img/s':>11} "
          f"{'bcos img/s':>11}  {'ratio':>6}")
    for pipeline, workers, batch, images, theirs, ours in rows:
        print(f"{pipeline:8} {workers:7d} {batch:5d} {images:6d}  {theirs:11.0f} {ours:11.0f}  "
              f"{ours / theirs:6.2f}")


if __name__ == "__main__":
    main()
