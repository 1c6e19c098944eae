"""Split your own model in your own training loop: splitc as a library.

The model class lives only in this script, the data comes through an ordinary DataLoader and the
optimiser is the user's. splitc adds one term to the loss and one call after the optimiser step;
then it compiles the split, which trains on in the same loop, and saves it as one file that
loads where this class does not exist.

    .venv/bin/python examples/own_loop.py [--out runs/own_loop] [--epochs 10] [--smoke]

``--smoke``: one epoch and one finetune epoch on a smaller data set (the test suite runs it).
The script writes OUT/split.splitc (the split), OUT/onnx (ONNX per subgraph + manifest) and
OUT/x.pt, OUT/logits.pt (a batch and the split's logits, for a check in a fresh process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import splitc


class ChannelScale(nn.Module):
    """A layer splitc has no rule for: a learned per-channel scale and shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias[None, :, None, None], x, self.weight[None, :, None, None])


def block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), ChannelScale(cout), nn.ReLU())


class SmallNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.layer1 = block(3, 32, 1)
        self.layer2 = block(32, 64, 2)
        self.layer3 = block(64, 128, 2)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_data(per_class: int, classes: int = 10, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Stands in for your Dataset: each class a smooth colour pattern under noise, 32x32 RGB."""
    g = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.randn(classes, 3, 4, 4, generator=g), size=32, mode="bilinear")

    def split(n: int) -> TensorDataset:
        y = torch.arange(classes).repeat(n)
        return TensorDataset(patterns[y] + 0.8 * torch.randn(len(y), 3, 32, 32, generator=g), y)

    return split(per_class), split(max(10, per_class // 4))


def train(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, epochs: int, sp=None) -> None:
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=epochs * len(loader))
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + (sp.regularizer() if sp is not None else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if sp is not None:
                sp.step()


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return hits / len(loader.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/own_loop")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="1 + 1 epochs on a smaller data set")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs, tune = (1, 1) if args.smoke else (args.epochs, max(1, args.epochs // 3))
    torch.manual_seed(0)
    train_set, val_set = make_data(per_class=20 if args.smoke else 200)
    loader = DataLoader(train_set, batch_size=32, shuffle=True, drop_last=True)
    val = DataLoader(val_set, batch_size=256)
    probe = DataLoader(train_set, batch_size=256)   # the training images (without augmentation, were there any)

    model = SmallNet(num_classes=10)
    splitc.register_module(ChannelScale, "channelwise")   # without it, ChannelScale is a named barrier
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sp = splitc.SplitNet(model, example_inputs=torch.randn(1, 3, 32, 32), groups=2, split_from="layer3",
                         steps=len(loader) * epochs, probe=probe, val=val, steps_per_epoch=len(loader))
    train(model, loader, opt, epochs, sp)
    print(f"dense: val {accuracy(model, val):.3f}; {sp.report()['params']}")

    split = sp.compile()
    print(f"split vs masked: max relative error {sp.verify(split):.1e}; val {accuracy(split, val):.3f}")
    train(split, loader, torch.optim.SGD(split.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4), tune)
    print(f"split, finetuned: val {accuracy(split, val):.3f}")

    splitc.save(split, out / "split.splitc")
    loaded = splitc.load(out / "split.splitc")
    x = torch.randn(8, 3, 32, 32)
    split.eval()
    torch.save(x, out / "x.pt")
    torch.save(split(x).detach(), out / "logits.pt")
    assert torch.allclose(loaded(x), split(x), rtol=1e-5, atol=1e-6)
    devices = "cuda:0,cuda:1" if torch.cuda.device_count() >= 2 else "cpu"
    manifest = splitc.export(loaded, out / "onnx", devices=devices, force=True)
    print(f"exported {', '.join(s.name for s in manifest.subgraphs)} to {out / 'onnx'}: check it with "
          f"`splitc verify {out / 'onnx'}`")


if __name__ == "__main__":
    main()
