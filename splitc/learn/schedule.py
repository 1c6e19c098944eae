"""When ``splitc learn`` changes phase, decided by the run's state (docs/LEARN.md has the measurements).

A run has three phases:

1. **Plain warm-up** (no regularizers). It must actually train the network first: groups
   learned on a network at chance are noise. It ends at an epoch end at or after ``floor``
   steps once validation accuracy is clearly above chance (:mod:`splitc.learn.health`) and
   either halfway from chance to 1 or no longer rising (less than ``FLAT_RISE`` per epoch), or
   at ``cap`` = ``WARMUP_CAP_SHARE`` of the run whatever its state (then a warning says the
   network was not ready). The floor is the ``--warmup-epochs`` (3) but never fewer than
   ``MIN_WARMUP_STEPS``: a small data set's 3 epochs (168 steps of 3,600 images) ended while the
   network was still at chance, and the same network took off after about 340 steps.
2. **Grouping** (all three regularizers, assignments trained, γ_D rising). It ends when every
   space is crisp (mean largest group probability >= ``CRISP``) or after ``COMMIT_SHARE`` of
   the regularized steps.
3. **Clearing** (groups committed). Each space is fixed to its groups and frozen: by default the
   balanced assignment nearest to the learned probabilities (equal groups, ``balanced_winners``;
   ``--commit-groups argmax`` keeps the argmax). Equal groups make the branches equal in cost
   (one device each, none waiting on a larger sibling) and let one device run a block-diagonal
   layer as one grouped convolution without padding; the demo's argmax groups were 28/9/13/14
   channels, and padded to 4 x 28 its grouped graph was slower than the FLOPs promised. R_W
   then clears exactly the weights the split will cut, as SplitNet-Random does from its first
   step. While the cut holds more than ``CUT_TARGET`` of the energy, every epoch that did not
   halve it doubles γ_W (up to ``RW_BOOST_MAX``): with 6 groups the cross-entropy held 31% of
   the energy in the cut at a constant γ_W, 526 steps after the commit. Without this phase the learned groups kept moving until the end and 73% of the cut
   layers' energy was still between groups on unseen data, against 0.07% for fixed groups.

The default budget scales with the data: 10 epochs, but never fewer than ``MIN_TOTAL_STEPS``
(a data set of 3,600 images gives 56 steps per epoch; 560 steps were not enough to train).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from splitc.learn.health import chance_level, near_chance

DEFAULT_EPOCHS = 10
MIN_TOTAL_STEPS = 1500      # default budget floor: ~the 10 epochs of synthetic (1560 steps)
MIN_WARMUP_STEPS = 400      # a small data set must get this many plain steps before regularizing
WARMUP_CAP_SHARE = 0.5      # ... but the warm-up never takes more than half of the run
FLAT_RISE = 0.01            # validation accuracy rising less than this per epoch: trained enough
COMMIT_SHARE = 0.5          # the grouping phase takes at most half of the regularized steps
CRISP = 0.9                 # mean largest probability per node at which a space counts as decided
COMMIT_LOGIT = 40.0         # softmax logit gap of a committed node: exp(-40) ~ 4e-18 off its group
CUT_TARGET = 0.01           # clearing aims at < 1% of the cut layers' energy between groups
RW_BOOST = 2.0              # ... and doubles γ_W after an epoch that did not halve the cut
RW_BOOST_MAX = 64.0


def total_steps(epochs: int | None, max_steps: int | None, steps_per_epoch: int) -> int:
    """``--max-steps``, else ``--epochs`` exactly, else the default budget (scaled, see above)."""
    if max_steps is not None:
        return max_steps
    if epochs is not None:
        return epochs * steps_per_epoch
    return max(DEFAULT_EPOCHS * steps_per_epoch, MIN_TOTAL_STEPS)


def warmup_bounds(warmup_epochs: float, steps_per_epoch: int, total: int, adaptive: bool) -> tuple[int, int]:
    """(floor, cap) of the warm-up in steps; equal when the warm-up is fixed."""
    floor = round(warmup_epochs * steps_per_epoch)
    if not adaptive:
        return floor, floor
    cap = max(floor, round(WARMUP_CAP_SHARE * total))
    return min(max(floor, MIN_WARMUP_STEPS), cap), cap


def warmup_done(step: int, floor: int, cap: int, accs: list[float], num_classes: int, n_val: int) -> bool:
    """At an epoch end: has the plain phase trained the network (``accs``: val accuracy per epoch)?"""
    if step >= cap:
        return True
    if step < floor or not accs or near_chance(accs[-1], num_classes, n_val):
        return False
    p = chance_level(num_classes)
    halfway = accs[-1] >= p + 0.5 * (1 - p)
    flat = len(accs) >= 2 and accs[-1] - accs[-2] < FLAT_RISE
    return halfway or flat


def crispness(matrix: torch.Tensor) -> float:
    """Mean over nodes of the largest group probability (1/G uniform, 1 hard)."""
    return float(matrix.detach().max(dim=0).values.mean())


def commit_due(step: int, regs_start: int, total: int, crisp: dict[int, float]) -> bool:
    """Grouping ends when every space is crisp or its share of the regularized steps is spent."""
    if step < regs_start:
        return False
    spent = step - regs_start >= COMMIT_SHARE * max(1, total - regs_start)
    return spent or (bool(crisp) and min(crisp.values()) >= CRISP)


def balanced_argmax(score: np.ndarray) -> np.ndarray:
    """The group of each node (columns of a (G, nodes) score matrix) that maximises the summed
    score subject to equal group sizes (``nodes % G`` groups, whichever fit best, get one more):
    a linear assignment of nodes to group slots, where each group's optional extra slot costs a
    constant large enough that exactly ``nodes % G`` are used. Scores must span less than 1e4."""
    G, n = score.shape
    base, extra = divmod(n, G)
    slot_group = np.concatenate([np.repeat(np.arange(G), base), np.arange(G) if extra else []]).astype(np.int64)
    cost = -np.asarray(score, dtype=np.float64)[slot_group].T   # (nodes, slots)
    cost[:, G * base:] += 1e4    # > one node's largest cost difference, so no optional slot is used in place of a free one
    rows, cols = linear_sum_assignment(cost)
    winners = np.empty(n, dtype=np.int64)
    winners[rows] = slot_group[cols]
    return winners


def balanced_winners(matrix: np.ndarray) -> np.ndarray:
    """:func:`balanced_argmax` of the log-probabilities of a (G, nodes) probability matrix: the
    balanced groups nearest to what the assignments learned (each log clipped at 1e-30, so a
    score spans at most 69)."""
    return balanced_argmax(np.log(np.clip(matrix, 1e-30, None)))


def commit_groups(module: torch.nn.Module, groups: np.ndarray, num_groups: int) -> None:
    """Fix a space to the given group of each node (``cluster-cut``), as :func:`commit_space`."""
    device = next(module.parameters()).device
    onehot = torch.zeros(num_groups, len(groups), device=device)
    onehot[torch.as_tensor(groups, device=device), torch.arange(len(groups), device=device)] = 1.0
    commit_space(module, onehot, balanced=False)


def commit_space(module: torch.nn.Module, matrix: torch.Tensor, balanced: bool = True) -> None:
    """Fix a space to its groups (balanced, else argmax), in place and with its parameter layout
    unchanged (so checkpoints, ``--resume`` and ``split`` read it as before); the caller freezes it."""
    from splitc.learn.simplex import SimplexAssignment, SoftmaxAssignment

    probs = matrix.detach()
    winners = (torch.as_tensor(balanced_winners(probs.double().cpu().numpy()), device=probs.device)
               if balanced else probs.argmax(dim=0))
    onehot = torch.zeros_like(matrix)
    onehot[winners, torch.arange(matrix.shape[1], device=matrix.device)] = 1.0
    with torch.no_grad():
        if isinstance(module, SoftmaxAssignment):
            module.alpha.copy_((onehot - 1.0) * COMMIT_LOGIT)
        elif isinstance(module, SimplexAssignment):
            module.probs.copy_(onehot)
        else:
            raise TypeError(f"cannot commit a {type(module).__name__} assignment")


def next_rw_scale(scale: float, cut_now: float | None, cut_before: float | None) -> float:
    """γ_W's multiplier after a clearing epoch: doubled while the cut stays above target and
    did not halve over the epoch, else unchanged."""
    if cut_now is None or cut_before is None or cut_now <= CUT_TARGET or cut_now <= 0.5 * cut_before:
        return scale
    return min(RW_BOOST_MAX, scale * RW_BOOST)
