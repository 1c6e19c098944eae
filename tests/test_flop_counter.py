"""The counting function's conv and linear FLOPs against torch's own FlopCounterMode.

splitc counts 2 x multiply-accumulates per conv/linear (plus bias and norm terms, which torch's
counter does not count); FlopCounterMode counts the aten convolution and matmul calls. The two
must agree exactly on the MAC part, for unsplit models and for every subgraph of a split.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from splitc.compile.split import compile_split, subgraph_inputs
from splitc.graph.analysis import analyse
from splitc.graph.channel_builder import ChannelGraphBuilder
from splitc.graph.channel_graph import LabelInterpreter
from splitc.graph.counting import count, count_graph
from splitc.graph.group_tree import balanced_assignment
from splitc.graph.scope import ScopeSpec


def torch_flops(module: torch.nn.Module, *args: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    return int(counter.get_total_flops())


def mac_flops(ir, report) -> int:
    """splitc's conv/linear FLOPs without the bias terms (the layers come first in the report)."""
    layers = report.layers[:len(ir.layers)]
    return sum(c.baseline.flops - (len(w.out_elems) * w.positions if w.has_bias else 0)
               for w, c in zip(ir.layers, layers))


@pytest.mark.parametrize("model,size", [("resnet20", (3, 32, 32)), ("mobilenet_v2", (3, 64, 64)),
                                        ("resnext50_32x4d", (3, 64, 64)), ("densenet121", (3, 64, 64))])
def test_unsplit_conv_and_linear_flops_match_torch(model: str, size: tuple[int, int, int]) -> None:
    a = analyse(model, ScopeSpec((2,), split_depth=(1,)), input_size=size)
    assert mac_flops(a.ir, count(a.ir)) == torch_flops(a.gm.eval(), torch.randn(1, *size))


def test_every_subgraph_of_a_split_matches_torch() -> None:
    """Each subgraph's layers, read from its own tensors as ``count_graph`` reads them."""
    a = analyse("resnet20", ScopeSpec((2, 4), split_from=("layer2", "layer3")))
    model = compile_split(a.gm, a.ir, a.scope, balanced_assignment(a.ir, a.scope)).model.eval()
    inputs = subgraph_inputs(model, torch.randn(1, 3, 32, 32))
    total = 0
    for name, args in inputs.items():
        sub = model.subgraph(name)
        builder = ChannelGraphBuilder(sub)
        with torch.no_grad():
            LabelInterpreter(sub, builder).run(*args)
        ours = sum(2 * len(w.out_elems) * (len(w.in_elems) // w.conv_groups) * w.taps * w.positions
                   for w in builder.layers)
        assert ours == torch_flops(sub, *args), name
        bias = sum(len(w.out_elems) * w.positions for w in builder.layers if w.has_bias)
        assert count_graph(sub, *args).flops >= ours + bias, name   # + the BN affine terms
        total += ours
    assert total == torch_flops(model, torch.randn(1, 3, 32, 32))
