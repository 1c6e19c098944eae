"""split / verify / finetune from the command line, and the one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from splitc.cli.main import main
from splitc.compile.split_dir import UNSPLIT_WEIGHTS, SPLIT_JSON, SPLIT_WEIGHTS


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> Path:
    """A two-step SplitNet-Random run on resnet20 (fast synthetic data)."""
    out = tmp_path_factory.mktemp("run")
    result = run("learn", "resnet20", "--data", "synthetic:fast", "--groups", "2", "--split-from", "layer3",
                 "--assign", "random", "--max-steps", "2", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def split_dir(learned: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split")
    result = run("split", learned, "--out", out, "--accept-unlearned", "--json")
    assert result.exit_code == 0, result.output
    return out


def test_split_json_report(split_dir: Path) -> None:
    meta = json.loads((split_dir / SPLIT_JSON).read_text())
    report = meta["report"]
    assert report["max_rel_err"] <= 1e-5
    assert 0 < report["params"] < report["baseline"]["params"]
    assert report["params_reduced_pct"] > 20  # layer3 of resnet20 holds most of its weights
    assert sum(c["params"] for c in report["subgraphs"].values()) == report["params"]
    assert set(report["subgraphs"]) == {"trunk", "g0", "g1", "merge"}
    assert all(sum(sizes) > 0 for sizes in report["group_sizes"].values())


def test_split_cli_json_keys(learned: Path, tmp_path: Path) -> None:
    result = run("split", learned, "--out", tmp_path / "s", "--accept-unlearned", "--json")
    summary = json.loads(result.output)
    assert {"params", "flops", "params_reduced_pct", "flops_reduced_pct", "groups", "group_sizes",
            "max_rel_err"} <= set(summary)
    assert summary["groups"] == [2]


def test_verify_then_finetune_then_verify(split_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "s"
    shutil.copytree(split_dir, work)
    assert json.loads(run("verify", work, "--json").output)["ok"]
    result = run("finetune", work, "--data", "synthetic:fast", "--max-steps", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["steps"] == 3
    assert json.loads((work / SPLIT_JSON).read_text())["weights"] == "finetuned.safetensors"
    result = run("finetune", work, "--data", "synthetic:fast", "--max-steps", "5", "--resume", "--json")
    assert json.loads(result.output)["steps"] == 5   # continued from step 3
    assert json.loads(result.output)["train_acc"] is not None
    again = json.loads(run("finetune", work, "--data", "synthetic:fast", "--max-steps", "5", "--resume",
                           "--json").output)
    assert again["steps"] == 5 and again["train_acc"] is None  # nothing left to train: no made-up 0.0
    assert json.loads(run("verify", work, "--json").output)["ok"]


def error_of(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_run_dirs(tmp_path: Path, learned: Path) -> None:
    assert "does not exist" in error_of(run("split", tmp_path / "nope", "--out", tmp_path / "o"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a learn run" in error_of(run("split", empty, "--out", tmp_path / "o"))
    broken = tmp_path / "broken"
    shutil.copytree(learned, broken)
    data = (broken / "checkpoint.pt").read_bytes()
    (broken / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in error_of(run("split", broken, "--out", tmp_path / "o"))
    old = tmp_path / "old"
    shutil.copytree(learned, old)
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "splitc_version": "0.0.1"}, old / "checkpoint.pt")
    assert "learned with splitc 0.0.1" in error_of(run("split", old, "--out", tmp_path / "o"))


@pytest.mark.parametrize("damage", ["missing_unsplit", "version", "schema", "foreign_weights", "corrupt_json", "not_a_split"])
def test_bad_split_dirs(split_dir: Path, tmp_path: Path, damage: str) -> None:
    work = tmp_path / "s"
    shutil.copytree(split_dir, work)
    meta = json.loads((work / SPLIT_JSON).read_text())
    if damage == "missing_unsplit":
        (work / UNSPLIT_WEIGHTS).unlink()
    elif damage in ("version", "schema"):
        meta["splitc_version" if damage == "version" else "schema"] = "0.0.0" if damage == "version" else 99
        (work / SPLIT_JSON).write_text(json.dumps(meta))
    elif damage == "foreign_weights":
        shutil.copy(work / UNSPLIT_WEIGHTS, work / SPLIT_WEIGHTS)
    elif damage == "corrupt_json":
        (work / SPLIT_JSON).write_text("{not json")
    else:
        (work / SPLIT_JSON).unlink()
    message = error_of(run("verify", work))
    expected = {"missing_unsplit": "is missing", "version": "was written by splitc", "schema": "schema",
                "foreign_weights": "does not match", "corrupt_json": "corrupt",
                "not_a_split": "is not a split directory"}[damage]
    assert expected in message


def test_finetune_on_other_data_is_refused(split_dir: Path) -> None:
    assert "classes" in error_of(run("finetune", split_dir, "--data", "digits", "--max-steps", "1"))


def test_overlap_split(tmp_path: Path) -> None:
    """A barely trained softmax run is fuzzy everywhere: with --overlap the duplicates cost params."""
    learned = tmp_path / "run"
    assert run("learn", "resnet20", "--data", "synthetic:fast", "--groups", "2", "--split-from", "layer3",
               "--max-steps", "1", "--out", learned, "--json").exit_code == 0
    plain = json.loads(run("split", learned, "--out", tmp_path / "plain", "--accept-unlearned", "--json").output)
    result = run("split", learned, "--out", tmp_path / "o", "--overlap", "0.3", "--accept-unlearned", "--json")
    fuzzy = json.loads(result.output)
    assert fuzzy["max_rel_err"] <= 1e-5
    assert fuzzy["params"] > plain["params"]
    assert json.loads(run("verify", tmp_path / "o", "--json").output)["ok"]
    assert "(0, 0.5)" in error_of(run("split", learned, "--out", tmp_path / "x", "--overlap", "0.7", "--accept-unlearned"))
