"""splitc.deploy.triton: a Triton model repository from an artifact, validated without a server.

Every config.pbtxt parses into tritonclient's ModelConfig, the ensemble is complete and
chained, and its steps run with ONNX Runtime from the repository's files equal the PyTorch
split model, for a flat split and the shared 2 -> 4 tree. A broken repository is one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from splitc.cli.main import main
from splitc.core.errors import SplitcError
from splitc.deploy.manifest import MANIFEST, read_manifest
from splitc.graph.scope import ScopeSpec
from splitc.compile.split_dir import write_json
from splitc.deploy.triton import (EnsembleRunner, model_name, parse_config, read_repository, validate_repository,
                           write_repository)
from test_export import build, shared_root, tiny  # noqa: F401  (the shared 2 -> 4 tree artifact)

pytest.importorskip("tritonclient")
FLAT = ("tiny_residual", ScopeSpec((2,), split_from=("res2",)))


@pytest.fixture(scope="session")
def flat(tmp_path_factory) -> tuple[Path, Path]:
    """A flat split (trunk, 2 branches, merge) of a tiny net, exported."""
    return build(shared_root(tmp_path_factory), *FLAT)


@pytest.fixture(params=["flat", "tree"])
def artifact(request, flat, tiny) -> Path:  # noqa: F811
    return (flat if request.param == "flat" else tiny)[1]


def test_repository_validates_and_equals_pytorch(artifact: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    written = write_repository(artifact, repo, max_batch_size=16)
    manifest = read_manifest(artifact)
    configs = read_repository(repo)
    assert set(configs) == {m["model"] for m in written["models"]} | {written["ensemble"]}
    for s in manifest.subgraphs:
        config = configs[model_name(written["ensemble"], s.name)]
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
        assert [list(t.dims) for t in config.input] == [list(t.shape[1:]) for t in s.graph.inputs]
        assert [list(t.dims) for t in config.output] == [list(t.shape[1:]) for t in s.graph.outputs]
        assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_CPU]
        assert (repo / config.name / "1" / "model.onnx").is_file()
    ensemble = configs[written["ensemble"]]
    assert ensemble.platform == "ensemble" and len(ensemble.ensemble_scheduling.step) == len(manifest.subgraphs)
    result = validate_repository(repo, artifact)
    assert result["ok"] and result["max_rel_err"] <= 1e-4, result
    assert result["steps"] == [model_name(written["ensemble"], s.name) for s in manifest.subgraphs]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrn16_8:hier", "resnet18:layer4"])
def test_acceptance_models_validate(case: str, tmp_path: Path) -> None:
    """Issue 14, acceptance 4: WRN-16-8 hier and resnet18 split from layer4 (3x224x224)."""
    from splitc.deploy.export import export_split
    from splitc.graph.scope import PRESETS
    from splitc.compile.split_run import random_split

    name, _, where = case.partition(":")
    spec = PRESETS[name][where] if name == "wrn16_8" else ScopeSpec((2,), split_from=(where,))
    random_split(name, spec, tmp_path / "split")
    export_split(tmp_path / "split", tmp_path / "onnx", "cpu", lower=False)
    write_repository(tmp_path / "onnx", tmp_path / "repo")
    result = validate_repository(tmp_path / "repo", tmp_path / "onnx")
    assert result["ok"] and result["max_rel_err"] <= 1e-4, result


def test_gpu_placement_becomes_kind_gpu(tiny, tmp_path: Path) -> None:  # noqa: F811
    art = Path(shutil.copytree(tiny[1], tmp_path / "art"))
    write_json(art / MANIFEST, read_manifest(art).with_placement(("cuda:0", "cuda:1")).to_dict())
    written = write_repository(art, tmp_path / "repo")
    configs = read_repository(tmp_path / "repo")
    gpus = {m["subgraph"]: list(configs[m["model"]].instance_group[0].gpus) for m in written["models"]}
    kinds = {configs[m["model"]].instance_group[0].kind for m in written["models"]}
    assert kinds == {configs[written["models"][0]["model"]].instance_group[0].KIND_GPU}
    assert gpus["trunk"] == gpus["merge"] == [0]
    for a, b in (("g0", "g1"), ("g0.0", "g0.1"), ("g1.2", "g1.3")):  # siblings on different GPUs
        assert gpus[a] != gpus[b]


def _break(repo: Path, model: str, old: str, new: str) -> None:
    path = repo / model / "config.pbtxt"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


BROKEN = {  # what to damage -> the one-line report it must give
    "missing input map": ("resnet20", 'input_map { key: "x1" value: "g0.1:0" }', "",
                          r"step resnet20_merge has no input_map for its input 'x1'"),
    "wrong dim": ("resnet20_g0_1", "dims: [ 16, 16, 16 ]", "dims: [ 16, 16, 8 ]",
                  r"step resnet20_g0_1 input 'x0' is TYPE_FP32\[16, 16, 8\] but tensor 'g0:0' is "
                  r"TYPE_FP32\[16, 16, 16\]"),
    "produced twice": ("resnet20", 'output_map { key: "y0" value: "g1:0" }', 'output_map { key: "y0" value: "g0:0" }',
                       r"tensor 'g0:0' is produced twice"),
    "not a ModelConfig": ("resnet20_trunk", "max_batch_size", "max_batch_sise", r"is not a valid Triton ModelConfig"),
}


@pytest.mark.parametrize("damage", sorted(BROKEN))
def test_broken_repository_is_one_line(damage: str, tiny, tmp_path: Path) -> None:  # noqa: F811
    repo = tmp_path / "repo"
    write_repository(tiny[1], repo)
    model, old, new, message = BROKEN[damage]
    _break(repo, model, old, new)
    with pytest.raises(SplitcError, match=message) as info:
        EnsembleRunner(repo)
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(main, ["triton", str(tiny[1]), "--out", str(repo), "--check-only"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_config_and_onnx_file_must_agree(tiny, tmp_path: Path) -> None:  # noqa: F811
    repo = tmp_path / "repo"
    write_repository(tiny[1], repo)
    for model in ("resnet20", "resnet20_trunk"):  # the same edit on both ends keeps the chain intact
        _break(repo, model, "dims: [ 3, 32, 32 ]", "dims: [ 3, 32, 16 ]")
    with pytest.raises(SplitcError, match=r"resnet20_trunk/config.pbtxt: its inputs .* differ from model.onnx's"):
        EnsembleRunner(repo)


def test_cli_writes_and_validates(flat, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["triton", str(flat[1]), "--out", str(tmp_path / "repo"), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["ok"] and summary["ensemble"] == "tiny_residual" and len(summary["models"]) == 4
    assert parse_config(tmp_path / "repo" / "tiny_residual" / "config.pbtxt").platform == "ensemble"


def test_missing_tritonclient_names_the_extra(tiny, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    write_repository(tiny[1], tmp_path / "repo")
    monkeypatch.setitem(__import__("sys").modules, "tritonclient.grpc", None)
    with pytest.raises(SplitcError, match=r"pip install 'splitc\[triton\]'"):
        read_repository(tmp_path / "repo")
