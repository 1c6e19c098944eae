"""Transplant: give each group of a cut the trained channels that matter most to its classes.

A cut by disjoint groups hands each branch a quarter (G = 4) of every cut layer's channels, the
ones the grouping placed there, and drops the weights between them: on a trained resnet20 the
cut removes about 69% of the cut layers' weight energy, barely less than a random grouping
(75%), because a trained dense network has little block structure. But the branches share
nothing after the split, so nothing requires them to start from *different* trained channels:
branch g may start from the channels most important to its own classes, even where another
branch starts from the same ones. Each branch then begins as a pruned copy of the trained
layers, pruned for its classes.

Here, per cut space and group, the channels are ranked by their first-order (Taylor)
importance to the group's classes (|activation x gradient| of the cross-entropy through the
group's logits only, Molchanov et al. 2019) on calibration images, and the group's slots take
the values of its top channels (a slot whose own channel is among them keeps it). Every
tensor that indexes the space follows (the slot mapping is the channel permutation's, made
many-to-one). The refit then reproduces, for each slot, the dense channel it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from splitc.graph.channel_ir import ChannelIR
from splitc.graph.group_tree import HardAssignment
from splitc.graph.scope import Scope
from splitc.passes.permute_channels import ChannelPermutation, follow_nodes, permute_channels, source_index


@dataclass(frozen=True)
class Transplant:
    """The dense network with each group's slots holding its chosen channels, the dense channel
    each cut layer's output slots reproduce (for the refit), and per space the share of the
    groups' importance their slots held before and after, and the share of the dense channels
    some group still starts from (groups that want the same channels leave others unused)."""

    gm: fx.GraphModule
    sources: dict[str, torch.Tensor]
    kept_before: dict[str, float]
    kept_after: dict[str, float]
    channels_used: dict[str, float]


def transplant(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, hard: HardAssignment,
               batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Transplant:
    """Entry point: ``gm`` is not modified. Spaces are transplanted where each node is one
    channel of one cell and the space has as many groups as the classes (each level of a
    hierarchy but the classes' keeps its channels); without the classes in scope, none is."""
    if ir.class_space not in hard.groups_of_space:
        return Transplant(gm, {}, {}, {}, {})
    class_groups = _class_groups(ir, hard)
    n_groups = int(class_groups.max()) + 1
    readers = _readers(ir, hard, scope, n_groups)
    importance = _importance(gm, ir, readers, batches, class_groups, n_groups)
    rho = np.arange(len(ir.node_cells))
    kept_before, kept_after, used, moved = {}, {}, {}, set()
    for space, imp in importance.items():
        groups, nodes = hard.groups_of_space[space], ir.spaces[space].nodes
        held = [imp[groups == g, g].sum() for g in range(n_groups)]
        chosen = []
        for g in range(n_groups):
            members = np.flatnonzero(groups == g)
            top = np.argsort(-imp[:, g], kind="stable")[:len(members)]
            own, best = set(members.tolist()), set(top.tolist())
            incoming = iter([t for t in top.tolist() if t not in own])
            for m in members.tolist():
                if m not in best:
                    rho[nodes[m]] = nodes[next(incoming)]
            chosen.append(imp[top, g].sum())
        name = ir.spaces[space].name
        total = imp.sum(0)
        kept_before[name] = float(np.mean([held[g] / max(total[g], 1e-12) for g in range(n_groups)]))
        kept_after[name] = float(np.mean([chosen[g] / max(total[g], 1e-12) for g in range(n_groups)]))
        used[name] = len(set(rho[nodes].tolist())) / len(nodes)
        moved.add(space)
    sigma = np.arange(len(ir.space_of))
    for src in ir.sources:
        elems = src.elems
        if int(ir.space_of[elems[0]]) in moved:
            sigma[elems] = follow_nodes(ir.node_of[elems], ir.atom_key[elems], rho, elems)
    perm = ChannelPermutation(sigma)
    sources = {}
    for layer in ir.layers:
        index = source_index(layer.out_elems, sigma)
        if (index != np.arange(len(index))).any():
            sources[layer.name] = torch.as_tensor(index)
    return Transplant(permute_channels(gm, ir, perm), sources, kept_before, kept_after, used)


def _class_groups(ir: ChannelIR, hard: HardAssignment) -> np.ndarray:
    """Group of each logit."""
    return np.asarray(hard.groups_of_space[ir.class_space])[ir.node_index[ir.output_elems]]


def _readers(ir: ChannelIR, hard: HardAssignment, scope: Scope, n_groups: int) -> dict[int, object]:
    """Per transplantable space, the last weight layer that reads it (its input is where the
    importance is measured)."""
    readers = {}
    for space in hard.groups_of_space:
        info = ir.spaces[space]
        if space == ir.class_space or scope.groups_of(space) != n_groups or (info.node_sizes != 1).any():
            continue
        if len(np.unique(ir.node_cells[info.nodes])) != 1:
            continue
        for layer in sorted(ir.layers, key=lambda la: la.topo):
            if layer.conv_groups == 1 and len(layer.in_elems) and int(ir.space_of[layer.in_elems[0]]) == space \
                    and (ir.space_of[layer.in_elems] == space).all():
                readers[space] = layer
    return readers


def _importance(gm: fx.GraphModule, ir: ChannelIR, readers: dict[int, object],
                batches: list[tuple[torch.Tensor, torch.Tensor]], class_groups: np.ndarray,
                n_groups: int) -> dict[int, np.ndarray]:
    """(nodes, groups) Taylor importance per space, summed over the calibration images. The
    gradients are taken with respect to the measured activations only (``torch.autograd.grad``),
    so the parameters' ``.grad`` (a user's model, in ``SplitNet.compile``) is left as it was."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for space, layer in readers.items():
        def hook(_m, args, space=space):
            if not args[0].requires_grad:   # frozen layers before it: track from here
                args[0].requires_grad_()
            seen[space] = args[0]
        handles.append(gm.get_submodule(layer.name).register_forward_pre_hook(hook))
    out = {s: np.zeros((ir.spaces[s].nodes.size, n_groups)) for s in readers}
    masks = torch.as_tensor(np.eye(n_groups)[class_groups].T, dtype=torch.float32)   # (groups, classes)
    was = gm.training
    gm.eval()
    try:
        with torch.enable_grad():
            for x, y in batches:
                seen.clear()
                logits = gm(x)
                dz = (torch.softmax(logits.detach(), 1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)) / len(y)
                spaces = list(seen)
                for g in range(n_groups):
                    grads = torch.autograd.grad(logits, [seen[s] for s in spaces], grad_outputs=dz * masks[g].to(dz),
                                                retain_graph=g < n_groups - 1)
                    for space, grad in zip(spaces, grads):
                        t = seen[space]
                        taylor = (t * grad).reshape(t.shape[0], t.shape[1], -1).sum(-1).abs().sum(0)
                        nodes = ir.node_index[readers[space].in_elems]
                        np.add.at(out[space][:, g], nodes, taylor.detach().double().cpu().numpy())
    finally:
        for h in handles:
            h.remove()
        gm.train(was)
    return out
