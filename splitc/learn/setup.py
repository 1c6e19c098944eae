"""The one place a learn run is built, for ``splitc learn`` and ``splitc.SplitNet`` alike.

From a model object, its input size, the data the recipe reads (:class:`RunData`), the options
(:class:`~splitc.learn.config.LearnConfig`) and whether the model starts trained:
the start's defaults (:func:`~splitc.learn.config.resolve_start`), the scope and the analysis,
the grouping, the assignments and their optimiser, the phases placed in the run's steps. What
differs between the two callers is what they hand over: ``learn`` loads its data set, builds the
model by name and measures a ``--weights`` start (:mod:`splitc.learn.start`), keeps a run
directory and trains the weights itself; ``SplitNet`` takes the caller's model and data, keeps
no files and leaves the weights to the caller's optimiser.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from splitc.core.errors import SplitcError
from splitc.core.naming import FLAG, Naming
from splitc.graph.analysis import analyse
from splitc.graph.scope import make_spec
from splitc.learn import schedule
from splitc.learn.assign import AssignmentSet
from splitc.learn.config import CUT_INITS, TRAINED_HIERARCHY_EPOCHS, LearnConfig, default_init_groups, resolve_start
from splitc.learn.cut_groups import check_flat
from splitc.learn.optim import make_optimizers
from splitc.learn.ranks import SINGLE, Ranks
from splitc.learn.state import LearnRun, RunData


def build_run(config: LearnConfig, model: nn.Module, data: RunData, input_size: tuple[int, ...], *,
              steps_per_epoch: int, trained: bool, start_val_acc: float | None = None,
              start_notes: tuple[str, ...] = (), weights: dict[str, str] | None = None,
              run_dir: Path | None = None, ranks: Ranks = SINGLE, train: Dataset | None = None,
              train_weights: bool = True, names: Naming = FLAG) -> LearnRun:
    """The run of ``config`` on ``model`` (traced once; its parameters are the run's), with
    ``steps_per_epoch`` steps per epoch. ``train``: the batches the loop itself trains on
    (``learn``); ``train_weights``: whether the run owns the weights' optimiser; ``names``
    spells the options in errors."""
    given_warmup, given_epochs = config.warmup_epochs is not None, config.epochs is not None
    config = resolve_start(config, trained)
    if data.val is None and config.warmup == "adaptive":
        config = replace(config, warmup="fixed")   # the adaptive warm-up decides on validation accuracy
    spec = make_spec(config.groups, config.split_from, config.split_depth, config.preset, config.model, names)
    analysis = analyse(config.model, spec, data.num_classes, tuple(input_size), model=model, names=names)
    levels = len(set(analysis.scope.level_of.values()))
    if trained and levels > 1 and config.epochs == 0 and config.max_steps is None:
        if given_epochs:
            raise SplitcError(f"{names('epochs')} 0 (a one-shot split) places channels at one level; a hierarchy "
                              f"({names('groups')} {','.join(map(str, spec.groups))}) learns its groups: give "
                              f"{names('epochs')} 1 or more.")
        config = replace(config, epochs=TRAINED_HIERARCHY_EPOCHS)
        start_notes = (*start_notes, f"a hierarchy has no one-shot split: its groups are learned for "
                                     f"{TRAINED_HIERARCHY_EPOCHS} epoch(s) from the trained weights before the cut")
    config = replace(config, init_groups=default_init_groups(config, levels))
    if config.init_groups in CUT_INITS:
        check_flat(analysis.scope, config.init_groups, names)
        if data.probe is None:
            raise SplitcError(f"{names('init_groups')} {config.init_groups} groups the classes by their features: pass "
                              "probe= (training images, a DataLoader or Dataset), or init_groups='learned'.")
    device = torch.device(config.device)
    analysis.gm.to(device)
    aset = AssignmentSet.create(analysis.ir, analysis.scope, config.assign, seed=config.seed).to(device)
    total = schedule.total_steps(config.epochs, config.max_steps, steps_per_epoch)
    floor, cap = schedule.warmup_bounds(config.warmup_epochs, steps_per_epoch, total, config.warmup == "adaptive")
    if data.val is None and not given_warmup:   # no validation to end it: at most the cap's share of the run
        floor = cap = min(floor, round(schedule.WARMUP_CAP_SHARE * total))
    return LearnRun(config=config, analysis=analysis, data=data, aset=aset,
                    optimizers=make_optimizers(config, analysis.gm, aset, weights=train_weights), device=device,
                    run_dir=run_dir, steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=cap,
                    soft_steps=round(config.soft_epochs * steps_per_epoch), warmup_floor=floor, ranks=ranks,
                    train=train, start_val_acc=start_val_acc, start_notes=start_notes, weights=weights, names=names,
                    trained=trained)
