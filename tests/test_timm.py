"""timm support: the functional forms timm calls (each rule on a tiny net) and timm models.

Every rule test builds a tiny net that uses one functional op the way timm does, splits it
from its first layer with a random balanced assignment, and checks that the split model equals
the masked model on fresh random inputs (relative error) and that the split reduces params
where the op keeps channels. The timm models are built without weights at a small input.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import analyse, randomize, rel_err
from splitc.graph import zoo
from splitc.graph.group_tree import balanced_assignment
from splitc.graph.counting import count, count_graph
from splitc.core.errors import SplitcError
from splitc.graph.scope import ScopeSpec, last_stage, resolve_scope
from splitc.compile.split import compile_split, subgraph_costs, total_cost

TOL = 1e-5
SIZE = (3, 16, 16)


class FunctionalNet(nn.Module):
    """conv -> op under test -> conv -> op -> pool -> linear, with parameters read by functions
    (as timm's BatchNormAct2d, Conv2dSame and Linear read them)."""

    def __init__(self, op: str, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.op = op
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv = nn.Conv2d(width, width, 3, padding=1, groups=2 if op == "grouped_conv" else 1)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.bn = nn.BatchNorm2d(width)
        self.gn = nn.GroupNorm(2, width)
        self.select = nn.Conv2d(width, 2 * width, 1)
        self.head = nn.Linear(width, classes)

    def block(self, x: torch.Tensor) -> torch.Tensor:
        op = self.op
        if op == "batch_norm":
            return F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                                False, 0.1, 1e-5)
        if op in ("conv", "grouped_conv"):
            return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.conv.weight, self.conv.bias, 1, 0, 1, self.conv.groups)
        if op == "depthwise_conv":
            return F.conv2d(x, self.dw.weight, self.dw.bias, 1, 1, 1, self.dw.groups)
        if op == "group_norm":
            return F.group_norm(x, 2, self.gn.weight, self.gn.bias, 1e-5)
        if op == "group_norm_module":
            return self.gn(x)
        if op == "pad":
            return F.pad(x, (1, 0, 0, 1), mode="reflect")[:, :, :-1, 1:]
        if op == "activations":
            return F.hardswish(F.silu(F.gelu(x))) + F.softplus(x).tanh() * torch.clamp(x, -1, 1)
        if op == "interpolate":
            return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
        if op == "softmax_hw":  # attention pooling over positions of one channel (GCNet)
            return x * x.flatten(2).softmax(-1).view_as(x)
        if op == "paths":  # SK / ResNeSt: parallel paths, a softmax over paths, their weighted sum
            paths = torch.stack([x, self.dw(x)], dim=1)
            logits = self.select(paths.sum(1).mean((2, 3), keepdim=True))
            return (paths * logits.view(x.shape[0], 2, -1, 1, 1).softmax(dim=1)).sum(dim=1)
        raise ValueError(op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.block(F.relu(self.stem(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(x, self.head.weight, self.head.bias)


OPS = ("batch_norm", "conv", "grouped_conv", "depthwise_conv", "group_norm", "group_norm_module", "pad",
       "activations", "interpolate", "softmax_hw", "paths")


def split_check(model: nn.Module, input_size, spec: ScopeSpec, seed: int = 0, batch: int = 3):
    """(relative error split vs masked, params reduced %, compiled, ir, scope)."""
    rng = np.random.default_rng(seed)
    gm, ir = analyse(randomize(model, seed=seed), input_size)
    scope = resolve_scope(ir, spec)
    assignment = balanced_assignment(ir, scope, rng)
    compiled = compile_split(gm, ir, scope, assignment)
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        err = rel_err(compiled.model(x), compiled.masked(x))
    report = count(ir, scope, assignment)
    assert total_cost(subgraph_costs(compiled.model, input_size)) == report.split  # real tensors
    return err, report.params_reduced_pct, compiled, ir, scope


@pytest.mark.parametrize("op", OPS)
def test_functional_rule_splits_and_matches_masked(op: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no op may fall back to a barrier
        err, reduced, compiled, ir, _ = split_check(FunctionalNet(op), SIZE, ScopeSpec((2,), split_from=("stem",)))
    assert err <= TOL, f"{op}: {err:.2e}"
    assert reduced > 0
    assert not ir.barriers
    assert len(compiled.model.plan.branches) == 2


def test_group_norm_moves_whole_norm_groups() -> None:
    _, ir = analyse(FunctionalNet("group_norm"), SIZE)
    stem = ir.layer("stem")
    nodes = ir.node_of[stem.out_elems].reshape(2, -1)
    assert (nodes == nodes[:, :1]).all() and nodes[0, 0] != nodes[1, 0]


def test_functional_layer_is_counted_like_its_module() -> None:
    """F.conv2d / F.linear with parameters are weight layers with the module's name and cost."""
    gm, ir = analyse(FunctionalNet("conv"), SIZE)
    assert {layer.name for layer in ir.layers} == {"stem", "conv", "head"}
    conv = ir.layer("conv")
    assert (conv.taps, conv.positions, conv.has_bias) == (9, 16 * 16, True)
    assert count(ir).baseline.params == sum(p.numel() for p in gm.parameters())
    assert count_graph(gm, torch.randn(1, *SIZE)) == count(ir).baseline


def test_weight_standardised_conv_is_a_named_barrier() -> None:
    """A weight computed from parameters (timm's StdConv2d) cannot be sliced: it stops the
    scope with a warning naming the call, never splits silently wrong."""

    class StdConvNet(FunctionalNet):
        def block(self, x):
            w = self.conv.weight
            w = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, momentum=0.0).reshape_as(w)
            return F.conv2d(x, w, self.conv.bias, 1, 1)

    _, ir = analyse(StdConvNet("conv"), SIZE)
    assert any("conv2d" in what for what in ir.barriers)
    assert any("weight standardisation" in w for w in ir.warnings)


def test_functional_norm_after_a_concat_keeps_its_inputs_apart() -> None:
    """DenseNet in timm: F.batch_norm over cat([earlier stage, new features]). Its parameters
    are recorded per channel, so they do not join the concat's inputs into one space, and a
    scope that starts after the earlier stage still splits the new features."""

    class DenseNorm(FunctionalNet):
        def block(self, x):
            y = torch.cat([x, self.conv(x)], dim=1)
            y = F.batch_norm(y, self.bn16.running_mean, self.bn16.running_var, self.bn16.weight, self.bn16.bias,
                             False, 0.1, 1e-5)
            return self.mix(y)

    model = DenseNorm("conv")
    model.bn16, model.mix = nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1)
    _, ir = analyse(model, SIZE)
    assert ir.space_of[ir.layer("stem").out_elems[0]] != ir.space_of[ir.layer("conv").out_elems[0]]
    err, reduced, *_ = split_check(model, SIZE, ScopeSpec((2,), split_from=("conv",)))
    assert err <= TOL and reduced > 0


def test_mean_over_all_channels_still_mixes_them() -> None:
    """Only parallel paths are tied by a reduction: a mean over every channel (a spatial
    attention map) stays a channel-mixing op (shared_only), never one giant node."""

    class ChannelMean(FunctionalNet):
        def block(self, x):
            return x * x.mean(1, keepdim=True).sigmoid()

    _, ir = analyse(ChannelMean("pad"), SIZE)
    stem_space = ir.spaces[ir.space_of[ir.layer("stem").out_elems[0]]]
    assert "shared_only" in stem_space.flags and stem_space.num_nodes == 8


def test_padding_the_channel_dim_is_a_barrier() -> None:
    class ChannelPad(FunctionalNet):
        def block(self, x):
            return F.pad(x, (0, 0, 0, 0, 1, 1))[:, 1:-1]

    _, ir = analyse(ChannelPad("pad"), SIZE)
    assert any("pad" in what for what in ir.barriers)


class ShapeBranching(FunctionalNet):
    """The shape arithmetic and branches timm's forward code holds: TF-style "same" padding
    (``math.ceil`` of a size, ``if pad > 0``) and VGG's pre-logits pooling (``if H < 7``)."""

    def block(self, x):
        ih, iw = x.size()[-2:]
        pad_h = max((math.ceil(ih / 2) - 1) * 2 + 3 - ih, 0)
        pad_w = max((math.ceil(iw / 2) - 1) * 2 + 3 - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        x = self.dw(x)
        if x.shape[-2] < 32:
            x = F.adaptive_avg_pool2d(x, (max(32, x.shape[-2]), max(32, x.shape[-1])))
        return x.view(x.size(0), x.shape[1], -1).view_as(x)


def test_forward_that_branches_on_shapes_is_traced_with_concrete_shapes() -> None:
    """The split of such a model equals its masked model at a batch size other than the one
    the shapes were computed with (the batch stays a graph value), and the analysis says so."""
    from splitc.graph.frontend import trace

    with pytest.raises(SplitcError):
        trace(ShapeBranching("pad"))          # without the input size: not traceable
    gm = trace(ShapeBranching("pad"), input_size=SIZE)
    assert gm.meta["specialised"] == SIZE
    err, reduced, _, ir, _ = split_check(ShapeBranching("pad"), SIZE, ScopeSpec((2,), split_from=("stem",)), batch=5)
    assert err <= TOL and reduced > 0 and not ir.barriers


def test_branch_on_tensor_values_is_still_refused() -> None:
    from splitc.graph.frontend import trace

    class ValueBranching(nn.Module):
        def forward(self, x):
            return x if x.shape[1] == 3 and x.sum() > 0 else -x

    with pytest.raises(SplitcError, match="control flow"):
        trace(ValueBranching(), input_size=SIZE)


# ---------------------------------------------------------------- the zoo
def test_timm_name_resolves_with_its_pretrained_input_size() -> None:
    pytest.importorskip("timm")
    spec = zoo.resolve("timm:efficientnet_lite0")
    assert spec.source == "timm" and spec.default_input_size == (3, 224, 224)
    model = zoo.build("timm:resnet18", num_classes=7)
    assert model.get_classifier().out_features == 7


def test_unknown_timm_name_lists_close_matches() -> None:
    pytest.importorskip("timm")
    with pytest.raises(SplitcError, match="resnet26d") as info:
        zoo.resolve("timm:resnet26x")
    assert "\n" not in str(info.value)


def test_timm_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(SplitcError, match=r"pip install 'splitc\[timm\]'"):
        zoo.resolve("timm:resnet18")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet26d"])
def test_timm_model_splits_its_last_stage(name: str) -> None:
    pytest.importorskip("timm")
    model = zoo.build(f"timm:{name}", num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ir = analyse(model, (3, 64, 64))
        stage = last_stage(ir)
        err, reduced, compiled, _, _ = split_check(model, (3, 64, 64), ScopeSpec((2,), split_from=(stage,)), batch=2)
    assert not ir.barriers, ir.barriers
    assert err <= TOL and reduced > 0


# ---------------------------------------------------------------- the coverage tables
def test_coverage_table_marks_a_split_that_saves_nothing_no_op(tmp_path) -> None:
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"
    spec = importlib.util.spec_from_file_location("coverage_bench_timm", script)
    coverage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coverage)

    def row(model: str, reduced: float, **extra) -> dict:
        return {"model": model, "status": "ok", "note": "", "scope": "stages.3", "params_reduced": reduced,
                "flops_reduced": 0.0, "split_err": 0.0, "onnx_err": 1e-6, "seconds": {"learn": 1.0}, **extra}

    rows = {"timm:resnet18": row("timm:resnet18", 30.0),
            "timm:convnext_atto": row("timm:convnext_atto", 0.0, note="only the classifier splits",
                                      stopped_by="function torch.nn.functional.layer_norm")}
    out = tmp_path / "coverage-timm.md"
    coverage.write_table(out, ["timm:resnet18", "timm:convnext_atto", "timm:dla34"], rows, "timm")
    text = out.read_text()
    assert "**1 of 3 ok**, 1 no-op, 1 not run yet." in text
    assert "| convnext_atto (ConvNeXt) | no-op (only the classifier splits) | `stages.3` |" in text
    assert "| function torch.nn.functional.layer_norm |" in text
    assert "| resnet18 (ResNet) | ok | `stages.3` | 30.0 |" in text
    assert coverage.row_status(row("resnet18", 0.0)) == "no-op"  # torchvision rows too


def test_traced_batchnorm_act_keeps_training_mode() -> None:
    """timm's BatchNormAct2d traced through became F.batch_norm(training=False): statistics frozen
    in learn and finetune. As a leaf it updates its running statistics in train mode."""
    import timm as timm_lib

    from splitc.graph.frontend import trace

    gm = trace(timm_lib.create_model("efficientnet_lite0", pretrained=False, num_classes=10))
    assert not [n for n in gm.graph.nodes if "batch_norm" in str(n.target)]
    bn = gm.get_submodule("bn1")
    assert type(bn).__name__ == "BatchNormAct2d"
    before = bn.running_mean.clone()
    gm.train()
    gm(torch.randn(2, 3, 32, 32))
    assert not torch.equal(before, bn.running_mean)
