"""``splitc finetune``: train a split model after the split (docs/METHOD.md §6).

The split removed the inter-group weights that learning had only shrunk, so a short
finetune recovers the accuracy they carried. Same conventions as ``learn``: SGD with momentum
and a cosine or step schedule, a tqdm bar, JSON-lines metrics, an atomic checkpoint after every
epoch, ``--resume`` after a kill, and a deterministic data order per (seed, epoch). The paper
finetunes with weight decay 5e-4, so that is the default here.

The result goes back into the split directory: ``finetuned.safetensors`` becomes its current
weights (split.json records it), and ``split.safetensors`` keeps the weights as split, which
``splitc verify`` checks against the masked model.

This module only chooses the engine: one process (``finetune_loop``), or one branch group per
rank (``finetune_dist``, launched by ``finetune_launch`` or by torchrun).
"""

from __future__ import annotations

import os

from splitc.compile.finetune_launch import finetune_distributed
from splitc.compile.finetune_loop import CHECKPOINT, METRICS, FinetuneConfig, FinetuneResult, finetune_single

__all__ = ["CHECKPOINT", "METRICS", "FinetuneConfig", "FinetuneResult", "finetune"]


def finetune(config: FinetuneConfig, progress: bool = True) -> FinetuneResult:
    """Finetune ``config.split_dir``: on one device, or on ``config.nproc`` ranks (or torchrun's)."""
    if config.nproc > 1 or ("RANK" in os.environ and "WORLD_SIZE" in os.environ):  # torchrun sets both
        return finetune_distributed(config, progress)
    return finetune_single(config, progress)
