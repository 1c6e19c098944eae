"""torchvision's resnet18 on an ImageFolder with a class hierarchy (``hierarchy.json``).

Shows: the layout splitc reads for your own images, ``PATH/train/<class>/*``,
``PATH/val/<class>/*`` and ``PATH/hierarchy.json`` (``{"class": "superclass"}``), and a split of
resnet18 from ``layer4`` learned on it; the superclass ARI of the learned groups is reported.
Without ``--data``, it first writes a small ImageFolder of the built-in synthetic images
(4 superclasses x 5 classes) so that the script runs anywhere.

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

from PIL import Image

from splitc.data import synthetic


def write_toy_imagefolder(root: Path, per_class: tuple[int, int] = (40, 10)) -> Path:
    """PNG files of the synthetic classes in the ImageFolder layout, plus hierarchy.json."""
    for split, (n, stream) in {"train": (per_class[0], 0), "val": (per_class[1], 1)}.items():
        images, labels = synthetic.generate(n, seed=0, stream=stream)
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            folder = root / split / synthetic.CLASS_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    hierarchy = {name: synthetic.SUPERCLASS_NAMES[synthetic.SUPERCLASS_OF[c]]
                 for c, name in enumerate(synthetic.CLASS_NAMES)}
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
