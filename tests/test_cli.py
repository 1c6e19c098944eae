"""The command line: inspect's JSON, its table, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torchvision
from click.testing import CliRunner

from helpers import heavy_model_slot

from splitc import __version__
from splitc.cli.main import main

TABLE1 = {"fc": (0.35, 0.0), "shallow": (32.54, 14.63), "deep": (46.39, 31.97), "hier": (62.58, 39.29)}
INSPECT_DEFAULT = ["resnet18", "mobilenet_v3_small", "densenet121", "shufflenet_v2_x0_5",
                   "squeezenet1_1", "convnext_tiny", "vit_b_32", "swin_t"]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version_and_help() -> None:
    assert __version__ in run("--version").output
    out = run("--help").output
    assert "inspect" in out and "demo" in out


@pytest.mark.parametrize("preset", list(TABLE1))
def test_inspect_wrn16_8_presets_json(preset: str) -> None:
    result = run("inspect", "wrn16_8", "--num-classes", "100", "--input-size", "3,32,32",
                 "--preset", preset, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert abs(report["baseline"]["params"] / 11.0e6 - 1) < 0.01
    assert abs(report["baseline"]["flops"] / 3.10e9 - 1) < 0.01
    params_pct, flops_pct = TABLE1[preset]
    assert abs(report["split"]["params_reduced_pct"] - params_pct) <= 0.2
    assert abs(report["split"]["flops_reduced_pct"] - flops_pct) <= 0.2
    for key in ("model", "input_size", "num_classes", "groups", "layers", "spaces"):
        assert key in report
    kinds = {layer["name"]: layer["kind"] for layer in report["layers"]}
    assert kinds["fc"] == "block-diagonal"
    assert set(report["layers"][0]) >= {"name", "kind", "in_channels", "out_channels"}


def test_inspect_table_lists_layers_spaces_and_costs() -> None:
    out = run("inspect", "resnet20", "--split-from", "layer3", "--groups", "2").output
    assert "layer3.0.conv1" in out and "output-partitioned" in out and "block-diagonal" in out
    assert "Channel spaces" in out and "reduced" in out


@pytest.mark.parametrize("name", INSPECT_DEFAULT)
def test_inspect_split_depth_2_torchvision(name: str) -> None:
    result = run("inspect", name, "--split-depth", "2", "--groups", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["split"]["params"] <= report["baseline"]["params"]


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models))
def test_inspect_every_torchvision_model(name: str) -> None:
    with heavy_model_slot(name):
        result = run("inspect", name, "--split-depth", "2", "--groups", "2", "--json")
    assert result.exit_code == 0, result.output


BAD_INPUTS = [
    (["inspect", "resnet1"], "unknown model 'resnet1'", "resnet18"),
    (["inspect", "resnet18", "--split-from", "layer5"], "not a module", "layer4"),
    (["inspect", "resnet20", "--split-from", "layer3", "--groups", "100"], "larger than space", "layer3"),
    (["inspect", "resnet18", "--split-from", "layer4", "--split-depth", "2"], "conflicting scope options", "exactly one"),
    (["inspect", "wrn16_8", "--preset", "deep", "--split-from", "block3"], "conflicting", "--preset"),
    (["inspect", "wrn16_8", "--preset", "deepp"], "unknown preset", "deep"),
    (["inspect", "resnet20", "--input-size", "3,32"], "--input-size", "C,H,W"),
    (["inspect", "resnet20", "--groups", "2,3", "--split-from", "layer2,layer3"], "divide", "multiple"),
]


@pytest.mark.parametrize("args,problem,hint", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(args, problem, hint) -> None:
    proc = subprocess.run([sys.executable, "-m", "splitc.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ") and problem in lines[0] and hint in lines[0]


def test_inspect_user_factory() -> None:
    result = run("inspect", "splitc.models.resnet_cifar:resnet20", "--num-classes", "7",
                 "--input-size", "3,32,32", "--split-from", "layer3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["num_classes"] == 7 and report["split"]["params_reduced_pct"] > 0


def test_unknown_factory_attribute_lists_close_matches() -> None:
    proc = subprocess.run([sys.executable, "-m", "splitc.cli", "inspect", "splitc.models.resnet_cifar:resnet2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "resnet20" in proc.stderr and "Traceback" not in proc.stderr


def test_learn_command_json_and_refuses_to_overwrite(tmp_path) -> None:
    args = ["learn", "resnet20", "--data", "synthetic:fast", "--groups", "4", "--split-from", "layer3",
            "--max-steps", "4", "--warmup-epochs", "0.01", "--out", str(tmp_path / "run")]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and set(summary["group_sizes"]) and "superclass_ari" in summary
    assert (tmp_path / "run" / "assignment.json").exists()
    proc = subprocess.run([sys.executable, "-m", "splitc.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr
