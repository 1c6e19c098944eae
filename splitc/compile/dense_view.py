"""The split model as one dense graph: the permuted masked model carrying the split's weights.

The lowering for one device (``passes/lower_grouped.py``) works on a dense graph whose groups
are contiguous. After a finetune the split model's weights are no longer the masked model's,
so this module writes them back: every tensor of every subgraph is a slice of the tensor of
the same name in the permuted masked model, and which entries it took is read off by
compiling once more a copy whose every entry holds its own index (exact in float32 below 2^24
entries per tensor). Entries no subgraph holds keep the masked model's values (zeros, or
weights the split never reads). A tensor two subgraphs hold copies of must agree in both;
the result is checked against the split model on fresh random inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from splitc.compile.split import permuted_assignment
from splitc.compile.split_dir import LoadedSplit, ModelUnavailable
from splitc.core.numerics import relative_error
from splitc.graph.analysis import Analysis
from splitc.graph.group_tree import HardAssignment
from splitc.graph.split_model import SplitModel
from splitc.passes.assemble import assemble
from splitc.passes.mask import mask_inter_group
from splitc.passes.partition import partition
from splitc.passes.permute_channels import group_contiguous_ranks, output_order, permutation_from_ranks, permute_channels

EXACT_IDS = 1 << 24     # float32 holds every integer up to here exactly
CHECK_TOLERANCE = 1e-5


class ClassOrder(nn.Module):
    """``gm``'s logits put back in the original class order."""

    def __init__(self, gm: fx.GraphModule, inverse: torch.Tensor) -> None:
        super().__init__()
        self.gm = gm
        self.register_buffer("inverse", inverse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x).index_select(1, self.inverse)


@dataclass
class DenseSplit:
    gm: fx.GraphModule             # permuted, groups contiguous, the split's current weights
    assignment: HardAssignment     # in gm's (permuted) channel order
    inverse: torch.Tensor          # logit index of each original class

    def module(self, gm: fx.GraphModule | None = None) -> ClassOrder:
        return ClassOrder(gm if gm is not None else self.gm, self.inverse).eval()


def dense_split(loaded: LoadedSplit) -> tuple[DenseSplit | None, str]:
    """The dense view of ``loaded``, or None and the reason it has none (it needs the original
    model's analysis, so a model that cannot be built here has none)."""
    try:
        a, hard = loaded.analysis, loaded.assignment
    except ModelUnavailable as exc:
        return None, f"no dense view: {exc}"
    return dense_view(a, hard, loaded.model, loaded.input_size)


def dense_view(a: Analysis, hard: HardAssignment, model: SplitModel, input_size: tuple[int, ...]
               ) -> tuple[DenseSplit | None, str]:
    """The dense view of ``model``, a split of ``a``'s model by ``hard`` (in ``a``'s channel
    order) with any weights, or None and the reason it has none."""
    if hard.overlap:
        return None, "an overlap split duplicates channels, which one dense graph cannot hold"
    perm = permutation_from_ranks(a.ir, group_contiguous_ranks(hard))
    dense = permute_channels(mask_inter_group(a.gm, a.ir, a.scope, hard), a.ir, perm)
    local = permuted_assignment(a.ir, hard, perm)
    order = output_order(a.ir, perm)
    state = dense.state_dict()
    too_big = [n for n, t in state.items() if t.is_floating_point() and t.numel() >= EXACT_IDS]
    if too_big:
        return None, f"tensor {too_big[0]} has over 2^24 entries (index tracing is exact below that)"
    marked = copy.deepcopy(dense)
    marked.load_state_dict({n: (torch.arange(1, t.numel() + 1, dtype=t.dtype).reshape(t.shape)
                                if t.is_floating_point() else t) for n, t in state.items()})
    traced = assemble(partition(marked, a.ir, a.scope, local, order))
    new = {n: t.clone() for n, t in state.items()}
    written: dict[str, torch.Tensor] = {}
    for spec in model.plan.subgraphs:
        ids_of, values_of = traced.subgraph(spec.name).state_dict(), model.subgraph(spec.name).state_dict()
        for name, ids in ids_of.items():
            if name not in new or not ids.is_floating_point():
                continue
            index = ids.reshape(-1).round().long() - 1
            values = values_of[name].reshape(-1).to(new[name].dtype)
            held = index >= 0
            flat, seen = new[name].view(-1), written.setdefault(name, torch.zeros(new[name].numel(), dtype=torch.bool))
            clash = seen[index[held]] & (flat[index[held]] != values[held])
            if clash.any():
                return None, f"subgraphs hold diverged copies of {name} (a finetune trained them apart)"
            flat[index[held]] = values[held]
            seen[index[held]] = True
    dense.load_state_dict(new)
    result = DenseSplit(dense.eval(), local, torch.as_tensor(np.argsort(order), dtype=torch.long))
    err = max_error(result.module(), model, input_size)
    if not err <= CHECK_TOLERANCE:
        return None, f"the dense view differs from the split model (relative error {err:.2e})"
    return result, ""


def max_error(module: nn.Module, reference: nn.Module, input_size: tuple[int, ...], batches: int = 2) -> float:
    """Largest relative error of ``module`` against ``reference`` on fresh random batches of 4."""
    worst = 0.0
    module.eval(), reference.eval()
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn(4, *input_size)
            worst = max(worst, relative_error(module(x), reference(x)))
    return worst
