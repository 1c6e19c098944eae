"""The SplitNet recipe as a state machine over a network that someone else's loop trains.

``splitc learn`` and a user's own loop (``splitc.SplitNet``) drive the same object:

    loss = task_loss + session.regularizer()     # γ_W·R_W + γ_D·R_D + γ_E·R_E; 0 in the warm-up
    loss.backward(); weights_optimizer.step()
    session.step()                                # the assignments' step, then the phase changes

:meth:`SplitSession.step` is :meth:`advance` (the assignments' optimizer, the step count) and
:meth:`after` (freezing crisp spaces with ``--overlap``, the epoch-end evaluation and γ_W's
boost while clearing, the end of the warm-up with its grouping, the commit); ``learn`` calls the
two halves apart so that its step record is logged between them. The phases and their rules are
in :mod:`splitc.learn.schedule`; what happens at the end of the warm-up in
:mod:`splitc.learn.grouping`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitc.learn import schedule
from splitc.learn.assign import splitnet_loss, splitnet_regularizers
from splitc.learn.config import FREEZE_FUZZY_FRACTION
from splitc.learn.grouping import cut_shares, end_warmup, evaluate
from splitc.learn.optim import disjoint_weight
from splitc.learn.state import LearnRun, freeze_space, log_record
from splitc.passes.harden import fuzzy_nodes


@dataclass(frozen=True)
class StepTerms:
    """What :meth:`SplitSession.regularizer` added at the last step: the unweighted terms
    (``R_W``, ``R_D``, ``R_E``; none in the warm-up), whether they were on, and γ_D then."""

    regs: dict[str, torch.Tensor] = field(default_factory=dict)
    on: bool = False
    gamma_d: float = 0.0


class SplitSession:
    """What the recipe holds between steps: the run state, and the last regularizer terms."""

    def __init__(self, run: LearnRun) -> None:
        self.run = run
        self.last = StepTerms()
        run.session = self

    @property
    def phase(self) -> str:
        """warm-up, grouping (assignments learned) or clearing (groups fixed, R_W clears the cut)."""
        run = self.run
        if run.step < run.warmup_steps:
            return "warm-up"
        return "clearing" if run.committed else "grouping"

    @property
    def regs_on(self) -> bool:
        return self.run.step >= self.run.warmup_steps

    def regularizer(self) -> torch.Tensor:
        """The weighted regularizers at this step, to add to the task loss (a zero in the warm-up)."""
        run = self.run
        if not self.regs_on:
            self.last = StepTerms()
            return torch.zeros((), device=run.device)
        cfg = run.config
        regs = splitnet_regularizers(run.analysis.gm, run.analysis.ir, run.analysis.scope, run.aset)
        gamma_d = disjoint_weight(run.step, run.warmup_steps, run.soft_steps, run.total_steps,
                                  cfg.gamma_d, cfg.gamma_d_end, cfg.gamma_d_rise)
        self.last = StepTerms(regs, True, gamma_d)
        return splitnet_loss(torch.zeros((), device=run.device), regs, (cfg.gamma_w * run.rw_scale, gamma_d, cfg.gamma_e))

    def start(self) -> None:
        """Before the first step (or a resumed one): a trained start has no warm-up to wait for."""
        end_warmup(self.run)

    def step(self) -> None:
        """After the weights' optimizer step."""
        regs_on = self.regs_on
        self.advance()
        self.after(regs_on)

    def advance(self) -> None:
        """The assignments' step (only once the regularizers are on), then the step count."""
        opt = self.run.optimizers.get("assign")
        if opt is not None:
            if self.regs_on:
                opt.step()
            opt.zero_grad(set_to_none=True)
        self.run.step += 1

    def after(self, regs_on: bool) -> None:
        """The phase changes due at this step (``regs_on``: the step just taken was regularized)."""
        run = self.run
        if regs_on and run.config.overlap is not None:
            freeze_crisp_spaces(run)
        if run.step and run.step % run.steps_per_epoch == 0:
            _epoch_end(run, self.phase)
        end_warmup(run)
        _maybe_commit(run)


def train_acc(run: LearnRun) -> float:
    """Accuracy over the current epoch's training batches so far (learn's loop counts them)."""
    return run.train_correct / run.train_seen if run.train_seen else 0.0


def _epoch_end(run: LearnRun, phase: str) -> None:
    """Validation (when the run has a validation split), γ_W's boost while clearing, the
    adaptive warm-up's decision."""
    if run.data.val is not None:
        run.val_history.append(evaluate(run))
    cut = cut_shares(run).get("total")
    log_record(run, {"kind": "epoch", "epoch": run.step // run.steps_per_epoch - 1, "step": run.step,
               "train_acc": train_acc(run), "val_acc": run.val_history[-1] if run.val_history else None,
               "frozen": list(run.frozen), "cut_energy": cut, "phase": phase, "rw_scale": run.rw_scale})
    if run.committed:
        run.rw_scale = schedule.next_rw_scale(run.rw_scale, cut, run.last_cut)
    run.last_cut = cut
    _decide_warmup(run)


def _decide_warmup(run: LearnRun) -> None:
    """At an epoch end of an adaptive warm-up: end it now if the network has trained."""
    if run.config.warmup != "adaptive" or run.probed or run.step >= run.warmup_steps or run.data.val is None:
        return
    if schedule.warmup_done(run.step, run.warmup_floor, run.warmup_steps, run.val_history,
                            run.data.num_classes, len(run.data.val)):
        run.warmup_steps = run.step


def _maybe_commit(run: LearnRun) -> None:
    """Grouping -> clearing: fix every space to its groups once decided (learn_schedule)."""
    if not run.config.commit or run.committed or not run.probed or run.config.assign == "random":
        return
    matrices = dict(run.aset.items())
    crisp = {s: schedule.crispness(m) for s, m in matrices.items()}
    if not schedule.commit_due(run.step, run.warmup_steps, run.total_steps, crisp):
        return
    for space, matrix in matrices.items():
        schedule.commit_space(run.aset.by_space[str(space)], matrix, run.config.commit_groups == "balanced")
        if space not in run.frozen:
            freeze_space(run, space)
    run.committed = True
    log_record(run, {"kind": "commit", "step": run.step, "crispness": {str(s): c for s, c in crisp.items()},
               "cut_energy": cut_shares(run).get("total")})


def freeze_crisp_spaces(run: LearnRun) -> None:
    """docs/METHOD.md §6: stop training a space once fewer than 20% of its nodes are fuzzy."""
    for space, matrix in run.aset.soft().items():
        if space in run.frozen:
            continue
        if len(fuzzy_nodes(matrix, run.config.overlap)) < FREEZE_FUZZY_FRACTION * matrix.shape[1]:
            freeze_space(run, space)
