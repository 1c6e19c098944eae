"""The one-device lowering: grouped convolutions over the dense permuted graph, equal to the split."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from splitc.compile.dense_view import dense_split, max_error
from splitc.compile.split_dir import load_split
from splitc.compile.split_run import random_split
from splitc.deploy import runtime
from splitc.deploy.export import export_split
from splitc.deploy.manifest import MANIFEST, read_manifest
from splitc.graph.scope import ScopeSpec
from splitc.models import TESTNETS
from splitc.passes.lower_grouped import block_count, conv_blocks, grouped_conv, lower_grouped


def test_block_count_finds_the_largest_block_structure() -> None:
    assert block_count(np.kron(np.eye(4, dtype=bool), np.ones((3, 2), dtype=bool))) == 4
    two = np.kron(np.eye(2, dtype=bool), np.ones((6, 4), dtype=bool))
    assert block_count(two) == 2
    two[0, -1] = False                    # fewer kept weights inside the blocks: still 2
    assert block_count(two) == 2
    dense = np.ones((8, 8), dtype=bool)
    assert block_count(dense) == 1
    off = np.kron(np.eye(2, dtype=bool), np.ones((4, 4), dtype=bool))
    off[0, 7] = True                      # one weight across the blocks: no structure
    assert block_count(off) == 1


@pytest.mark.parametrize("k,kernel,stride", [(2, 3, 1), (4, 3, 2), (4, 1, 1)])
def test_grouped_conv_equals_the_block_diagonal_dense_conv(k: int, kernel: int, stride: int) -> None:
    torch.manual_seed(k)
    conv = nn.Conv2d(16, 32, kernel, stride, kernel // 2, bias=True)
    keep = torch.as_tensor(np.kron(np.eye(k), np.ones((32 // k, 16 // k))), dtype=torch.float32)
    with torch.no_grad():
        conv.weight.mul_(keep[:, :, None, None])
    x = torch.randn(3, 16, 9, 9)
    lowered = grouped_conv(conv, k)
    assert lowered.groups == k and lowered.weight.shape == (32, 16 // k, kernel, kernel)
    with torch.no_grad():
        want, got = conv(x), lowered(x)
    assert ((got - want).norm() / want.norm()).item() < 1e-6


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lower") / "split"
    random_split("resnet20", ScopeSpec((2, 4), split_from=("layer2", "layer3")), out, seed=1)
    return out


@pytest.fixture(scope="module")
def exported(split: Path, tmp_path_factory) -> dict:
    """The split exported once with every candidate lowered and once with --no-lower: export is
    the slow step (tens of seconds each), so the tests below share these two folders (a test
    that edits the manifest works on a copy)."""
    root = tmp_path_factory.mktemp("lower-onnx")
    always = export_split(split, root / "always", "cpu", lower="always")
    plain = export_split(split, root / "plain", "cpu", lower=False)
    return {"always": (root / "always", *always), "plain": (root / "plain", *plain)}


def finetuned(split: Path):
    """The split loaded with its branch weights moved, as a finetune moves them."""
    loaded = load_split(split)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in loaded.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.mul_(1.3)
    return loaded


def test_dense_view_carries_the_finetuned_weights(split: Path) -> None:
    torch.manual_seed(0)
    loaded = finetuned(split)
    dense, why = dense_split(loaded)
    assert dense is not None, why
    assert max_error(dense.module(), loaded.model, loaded.input_size) < 1e-5


@pytest.mark.parametrize("which", ["all", "half", "none"])
def test_every_lowering_equals_the_split(split: Path, which: str) -> None:
    """Grouped where chosen, dense elsewhere: any mix is the split's function."""
    torch.manual_seed(1)
    loaded = finetuned(split)
    dense, _ = dense_split(loaded)
    a = loaded.analysis
    candidates = conv_blocks(dense.gm, a.ir, a.scope, dense.assignment)
    assert {c.blocks for c in candidates} >= {2, 4}    # the tree: level-0 and level-1 convs
    names = [c.name for c in candidates]
    chosen = {"all": set(names), "half": set(names[::2]), "none": set()}[which]
    lowered = lower_grouped(dense.gm, candidates, chosen)
    grouped = {n for n, m in lowered.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert grouped == chosen
    assert max_error(dense.module(lowered), loaded.model, loaded.input_size) < 1e-5


def test_export_writes_a_checked_lowered_graph_and_the_runtime_uses_the_choice(split: Path, exported: dict,
                                                                              tmp_path: Path) -> None:
    folder, manifest, times = exported["always"]   # every candidate grouped, no timing
    art = tmp_path / "onnx"
    shutil.copytree(folder, art)   # the manifest is edited below
    low = manifest.lowering
    assert manifest.lowered is not None and low["lowered"]
    assert low["max_rel_err"] <= 1e-4
    assert set(low["layers"]) and all(c["choice"] == "grouped" for c in low["layers"].values())
    assert manifest.one_device == ("lowered" if low["lowered_ms"] < low["fused_ms"] else "fused")
    assert "lower" in times and "choose graph" in times
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    loaded = load_split(split)
    with torch.no_grad():
        want = loaded.model(torch.from_numpy(x)).numpy()
    doc = json.loads((art / MANIFEST).read_text())
    for graph in ("lowered", "fused"):     # whichever was chosen, both run and agree with PyTorch
        doc["one_device"] = graph
        (art / MANIFEST).write_text(json.dumps(doc))
        assert read_manifest(art).one_device == graph
        with runtime.load(art, "cpu") as pipe:
            got = pipe(x)
            assert pipe.describe() == f"one {graph} session on cpu"
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_no_lower_keeps_the_branch_graph(exported: dict) -> None:
    _, manifest, _ = exported["plain"]
    assert manifest.lowered is None and manifest.one_device == "fused"
    assert manifest.lowering == {"lowered": False, "reason": "export --no-lower"}
    assert dataclasses.replace(manifest).one_device_graph == manifest.fused


@pytest.fixture(scope="module")
def unequal(tmp_path_factory) -> Path:
    """A 4-way split whose groups differ in size in every space (as learned splits do)."""
    from splitc.compile.split_run import write_split
    from splitc.graph.analysis import analyse
    from splitc.graph.group_tree import HardAssignment

    torch.manual_seed(3)
    a = analyse("resnet20", ScopeSpec((4,), split_from=("layer3",)))
    rng = np.random.default_rng(3)
    groups = {}
    for space in a.scope.level_of:
        n = len(a.ir.spaces[space].nodes)
        g = np.concatenate([np.arange(4), rng.integers(0, 4, n - 4)])   # every group non-empty
        groups[space] = rng.permutation(g)
    out = tmp_path_factory.mktemp("unequal") / "split"
    write_split(a, HardAssignment(groups), out)
    return out


def test_padded_groups_equal_the_split_and_group_every_block_diagonal_conv(unequal: Path) -> None:
    from splitc.passes.pad_groups import pad_groups

    torch.manual_seed(4)
    loaded = finetuned(unequal)
    dense, why = dense_split(loaded)
    assert dense is not None, why
    a = loaded.analysis
    sizes = dense.assignment.group_sizes(a.ir, a.scope)
    assert any(len(set(v)) > 1 for s, v in sizes.items() if s != a.ir.class_space)
    padded, candidates, why = pad_groups(dense.gm, a.ir, a.scope, dense.assignment)
    assert padded is not None, why
    assert max_error(dense.module(padded), loaded.model, loaded.input_size) < 1e-5
    assert len(candidates) == 5 and {c.blocks for c in candidates} == {4}   # layer3's convs after its first
    widths = {c.out_channels for c in candidates}
    assert all(w % 4 == 0 and w >= 64 for w in widths)
    lowered = lower_grouped(padded, candidates, {c.name for c in candidates})
    assert max_error(dense.module(lowered), loaded.model, loaded.input_size) < 1e-5


def test_export_lowers_a_split_with_unequal_groups(unequal: Path, tmp_path: Path) -> None:
    manifest, _ = export_split(unequal, tmp_path / "onnx", "cpu", lower="always")
    low = manifest.lowering
    assert low.get("padded") is True and len(low["layers"]) == 5, low
    assert manifest.lowered is not None and low["max_rel_err"] <= 1e-4


@pytest.mark.parametrize("name", sorted(TESTNETS))
def test_padding_equals_the_split_or_says_why_not(name: str, tmp_path: Path) -> None:
    """On every test net with unequal groups, pad_groups returns a graph equal to the split or
    refuses with a reason; it never raises. Inception's concat writes a space in parts (each
    branch conv its own channels): padding one part at a time would misplace channels."""
    from splitc.compile.split_run import write_split
    from splitc.graph.analysis import analyse
    from splitc.graph.group_tree import HardAssignment
    from splitc.passes.pad_groups import pad_groups

    torch.manual_seed(5)
    a = analyse(name, ScopeSpec((2,), split_depth=(3,)), input_size=(3, 16, 16))
    rng = np.random.default_rng(5)
    groups = {s: rng.permutation(np.r_[0, 1, np.ones(len(a.ir.spaces[s].nodes) - 2, int)])   # unequal where n > 2
              for s in a.scope.level_of}
    write_split(a, HardAssignment(groups), tmp_path / "split")
    loaded = load_split(tmp_path / "split")
    dense, why = dense_split(loaded)
    if dense is None:
        return
    padded, candidates, why = pad_groups(dense.gm, loaded.analysis.ir, loaded.analysis.scope, dense.assignment)
    if name == "tiny_concat":
        assert padded is None and candidates == [] and "concatenat" in why, why
    if padded is None:
        assert why and candidates == []
    else:
        assert max_error(dense.module(padded), loaded.model, loaded.input_size) < 1e-5


def test_kernel_limit_profiles_every_grouped_conv(exported: dict) -> None:
    """The perfect-kernel limit finds each lowered conv in ONNX Runtime's profile by name."""
    from splitc.deploy.kernel_limit import kernel_limit

    folder, manifest, _ = exported["always"]
    result = kernel_limit(folder, batch=4, reps=5, threads=1)
    assert result["unmatched"] == 0 and result["grouped"] == len(manifest.lowering["layers"]) > 0
    assert 0 < result["limit"] < 1 and result["kernel"] > 0
    # the limit charges only the grouped convs, each at least 1/k of its dense time: never below FLOPs
    assert result["limit"] >= manifest.fused.flops / manifest.unsplit.flops - 0.05


def test_kernel_limit_without_a_lowered_graph_says_why(exported: dict) -> None:
    from splitc.deploy.kernel_limit import kernel_limit

    result = kernel_limit(exported["plain"][0])
    assert result["limit"] is None and "no lowered graph" in result["reason"]


def test_slower_than_flops_is_one_line() -> None:
    from splitc.deploy.kernel_limit import LATENCY_SLACK, slower_than_flops

    assert slower_than_flops(0.80 + LATENCY_SLACK, 0.80) is None
    warning = slower_than_flops(0.91, 0.78)
    assert warning and "\n" not in warning and "0.91" in warning and "--limit" in warning
