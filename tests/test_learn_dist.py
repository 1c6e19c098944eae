"""Data-parallel learn (splitc/learn/dist.py, splitc/learn/ranks.py) on CPU with gloo: 2 ranks equal
one process at the doubled batch, a BatchNorm model's run splits like any other, and bad input
or a rank's error is one line. Every launch has the collectives' timeout and the launcher's
own shutdown; nothing outlives the test."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from splitc.cli.main import main
from splitc.core.checkpoint import load_checkpoint
from splitc.core.errors import SplitcError
from splitc.learn.config import CHECKPOINT, LearnConfig
from splitc.learn.dist import learn_entry

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is missing")

TESTS = str(Path(__file__).parent)
# warm-up 2 steps, then the regularizers (assignments trained) for 4; no commit, no adaptivity
BASE = LearnConfig(model="dp_nets:plain_cnn", data="synthetic:tiny", groups="2", split_depth="2",
                   max_steps=6, warmup="fixed", warmup_epochs=0.1, lr_warmup_epochs=0.0, commit=False,
                   log_every=1, flip=True)


@pytest.fixture(autouse=True)
def importable_nets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spawned ranks import ``dp_nets`` from the tests folder, as this process does."""
    monkeypatch.syspath_prepend(TESTS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir / CHECKPOINT, kind="learn")
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()},
            **{f"assign.{k}": v for k, v in ckpt["assignments"].items()}}


def test_two_ranks_equal_one_process_at_the_doubled_batch(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    one = learn_entry(replace(BASE, batch_size=16, out=str(tmp_path / "one")), progress=False)
    two = learn_entry(replace(BASE, batch_size=8, nproc=2, out=str(tmp_path / "two")), progress=False)
    assert one.steps == two.steps == 6
    a, b = final_state(one.run_dir), final_state(two.run_dir)
    assert a.keys() == b.keys() and any(k.startswith("assign.") for k in a)
    rel = {k: float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in a if a[k].is_floating_point()}
    assert max(rel.values()) <= 1e-5, max(rel.items(), key=lambda kv: kv[1])
    # one process at a rank's own batch of 8 takes other steps: the average is what makes them equal
    half = learn_entry(replace(BASE, batch_size=8, out=str(tmp_path / "half")), progress=False)
    c = final_state(half.run_dir)
    assert max(float((a[k] - c[k]).norm() / a[k].norm().clamp_min(1e-12)) for k in rel) > 1e-3
    steps_one = [json.loads(l) for l in (one.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_two = [json.loads(l) for l in (two.run_dir / "metrics.jsonl").read_text().splitlines()]
    reg = [m for m in steps_two if m["kind"] == "step" and m["regs_on"]]
    assert reg and all(m["R_W"] > 0 for m in reg)           # the regularizers were on
    assert len(steps_one) == len(steps_two)                # rank 0 alone wrote the journal


def test_batchnorm_model_learns_on_two_ranks_and_splits(tmp_path: Path) -> None:
    run = CliRunner().invoke(main, ["learn", "tiny_residual", "--data", "synthetic:tiny", "--groups", "2",
                                    "--split-depth", "2", "--max-steps", "4", "--batch-size", "8",
                                    "--nproc", "2", "--out", str(tmp_path / "bn"), "--json"])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4
    split = CliRunner().invoke(main, ["split", str(tmp_path / "bn"), "--out", str(tmp_path / "split"),
                                      "--accept-unlearned", "--json"])
    assert split.exit_code == 0, split.output
    assert json.loads(split.stdout.strip().splitlines()[-1])["max_rel_err"] <= 1e-5


def test_an_error_in_the_ranks_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SplitcError) as info:
        learn_entry(replace(BASE, data=f"imagefolder:{tmp_path / 'missing'}", nproc=2,
                            out=str(tmp_path / "bad")), progress=False)
    assert "\n" not in str(info.value) and "missing" in str(info.value)


def test_nproc_beyond_the_gpus_is_one_line(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has GPUs")
    run = CliRunner().invoke(main, ["learn", "tiny_seq", "--data", "synthetic:tiny", "--nproc", "2",
                                    "--device", "cuda", "--out", str(tmp_path / "gpu")])
    assert run.exit_code == 2 and "cuda" in run.output and len(run.output.strip().splitlines()) == 1, run.output
