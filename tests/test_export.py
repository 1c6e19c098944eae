"""splitc export: the ONNX pipeline equals the PyTorch split model, the manifest describes it.

Every case builds a split from a random balanced assignment (``random_split``, no training),
exports it and runs ``verify_artifact``: the fused graph and the per-subgraph sessions
(``cpu,cpu``) against the PyTorch split model, and the unsplit ONNX against the masked model,
on fresh random inputs at batch 3 (the export traced batch 2). The full model matrix is slow;
the default run keeps WRN-16-8 deep, resnet18 and the small shared artifact (a 2 -> 4 tree on
resnet20, exported through the CLI and verified in test_runtime.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from filelock import FileLock

from splitc.core.errors import SplitcError
from splitc.deploy.export import EXAMPLE_BATCH, VERIFY_BATCH, export_split, verify_artifact
from splitc.core.outputs import sha256_of
from splitc.deploy.manifest import BATCH, GraphEntry, SubgraphEntry, parse_devices, place, read_manifest
from splitc.graph.scope import PRESETS, ScopeSpec
from splitc.compile.split_dir import read_meta
from splitc.graph.split_model import INPUT
from splitc.compile.split_run import random_split

TOL = 1e-4
SMALL = (3, 64, 64)
# torchvision models split from their last stage, at a small input size.
LAST_STAGE = {
    "resnet18": "layer4", "resnet50": "layer4", "mobilenet_v2": "features.17",
    "densenet121": "features.denseblock4", "efficientnet_b0": "features.7",
    "regnet_x_400mf": "trunk_output.block4", "vgg11": "features.16", "googlenet": "inception5a",
    "shufflenet_v2_x1_0": "stage4",
}
DEFAULT = {"wrn16_8:deep", "resnet18"}
CASES = [f"wrn16_8:{p}" for p in ("fc", "shallow", "deep", "hier")] + sorted(LAST_STAGE)
# The small artifact most tests share: a 2 -> 4 tree (trunk, 2 + 4 branches, merge) with 20
# classes, so it also runs on --data synthetic:fast.
TINY = ("resnet20", ScopeSpec((2, 4), split_from=("layer2", "layer3")), {"num_classes": 20})
TINY_NAMES = ["trunk", "g0", "g1", "g0.0", "g0.1", "g1.2", "g1.3", "merge"]


def build(root: Path, name: str, spec: ScopeSpec, **kwargs) -> tuple[Path, Path]:
    """A split directory and its artifact under ``root``, exported with ``splitc export --json``
    (whose output is kept beside it); built once, also across xdist workers."""
    from click.testing import CliRunner

    from splitc.cli.main import main

    split_dir, art_dir = root / f"{name}-split", root / f"{name}-onnx"
    with FileLock(str(root / f"{name}.lock")):
        if not (art_dir / "manifest.json").is_file():
            random_split(name, spec, split_dir, **kwargs)
            # --no-lower: the one-device graph is the fused one, whatever timing would choose
            result = CliRunner().invoke(main, ["export", str(split_dir), "--out", str(art_dir), "--json", "--no-lower"],
                                        catch_exceptions=False)
            assert result.exit_code == 0, result.output
            (root / f"{name}-export.json").write_text(result.output)
    return split_dir, art_dir


def shared_root(tmp_path_factory) -> Path:
    """One folder per test run that every xdist worker sees."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    (root / "deploy").mkdir(exist_ok=True)
    return root / "deploy"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    name, spec, kwargs = TINY
    return build(shared_root(tmp_path_factory), name, spec, **kwargs)


def case_params() -> list:
    return [pytest.param(c, marks=() if c in DEFAULT else pytest.mark.slow) for c in CASES]


@pytest.mark.parametrize("case", case_params())
def test_onnx_pipeline_equals_split_model(case: str, tmp_path: Path) -> None:
    name, _, preset = case.partition(":")
    spec = PRESETS[name][preset] if preset else ScopeSpec((2,), split_from=(LAST_STAGE[name],))
    seed = int.from_bytes(os.urandom(2), "little")
    random_split(name, spec, tmp_path / "split", input_size=None if preset else SMALL, seed=seed)
    export_split(tmp_path / "split", tmp_path / "onnx", "cpu", lower="always")  # the lowered graph too, every case
    result = verify_artifact(tmp_path / "onnx")
    assert result["batch_size"] == VERIFY_BATCH != EXAMPLE_BATCH
    lowered = read_manifest(tmp_path / "onnx").lowered is not None
    assert len(result["checks"]) == 3 + lowered  # one-device graph, per-subgraph sessions, unsplit (+ the other one-device graph)
    assert result["ok"] and result["max_rel_err"] <= TOL, (seed, result)


def test_manifest_describes_the_split(tiny) -> None:
    split_dir, art_dir = tiny
    manifest = read_manifest(art_dir)
    meta = read_meta(split_dir)
    assert manifest.model.name == "resnet20" and manifest.model.num_classes == 20
    assert manifest.model.input_size == (3, 32, 32) and manifest.opset >= 18
    assert manifest.model.groups == (2, 4)
    assert [s.name for s in manifest.subgraphs] == [s["name"] for s in meta["plan"]["subgraphs"]] == TINY_NAMES
    assert [[s.name for s in stage] for stage in manifest.stages()] == [["trunk"], ["g0", "g1"],
                                                                       ["g0.0", "g0.1", "g1.2", "g1.3"], ["merge"]]
    for s, plan in zip(manifest.subgraphs, meta["plan"]["subgraphs"]):
        assert [[t.source.producer, t.source.index] for t in s.graph.inputs] == plan["inputs"]
        assert len(s.graph.outputs) == plan["num_outputs"]
        assert (s.graph.params, s.graph.flops) == tuple(meta["report"]["subgraphs"][s.name].values())
        for t in s.graph.inputs + s.graph.outputs:
            assert t.shape[0] == BATCH and all(isinstance(d, int) for d in t.shape[1:]) and t.dtype == "float32"
    assert manifest.subgraphs[0].graph.inputs[0].source.producer == INPUT
    assert manifest.subgraphs[0].graph.inputs[0].shape == (BATCH, 3, 32, 32)
    assert manifest.subgraphs[-1].graph.outputs[0].shape == (BATCH, 20)
    assert list(manifest.class_names) == meta["class_names"]
    assert list(manifest.class_groups) == meta["plan"]["class_groups"]
    assert manifest.fused.flops == meta["report"]["flops"]
    assert manifest.unsplit.flops == meta["report"]["baseline"]["flops"] > manifest.fused.flops
    assert manifest.unsplit_is == "masked" and manifest.devices == ("cpu",)
    assert set(manifest.placement.values()) == {"cpu"}
    for graph in [s.graph for s in manifest.subgraphs] + [manifest.fused, manifest.unsplit]:
        for f in graph.files:
            assert sha256_of(art_dir / f.path) == f.sha256 and (art_dir / f.path).stat().st_size == f.bytes
    raw = json.loads((art_dir / "manifest.json").read_text())
    assert raw["schema"] == 1 and raw["subgraphs"][1]["graph"]["inputs"][0]["source"]["producer"] == "trunk"
    printed = json.loads((art_dir.parent / "resnet20-export.json").read_text())   # splitc export --json
    assert printed["devices"] == ["cpu"] and [r["name"] for r in printed["subgraphs"]] == TINY_NAMES
    assert printed["flops_ratio"] == pytest.approx(manifest.fused.flops / manifest.unsplit.flops)


def _entry(name: str, role: str, level: int, flops: int, parent: str | None = None) -> SubgraphEntry:
    return SubgraphEntry(name, role, level, None, parent, GraphEntry((), (), (), 0, flops), "cpu")


def test_placement_trunk_first_branches_balanced_then_round_robin() -> None:
    flat = (_entry("trunk", "trunk", -1, 100), _entry("g0", "branch", 0, 10), _entry("g1", "branch", 0, 30),
            _entry("merge", "merge", 1, 0))
    where = place(flat, ("cuda:0", "cuda:1"))
    assert where["trunk"] == where["merge"] == "cuda:0"
    assert where["g1"] == "cuda:1" and where["g0"] == "cuda:0"   # largest on the idle device
    where = place(flat, ("cuda:0", "cuda:1", "cuda:2"))
    assert len({where["g0"], where["g1"]}) == 2 and "cuda:0" not in (where["g0"], where["g1"])
    tree = (_entry("trunk", "trunk", -1, 1), _entry("g0", "branch", 0, 5), _entry("g1", "branch", 0, 5),
            *[_entry(f"g{a}.{b}", "branch", 1, 3, f"g{a}") for a in range(2) for b in range(2)],
            _entry("merge", "merge", 2, 0))
    where = place(tree, ("cpu:0", "cpu:1"))
    for parent in ("g0", "g1"):   # 4 branches on 2 devices: round-robin, siblings apart
        assert where[f"{parent}.0"] != where[f"{parent}.1"]
    assert set(place(tree, ("cpu",)).values()) == {"cpu"}


def test_parse_devices() -> None:
    assert parse_devices("auto", 0) == ("cpu",)
    assert parse_devices("auto", 2) == ("cuda:0", "cuda:1")
    assert parse_devices("cpu", 2) == ("cpu",)
    assert parse_devices("cpu,cpu", 0) == ("cpu:0", "cpu:1")
    assert parse_devices("cuda:1, cuda:0", 0) == ("cuda:1", "cuda:0")   # syntax only
    for bad, words in (("tpu:0", "unknown device"), ("cuda:0,cuda:0", "listed twice"), ("gpu", "unknown")):
        with pytest.raises(SplitcError, match=words):
            parse_devices(bad, 2)


def test_export_errors(tmp_path: Path, tiny) -> None:
    with pytest.raises(SplitcError, match="does not exist"):
        export_split(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SplitcError, match="is a file"):
        export_split(tiny[0], tmp_path / "file")


def test_fused_graph_is_one_valid_onnx_model(tiny) -> None:
    import onnx

    _, art_dir = tiny
    manifest = read_manifest(art_dir)
    model = onnx.load(str(art_dir / manifest.fused.model_file))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.opset_import[0].version >= 18


def test_weights_past_the_embed_limit_go_to_side_files(tmp_path: Path, monkeypatch) -> None:
    """Large models (the 600M-parameter torchvision ones) keep weights in ``.onnx.data`` files;
    the fused graph, composed from such parts, must do the same (it cannot exceed protobuf's 2 GB)
    and still equal the split model. The limit is lowered so that a small model takes that path."""
    import splitc.deploy.export as export_module

    monkeypatch.setattr(export_module, "EMBED_LIMIT", 1 << 16)
    random_split("resnet20", ScopeSpec((2,), split_from=("layer3",)), tmp_path / "split", num_classes=10,
                 seed=int.from_bytes(os.urandom(2), "little"))
    manifest, _ = export_split(tmp_path / "split", tmp_path / "onnx", "cpu")
    assert [f.path for f in manifest.fused.files] == ["fused.onnx", "fused.onnx.data"]
    assert any(len(s.graph.files) == 2 for s in manifest.subgraphs)
    result = verify_artifact(tmp_path / "onnx")
    assert result["ok"] and result["max_rel_err"] <= TOL, result
