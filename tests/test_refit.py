"""learn.refit: the cut's kept weights refit to reproduce the dense network. The dropped weights
stay exactly zero, the reconstruction error falls, a layer it cannot refit is named, and the
split of a refit run equals its masked model and scores what learn reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from splitc.compile.split_dir import load_split
from splitc.compile.split_run import run_split
from splitc.core.errors import SplitcError
from splitc.data.batches import accuracy
from splitc.data.loaders import load_data
from splitc.learn.loop import LearnConfig, learn
from splitc.learn.refit import refit_cut

DATA = "synthetic:fast"


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        x = F.relu(self.b(x))
        x = F.relu(self.g(x))
        return self.fc(x.mean((2, 3)))


def block_mask(out: int, inp: int, groups: int = 2) -> torch.Tensor:
    """(out, in) True on the diagonal blocks of ``groups`` groups."""
    return (torch.arange(out)[:, None] * groups // out) == (torch.arange(inp)[None, :] * groups // inp)


def test_refit_keeps_the_cut_and_lowers_the_reconstruction_error() -> None:
    torch.manual_seed(0)
    dense = fx.symbolic_trace(Toy())
    masked = fx.symbolic_trace(Toy())
    masked.load_state_dict(dense.state_dict())
    masks = {"b": block_mask(8, 8), "fc": block_mask(4, 8), "g": torch.ones(8, 4, dtype=torch.bool),
             "a": torch.ones(8, 3, dtype=torch.bool)}
    masks["g"][0, 0] = False    # a cut in a grouped conv: named, not refit
    with torch.no_grad():
        for name in ("b", "fc"):
            w = masked.get_parameter(f"{name}.weight")
            w.mul_(masks[name].reshape(masks[name].shape + (1,) * (w.dim() - 2)))
    untouched = {k: v.clone() for k, v in masked.state_dict().items()}
    reference = {k: v.clone() for k, v in dense.state_dict().items()}
    batches = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    report = refit_cut(dense, masked, masks, batches)
    assert report.refit == ("b", "fc") and report.images == 64
    assert [name for name, _ in report.skipped] == ["g"] and "grouped" in report.skipped[0][1]
    assert report.error_after < 0.8 * report.error_before
    for name in ("b", "fc"):
        w = masked.get_parameter(f"{name}.weight").detach()
        drop = ~masks[name].reshape(masks[name].shape + (1,) * (w.dim() - 2)).expand_as(w)
        assert torch.count_nonzero(w[drop]) == 0                      # the cut stays cut
        assert not torch.allclose(w, untouched[f"{name}.weight"])     # the kept weights moved
    for name in ("a.weight", "g.weight", "a.bias", "b.bias"):          # nothing else changed
        assert torch.equal(masked.state_dict()[name], untouched[name])
    assert all(torch.equal(v, reference[k]) for k, v in dense.state_dict().items())   # the dense model is read only


def test_an_exact_cut_is_reproduced_exactly() -> None:
    """A dense layer whose dropped weights are already zero is its own least-squares fit."""
    torch.manual_seed(1)
    dense = fx.symbolic_trace(Toy())
    masks = {"b": block_mask(8, 8)}
    with torch.no_grad():
        dense.b.weight.mul_(masks["b"][:, :, None, None])
    masked = fx.symbolic_trace(Toy())
    masked.load_state_dict(dense.state_dict())
    report = refit_cut(dense, masked, masks, [torch.randn(32, 3, 8, 8)], ridge=1e-9)
    assert report.error_after < 1e-6
    torch.testing.assert_close(masked.b.weight, dense.b.weight, rtol=1e-3, atol=1e-4)


@pytest.fixture
def trained(trained_resnet20) -> Path:
    """The suite's briefly trained resnet20 (conftest), its path."""
    return trained_resnet20[0]


def test_a_refit_one_shot_split_is_its_masked_model_and_scores_what_learn_said(trained, tmp_path: Path) -> None:
    result = learn(LearnConfig(model="resnet20", data=DATA, groups="4", split_from="layer3", weights=str(trained),
                               out=str(tmp_path / "run")), progress=False)
    doc = json.loads((tmp_path / "run" / "assignment.json").read_text())["refit"]
    assert doc["layers"] and doc["error_after"] < doc["error_before"]
    assert result.refit_val_acc == doc["refit_val_acc"] and doc["masked_val_acc"] == result.oneshot_val_acc
    assert result.refit_val_acc > result.oneshot_val_acc      # the cut this test makes loses accuracy; refit wins it back
    assert result.cut_energy > 0.3                            # what the cut removed, measured before the refit zeroed it
    summary = run_split(tmp_path / "run", tmp_path / "split", accept_unlearned=True)
    assert summary["max_rel_err"] < 1e-4                      # split = masked (the refit masked model)
    bundle = load_data(DATA, seed=0)
    split = load_split(tmp_path / "split").model
    assert accuracy(split, bundle.val, torch.device("cpu")) == pytest.approx(result.refit_val_acc, abs=2e-3)
    overlapping = run_split(tmp_path / "run", tmp_path / "overlap", overlap=0.1, accept_unlearned=True)
    assert any("--no-refit for an overlapping split" in w for w in overlapping["warnings"])


def test_no_refit_leaves_the_cut_as_cut(trained, tmp_path: Path) -> None:
    result = learn(LearnConfig(model="resnet20", data=DATA, groups="4", split_from="layer3", weights=str(trained),
                               out=str(tmp_path / "run"), refit=False), progress=False)
    assert result.refit_val_acc is None
    assert json.loads((tmp_path / "run" / "assignment.json").read_text())["refit"] is None
    teacher = torch.load(trained, weights_only=True)
    learned = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert torch.equal(learned["layer3.1.conv1.weight"], teacher["layer3.1.conv1.weight"])


def test_transplant_gives_each_group_its_most_important_channels_and_the_refit_reproduces_them() -> None:
    """Each group's slots take distinct channels, the top ones for its classes (never less of the
    importance than the group held), every tensor of a moved space follows, and the refit
    reproduces the moved channels better than the cut does."""
    import numpy as np

    from splitc.graph.analysis import analyse
    from splitc.graph.group_tree import HardAssignment
    from splitc.graph.scope import ScopeSpec
    from splitc.learn.transplant import transplant
    from splitc.passes.mask import mask_inter_group, weight_masks

    torch.manual_seed(0)
    a = analyse("resnet20", ScopeSpec((4,), split_from=("layer3",)), num_classes=8)
    rng = np.random.default_rng(0)
    hard = HardAssignment({s: rng.permutation(np.arange(len(a.ir.spaces[s].nodes)) % 4) for s in a.scope.level_of})
    pairs = [(torch.randn(32, 3, 32, 32), torch.randint(0, 8, (32,))) for _ in range(2)]
    moved = transplant(a.gm, a.ir, a.scope, hard, pairs)
    assert moved.kept_after and all(moved.kept_after[s] >= moved.kept_before[s] - 1e-12 for s in moved.kept_after)
    assert any(moved.kept_after[s] > moved.kept_before[s] for s in moved.kept_after)
    assert moved.channels_used.keys() == moved.kept_after.keys()
    assert all(0 < v <= 1 for v in moved.channels_used.values()) and min(moved.channels_used.values()) < 1
    layers = {layer.name: layer for layer in a.ir.layers}
    for name, source in moved.sources.items():   # within a group, every slot holds another channel
        layer = layers[name]
        groups = hard.groups_of_space[int(a.ir.space_of[layer.out_elems[0]])][a.ir.node_index[layer.out_elems]]
        for g in range(4):
            picked = source[torch.as_tensor(groups == g)]
            assert len(set(picked.tolist())) == len(picked)
    first = "layer3.0.conv1"     # reads the trunk only: its weights are the dense rows, gathered
    assert first in moved.sources and "fc" not in moved.sources   # the classes keep their places
    dense, gathered = a.gm.get_submodule(first).weight, moved.gm.get_submodule(first).weight
    assert torch.equal(gathered, dense.index_select(0, moved.sources[first]))
    masked = mask_inter_group(moved.gm, a.ir, a.scope, hard)
    report = refit_cut(a.gm, masked, weight_masks(a.ir, a.scope, hard), [x for x, _ in pairs],
                       sources=moved.sources)
    assert report.error_after < report.error_before


def test_a_transplanted_split_is_its_masked_model_and_says_what_moved(trained, tmp_path: Path) -> None:
    result = learn(LearnConfig(model="resnet20", data=DATA, groups="4", split_from="layer3", weights=str(trained),
                               out=str(tmp_path / "run"), transplant=True), progress=False)
    doc = json.loads((tmp_path / "run" / "assignment.json").read_text())["refit"]
    held, moved = doc["transplant"]["importance_held"], doc["transplant"]["importance_transplanted"]
    assert held.keys() == moved.keys() and all(moved[s] >= held[s] for s in held)
    assert doc["error_after"] < doc["error_before"]
    summary = run_split(tmp_path / "run", tmp_path / "split", accept_unlearned=True)
    assert summary["max_rel_err"] < 1e-4                      # split = masked, the transplanted refit masked model
    split = load_split(tmp_path / "split").model
    bundle = load_data(DATA, seed=0)
    assert accuracy(split, bundle.val, torch.device("cpu")) == pytest.approx(result.refit_val_acc, abs=2e-3)
    with pytest.raises(SplitcError, match="transplant"):
        learn(LearnConfig(model="resnet20", data=DATA, groups="4", weights=str(trained), out=str(tmp_path / "no"),
                          transplant=True, refit=False), progress=False)


def test_transplant_leaves_the_models_gradients_as_they_were() -> None:
    """SplitNet.compile transplants from the user's own model: its parameters' .grad must survive."""
    import numpy as np

    from splitc.graph.analysis import analyse
    from splitc.graph.group_tree import HardAssignment
    from splitc.graph.scope import ScopeSpec
    from splitc.learn.transplant import transplant

    torch.manual_seed(1)
    a = analyse("resnet20", ScopeSpec((2,), split_from=("layer3",)), num_classes=4)
    marked = {n: torch.randn_like(p) for n, p in a.gm.named_parameters()}
    for n, p in a.gm.named_parameters():
        p.grad = marked[n].clone()
    hard = HardAssignment({s: np.arange(len(a.ir.spaces[s].nodes)) % 2 for s in a.scope.level_of})
    moved = transplant(a.gm, a.ir, a.scope, hard, [(torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))])
    assert moved.sources
    assert all(torch.equal(p.grad, marked[n]) for n, p in a.gm.named_parameters())
