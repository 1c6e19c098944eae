"""Structure of the channel IR on tiny graphs: each tie and composite space, one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers import analyse
from splitc.graph import zoo
from splitc.graph.channel_rules import RULES, channel_rule
from splitc.core.errors import SplitcError
from splitc.graph.frontend import trace
from splitc.graph.opkinds import Kind


def built(name: str):
    return analyse(zoo.build(name, num_classes=10), zoo.resolve(name).default_input_size)[1]


def same_node(ir, a: np.ndarray, b: np.ndarray) -> bool:
    return bool((ir.node_of[a] == ir.node_of[b]).all())


def test_residual_add_ties_both_sides_and_output() -> None:
    ir = built("resnet20")
    conv2 = ir.layer("layer2.0.conv2")
    shortcut = ir.layer("layer2.0.downsample.0")
    assert same_node(ir, conv2.out_elems, shortcut.out_elems)
    nxt = ir.layer("layer2.1.conv1")  # reads the sum (after relu)
    assert same_node(ir, nxt.in_elems, conv2.out_elems)


def test_depthwise_ties_input_and_output() -> None:
    ir = built("tiny_depthwise")
    dw = ir.layer("ir.dw.0")
    assert dw.conv_groups == len(dw.in_elems)
    assert same_node(ir, dw.in_elems, dw.out_elems)
    dw2 = ir.layer("dw2.0")  # channel multiplier 2: each input node owns two outputs
    assert same_node(ir, np.repeat(dw2.in_elems, 2), dw2.out_elems)


def test_grouped_conv_moves_whole_conv_groups() -> None:
    ir = built("tiny_grouped")
    layer = next(l for l in ir.layers if 1 < l.conv_groups < len(l.in_elems))
    k = layer.conv_groups
    nodes_in = ir.node_of[layer.in_elems].reshape(k, -1)
    nodes_out = ir.node_of[layer.out_elems].reshape(k, -1)
    assert (nodes_in == nodes_in[:, :1]).all() and (nodes_out == nodes_in[:, :1]).all()
    assert len(np.unique(nodes_in)) == k


def test_squeeze_excite_gate_is_tied_to_its_input() -> None:
    ir = built("tiny_se")
    excite = next(l for l in ir.layers if len(l.out_elems) > len(l.in_elems) and l.op == "conv"
                  and l.name.endswith(("fc2", "excite", "up", "1")) or False)
    gated_space = ir.space_of[excite.out_elems[0]]
    # the gate's channels and the gated tensor's channels are one space, node by node
    readers = [l for l in ir.layers if ir.space_of[l.in_elems[0]] == gated_space and l is not excite]
    assert readers, "something must read the gated tensor"


def test_concat_is_a_composite_of_its_inputs() -> None:
    ir = built("tiny_concat")
    reader = next(l for l in ir.layers if len(ir.spaces_of(l.in_elems)) > 1)
    spaces = ir.spaces_of(reader.in_elems)
    producers = [l for l in ir.layers if ir.space_of[l.out_elems[0]] in spaces]
    offset = 0
    for space in [ir.space_of[e] for e in reader.in_elems[np.r_[0, np.flatnonzero(np.diff(ir.space_of[reader.in_elems])) + 1]]]:
        width = int((ir.space_of[reader.in_elems] == space).sum())
        assert width > 0
        offset += width
    assert offset == len(reader.in_elems) and len(producers) >= 2


def test_flatten_spreads_each_channel_over_hw_features() -> None:
    ir = built("tiny_seq")
    fc = next(l for l in ir.layers if l.op == "linear")
    conv = max((l for l in ir.layers if l.op == "conv"), key=lambda l: l.topo)
    hw = len(fc.in_elems) // len(conv.out_elems)
    assert hw > 1
    np.testing.assert_array_equal(fc.in_elems, np.repeat(conv.out_elems, hw))


def test_channel_shuffle_is_a_fixed_permutation() -> None:
    from splitc.models.testnets import channel_shuffle

    ir = built("tiny_shuffle")
    reader = next(l for l in ir.layers if len(ir.spaces_of(l.in_elems)) > 1)
    labels = torch.as_tensor(reader.in_elems)
    # undoing a 2-group shuffle must give the concat order back: [first half, branch output]
    unshuffled = channel_shuffle(labels.view(1, -1, 1, 1), len(labels) // 2).flatten().numpy()
    spaces = ir.space_of[unshuffled]
    assert (np.diff(spaces) != 0).sum() == 1  # two contiguous runs


def test_class_space_is_the_output() -> None:
    ir = built("resnet20")
    assert ir.spaces[ir.class_space].size == 10
    assert ir.space_of[ir.layer("fc").out_elems[0]] == ir.class_space


def test_unknown_op_becomes_a_named_barrier() -> None:
    class Cumulative(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

        def forward(self, x):
            x = torch.cumsum(self.conv(x), dim=1)  # mixes channels in an order-dependent way
            return self.fc(x.mean((2, 3)))

    gm = trace(Cumulative())
    with pytest.warns(UserWarning, match="no channel rule for function torch.cumsum"):
        from splitc.graph.channel_graph import build_channel_graph
        ir = build_channel_graph(gm, (3, 8, 8))
    conv_space = ir.space_of[ir.layer("conv").out_elems[0]]
    assert "opaque" in ir.spaces[conv_space].flags
    assert "cumsum" in ir.spaces[conv_space].flags["opaque"]


def test_duplicate_rule_registration_raises() -> None:
    with pytest.raises(ValueError, match="duplicate channel rule"):
        channel_rule(Kind.CONV)(lambda ctx: None)
    assert RULES[Kind.CONV].__name__ == "conv_rule"


def test_untraceable_model_names_the_construct() -> None:
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # control flow on a tensor value
                return x
            return -x

    with pytest.raises(SplitcError) as info:
        trace(DataDependent())
    message = str(info.value)
    assert "\n" not in message and "torch.fx.wrap" in message and "leaf" in message
    assert "test_channel_graph.py" in message  # points at the user's line
