"""Channel groups read off the trained weights, given the class groups (``--init-groups cluster-cut``).

Why. SplitNet learns the class map and every channel map together, from a uniform start, with
regularizers whose gradient is a few percent of the cross-entropy's (docs/LEARN.md); on the
embedded data its class map followed neither the superclasses nor the features. The authors'
own ImageNet code did not learn the class groups at all: it clustered the classes and then
split. This pass does that for every space in scope. Given the class groups (the balanced
clustering of the warmed-up features, :mod:`splitc.learn.groups`), the split that loses least
keeps the most weight energy inside the groups, so each channel goes to the group whose
channels it feeds, or is fed by, the most:

- the spaces are visited breadth first from the class space along the layers the split cuts
  (block-diagonal and mixed ones); a space is placed once a neighbouring space is;
- a node's score for group ``g`` is the weight energy (each layer normalised to a total of 1,
  kernel taps summed, as R_W sees it) between the node and the already placed channels of
  ``g``, summed over every cut layer that joins them, in either direction;
- each space is then split into equal groups (one more node at most) maximising the summed
  score, by a linear assignment of nodes to group slots (:func:`schedule.balanced_argmax`).

The learn loop commits these groups at the end of the warm-up, and R_W clears what lies between
them from there on, as SplitNet-Random does with its random groups: the difference is only
which groups.
"""

from __future__ import annotations

import numpy as np
import torch

from splitc.core.errors import SplitcError
from splitc.core.naming import FLAG, Naming
from splitc.graph.channel_ir import ChannelIR
from splitc.graph.scope import Scope
from splitc.learn.assign import cut_weight
from splitc.learn.groups import class_nodes
from splitc.learn.regularizers import weight_energy_matrix
from splitc.learn.schedule import balanced_argmax


def check_flat(scope: Scope, init: str = "cluster-cut", names: Naming = FLAG) -> None:
    """Channel groups are read at one level; a hierarchical scope would need them per level."""
    if len(set(scope.level_of.values())) > 1:
        groups = names("groups")
        raise SplitcError(f"{names('init_groups')} {init} needs a one-level split (e.g. {groups} 4); for a "
                          f"hierarchy such as {groups} 2,4 use {names('init_groups')} cluster.")


@torch.no_grad()
def cut_groups(gm: torch.nn.Module, ir: ChannelIR, scope: Scope, class_group: np.ndarray) -> dict[int, np.ndarray]:
    """``space -> group of each node`` for every space in scope; ``class_group`` is the group of
    each class (class order). Raises :class:`SplitcError` on a hierarchical scope."""
    check_flat(scope)
    placed: dict[int, np.ndarray] = {}
    if ir.class_space in scope.level_of:
        groups = np.zeros(ir.spaces[ir.class_space].num_nodes, dtype=np.int64)
        groups[class_nodes(ir)] = np.asarray(class_group, dtype=np.int64)
        placed[ir.class_space] = groups
    G = scope.groups[0]
    layers = [(layer, *_energy(cut)) for layer in ir.layers if (cut := cut_weight(gm, ir, scope, layer)) is not None]
    pending = [s for s in sorted(scope.level_of) if s not in placed]
    while pending:
        scores = {s: np.zeros((G, ir.spaces[s].num_nodes)) for s in pending}
        for layer, in_elems, E in layers:
            g_in, g_out = _elem_groups(ir, placed, in_elems, G), _elem_groups(ir, placed, layer.out_elems, G)
            _add(ir, scores, in_elems, E @ g_out)            # (in, G): energy to placed outputs
            _add(ir, scores, layer.out_elems, E.T @ g_in)    # (out, G): energy from placed inputs
        reached = [s for s in pending if scores[s].sum() > 0]
        if not reached:   # not joined to the placed spaces by any cut layer: equal groups in order
            reached = pending[:1]
            scores[reached[0]] = np.eye(G)[np.arange(scores[reached[0]].shape[1]) % G].T
        for s in reached:
            score = scores[s] / scores[s].max()
            placed[s] = balanced_argmax(score)
        pending = [s for s in pending if s not in placed]
    return placed


def _energy(cut: tuple[torch.Tensor, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
    """The input elements and ``(in, out)`` weight energy of a cut layer's cuttable weight
    (``assign.cut_weight``: a mixed layer's in-scope columns), normalised to sum 1 (R_W's view)."""
    W, in_elems, conv_groups = cut
    E = weight_energy_matrix(W.detach().float().cpu(), conv_groups).double().numpy()
    total = E.sum()
    return in_elems, (E / total if total > 0 else E)


def _elem_groups(ir: ChannelIR, placed: dict[int, np.ndarray], elems: np.ndarray, G: int) -> np.ndarray:
    """``(len(elems), G)`` one-hot group of each element whose space is placed; zero rows else."""
    out = np.zeros((len(elems), G))
    spaces = ir.space_of[elems]
    for space, groups in placed.items():
        rows = np.flatnonzero(spaces == space)
        out[rows, groups[ir.node_index[elems[rows]]]] = 1.0
    return out


def _add(ir: ChannelIR, scores: dict[int, np.ndarray], elems: np.ndarray, per_elem: np.ndarray) -> None:
    """Accumulate each element's ``(G,)`` score into its node's column, for pending spaces."""
    spaces = ir.space_of[elems]
    for space, score in scores.items():
        rows = np.flatnonzero(spaces == space)
        if len(rows):
            np.add.at(score.T, ir.node_index[elems[rows]], per_elem[rows])
