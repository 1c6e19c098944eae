"""What a learn run reports about its groups: the class-to-group map, the feature clustering it
is judged against, and each space's entry in assignment.json.

docs/METHOD.md §8: an ARI against a taxonomy only says whether the learned groups follow the
taxonomy, and they can only be as semantic as the network's own features are. So at the end of
the warm-up a learn run measures the class-mean features at the *split input* (the tensor that
feeds the first layer the split cuts or partitions), clusters the classes by them into balanced
groups (:mod:`splitc.learn.cluster`), and reports that clustering's ARI against the superclasses
(``feature_ari``) beside the learned one (``superclass_ari``). ``--init-groups cluster`` starts
the class assignment from the same clustering. ``classifier_energy_ari`` clusters what R_W sees
of each class instead, its squared classifier weights: where it is low and ``feature_ari`` high,
the regularizers have no superclass signal to follow even though the features do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch.utils.data import DataLoader, Dataset, Subset

from splitc.learn.assign import AssignmentSet
from splitc.graph.channel_ir import ChannelIR, WeightLayer
from splitc.learn.cluster import adjusted_rand_index, balanced_spectral_clustering, class_means
from splitc.passes.harden import fuzzy_nodes
from splitc.learn.regularizers import weight_energy_matrix
from splitc.graph.scope import Scope, layer_kind
from splitc.learn.simplex import SimplexAssignment, SoftmaxAssignment

PROBE_PER_CLASS = 100    # training images per class whose features are averaged
INIT_CONFIDENCE = 0.99   # probability an initialised class gets in its cluster's group


def split_input_layer(ir: ChannelIR, scope: Scope) -> WeightLayer:
    """The first layer (graph order) that the split touches and that reads a trunk or sliced
    space: its input is where the branches start. The classifier when nothing else qualifies."""
    for layer in sorted(ir.layers, key=lambda lay: lay.topo):
        if layer_kind(ir, scope, layer) == "trunk":
            continue
        if not all(scope.in_branches(int(s)) for s in ir.spaces_of(layer.in_elems)):
            return layer
    return classifier_layer(ir)


class _InputProbe(fx.Interpreter):
    """Runs the traced model and keeps the first tensor argument of one node."""

    def __init__(self, gm: fx.GraphModule, node: str) -> None:
        super().__init__(gm)
        self.node, self.captured = node, None

    def run_node(self, n: fx.Node):
        if n.name == self.node:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.captured = args[0]
        return super().run_node(n)


def _pool(x: torch.Tensor, op: str) -> torch.Tensor:
    """One vector per sample: a conv input is averaged over positions, a linear one over tokens."""
    if op == "conv":
        return x.flatten(2).mean(-1)
    return x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels without loading images where the dataset keeps them (ours and torchvision's)."""
    for attr in ("labels", "targets"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def probe_indices(labels: np.ndarray, per_class: int = PROBE_PER_CLASS) -> list[int]:
    """The first ``per_class`` samples of every class, so each class mean has equal support."""
    picked = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return sorted(np.concatenate(picked).tolist())


@torch.no_grad()
def split_input_class_means(gm: fx.GraphModule, ir: ChannelIR, scope: Scope, dataset: Dataset,
                            num_classes: int, device: torch.device) -> np.ndarray:
    """``(num_classes, D)`` class means of the pooled split-input features, in eval mode.

    The global RNG is forked so that a random augmentation in ``dataset`` does not shift the
    training run's random stream (a resumed run must replay the same one).
    """
    return layer_input_class_means(gm, split_input_layer(ir, scope), dataset, num_classes, device)


@torch.no_grad()
def layer_input_class_means(gm: fx.GraphModule, layer: WeightLayer, dataset: Dataset,
                            num_classes: int, device: torch.device) -> np.ndarray:
    """``(num_classes, D)`` class means of ``layer``'s pooled input features, in eval mode; the
    same probe images and forked RNG as :func:`split_input_class_means`."""
    subset = Subset(dataset, probe_indices(dataset_labels(dataset)))
    probe = _InputProbe(gm, layer.node)
    feats, labels = [], []
    was_training = gm.training
    gm.eval()
    with torch.random.fork_rng(devices=[]):
        for x, y in DataLoader(subset, batch_size=256, shuffle=False, num_workers=0):
            probe.run(x.to(device))
            feats.append(_pool(probe.captured, layer.op).float().cpu())
            labels.append(torch.as_tensor(y))
    gm.train(was_training)
    return class_means(torch.cat(feats).numpy(), torch.cat(labels).numpy(), num_classes)


def classifier_layer(ir: ChannelIR) -> WeightLayer:
    """The layer whose outputs are the class logits (the class space's producer)."""
    return next(lay for lay in ir.layers if int(ir.space_of[lay.out_elems[0]]) == ir.class_space)


@torch.no_grad()
def classifier_energy(gm: fx.GraphModule, ir: ChannelIR) -> np.ndarray:
    """``(num_classes, in)``: each class's squared classifier weights per input channel, which is
    all that R_W sees of a class (docs/METHOD.md §3). Clustering these rows tells whether the
    regularizers *can* find the superclasses, beside ``feature_ari`` (whether the features have
    them): on the synthetic data the features cluster exactly and these energies do not."""
    layer = classifier_layer(ir)
    W = gm.get_submodule(layer.name).weight.detach().float().cpu()
    return weight_energy_matrix(W, layer.conv_groups).t().numpy()


def classifier_rows(gm: fx.GraphModule, ir: ChannelIR) -> np.ndarray:
    """``(num_classes, in)``: the trained classifier's signed weight rows, which the SplitNet
    authors spectral-clustered to group ImageNet's classes from a trained ResNet-50."""
    layer = classifier_layer(ir)
    W = gm.get_submodule(layer.name).weight.detach().float().cpu()
    return W.reshape(W.shape[0], -1).numpy()


def cluster_classes(means: np.ndarray, groups: Sequence[int], seed: int = 0) -> np.ndarray:
    """Balanced clustering into ``groups[-1]`` groups that nests in the coarser levels: the
    classes are split into ``groups[0]`` clusters, each of those into its share of the next
    level, and so on, numbered so that group ``c`` is a child of supergroup ``c // ratio``."""
    labels = np.zeros(len(means), dtype=np.int64)
    previous = 1
    for G in groups:
        ratio = G // previous
        new = np.empty_like(labels)
        for parent in range(previous):
            members = np.flatnonzero(labels == parent)
            k = min(ratio, len(members))
            sub = balanced_spectral_clustering(means[members], k, seed=seed) if k > 1 else np.zeros(len(members), int)
            new[members] = parent * ratio + sub
        labels, previous = new, G
    return labels


def class_nodes(ir: ChannelIR) -> np.ndarray:
    """The class space's node (assignment column) of each class, in class order."""
    return ir.node_index[np.asarray(ir.output_elems)]


def class_space_levels(scope: Scope, ir: ChannelIR) -> tuple[int, ...]:
    """Groups per level down to the class space's own level (its hierarchy)."""
    return tuple(scope.groups[: scope.level_of[ir.class_space] + 1])


@torch.no_grad()
def init_class_assignment(aset: AssignmentSet, ir: ChannelIR, class_group: np.ndarray,
                          confidence: float = INIT_CONFIDENCE) -> None:
    """Set the class space's assignment to ``confidence`` on each class's cluster group and the
    rest spread evenly; it stays a parameter, so the regularizers can still move it."""
    module = aset.by_space[str(ir.class_space)]
    G = aset.scope.groups_of(ir.class_space)
    probs = torch.full((G, ir.spaces[ir.class_space].num_nodes), (1 - confidence) / (G - 1))
    probs[torch.as_tensor(class_group), torch.as_tensor(class_nodes(ir))] = confidence
    if isinstance(module, SoftmaxAssignment):
        module.alpha.copy_(probs.log().to(module.alpha))
    elif isinstance(module, SimplexAssignment):
        module.probs.copy_(probs.to(module.probs))
    else:
        raise TypeError(f"cannot initialise a {type(module).__name__} class assignment")


def class_groups(aset: AssignmentSet, ir: ChannelIR, class_names: Sequence[str]) -> dict[str, int] | None:
    """Class name -> hard group (finest level of the class space), or None when the class space
    is not in the split scope (then classes are not grouped at all)."""
    if ir.class_space not in aset:
        return None
    groups = aset.hard().groups_of_space[ir.class_space]
    return {name: int(groups[node]) for name, node in zip(class_names, class_nodes(ir))}


def members_of_groups(mapping: dict[str, int] | None) -> list[list[str]] | None:
    """``class name -> group`` (assignment.json's ``class_groups``) as the names of each group,
    in group order: which classes each branch computes."""
    if not mapping:
        return None
    groups: dict[int, list[str]] = {}
    for name, group in mapping.items():
        groups.setdefault(int(group), []).append(name)
    return [groups[g] for g in sorted(groups)]


def superclass_ari(superclass_of: Sequence[int] | None, class_group: Sequence[int] | None) -> float | None:
    """ARI of a class grouping against the superclasses (docs/METHOD.md §8: agreement with a taxonomy,
    not the quality of the split); None when either is unknown."""
    if superclass_of is None or class_group is None:
        return None
    return adjusted_rand_index(list(superclass_of), list(class_group))


def space_report(ir: ChannelIR, scope: Scope, space: int, matrix: np.ndarray, hard: np.ndarray,
                 threshold: float, frozen: bool) -> dict[str, Any]:
    """One space's entry in assignment.json: hard group per node, group sizes in channels, and
    the fuzzy nodes at ``threshold`` (what the split pass duplicates with --overlap)."""
    G = scope.groups_of(space)
    sizes = np.bincount(hard, weights=ir.spaces[space].node_sizes, minlength=G).astype(int).tolist()
    return {"id": space, "name": ir.spaces[space].name, "level": scope.level_of[space], "groups": G,
            "hard": hard.tolist(), "group_sizes": sizes, "empty_groups": [g for g, n in enumerate(sizes) if n == 0],
            "fuzzy_threshold": threshold, "frozen": frozen,
            "fuzzy": [[n, list(gs)] for n, gs in fuzzy_nodes(matrix, threshold)]}
