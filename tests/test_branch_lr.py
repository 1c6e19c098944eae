"""finetune's branch learning-rate multiple (``--branch-lr-mult``): the branches, and only they,
step at M x the trunk's rate; a resume with another multiple is one line; the recorded config says
which multiple ran."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from splitc.cli.main import main
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.compile.finetune_loop import DEFAULT_BRANCH_LR_MULT
from splitc.compile.split_dir import FINETUNED_WEIGHTS, SPLIT_JSON
from splitc.compile.split_run import random_split
from splitc.graph.scope import make_spec

DATA = "synthetic:tiny"


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split") / "g2"
    random_split("resnet20", make_spec("2", "layer3", model="resnet20"), out, num_classes=20, input_size=(3, 32, 32))
    return out


def one_step(split: Path, folder: Path, mult: float | None) -> tuple[dict, dict]:
    shutil.copytree(split, folder)
    finetune(FinetuneConfig(str(folder), data=DATA, max_steps=1, batch_size=16, dtype="float64", branch_lr_mult=mult),
             progress=False)
    return load_file(str(folder / "split.safetensors")), load_file(str(folder / FINETUNED_WEIGHTS))


def test_the_branches_step_at_the_multiple_and_the_rest_at_the_rate(split, tmp_path: Path) -> None:
    before, plain = one_step(split, tmp_path / "x1", 1.0)
    _, faster = one_step(split, tmp_path / "x4", 4.0)
    names = [k for k in before if k.endswith((".weight", ".bias"))]
    branch = [k for k in names if k.startswith("parts.g")]
    rest = [k for k in names if not k.startswith("parts.g")]
    assert branch and rest
    moved = 0
    for k in names:   # the first SGD step is linear in the rate: the same gradient, M x the step
        d1 = plain[k].double() - before[k].double()
        d4 = faster[k].double() - before[k].double()
        if float(d1.norm()) == 0.0:
            continue
        moved += 1
        want = 4.0 * d1 if k in branch else d1
        assert float((d4 - want).norm() / want.norm()) < 1e-9, k
    assert moved > len(names) // 2
    recorded = json.loads((tmp_path / "x4" / SPLIT_JSON).read_text())["finetune"]
    assert recorded["branch_lr_mult"] == 4.0


def test_the_default_multiple_is_recorded_and_a_resume_with_another_is_one_line(split, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    shutil.copytree(split, folder)
    runner = CliRunner()
    ok = runner.invoke(main, ["finetune", str(folder), "--data", DATA, "--max-steps", "2", "--batch-size", "8",
                              "--json"], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    recorded = json.loads((folder / SPLIT_JSON).read_text())["finetune"]
    assert recorded["branch_lr_mult"] == DEFAULT_BRANCH_LR_MULT["scratch"]   # a random split: not a trained start
    bad = runner.invoke(main, ["finetune", str(folder), "--data", DATA, "--max-steps", "3", "--batch-size", "8",
                               "--resume", "--branch-lr-mult", "3"], catch_exceptions=False)
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 2 and len(lines) == 1 and "--branch-lr-mult" in lines[0], bad.output
    zero = runner.invoke(main, ["finetune", str(folder), "--data", DATA, "--branch-lr-mult", "0"])
    assert zero.exit_code == 2 and "--branch-lr-mult" in zero.output


def test_a_checkpoint_from_before_the_option_resumes_at_1x_and_says_so_otherwise(split, tmp_path: Path) -> None:
    """A finetune checkpoint written before --branch-lr-mult has no such field: it ran at 1x."""
    import torch

    folder = tmp_path / "old"
    shutil.copytree(split, folder)
    runner = CliRunner()
    first = runner.invoke(main, ["finetune", str(folder), "--data", DATA, "--max-steps", "2", "--batch-size", "8",
                                 "--branch-lr-mult", "1"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    path = folder / "finetune.pt"
    ckpt = torch.load(path, weights_only=False)
    del ckpt["identity"]["branch_lr_mult"]
    torch.save(ckpt, path)
    bad = runner.invoke(main, ["finetune", str(folder), "--data", DATA, "--max-steps", "3", "--batch-size", "8",
                               "--resume", "--branch-lr-mult", "4"], catch_exceptions=False)
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 2 and len(lines) == 1 and "branch_lr_mult=1.0" in lines[0], bad.output
    ok = runner.invoke(main, ["finetune", str(folder), "--data", DATA, "--max-steps", "3", "--batch-size", "8",
                              "--resume", "--branch-lr-mult", "1"], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
