"""Model-parallel finetune (splitc/compile/finetune_dist.py) on CPU with gloo: exactness against one
process, the ranks' memory, equal BatchNorm statistics, a killed worker, and bad input.

The split directories come from ``random_split`` (no learn run) and the data is
``synthetic:tiny``, so the file stays short; every wait has a deadline and every process this
file starts is stopped in a ``finally``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from splitc.core.checkpoint import load_checkpoint
from splitc.cli.main import main
from splitc.compile.finetune import CHECKPOINT, FinetuneConfig, finetune
from splitc.compile.finetune_dist import RankModel, RankReplica, place_branches
from splitc.compile.finetune_launch import launch_ranks
from splitc.graph.scope import make_spec
from splitc.compile.split_dir import FINETUNED_WEIGHTS, SPLIT_JSON, load_split
from splitc.compile.split_run import random_split

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is missing")

DATA = "synthetic:tiny"
STEPS = 5


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (and let the elastic agent stop its workers) instead of hanging. Off the main thread
    (no SIGALRM there) the collectives' own 10-minute timeout bounds the wait."""
    def expire(signum, frame):
        raise TimeoutError(f"no result within {seconds} s")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, Path]:
    """resnet20 split G=2 from layer3, and a 2->4 tree, on fresh weights (no learn run)."""
    root = tmp_path_factory.mktemp("splits")
    scopes = {"g2": ("2", "layer3"), "tree": ("2,4", "layer3,layer3.2")}
    for name, (groups, split_from) in scopes.items():
        random_split("resnet20", make_spec(groups, split_from, model="resnet20"), root / name,
                     num_classes=20, input_size=(3, 32, 32))
    return {name: root / name for name in scopes}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def expected_params(split: Path, branches: tuple[str, ...]) -> set[str]:
    model = load_split(split).model
    keep = ("trunk", "merge", *branches)
    return {f"parts.{name.replace('.', '_')}.{p}" for name in keep for p, _ in model.subgraph(name).named_parameters()}


def test_placement_keeps_subtrees_and_each_rank_holds_only_its_branches(splits) -> None:
    loaded = load_split(splits["tree"])
    flops = {n: c["flops"] for n, c in loaded.meta["report"]["subgraphs"].items()}
    placement = place_branches(loaded.model.plan, flops, 2)
    assert placement == [("g0", "g0.0", "g0.1"), ("g1", "g1.2", "g1.3")]
    assert place_branches(loaded.model.plan, {**flops, "g1.3": 10 ** 12}, 2)[0][0] == "g1"  # largest first
    full = sum(p.numel() for p in loaded.model.parameters())
    trunk = sum(p.numel() for p in loaded.model.subgraph("trunk").parameters())
    sizes = []
    for rank in range(2):
        model = RankModel(loaded.model, placement, rank, seed=0)
        assert {n for n, _ in model.named_parameters()} == expected_params(splits["tree"], placement[rank])
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sum(sizes) == full + trunk and max(sizes) < full  # the trunk is the only copy


def run_both(split: Path, tmp_path: Path, **options) -> tuple[Path, Path, list]:
    """A single-process and a 2-rank finetune (float64) of the same split, seed and batches."""
    one, two = copy(split, tmp_path / "one"), copy(split, tmp_path / "two")
    config = FinetuneConfig(str(one), data=DATA, max_steps=STEPS, batch_size=16, dtype="float64", **options)
    with deadline(240):
        finetune(config, progress=False)
        reports = launch_ranks(replace(config, split_dir=str(two), nproc=2), progress=False)
    return one, two, reports


def assert_same_finetune(one: Path, two: Path, reports: list, split: Path) -> None:
    a, b = load_file(str(one / FINETUNED_WEIGHTS)), load_file(str(two / FINETUNED_WEIGHTS))
    assert a.keys() == b.keys()
    before = load_file(str(one / "split.safetensors"))
    for key in a:
        if a[key].is_floating_point():
            assert rel(b[key], a[key]) <= 1e-5, key
    moved = [k for k in a if "running_mean" in k and "trunk" in k and rel(a[k], before[k]) > 1e-3]
    assert moved, "the trunk's BatchNorm statistics did not move: the check below would be empty"
    # every rank's trunk (weights and BatchNorm running statistics) is the same, bit for bit
    assert len({r.replica_digest for r in reports}) == 1
    for r in reports:  # memory: the trunk, the merge and the rank's own branches, nothing else
        assert set(r.params) == expected_params(split, r.branches)
    assert sorted(n for r in reports for n in r.branches) == sorted(
        s["name"] for s in json.loads((split / SPLIT_JSON).read_text())["plan"]["subgraphs"] if s["role"] == "branch")
    c1, c2 = (load_checkpoint(d / CHECKPOINT, kind="finetune") for d in (one, two))
    assert c1.keys() == c2.keys() and c1["step"] == c2["step"] == STEPS
    assert c1["optimizer"]["param_groups"] == c2["optimizer"]["param_groups"]
    s1, s2 = c1["optimizer"]["state"], c2["optimizer"]["state"]
    assert s1.keys() == s2.keys()
    assert all(rel(s2[i]["momentum_buffer"], s1[i]["momentum_buffer"]) <= 1e-5 for i in s1)
    assert torch.equal(c1["rng"], c2["rng"])
    assert json.loads((two / SPLIT_JSON).read_text())["weights"] == FINETUNED_WEIGHTS


def test_two_ranks_equal_one_process_g2(splits, tmp_path: Path) -> None:
    one, two, reports = run_both(splits["g2"], tmp_path)
    assert [r.branches for r in reports] == [("g0",), ("g1",)]
    assert_same_finetune(one, two, reports, splits["g2"])
    assert reports[0].result == reports[1].result  # every rank reports the same


def test_two_ranks_equal_one_process_tree(splits, tmp_path: Path) -> None:
    one, two, reports = run_both(splits["tree"], tmp_path)
    assert_same_finetune(one, two, reports, splits["tree"])
    # a rank resumed from this single-process checkpoint gets exactly its parameters' momentum
    loaded = load_split(splits["tree"])
    placement = [r.branches for r in reports]
    model = RankModel(loaded.model, placement, 1, seed=0)
    full = load_checkpoint(one / CHECKPOINT, kind="finetune")["optimizer"]
    local = RankReplica(model, loaded.model, 1, 2).local_optimizer_state(full)
    names = [n for n, _ in loaded.model.named_parameters()]
    for j, name in enumerate(n for n, _ in model.named_parameters()):
        assert torch.equal(local["state"][j]["momentum_buffer"], full["state"][names.index(name)]["momentum_buffer"])


def test_two_ranks_equal_one_process_with_a_branch_lr_multiple(splits, tmp_path: Path) -> None:
    """--branch-lr-mult puts the branches in a second parameter group: the ranks' checkpoint is
    still the single process's, and a rank resumes its own parameters' momentum from it."""
    one, two, reports = run_both(splits["g2"], tmp_path, branch_lr_mult=4.0)
    assert_same_finetune(one, two, reports, splits["g2"])
    full = load_checkpoint(one / CHECKPOINT, kind="finetune")["optimizer"]
    assert [g["lr_mult"] for g in full["param_groups"]] == [1.0, 4.0]
    loaded = load_split(splits["g2"])
    names = [n for n, _ in loaded.model.named_parameters()]
    order = [n for n in names if not n.startswith("parts.g")] + [n for n in names if n.startswith("parts.g")]
    model = RankModel(loaded.model, [r.branches for r in reports], 1, seed=0)
    local = RankReplica(model, loaded.model, 1, 2).local_optimizer_state(full)
    mine = [n for n, _ in model.named_parameters()]
    mine = [n for n in mine if not n.startswith("parts.g")] + [n for n in mine if n.startswith("parts.g")]
    assert [len(g["params"]) for g in local["param_groups"]] == [sum(not n.startswith("parts.g") for n in mine),
                                                                  sum(n.startswith("parts.g") for n in mine)]
    for j, name in enumerate(mine):
        assert torch.equal(local["state"][j]["momentum_buffer"], full["state"][order.index(name)]["momentum_buffer"])


def rank_pid(logs: Path, rank: int, timeout: float) -> int:
    """The pid a launched rank writes into its log when it starts."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for log in logs.glob(f"splitc-finetune-*/*/attempt_0/{rank}/stderr.log"):
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith(f"splitc finetune: rank {rank} of"):
                    return int(line.split("pid ")[1].split(",")[0])
        time.sleep(0.2)
    raise TimeoutError(f"rank {rank} did not start within {timeout} s")


def wait_for(check, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.1)


def test_killed_worker_is_one_line_and_resume_continues(splits, tmp_path: Path) -> None:
    work = copy(splits["g2"], tmp_path / "s")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the launcher puts the ranks' logs
    cmd = [sys.executable, "-m", "splitc.cli", "finetune", str(work), "--data", DATA, "--nproc", "2",
           "--epochs", "100000", "--batch-size", "8", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        victim = rank_pid(tmp_path, 1, timeout=150)
        wait_for(lambda: (work / CHECKPOINT).is_file(), 150, "no checkpoint")
        written = load_checkpoint(work / CHECKPOINT, kind="finetune")["step"]
        wait_for(lambda: (work / "finetune_metrics.jsonl").read_text().count('"loss"') > written + 2, 60,
                 "no step after the checkpoint")  # mid-epoch
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 ") and "SIGKILL" in lines[0], err
    assert took < 30
    step = load_checkpoint(work / CHECKPOINT, kind="finetune")["step"]  # loadable, and continues
    assert step >= written
    result = CliRunner().invoke(main, ["finetune", str(work), "--data", DATA, "--batch-size", "8", "--resume",
                                       "--max-steps", str(step + 2), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["steps"] == step + 2  # with one process, not two


def error_line(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_input_is_one_line(splits, monkeypatch) -> None:
    split = str(splits["tree"])
    base = ["finetune", split, "--data", DATA, "--max-steps", "1"]
    assert "more than the 2 top-level branches" in error_line(base + ["--nproc", "3"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "needs one GPU per worker, but this host has 1 GPU" in error_line(base + ["--nproc", "2", "--device", "cuda"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "under torchrun, which started 2 ranks" in error_line(base + ["--nproc", "3"])
    assert not (splits["tree"] / CHECKPOINT).exists()
