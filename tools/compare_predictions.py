#!/usr/bin/python3
"""Do bcos.cpp and PyTorch predict the same classes? For a CIFAR ResNet checkpoint, runs PyTorch
(Debian's python3-torch) on the exact inputs bcos.cpp's evaluate fed its model (exported with
--save-inputs) and compares with bcos.cpp's logits (--save-logits); also reports PyTorch's own
top-1 on those inputs.

  build/examples/evaluate --arch resnet20 --weights W --data SHARD \\
      --save-logits /tmp/bcos.safetensors --save-inputs /tmp/inputs.safetensors
  /usr/bin/python3 tools/compare_predictions.py --arch resnet20 --weights W \\
      --logits /tmp/bcos.safetensors --inputs /tmp/inputs.safetensors
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
from models import CifarResNet  # noqa: E402
from safetensors_io import load  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, help="resnet20, resnet32, resnet44, resnet56, resnet110")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--logits", required=True, help="evaluate --save-logits output")
    ap.add_argument("--inputs", required=True, help="evaluate --save-inputs output")
    a = ap.parse_args()
    depth = int(a.arch.replace("resnet", ""))
    model = CifarResNet(depth)
    ckpt = torch.load(a.weights, map_location="cpu")
    state = ckpt.get("state_dict", ckpt)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model.load_state_dict(state)
    model.eval()
    ours, _ = load(a.logits)
    inputs, _ = load(a.inputs)
    x, labels, bcos_logits = inputs["inputs"], ours["labels"], ours["logits"]
    with torch.no_grad():
        torch_logits = torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)])
    bcos_pred, torch_pred = bcos_logits.argmax(1), torch_logits.argmax(1)
    n = len(labels)
    rel = (torch_logits - bcos_logits).abs().max() / torch_logits.abs().max()
    print(f"{a.arch}: {n} samples; top-1 bcos.cpp {100.0 * (bcos_pred == labels).float().mean():.2f} %, "
          f"PyTorch on the same inputs {100.0 * (torch_pred == labels).float().mean():.2f} %; "
          f"{int((bcos_pred != torch_pred).sum())} predictions differ; logits relative difference {rel:.2e}")


if __name__ == "__main__":
    main()
