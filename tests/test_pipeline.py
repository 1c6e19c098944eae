"""The pipeline runner: one ordered list of passes, timed, each pass's post-condition checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from splitc.cli.main import main
from splitc.compile import split as split_module
from splitc.compile.split import compile_split
from splitc.compile.split_run import random_split
from splitc.core.pipeline import PASS_NAMES, PassRunner
from splitc.graph.analysis import analyse
from splitc.graph.group_tree import balanced_assignment
from splitc.graph.scope import ScopeSpec
from splitc.passes.harden import harden
from splitc.passes.mask import keep_mask

FRONT = ["trace", "channel graph", "scope"]
SPLIT = ["harden", "mask", "permute", "partition", "assemble", "check", "save"]
EXPORT = ["load split", "lower", "export subgraphs", "export unsplit", "fuse", "choose graph", "manifest"]


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_the_list_is_the_order_the_stages_use() -> None:
    assert list(PASS_NAMES) == FRONT + SPLIT + EXPORT


def test_runner_refuses_an_unknown_pass_and_names_a_failing_one() -> None:
    runner = PassRunner()
    with pytest.raises(ValueError, match="unknown pass"):
        runner.run("optimise", lambda: None)

    def broken() -> None:
        raise IndexError("boom")

    with pytest.raises(IndexError) as info:   # the bug keeps its type ...
        runner.run("partition", broken)
    assert any("in pass 'partition'" in note for note in info.value.__notes__)  # ... and names the pass
    assert set(runner.report()) == {"partition"}


def test_a_failing_pass_inside_compile_split_is_named(monkeypatch) -> None:
    analysis = analyse("resnet20", ScopeSpec((2,), split_from=("layer3",)))
    hard = balanced_assignment(analysis.ir, analysis.scope)

    def fail(*_a, **_k):
        raise KeyError("no such node")

    monkeypatch.setattr(split_module, "partition", fail)
    with pytest.raises(KeyError) as info:
        compile_split(analysis.gm, analysis.ir, analysis.scope, hard)
    assert any("in pass 'partition'" in note for note in info.value.__notes__)


def test_post_conditions_of_every_split_pass() -> None:
    """harden: every node of every space in scope gets the group its soft assignment prefers;
    mask: exactly the weights a layer does not keep are zero, the others unchanged; permute,
    partition, assemble: one subgraph per tree node plus trunk and merge, equal to the masked
    model on fresh inputs (the permutation is undone in the merge)."""
    torch.manual_seed(0)
    runner = PassRunner()
    analysis = analyse("resnet20", ScopeSpec((2, 4), split_from=("layer2", "layer3")), runner=runner)
    ir, scope = analysis.ir, analysis.scope
    target = balanced_assignment(ir, scope, np.random.default_rng(0))
    soft = {}
    for s, groups in target.groups_of_space.items():
        matrix = np.full((scope.groups_of(s), len(groups)), 0.1 / scope.groups_of(s))
        matrix[groups, np.arange(len(groups))] += 0.9
        soft[s] = matrix
    hardened = runner.run("harden", harden, ir, scope, soft)
    for s, groups in hardened.assignment.groups_of_space.items():
        assert np.array_equal(groups, target.groups_of_space[s]), s
    before = {k: v.clone() for k, v in analysis.gm.state_dict().items()}
    compiled = compile_split(analysis.gm, ir, scope, hardened.assignment, runner=runner)
    after = compiled.masked.state_dict()
    checked = 0
    for layer in ir.layers:
        if layer.op != "conv":
            continue
        keep = keep_mask(ir, scope, hardened.assignment, layer)
        w0, w1 = before[f"{layer.name}.weight"], after[f"{layer.name}.weight"]
        assert torch.all(w1[~keep] == 0), layer.name
        assert torch.equal(w1[keep], w0[keep]), layer.name
        checked += int((~keep).any())
    assert checked >= 6   # the block-diagonal convs of layer2 and layer3
    names = {s.name for s in compiled.model.plan.subgraphs}
    assert names == {"trunk", "merge", "g0", "g1", "g0.0", "g0.1", "g1.2", "g1.3"}
    x = torch.randn(3, *analysis.input_size)
    with torch.no_grad():
        want, got = compiled.masked(x), compiled.model(x)
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    assert list(runner.report()) == FRONT + ["harden", "mask", "permute", "partition", "assemble"]


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split") / "s"
    random_split("resnet20", ScopeSpec((2,), split_from=("layer3",)), out)
    return out


def test_split_json_reports_seconds_per_pass(tmp_path: Path) -> None:
    learned = tmp_path / "run"
    result = run("learn", "resnet20", "--data", "synthetic:tiny", "--groups", "2", "--split-from", "layer3",
                 "--assign", "random", "--max-steps", "1", "--out", learned, "--json")
    assert result.exit_code == 0, result.output
    result = run("split", learned, "--out", tmp_path / "s", "--accept-unlearned", "--json")
    assert result.exit_code == 0, result.output
    seconds = json.loads(result.stdout)["pass_seconds"]
    assert list(seconds) == FRONT + SPLIT
    assert all(v >= 0 for v in seconds.values()) and sum(seconds.values()) > 0


def test_export_json_reports_seconds_per_pass(split_dir: Path, tmp_path: Path) -> None:
    result = run("export", split_dir, "--out", tmp_path / "onnx", "--devices", "cpu", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    lowered = summary["lowering"]["lowered"]      # fused vs lowered is timed only when there is a lowered graph
    assert list(summary["pass_seconds"]) == [p for p in EXPORT if p != "choose graph" or lowered]
    assert summary["seconds"] >= sum(summary["pass_seconds"].values()) - 1e-3
