"""``splitc.learn`` and ``splitc.checkpoint``: the run's files, warm-up, resume, determinism,
and one-line errors for bad checkpoints. Runs are a few steps of resnet20 on synthetic:fast."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from splitc.analysis import analyse
from splitc.assign import AssignmentSet
from splitc.checkpoint import load_checkpoint, save_checkpoint
from splitc.errors import SplitcError
from splitc.learn import LearnConfig, LearnResult, learn
from splitc.scope import make_spec
from splitc.simplex import is_on_simplex

BASE = LearnConfig(model="resnet20", data="synthetic:fast", groups="4", max_steps=6,
                   warmup_epochs=0.04, batch_size=16, log_every=1)  # warm-up: 3 of 75 steps/epoch


def run(tmp: Path, name: str, **changes) -> LearnResult:
    return learn(replace(BASE, out=str(tmp / name), **changes), progress=False)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps(run_dir: Path) -> list[dict]:
    return [m for m in metrics(run_dir) if m["kind"] == "step"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> LearnResult:
    return run(tmp_path_factory.mktemp("learn"), "base")


def test_run_writes_its_files(base_run: LearnResult) -> None:
    d = base_run.run_dir
    assert base_run.steps == 6 and base_run.checkpoint == d / "checkpoint.pt"
    rows = steps(d)
    assert [m["step"] for m in rows] == list(range(1, 7))
    assert all({"loss", "acc", "R_W", "R_D", "R_E"} <= set(m) for m in rows)
    doc = json.loads((d / "assignment.json").read_text())
    assert doc["steps"] == 6 and doc["spaces"]
    for space in doc["spaces"]:
        assert sum(space["group_sizes"]) > 0 and len(space["group_sizes"]) == 4
        assert len(space["hard"]) > 0 and isinstance(space["fuzzy"], list)
    assert set(doc["class_groups"]) == set(json.loads(json.dumps(doc["class_groups"])))
    assert len(doc["class_groups"]) == 20
    assert base_run.superclass_ari is not None and -1.0 <= base_run.superclass_ari <= 1.0
    assert set(base_run.group_sizes) == {s["name"] for s in doc["spaces"]}


def test_checkpoint_loads_weights_only(base_run: LearnResult) -> None:
    ckpt = torch.load(base_run.checkpoint, weights_only=True)
    assert ckpt["kind"] == "learn" and ckpt["step"] == 6 and "splitc_version" in ckpt
    assert {"model", "assignments", "optimizers", "rng", "config", "identity"} <= set(ckpt)
    assert ckpt["identity"]["model"] == "resnet20"


def test_regularizers_off_during_warmup_then_on(base_run: LearnResult) -> None:
    rows = steps(base_run.run_dir)
    warm, after = rows[:3], rows[3:]
    assert all(not m["regs_on"] and m["R_W"] == m["R_D"] == m["R_E"] == 0.0 for m in warm)
    assert all(m["loss"] == m["ce"] for m in warm)
    assert all(m["regs_on"] and m["R_D"] > 0 and m["R_E"] > 0 and m["R_W"] > 0 for m in after)
    assert all(m["loss"] > m["ce"] for m in after)


def test_random_kind_keeps_its_assignment(tmp_path: Path) -> None:
    result = run(tmp_path, "random", assign="random", max_steps=5)
    ckpt = torch.load(result.checkpoint, weights_only=True)
    analysis = analyse("resnet20", make_spec("4"), 20, (3, 32, 32))
    before = AssignmentSet.create(analysis.ir, analysis.scope, "random", seed=BASE.seed).state_dict()
    assert before.keys() == ckpt["assignments"].keys()
    for key, value in ckpt["assignments"].items():
        assert torch.equal(value, before[key])
        assert set(value.unique().tolist()) <= {0.0, 1.0}


def test_reduced_gradient_stays_on_simplex(tmp_path: Path) -> None:
    result = run(tmp_path, "rg", assign="reduced-gradient", max_steps=5)
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["assignments"]
    for value in ckpt["assignments"].values():
        assert is_on_simplex(value, 1e-5)


def test_same_seed_same_losses_and_exact_resume(tmp_path: Path, base_run: LearnResult,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Rerun the base run, snapshotting its step-4 checkpoint as a kill would leave it; the rerun
    must match the base run, and resuming the snapshot must reproduce steps 5 and 6 exactly."""
    import splitc.learn as learn_module

    original, killed = learn_module._save, tmp_path / "killed"

    def save_and_snapshot(state):
        path = original(state)
        if state.step == 4:
            shutil.copytree(path.parent, killed)
        return path

    monkeypatch.setattr(learn_module, "_save", save_and_snapshot)
    again = run(tmp_path, "again", checkpoint_every=4)
    monkeypatch.undo()
    base_losses = [m["loss"] for m in steps(base_run.run_dir)]
    assert [m["loss"] for m in steps(again.run_dir)] == base_losses
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = run(tmp_path, "killed", resume=True)
    assert resumed.steps == 6
    rows = steps(resumed.run_dir)
    assert [m["step"] for m in rows] == list(range(1, 7))
    assert [m["loss"] for m in rows] == base_losses


def test_resume_to_eight(tmp_path: Path) -> None:
    run(tmp_path, "r8", max_steps=4)
    result = run(tmp_path, "r8", max_steps=8, resume=True, lr=0.05, assign_lr_mult=7.0)
    assert result.steps == 8
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["step"] == 8
    # The resumed run's own rates apply, not the ones saved with the optimizer state.
    assert ckpt["optimizers"]["weights"]["param_groups"][0]["base_lr"] == 0.05
    assert ckpt["optimizers"]["assign"]["param_groups"][0]["base_lr"] == pytest.approx(0.35)
    assert [m["step"] for m in steps(result.run_dir)] == list(range(1, 9))


def test_existing_run_needs_resume(base_run: LearnResult) -> None:
    with pytest.raises(SplitcError, match="--resume"):
        learn(replace(BASE, out=str(base_run.run_dir)), progress=False)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def test_truncated_checkpoint(tmp_path: Path, base_run: LearnResult) -> None:
    bad = tmp_path / "checkpoint.pt"
    data = base_run.checkpoint.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SplitcError) as exc:
        load_checkpoint(bad, {})
    assert "corrupt" in one_line(exc)


def test_garbage_and_missing_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SplitcError) as exc:
        load_checkpoint(bad, {})
    one_line(exc)
    with pytest.raises(SplitcError) as exc:
        load_checkpoint(tmp_path / "missing.pt", {})
    assert "does not exist" in one_line(exc)


def test_foreign_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(SplitcError) as exc:
        load_checkpoint(path, {})
    assert "not a splitc checkpoint" in one_line(exc)


def test_mismatch_names_the_field(tmp_path: Path, base_run: LearnResult) -> None:
    expect = json.loads(json.dumps(torch.load(base_run.checkpoint, weights_only=True)["identity"]))
    assert load_checkpoint(base_run.checkpoint, expect)["step"] == 6
    for field, value in (("num_classes", 10), ("model", "resnet32"), ("input_size", [3, 64, 64]),
                         ("scope", "G=2, split-depth 1")):
        with pytest.raises(SplitcError) as exc:
            load_checkpoint(base_run.checkpoint, {**expect, field: value})
        assert field in one_line(exc)


def test_resume_with_other_scope_fails(tmp_path: Path, base_run: LearnResult) -> None:
    shutil.copytree(base_run.run_dir, tmp_path / "copy")
    with pytest.raises(SplitcError, match="scope"):
        run(tmp_path, "copy", groups="2", resume=True)


def test_save_is_atomic_and_plain(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {"kind": "test", "identity": {"model": "m"},
                                               "x": torch.ones(3), "n": [1, 2.5, "s"]})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    loaded = load_checkpoint(path, {"model": "m"}, kind="test")
    assert loaded["n"] == [1, 2.5, "s"] and torch.equal(loaded["x"], torch.ones(3))


KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from splitc.learn import LearnConfig, learn
learn(LearnConfig(model="resnet20", data="synthetic:fast", max_steps=200, warmup_epochs=0.04,
                  batch_size=16, checkpoint_every=1, log_every=1, out=sys.argv[1]), progress=False)
"""


def test_sigkill_mid_run_leaves_a_resumable_checkpoint(tmp_path: Path) -> None:
    """A kill at an arbitrary moment (possibly mid-write) leaves a whole checkpoint to resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)])
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "checkpoint.pt").exists() and len(steps_if_any(out)) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    step = load_checkpoint(out / "checkpoint.pt", {"model": "resnet20"})["step"]
    assert step >= 1
    result = run(tmp_path, "killed", max_steps=step + 1, resume=True, checkpoint_every=1)
    assert result.steps == step + 1
    # Steps logged after the last checkpoint were dropped on resume: each step appears once.
    assert [m["step"] for m in steps(out)] == list(range(1, step + 2))


def steps_if_any(run_dir: Path) -> list[dict]:
    return steps(run_dir) if (run_dir / "metrics.jsonl").exists() else []


def test_overlap_freezes_crisp_spaces_only(tmp_path: Path) -> None:
    """METHOD.md §6: a space with < 20% fuzzy nodes stops training; a uniform one keeps going."""
    import splitc.learn as learn_module

    state = learn_module._setup(replace(BASE, out=str(tmp_path / "o"), overlap=0.1))
    crisp, uniform = state.aset.spaces[0], state.aset.spaces[1]
    with torch.no_grad():
        alpha = state.aset.by_space[str(crisp)].alpha
        alpha.zero_()
        alpha[0] = 20.0  # every node of this space sits in group 0
    learn_module._freeze_crisp_spaces(state)
    assert state.frozen == (crisp,)
    assert not state.aset.by_space[str(crisp)].alpha.requires_grad
    assert state.aset.by_space[str(uniform)].alpha.requires_grad
