"""Plain training of a dense network: the teacher a from-trained split starts from.

``splitc demo --data fashion-mnist`` trains one before it splits it, and the benchmarks train
every dense row (teachers, pruned networks, narrow networks) with the same loop, so that a split
and its anchors differ only in what the table says they differ in.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from splitc.data.bundle import DataBundle
from splitc.learn.optim import lr_ramp_steps

LossOf = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fit_plain(model: torch.nn.Module, bundle: DataBundle, epochs: int, batch_size: int = 64, lr: float = 0.1,
              seed: int = 0, on_epoch: Callable[[int], None] | None = None, progress: bool = True) -> None:
    """SGD (momentum 0.9, Nesterov), weight decay 1e-4, a linear lr warm-up of half an epoch (at
    least learn's minimum: without it resnet20 sat at chance on synthetic:families), then cosine
    to zero over the run; ``on_epoch(e)`` runs after epoch ``e`` (1-based)."""
    steps_per_epoch = max(1, len(bundle.train) // batch_size)
    total = epochs * steps_per_epoch
    ramp = max(1, lr_ramp_steps(0.5, steps_per_epoch, total))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
    sched = torch.optim.lr_scheduler
    schedule = sched.SequentialLR(optimizer, [sched.LinearLR(optimizer, 1.0 / ramp, 1.0, ramp),
                                              sched.CosineAnnealingLR(optimizer, max(1, total - ramp))], [ramp])
    train_epochs(model, bundle, epochs, batch_size, seed, optimizer, schedule, on_epoch=on_epoch, progress=progress)


def train_epochs(model: torch.nn.Module, bundle: DataBundle, epochs: int, batch_size: int, seed: int,
                 optimizer: torch.optim.Optimizer, schedule, loss_of: LossOf | None = None,
                 on_epoch: Callable[[int], None] | None = None, progress: bool = False) -> None:
    """Shuffled batches (seeded), ``loss_of(logits, x, y)`` (cross-entropy by default), the
    optimiser and its per-step schedule."""
    loss_of = loss_of or (lambda logits, x, y: F.cross_entropy(logits, y))
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    with tqdm(total=epochs * len(loader), desc="train", disable=not progress, dynamic_ncols=True) as bar:
        for epoch in range(epochs):
            model.train()
            for x, y in loader:
                loss = loss_of(model(x), x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if on_epoch is not None:
                on_epoch(epoch + 1)
