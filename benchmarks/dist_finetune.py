"""Model-parallel finetune (``splitc finetune --nproc N``): step time and parameter memory per
rank for one process and for 2 ranks, on resnet20 (G=2 from layer3) and WRN-16-8 ``deep``.

Every row runs the finetune's own step (``finetune.train_step``: forward, loss / N, backward, the
trunk all-reduce, SGD) on fixed random batches of the split's input size, after warm-up steps;
every row starts in fresh processes through PyTorch's elastic launcher, like ``--nproc 2``.

* ``1 proc, T threads``: the whole split model in one process (T = all cores, then 1);
* ``2 ranks, 1 thread each``: the trunk replicated, one top-level branch per rank (gloo);
* with ``--device cuda``: one process on cuda:0, then 2 ranks on cuda:0 and cuda:1 (nccl).

``ideal`` is (trunk FLOPs + the largest rank's branch FLOPs) / total FLOPs, the step-time
ratio of 2 ranks against 1 process if each rank had a device of its own and communication were
free; ``measured`` divides the 2-rank step time by the 1-process, 1-thread (or 1-GPU) one. On a
host with fewer cores than ranks x threads the ranks share cores, so read the ratio as an upper
bound there.

    python benchmarks/dist_finetune.py [--work DIR] [--steps 5] [--warmup 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CASES = {  # name -> (model, scope, batch size)
    "resnet20 G=2 layer3": ("resnet20", ("2", "layer3", None), 64),
    "wrn16_8 deep": ("wrn16_8", (None, None, "deep"), 16),
}


@dataclass(frozen=True)
class Row:
    step_s: float        # median step time (rank 0's for 2 ranks; all ranks step together)
    param_mib: float     # the largest rank's parameters
    peak_mib: float      # the largest rank's peak memory: resident on the CPU (the full split is
                         # loaded first), allocated on a GPU


def split_dir(work: Path, name: str) -> Path:
    from splitc.graph.scope import make_spec
    from splitc.compile.split_run import random_split

    model, (groups, split_from, preset), _ = CASES[name]
    folder = work / name.replace(" ", "_").replace("=", "")
    if not (folder / "split.json").is_file():
        random_split(model, make_spec(groups, split_from, preset=preset, model=model), folder)
    return folder


def time_steps(folder: Path, batch: int, steps: int, warmup: int, device: torch.device) -> tuple[float, float, float]:
    """Median step time, parameter MiB and peak memory MiB of this process (a rank, or the only
    one): resident memory on the CPU, allocated device memory on a GPU."""
    import torch.distributed as dist

    from splitc.compile.finetune_loop import FinetuneConfig, Replica, Run, train_step, make_optimizer
    from splitc.compile.finetune_dist import RankModel, RankReplica, place_branches
    from splitc.compile.split_dir import load_split, read_meta

    meta, loaded = read_meta(folder), load_split(folder)
    config = FinetuneConfig(str(folder))
    run = Run(config, folder, meta, None, device, 1, 10 ** 6, {})
    model, replica = loaded.model, Replica()
    if dist.is_initialized():
        flops = {n: c["flops"] for n, c in meta["report"]["subgraphs"].items()}
        placement = place_branches(model.plan, flops, dist.get_world_size())
        model = RankModel(loaded.model, placement, dist.get_rank(), seed=0)
        replica = RankReplica(model, loaded.model, dist.get_rank(), dist.get_world_size())
    del loaded
    model = model.to(device)
    optimizer = make_optimizer(model, config)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *meta["input_size"], generator=gen)
    y = torch.randint(0, meta["num_classes"], (batch,), generator=gen)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        train_step(run, model.train(), optimizer, replica, i, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    params = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return statistics.median(times[warmup:]), params, peak


def _rank(folder: Path, batch: int, steps: int, warmup: int, threads: int, cuda: bool) -> tuple[float, float, float]:
    """One launched process: a rank of several (gloo, or nccl on GPU LOCAL_RANK), or the only one."""
    import torch.distributed as dist

    torch.set_num_threads(threads)
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if int(os.environ["WORLD_SIZE"]) == 1:
        return time_steps(folder, batch, steps, warmup, device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        return time_steps(folder, batch, steps, warmup, device)
    finally:
        dist.destroy_process_group()


def launch(folder: Path, batch: int, steps: int, warmup: int, nproc: int, threads: int, cuda: bool = False) -> Row:
    """Fresh processes through the elastic launcher, so that each row's peak RSS is its own."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"bench-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                          max_restarts=0, monitor_interval=0.2)
    out = elastic_launch(config, _rank)(folder, batch, steps, warmup, threads, cuda)
    return Row(out[0][0], max(o[1] for o in out.values()), max(o[2] for o in out.values()))


def ideal_ratio(folder: Path) -> float:
    from splitc.compile.finetune_dist import place_branches
    from splitc.compile.split_dir import read_meta
    from splitc.graph.split_model import SplitPlan

    meta = read_meta(folder)
    flops = {n: c["flops"] for n, c in meta["report"]["subgraphs"].items()}
    placement = place_branches(SplitPlan.from_dict(meta["plan"]), flops, 2)
    shared = sum(f for n, f in flops.items() if n in ("trunk", "merge"))
    return (shared + max(sum(flops[n] for n in names) for names in placement)) / sum(flops.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/splitc-bench-dist", help="Where the split directories are kept.")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per row (median).")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: one process on GPU 0, then one rank per GPU on 2 GPUs (nccl).")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    cuda = args.device == "cuda"
    if cuda and torch.cuda.device_count() < 2:
        raise SystemExit(f"--device cuda needs 2 GPUs; torch sees {torch.cuda.device_count()}")
    print(f"{cores} cores, {torch.cuda.device_count()} GPUs, load average {os.getloadavg()[0]:.1f} at the start")
    print("| split | batch | run | step s | params MiB / rank | peak MiB / rank | measured ratio | ideal ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (_, _, batch) in CASES.items():
        folder = split_dir(work, name)
        if cuda:
            rows = {"1 proc, cuda:0": launch(folder, batch, args.steps, args.warmup, 1, 1, True),
                    "2 ranks, cuda:0 and cuda:1": launch(folder, batch, args.steps, args.warmup, 2, 1, True)}
        else:
            rows = {f"1 proc, {cores} threads": launch(folder, batch, args.steps, args.warmup, 1, cores),
                    "1 proc, 1 thread": launch(folder, batch, args.steps, args.warmup, 1, 1),
                    "2 ranks, 1 thread each": launch(folder, batch, args.steps, args.warmup, 2, 1)}
        base, ideal = list(rows.values())[-2].step_s, ideal_ratio(folder)
        for label, row in rows.items():
            ratio = f"{row.step_s / base:.2f}" if label.startswith("2") else ""
            print(f"| {name} | {batch} | {label} | {row.step_s:.3f} | {row.param_mib:.2f} | {row.peak_mib:.0f} | "
                  f"{ratio} | {ideal:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
