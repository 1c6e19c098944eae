"""permute_channels with group ranks: groups become contiguous and the function is unchanged."""

from __future__ import annotations

import numpy as np
import torch

from helpers import analyse, randomize, rel_err
from splitc.graph import zoo
from splitc.graph.group_tree import balanced_assignment
from splitc.passes.permute_channels import (
    group_contiguous_ranks, output_order, permutation_from_ranks, permute_channels)
from splitc.graph.scope import ScopeSpec, resolve_scope


def test_group_ranks_make_groups_contiguous_and_keep_the_function() -> None:
    gm, ir = analyse(randomize(zoo.build("resnet20", num_classes=8)), (3, 32, 32))
    scope = resolve_scope(ir, ScopeSpec((4,), split_from=("layer3",)))
    assignment = balanced_assignment(ir, scope, np.random.default_rng())
    perm = permutation_from_ranks(ir, group_contiguous_ranks(assignment))
    for space, groups in assignment.groups_of_space.items():
        first = ir.sources[ir.spaces[space].sources[0]]
        new_groups = groups[ir.node_index[perm.sigma[first.elems]]]
        assert (np.diff(new_groups) >= 0).all(), f"space {space} not contiguous: {new_groups}"
    new = permute_channels(gm, ir, perm).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(new(x), gm.double()(x)[:, output_order(ir, perm)]) < 1e-10
