"""A user-defined model, split through ``package.module:callable``.

Shows: splitc takes any traceable CNN factory. This file defines ``build(num_classes)``; the
commands below refer to it as ``custom_model:build`` (the folder is put on PYTHONPATH), then
inspect, learn (a few steps on the built-in synthetic data), split and verify it.

    .venv/bin/python examples/custom_model.py [--out runs/custom] [--steps 20] [--smoke]

``--smoke`` learns 2 steps on ``synthetic:tiny`` (the test suite runs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn


class SmallSENet(nn.Module):
    """Conv stem, two residual stages with a squeeze-excite gate, a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = self._stage(width)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.stage2 = self._stage(2 * width)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(2 * width, width // 2, 1), nn.ReLU(),
                                  nn.Conv2d(width // 2, 2 * width, 1), nn.Sigmoid())
        self.head = nn.Linear(2 * width, num_classes)

    @staticmethod
    def _stage(c: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.stage1(x))
        x = self.down(x)
        x = torch.relu(x + self.stage2(x))
        x = x * self.gate(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(num_classes: int = 10) -> nn.Module:
    """The factory splitc calls: ``custom_model:build``."""
    return SmallSENet(num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/custom")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="2 steps on synthetic:tiny")
    args = parser.parse_args()
    steps_, data = ("2", "synthetic:tiny") if args.smoke else (str(args.steps), "synthetic:fast")
    splitc = [sys.executable, "-m", "splitc.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time
    steps = [
        ["inspect", "custom_model:build", "--input-size", "3,32,32", "--split-from", "down", "--groups", "2"],
        ["learn", "custom_model:build", "--data", data, "--split-from", "down", "--groups", "2",
         "--max-steps", steps_, "--out", str(out / "run")],
        ["split", str(out / "run"), "--out", str(out / "split"), *(["--accept-unlearned"] if args.smoke else [])],
        ["verify", str(out / "split")],
    ]
    for step in steps:
        print("$ splitc " + " ".join(step), flush=True)
        if subprocess.run(splitc + step, env=env).returncode:
            sys.exit(f"step failed: splitc {step[0]}")


if __name__ == "__main__":
    main()
