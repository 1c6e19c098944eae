"""Batches and evaluation shared by learn and finetune: the epoch order, the one top-1 loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


def epoch_loader(dataset: Dataset, seed: int, epoch: int, batch_size: int, steps_per_epoch: int,
                 skip: int = 0) -> DataLoader:
    """Batches of ``epoch`` in an order fixed by (seed, epoch), minus the first ``skip`` batches
    already trained before a resume; the last partial batch is dropped so every epoch has equal
    steps. Shared by learn and finetune, so both resume the same way."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(dataset), generator=gen).tolist()
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(steps_per_epoch)][skip:]
    # The loader draws a worker seed when iterated; taking it from ``gen`` rather than the global
    # RNG keeps the augmentation stream the same whether an epoch starts fresh or mid-way.
    return DataLoader(dataset, batch_sampler=batches, num_workers=0, generator=gen)


@torch.no_grad()
def accuracy(model: torch.nn.Module, dataset: Dataset, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` in eval mode; the model's mode is restored.
    The one evaluation that learn, finetune and the benchmarks share."""
    was_training = model.training
    model.eval()
    try:
        correct, total = top1_counts(lambda x: model(x.to(device)), dataset)
    finally:
        model.train(was_training)
    return correct / max(1, total)


def top1_counts(predict: Callable[[torch.Tensor], Any], dataset: Dataset, batch_size: int = 256,
                progress: bool = False, desc: str = "eval") -> tuple[int, int]:
    """(correct, total) of ``predict`` (a batch -> logits, torch or numpy) over ``dataset`` in
    order: the one top-1 loop, behind ``accuracy`` (PyTorch models) and ``splitc run --data``
    (ONNX pipelines)."""
    correct = total = 0
    batches = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    with torch.no_grad():
        for x, y in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
            predicted = torch.as_tensor(predict(x)).argmax(dim=1).cpu()
            correct += int((predicted == y).sum())
            total += len(y)
    return correct, total
