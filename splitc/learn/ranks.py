"""The ranks of a data-parallel ``splitc learn`` as the loop sees them (``splitc/learn/dist.py``
starts them). With one process (:data:`SINGLE`) every method is a no-op, so the loop has one path.

Why each step equals one process at the N-fold batch: every rank reads the same global batch of
N x ``--batch-size`` images (same order, same augmentation) and trains on its rows
``rank*B .. (rank+1)*B - 1``. The cross-entropy's mean over the global batch is the mean of the
ranks' shard means (equal shards), so averaging the ranks' gradients gives its gradient; the
regularizers depend on the parameters only, every rank computes the same value, and the average
keeps it. The assignment parameters are averaged like the weights. BatchNorm normalises each
shard by its own statistics (as ``DistributedDataParallel`` without SyncBatchNorm does), which
is the one difference from one process; its running statistics are averaged after each step so
that the ranks stay equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes the metrics, checkpoints and assignment.json."""
        return self.rank == 0

    def shard(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world == 1:
            return x, y
        b = len(x) // self.world
        return x[self.rank * b:(self.rank + 1) * b], y[self.rank * b:(self.rank + 1) * b]

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Every gradient becomes the mean over the ranks."""
        if self.world == 1:
            return
        params = [p for p in params if p.requires_grad]
        means = self._means([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        for p, g in zip(params, means):
            p.grad = g

    def average_buffers(self, module: nn.Module) -> None:
        """BatchNorm running means and variances averaged over the ranks (float buffers only)."""
        if self.world == 1:
            return
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        for b, v in zip(buffers, self._means(buffers)):
            b.copy_(v)

    def _means(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t / self.world for t in summed_over_ranks(tensors)]

    def broadcast(self, value: float) -> float:
        """Rank 0's value on every rank, so that every decision taken on it is the same."""
        if self.world == 1:
            return value
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


SINGLE = Ranks()


def summed_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over the ranks, in one flat all-reduce (new tensors, shapes kept).
    Shared by data-parallel learn (averaged) and the model-parallel finetune (summed)."""
    if not tensors:
        return []
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    return [v.view_as(t).clone() for t, v in zip(tensors, torch.split(flat, [t.numel() for t in tensors]))]
