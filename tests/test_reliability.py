"""No silent failure, no lost work: the rows of the reliability issue, each a test.

Presets without --groups, outputs that are never overwritten silently (and replaced as a whole
with --force), options refused at the edge, and errors raised by the user's own model code.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from splitc.cli.main import main
from splitc.learn.loop import LearnConfig
from splitc.graph.scope import PRESETS, make_spec

TINY = ["tiny_residual", "--data", "synthetic:tiny", "--groups", "2", "--split-depth", "2",
        "--batch-size", "8", "--max-steps", "2"]


def run(*args, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def error_of(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. presets -------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["fc", "shallow", "deep", "hier"])
def test_learn_config_takes_the_presets_groups(preset: str) -> None:
    config = LearnConfig(model="wrn16_8", preset=preset)
    assert config.groups is None  # the preset's own, not learn's default
    spec = make_spec(config.groups, preset=preset, model="wrn16_8")
    assert spec == PRESETS["wrn16_8"][preset]


def test_preset_rejects_contradicting_groups() -> None:
    message = error_of(run("learn", "wrn16_8", "--preset", "deep", "--groups", "4", "--data", "synthetic:tiny"))
    assert "preset deep fixes --groups 2" in message
    assert run("inspect", "wrn16_8", "--preset", "deep", "--groups", "2", "--json").exit_code == 0


def test_inspect_preset_without_groups() -> None:
    result = run("inspect", "wrn16_8", "--preset", "hier", "--json")
    assert result.exit_code == 0, result.output


# ---- 2. outputs are never overwritten silently ------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Path]:
    """learn -> split -> finetune -> export -> report on a tiny net, once for the module."""
    root = tmp_path_factory.mktemp("pipe")
    paths = {k: root / k for k in ("run", "split", "art", "page")}
    assert run("learn", *TINY, "--out", paths["run"]).exit_code == 0
    assert run("split", paths["run"], "--out", paths["split"], "--accept-unlearned").exit_code == 0
    assert run("finetune", paths["split"], "--data", "synthetic:tiny", "--max-steps", "1",
               "--batch-size", "8").exit_code == 0
    assert run("export", paths["split"], "--out", paths["art"], "--devices", "cpu").exit_code == 0
    paths["page"] = root / "report.html"
    assert run("report", paths["run"], "--out", paths["page"]).exit_code == 0
    return paths


def test_split_into_finetuned_split_dir_refuses_then_force_replaces(pipeline, tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "split"
    shutil.copytree(pipeline["split"], target)
    before = files_of(target)
    assert "finetuned.safetensors" in before and "finetune.pt" in before
    message = error_of(run("split", pipeline["run"], "--out", target, "--accept-unlearned"))
    assert "--force" in message and str(target) in message
    assert files_of(target) == before  # every file kept, byte for byte
    assert run("split", pipeline["run"], "--out", target, "--force", "--accept-unlearned").exit_code == 0
    left = set(files_of(target))
    assert left == {"split.json", "split.safetensors", "unsplit.safetensors", "split.splitc",
                    "teacher.safetensors"}, left
    assert not list(tmp_path.glob(".split.replaced-*"))


def test_learn_refuses_then_force_replaces(pipeline, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier run's file")
    message = error_of(run("learn", *TINY, "--out", out))
    assert "--resume" in message and "--force" in message
    assert (out / "notes.txt").exists()
    assert run("learn", *TINY, "--out", out, "--force").exit_code == 0
    assert not (out / "notes.txt").exists() and (out / "checkpoint.pt").exists()
    error_of(run("learn", *TINY, "--out", out, "--force", "--resume"))


def test_finetune_refuses_an_earlier_finetune(pipeline, tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "split"
    shutil.copytree(pipeline["split"], target)
    before = files_of(target)
    message = error_of(run("finetune", target, "--data", "synthetic:tiny", "--max-steps", "1"))
    assert "--resume" in message and "--force" in message
    assert files_of(target) == before
    assert run("finetune", target, "--data", "synthetic:tiny", "--max-steps", "1", "--batch-size", "8",
               "--force").exit_code == 0
    assert run("verify", target).exit_code == 0


def test_export_refuses_then_force_replaces(pipeline, tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "art"
    shutil.copytree(pipeline["art"], target)
    (target / "stale.onnx").write_bytes(b"old")
    before = files_of(target)
    assert "--force" in error_of(run("export", pipeline["split"], "--out", target, "--devices", "cpu"))
    assert files_of(target) == before
    assert run("export", pipeline["split"], "--out", target, "--devices", "cpu", "--force").exit_code == 0
    assert not (target / "stale.onnx").exists() and (target / "manifest.json").exists()


def test_report_refuses_then_force_replaces(pipeline, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    page.write_text("old page")
    assert "--force" in error_of(run("report", pipeline["run"], "--out", page))
    assert page.read_text() == "old page"
    assert run("report", pipeline["run"], "--out", page, "--force").exit_code == 0
    assert page.read_text() != "old page"


# ---- 3. options validated at the edge ---------------------------------------------------------

@pytest.mark.parametrize("option", [
    ["--lr", "nan"], ["--lr", "0"], ["--lr", "-0.1"], ["--lr", "inf"], ["--gamma-w", "nan"], ["--gamma-e", "-1"],
    ["--epochs", "-1"], ["--epochs", "0"], ["--max-steps", "0"], ["--batch-size", "0"], ["--overlap", "1.5"],
    ["--overlap", "0"], ["--gamma-d-rise", "0"], ["--weight-decay", "nan"], ["--assign-lr-mult", "0"],
    ["--warmup-epochs", "-2"],
])
def test_learn_rejects_bad_numbers(option: list[str], tmp_path: Path) -> None:
    message = error_of(run("learn", "resnet20", *option, "--out", tmp_path / "run"))
    assert option[0] in message
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("command", [
    ["finetune", "SPLIT", "--lr", "nan"], ["finetune", "SPLIT", "--epochs", "0"],
    ["split", "RUN", "--out", "X", "--overlap", "nan"], ["inspect", "resnet20", "--num-classes", "0"],
    ["run", "ART", "--batch-size", "0", "--data", "synthetic:tiny"],
])
def test_other_commands_reject_bad_numbers(command: list[str]) -> None:
    error_of(run(*command))


# ---- 4. errors in the user's own code --------------------------------------------------------

@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch) -> str:
    (tmp_path / "user_nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def broken(num_classes=10):
            raise ValueError("width must be even")

        class BadForward(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(7, 3)
            def forward(self, x):
                return self.fc(x.flatten(1))

        def bad_forward():
            return BadForward()

        class CumHead(nn.Module):  # torch.cumsum over channels has no channel rule: a barrier
            def __init__(self, num_classes=10):
                super().__init__()
                self.a = nn.Conv2d(3, 8, 3, padding=1)
                self.fc = nn.Linear(8, num_classes)
            def forward(self, x):
                return self.fc(torch.cumsum(self.a(x), dim=1).mean((2, 3)))

        def cum_head(num_classes=10):
            return CumHead(num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_nets", None)
    return "user_nets"


def test_factory_that_raises_is_one_line(user_module: str) -> None:
    message = error_of(run("inspect", f"{user_module}:broken"))
    assert f"model factory {user_module}:broken raised ValueError: width must be even" in message
    assert "--debug" in message


def test_forward_that_fails_is_one_line(user_module: str) -> None:
    message = error_of(run("inspect", f"{user_module}:bad_forward"))
    assert "forward of model" in message and "RuntimeError" in message and "--input-size" in message


def test_debug_shows_the_traceback(user_module: str) -> None:
    for args, env in ((["--debug", "inspect", f"{user_module}:broken"], None),
                      (["inspect", f"{user_module}:broken"], {"SPLITC_DEBUG": "1"})):
        result = run(*args, env=env)
        assert result.exit_code == 2
        assert "Traceback" in result.output and "width must be even" in result.output


# ---- barriers and a split that splits nothing are said by learn and split, not only inspect ----

def test_barrier_and_noop_warnings_in_learn_and_split(user_module: str, tmp_path: Path) -> None:
    model = f"{user_module}:cum_head"
    learned = run("learn", model, "--data", "synthetic:tiny", "--groups", "2", "--split-depth", "1",
                  "--max-steps", "1", "--batch-size", "8", "--out", tmp_path / "run", "--json")
    assert learned.exit_code == 0, learned.output
    for result in (learned, run("split", tmp_path / "run", "--out", tmp_path / "split", "--accept-unlearned")):
        assert "warning: no channel rule for function torch.cumsum" in result.output, result.output
        assert "makes no layer block-diagonal (0.0% of params saved)" in result.output, result.output


def test_a_nan_never_verifies() -> None:
    """max() drops a NaN: a split whose outputs are NaN once verified at error 0.0."""
    import math

    import torch

    from splitc.core.numerics import relative_error
    from splitc.compile.build import max_rel_err

    assert relative_error(torch.tensor([float("nan"), 1.0]), torch.ones(2)) == math.inf
    assert relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0
    # finite float32 logits whose float32 norm overflows (an untrained inception_v3: ~1e25)
    big = torch.full((4, 1000), 3.7e25)
    off = big.clone()
    off[0, 0] *= 2  # one entry off by its size: the error is 1 / sqrt(4000)
    assert big.norm() == math.inf and relative_error(off, big) == pytest.approx(4000 ** -0.5)

    class Nan(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1) * float("nan")

    assert max_rel_err(Nan(), torch.nn.Flatten(), (3, 4, 4)) == math.inf
