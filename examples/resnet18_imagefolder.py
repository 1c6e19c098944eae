"""torchvision's resnet18 on an ImageFolder with a class hierarchy (``hierarchy.json``).

Shows: the layout splitc reads for your own images, ``PATH/train/<class>/*``,
``PATH/val/<class>/*`` and ``PATH/hierarchy.json`` (``{"class": "superclass"}``), and a split of
resnet18 from ``layer4`` learned on it; the superclass ARI of the learned groups is reported.
Without ``--data``, it first writes a small ImageFolder of toy images (4 superclasses x 2
classes) so that the script runs anywhere.

    .venv/bin/python examples/resnet18_imagefolder.py [--data PATH] [--input-size 3,64,64]
        [--epochs 3] [--out runs/resnet18] [--smoke]

``--smoke`` writes a tiny toy folder and learns 2 steps at 32x32 (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


def write_toy_imagefolder(root: Path, per_class: tuple[int, int] = (40, 10), classes: int = 8) -> Path:
    """PNG files in the ImageFolder layout (each class a smooth colour pattern under noise, the
    classes in pairs of superclasses, whose pattern they share in part), plus hierarchy.json."""
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(classes // 2, 3, 4, 4, generator=g)
    own = torch.randn(classes, 3, 4, 4, generator=g)
    patterns = F.interpolate(shared.repeat_interleave(2, 0) + 0.7 * own, size=64, mode="bilinear")
    names = [f"class{c}" for c in range(classes)]
    for split, n in {"train": per_class[0], "val": per_class[1]}.items():
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = (patterns[c] + 0.5 * torch.randn(3, 64, 64, generator=g)).mul(50).add(128).clamp(0, 255)
                Image.fromarray(image.byte().permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    hierarchy = {name: f"super{c // 2}" for c, name in enumerate(names)}
    (root / "hierarchy.json").write_text(json.dumps(hierarchy, indent=1))
    return root


def splitc(*args: str) -> dict:
    print("$ splitc " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "splitc.cli", *args, "--json"], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"splitc {args[0]} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="an ImageFolder root (default: write a toy one)")
    parser.add_argument("--input-size", default="3,64,64")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--groups", default="4")
    parser.add_argument("--out", default="runs/resnet18")
    parser.add_argument("--smoke", action="store_true", help="a tiny toy folder, 2 steps at 32x32")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    per_class = (8, 4) if args.smoke else (40, 10)
    root = Path(args.data) if args.data else write_toy_imagefolder(out / "images", per_class)
    budget = (["--max-steps", "2", "--batch-size", "8", "--warmup", "fixed", "--assign-lr-mult", "0.02"]
              if args.smoke else ["--epochs", str(args.epochs)])
    size = "3,32,32" if args.smoke else args.input_size
    data = f"imagefolder:{root}"
    learned = splitc("learn", "resnet18", "--data", data, "--input-size", size, "--groups", args.groups,
                     "--split-from", "layer4", *budget, "--warmup-epochs", "1" if not args.smoke else "0",
                     "--out", str(out / "run"))
    split = splitc("split", str(out / "run"), "--out", str(out / "split"), *(["--accept-unlearned"] if args.smoke else []))
    print(f"val acc {learned['val_acc']:.3f}, superclass ARI {learned['superclass_ari']}, "
          f"params -{split['params_reduced_pct']:.1f}%, FLOPs -{split['flops_reduced_pct']:.1f}%, "
          f"split vs masked {split['max_rel_err']:.1e}")


if __name__ == "__main__":
    main()
