"""Optimizers and schedules of ``splitc learn`` (docs/METHOD.md §5, §8).

Why the assignments get their own optimizer: the gradients that reach the assignment logits are
tiny (1e-5 to 1e-7, because R_D, R_E and R_W are normalised by channel counts and weight
energy), so plain SGD at the weights' rate never leaves the uniform point, and a fixed
multiplier large enough to move the smallest of them overshoots on the largest. Adam rescales
each logit's step by its own gradient history, so one rate works for the 20-node class space
and for 64-node channel spaces alike. The reduced-gradient kind keeps its own optimizer, which
is exact on the simplex.

Why the rate is 0.2 x lr (0.02 per step at lr 0.1): the assignments must move slowly enough for
the weights to follow them. Measured on ``splitc learn resnet20 --data synthetic --groups 4
--split-depth 7`` (seed 0, one run each, 1 torch thread), accuracy with the inter-group weights
zeroed (the split before finetuning) against ``--assign-lr-mult``: 0.5 -> 0.575, 0.2 -> 0.953,
0.1 -> 0.965, 0.05 -> 0.939; dense accuracy 0.979-0.987 throughout; largest group-size spread
2, 4, 7, 8 channels. The same 0.2 run on 2 threads scored 0.881 (the thread count changes the
order of float reductions and the runs drift apart), so single-run differences of a few points
are noise; the drop at 0.5 is not. 0.2 splits about as well as 0.1 with better-balanced groups.

After the warm-up (and the soft phase, if any) γ_D rises linearly to ``gamma_d_end`` (10 by
default), reached at the last step or after ``gamma_d_rise`` of the regularized steps, so that every space is hard and the weights block-diagonal by the
time the run is split (:func:`disjoint_weight`).

The soft phase (``soft_epochs``, off by default): R_D can ramp in after the warm-up, so that it
does not harden the groups from the initial noise before R_W has a say (docs/METHOD.md §8). On the
synthetic data it did not help: R_W and R_E alone are minimised at the uniform point, which
Adam reaches, so the ramp erased the noise and any ``--init-groups cluster`` start alike (class
ARI fell from 1.0 to 0.15), and the grouping was again decided when R_D arrived (0.08).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from splitc.learn.assign import AssignmentSet
from splitc.learn.simplex import ReducedGradient

from splitc.learn.config import LearnConfig

ADAM_EPS = 1e-12  # far below the smallest assignment gradients, so Adam's step stays scale-free


def make_optimizers(config: LearnConfig, model: nn.Module, aset: AssignmentSet,
                    weights: bool = True) -> dict[str, torch.optim.Optimizer]:
    """Weights (unless ``weights`` is False: the caller's loop owns them): SGD with momentum and
    weight decay. Assignments: ``lr * assign_lr_mult`` and no decay (decay would pull softmax
    logits back to the uniform point); none for ``random``."""
    opts: dict[str, torch.optim.Optimizer] = {}
    if weights:
        opts["weights"] = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9,
                                          weight_decay=config.weight_decay)
    params = list(aset.parameters())
    rate = config.lr * config.assign_lr_mult
    if params and config.assign == "reduced-gradient":
        opts["assign"] = ReducedGradient(params, lr=rate)
    elif params and config.assign_optimizer == "adam":
        opts["assign"] = torch.optim.Adam(params, lr=rate, eps=ADAM_EPS)
    elif params:
        opts["assign"] = torch.optim.SGD(params, lr=rate, momentum=0.9, weight_decay=0.0)
    for opt in opts.values():
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return opts


# The lr warm-up never takes fewer steps than this (but at most a quarter of the run): at half an
# epoch of 47 steps (synthetic:families, 150 images per class) resnet20 sat at chance (val 0.025,
# 40 classes) through step 465; with 150 steps it was at 0.31 by step 200 (docs/FAMILIES.md).
MIN_LR_WARMUP_STEPS = 150


def lr_ramp_steps(warmup_epochs: float, steps_per_epoch: int, total: int) -> int:
    """``--lr-warmup-epochs`` in steps, at least :data:`MIN_LR_WARMUP_STEPS` and at most a quarter
    of the run; 0 epochs turns the warm-up off."""
    if warmup_epochs <= 0:
        return 0
    return min(max(round(warmup_epochs * steps_per_epoch), MIN_LR_WARMUP_STEPS), max(1, total // 4))


def lr_factor(schedule: str, step: int, total: int, ramp_steps: int = 0) -> float:
    """Step: ×0.1 at 50% and again at 75% of the run. Cosine: half a cosine from 1 to 0.

    The first ``ramp_steps`` rise linearly to the schedule (a learning-rate warm-up): at the full
    rate from the first step, resnet20 sat at chance for over an epoch on the synthetic data.
    """
    t = step / max(1, total)
    ramp = min(1.0, (step + 1) / ramp_steps) if ramp_steps > 0 else 1.0
    if schedule == "step":
        return ramp * 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return ramp * 0.5 * (1.0 + math.cos(math.pi * t))


def schedule_at(optimizer: torch.optim.Optimizer, base_lr: float, schedule: str, total: int, step: int,
                ramp_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's ``LambdaLR`` over :func:`lr_factor`, positioned at ``step`` (a resumed run goes on
    with its schedule) and scaled from ``base_lr``: its learning rate is the one for ``step``, and each ``.step()`` after
    an optimizer step moves it to the next. The factor stays closed-form (``base * factor``,
    bit for bit what the recorded runs used; torch's chained cosine is recursive and drifts).

    Only the weights' optimizer is scheduled: the assignments keep their base rate, since they
    only start after the warm-up, and a schedule that decays to zero froze the channel spaces
    half-formed (mean top probability 0.3-0.6 after 10 epochs), so the harden step would cut by
    argmaxes of near-uniform columns."""
    for group in optimizer.param_groups:   # this run's --lr, not a resumed optimizer's last rate
        group["initial_lr"] = base_lr * group.get("lr_mult", 1.0)   # finetune's branches: a multiple
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(schedule, s, total, ramp_steps), last_epoch=step - 1)


def disjoint_weight(step: int, warmup_steps: int, soft_steps: int, total_steps: int,
                    gamma_d: float, gamma_d_end: float, rise_fraction: float = 1.0) -> float:
    """γ_D in force at ``step``: 0 at the end of the warm-up, ``gamma_d`` after the soft phase, then
    a straight line to ``gamma_d_end``, reached after ``rise_fraction`` of the remaining steps
    (1.0: at the last step) and held from there (flat when ``gamma_d_end <= gamma_d``).

    Why it rises: at a constant γ_D = 1 the weights never became block-diagonal within a
    CPU-sized run (resnet20 on the synthetic data, 3 regularized epochs: 72-77% of each cut
    layer's weight energy lay between the argmax groups, which is what a random assignment gives,
    and the channel groups were unbalanced, 18/3/41/2). Rising to 10 made every space crisp and
    balanced (16-17 channels per group) and left 5-8% of the conv energy between groups.

    Why it may end early: that leaves R_W time to clear the final groups. Rising over the first
    half of the 3 regularized epochs of a 4-epoch resnet20 run (split from layer3) gave a split
    that scored 0.676 before finetuning, against 0.135 when rising to the last step
    (SplitNet-Random, whose groups are fixed from the start: 0.93).
    """
    if step < warmup_steps:
        return 0.0
    if soft_steps > 0 and step < warmup_steps + soft_steps:
        return gamma_d * (step - warmup_steps) / soft_steps
    start = warmup_steps + max(0, soft_steps)
    if gamma_d_end <= gamma_d or total_steps <= start:
        return gamma_d
    span = max(1.0, rise_fraction * (total_steps - start))
    return gamma_d + (gamma_d_end - gamma_d) * min(1.0, (step - start) / span)
