"""Launching ``splitc finetune --nproc N``: N local ranks through PyTorch's elastic launcher
(``splitc/core/launch.py``, shared with data-parallel learn), each running
``finetune_dist.run_rank``; a failed rank becomes one line with the last checkpoint."""

from __future__ import annotations

from pathlib import Path

from splitc.core.errors import SplitcError
from splitc.core.launch import checkpoint_note, launch_local, under_torchrun
from splitc.compile.finetune_loop import CHECKPOINT, METRICS, FinetuneConfig, FinetuneResult, claim_split_dir
from splitc.compile.finetune_dist import RankReport, check_device, check_nproc, run_rank
from splitc.compile.split_dir import read_meta


def launch_ranks(config: FinetuneConfig, progress: bool = True) -> list[RankReport]:
    """Check the input, then run ``config.nproc`` ranks on this host through PyTorch's elastic
    launcher (as torchrun does); a failed rank stops them all and becomes one line."""
    folder = Path(config.split_dir)
    meta = claim_split_dir(folder, read_meta(folder), config)
    check_nproc(meta, config.nproc, folder)
    check_device(config.device, config.nproc)
    outputs = launch_local(_worker, config, config.nproc, job="finetune", metrics=folder / METRICS,
                           total=config.max_steps, progress=progress, checkpoint_note=lambda: _checkpoint_note(folder))
    return [outputs[r] for r in sorted(outputs)]


def _worker(config: FinetuneConfig) -> RankReport:
    """The entry point of a launched rank (module level, so that spawn can import it)."""
    return run_rank(config, progress=False)


def _checkpoint_note(folder: Path) -> str:
    return checkpoint_note(folder / CHECKPOINT, "finetune", "any --nproc")


def finetune_distributed(config: FinetuneConfig, progress: bool = True) -> FinetuneResult:
    """Under torchrun, this process's rank; otherwise launch ``config.nproc`` local ranks.
    Returns rank 0's result (every rank's is the same)."""
    world = under_torchrun()
    if world is not None:
        if config.nproc not in (1, world):
            raise SplitcError(f"--nproc {config.nproc} under torchrun, which started {world} ranks; drop "
                              "--nproc (torchrun's --nnodes and --nproc-per-node set the ranks).")
        return run_rank(config, progress).result
    return launch_ranks(config, progress)[0].result
