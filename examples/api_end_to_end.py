"""A network you trained, split in one shot and served: the library, then the command line.

Your model and data stay yours (here a small CNN defined in this script, and the in-memory data
set, plain training loop and accuracy of ``examples/own_loop.py``); splitc needs only
``import splitc``:

1. train the dense network with a plain loop;
2. ``splitc.SplitNet(..., val=...)`` sees it is trained and reads its groups off the trained
   features at once, so ``compile()`` right away is the one-shot split (``splitc learn``'s
   default from trained weights);
3. finetune the split in the same plain loop, save it (``splitc.save``), export every subgraph
   to ONNX (``splitc.export``);
4. the command line takes over: ``splitc verify`` checks the ONNX pipeline against the PyTorch
   split, ``splitc run`` runs it on an array of inputs.

    .venv/bin/python examples/api_end_to_end.py [--out runs/api] [--smoke]

``--smoke`` trains for a few steps on a smaller data set (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

import splitc
from own_loop import accuracy, make_data, train   # the data, plain loop and accuracy of examples/own_loop.py


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stage1, self.stage2, self.stage3 = stage(3, 16, 1), stage(16, 32, 2), stage(32, 64, 2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def cli(*args: str) -> str:
    """One ``splitc`` command (the same as typing it in a shell); its output."""
    done = subprocess.run([sys.executable, "-m", "splitc.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"splitc {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/api")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a smaller data set")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    epochs, tune = (2, 1) if args.smoke else (8, 3)
    torch.manual_seed(0)
    train_set, val_set = make_data(per_class=24 if args.smoke else 300)   # 10 classes
    loader = DataLoader(train_set, batch_size=32, shuffle=True, drop_last=True)
    val = DataLoader(val_set, batch_size=256)

    # 1. the dense network, trained as you would anyway
    model = Net(num_classes=10)
    train(model, loader, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4), epochs)
    print(f"dense: val {accuracy(model, val):.3f}")

    # 2. a one-shot split: the groups read off the trained features when val shows it learned
    sp = splitc.SplitNet(model, example_inputs=torch.randn(1, 3, 32, 32), groups=2, split_from="stage3",
                         steps=tune * len(loader), probe=DataLoader(train_set, batch_size=256), val=val)
    split = sp.compile()
    report = sp.report()
    print(f"one-shot split: val {accuracy(split, val):.3f}, params -{report['params']['reduced_pct']:.1f}%, "
          f"FLOPs -{report['flops']['reduced_pct']:.1f}%, split vs masked {sp.verify(split):.1e}")

    # 3. finetune the split in the same loop, save it, export it
    train(split, loader, torch.optim.SGD(split.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4), tune)
    print(f"split, finetuned: val {accuracy(split, val):.3f}")
    splitc.save(split, out / "split.splitc")
    manifest = splitc.export(split, out / "onnx", devices="cpu")
    print("exported:", ", ".join(f"{s.name}@{s.device}" for s in manifest.subgraphs))

    # 4. the command line: check the ONNX pipeline, run it
    checked = json.loads(cli("verify", str(out / "onnx"), "--json"))
    print(f"splitc verify: ok={checked['ok']}, max relative error {checked['max_rel_err']:.1e}")
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.save(out / "x.npy", x)
    cli("run", str(out / "onnx"), "--input", str(out / "x.npy"), "--output", str(out / "logits.npy"))
    with torch.no_grad():
        want = splitc.load(out / "split.splitc")(torch.from_numpy(x)).numpy()
    print(f"splitc run vs the saved split on one batch: max abs diff {np.abs(np.load(out / 'logits.npy') - want).max():.1e}")


if __name__ == "__main__":
    main()
