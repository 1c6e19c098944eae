"""Data-parallel ``splitc learn --nproc N``: N ranks on this host, or under ``torchrun``.

What changes with N: every step reads one *global* batch of N x ``--batch-size`` images and rank r
trains on its shard of it; gradients (weights and assignments) are averaged over the ranks
(:mod:`splitc.learn.ranks` has why this is the step of one process at the N-fold batch). So:

- the effective batch is N x ``--batch-size`` and an epoch has len(train) / (N x batch) steps;
- the learning rate is not scaled for you: pass ``--lr`` (the linear rule: N times the rate);
- BatchNorm normalises by each shard's statistics (running statistics are averaged);
- rank 0 writes metrics, checkpoints and ``assignment.json``; the checkpoint is the one a single
  process writes, so ``split`` reads it as any other; ``--resume`` continues it with the same
  N x batch (another N reads the data in another order).

The ranks start through PyTorch's elastic launcher (``splitc/core/launch.py``); a failed rank stops
the job with one line.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from splitc.core.errors import SplitcError
from splitc.core.launch import checkpoint_note, launch_local, under_torchrun
from splitc.learn.config import CHECKPOINT, METRICS, LearnConfig, LearnResult, check_config
from splitc.learn.loop import learn
from splitc.learn.ranks import Ranks


def learn_entry(config: LearnConfig, progress: bool = True) -> LearnResult:
    """``splitc learn``: one process, this rank under torchrun, or ``config.nproc`` local ranks."""
    world = under_torchrun()
    if world is not None:
        if config.nproc not in (1, world):
            raise SplitcError(f"--nproc {config.nproc} under torchrun, which started {world} ranks; drop "
                              "--nproc (torchrun's --nnodes and --nproc-per-node set the ranks).")
        return run_rank(replace(config, nproc=world), progress)
    if config.nproc == 1:
        return learn(config, progress)
    check_config(config)
    outputs = launch_local(_worker, config, config.nproc, job="learn", metrics=Path(config.out) / METRICS,
                           total=None, progress=progress, checkpoint_note=lambda: _checkpoint_note(Path(config.out)))
    return outputs[0]


def run_rank(config: LearnConfig, progress: bool) -> LearnResult:
    """One rank; RANK, WORLD_SIZE (and LOCAL_RANK) come from torchrun or the launcher."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local, local_world = int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = torch.device(config.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    elif "OMP_NUM_THREADS" not in os.environ:  # the local ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group("nccl" if cuda else "gloo")
    print(f"splitc learn: rank {rank} of {world}, pid {os.getpid()}", file=sys.stderr, flush=True)
    try:
        return learn(config, progress and rank == 0, Ranks(rank, world))
    except SplitcError as exc:  # re-raised by its base name, which the launcher recognises
        raise SplitcError(str(exc)) from None
    finally:
        dist.destroy_process_group()


def _worker(config: LearnConfig) -> LearnResult:
    """The entry point of a launched rank (module level, so that spawn can import it)."""
    return run_rank(config, progress=False)


def _checkpoint_note(folder: Path) -> str:
    return checkpoint_note(folder / CHECKPOINT, "learn", "same --nproc and --batch-size")
