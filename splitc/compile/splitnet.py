"""``splitc.SplitNet``: the SplitNet recipe on any ``nn.Module`` object, inside the user's loop.

    sp = splitc.SplitNet(model, example_inputs=torch.randn(1, 3, 32, 32), groups=2,
                         split_from="layer3", steps=len(loader) * epochs, probe=loader)
    for x, y in loader:                                   # the user's data, model and optimiser
        loss = F.cross_entropy(model(x), y) + sp.regularizer()
        opt.zero_grad(); loss.backward(); opt.step(); sp.step()
    split = sp.compile()                                  # trunk -> branches -> merge, an nn.Module

It is the same object ``splitc learn`` drives (:class:`splitc.learn.session.SplitSession`: the
same phases, the same grouping, the same "did not learn" warning when ``val`` is given), built
from a module instead of a model name: the model is traced once (its parameters are shared with
the traced graph, so the user's optimiser trains what the regularizers read), the assignments
get their own optimiser, and ``compile`` runs the compiler passes that ``splitc split`` runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from splitc.compile.build import VERIFY_TOLERANCE, build_split
from splitc.compile.verify import verify_value
from splitc.core.errors import SplitcError
from splitc.core.naming import ARG
from splitc.data.batches import accuracy
from splitc.data.given import given_dataset
from splitc.graph.analysis import Analysis, analysis_warnings
from splitc.graph.counting import count
from splitc.graph.split_model import SplitModel
from splitc.learn.config import RECIPE_OPTIONS, LearnConfig, check_config
from splitc.learn.grouping import cut_shares, evaluate, hardened, refit_model, wants_refit, warn
from splitc.learn.health import chance_warning, near_chance
from splitc.learn.session import SplitSession
from splitc.learn.setup import build_run
from splitc.learn.state import RunData


class SplitNet(SplitSession):
    """Learn to split ``model`` while the caller trains it (see the module docstring).

    ``example_inputs``: one batch of inputs (its shape without the batch is the input size);
    ``steps``: the optimiser steps the caller will take (the phases are placed in them); the
    scope: ``groups`` (an int, or a tuple per level), and one of ``split_from`` (a module name,
    or a tuple per level), ``split_depth`` or ``preset``; ``probe``: training images whose class
    means group the classes (the default ``cluster-cut``); ``val``: validation images, for the
    adaptive warm-up and the near-chance warning (each a Dataset of ``(image, label)``, a
    DataLoader, or any iterable of ``(x, y)`` batches); ``trained``: the model starts trained
    (the trained-start recipe: the groups committed at once, so ``compile()`` right away is the
    one-shot split); by default measured on ``val`` when given. The other keywords are the
    recipe's options (:data:`~splitc.learn.config.RECIPE_OPTIONS`, typed as in
    :class:`~splitc.learn.config.LearnConfig`: ``init_groups``, ``assign``, ``gamma_w``, ...;
    ``lr`` is the caller's learning rate, which sets the assignments' rate). A wrong argument is
    one SplitcError line naming it, here, before any training."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, *, steps: int,
                 groups: int | tuple[int, ...] | None = None, split_from: str | tuple[str, ...] | None = None,
                 split_depth: int | tuple[int, ...] | None = None, preset: str | None = None,
                 probe: Dataset | DataLoader | Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 val: Dataset | DataLoader | Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 steps_per_epoch: int | None = None, trained: bool | None = None,
                 class_names: Sequence[str] | None = None, seed: int = 0, **options: Any) -> None:
        check_arguments(model, example_inputs, steps=steps, groups=groups, split_from=split_from,
                        split_depth=split_depth, preset=preset, steps_per_epoch=steps_per_epoch, trained=trained,
                        class_names=class_names, seed=seed, options=options)
        size = tuple(int(d) for d in example_inputs.shape[1:])
        device = next(model.parameters()).device
        classes = _num_classes(model, example_inputs)
        if class_names is not None and len(class_names) != classes:
            raise SplitcError(f"class_names= has {len(class_names)} names; the model has {classes} classes.")
        data = RunData(tuple(class_names or map(str, range(classes))), given_dataset(val, "val", size, classes),
                       given_dataset(probe, "probe", size, classes))
        config = LearnConfig(model=f"{type(model).__module__}:{type(model).__qualname__}", data=None, out=None,
                             groups=groups, split_from=split_from, split_depth=split_depth, preset=preset,
                             max_steps=steps, seed=seed, device=str(device), **options)
        check_config(config, ARG)
        start_acc = None
        if trained is None and data.val is not None:   # measured only to decide (an evaluation draws from the RNG)
            start_acc = accuracy(model, data.val, device)
            trained = not near_chance(start_acc, classes, len(data.val))
        per_epoch = steps_per_epoch or (len(probe) if isinstance(probe, DataLoader) and _sized(probe) else steps)
        run = build_run(config, model, data, size, steps_per_epoch=per_epoch, trained=bool(trained),
                        start_val_acc=start_acc, train_weights=False, names=ARG)
        super().__init__(run)
        self._compiled: Analysis | None = None   # compile()'s analysis where it refit the cut
        for line in analysis_warnings(run.analysis):
            warn(run, line)
        self.start()

    @property
    def warnings(self) -> list[str]:
        """Every warning line so far (each was also printed once)."""
        return list(self.run.warnings)

    def finish(self) -> float | None:
        """Validation accuracy at the end (with ``val``), with learn's near-chance warning."""
        run = self.run
        if run.data.val is None:
            return None
        acc = accuracy(run.analysis.gm, run.data.val, run.device)
        if near_chance(acc, run.data.num_classes, len(run.data.val)):
            warn(run, chance_warning(acc, run.data.num_classes, len(run.data.val), "at the end of the run", cli=False))
        return acc

    def compile(self) -> SplitModel:
        """The split of the model's current weights by the hardened groups (``splitc split``'s
        passes): an ``nn.Module`` carrying its split.json fields, input size and masked
        reference, checked against that reference on fresh inputs (the error is in
        ``meta["report"]["max_rel_err"]``)."""
        run = self.run
        self.finish()
        if not run.probed:
            warn(run, f"compiled at step {run.step}, still in the warm-up (it ends at step {run.warmup_steps}): the "
                      "regularizers never ran, so the groups are the random start; give SplitNet the steps you train")
        hard, analysis = hardened(run), run.analysis
        if wants_refit(run):   # the cut's kept weights refit to the model (learn does the same); the model is not changed
            refit, record = refit_model(run, hard)
            analysis = self._compiled = replace(analysis, gm=refit)
            accuracy_of = {} if run.data.val is None else {"refit_val_acc": evaluate(run, refit)}
            run.refit = {"masked_val_acc": run.oneshot_val_acc, **accuracy_of, **record}
        return build_split(analysis, hard, list(run.data.class_names), {"assign": run.config.assign})

    def verify(self, split: SplitModel, batches: int = 3) -> float:
        """The largest relative error of ``split`` against its masked reference on fresh random
        inputs (<= 1e-5); a split trained since compile is compared with the masked model
        carrying its new weights, rebuilt from this SplitNet's model. A warning line above the
        tolerance."""
        if not isinstance(split, SplitModel):
            raise SplitcError(f"SplitNet.verify takes a split (SplitNet.compile's or splitc.load's result), "
                              f"not {type(split).__name__}.")
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise SplitcError(f"SplitNet.verify: batches= is a count of at least 1, not {batches!r}.")
        err = verify_value(split, self._compiled or self.run.analysis, batches)
        if err > VERIFY_TOLERANCE:
            warn(self.run, f"the split differs from its masked reference by {err:.2e} (tolerance {VERIFY_TOLERANCE:.0e})")
        return err

    def report(self) -> dict[str, Any]:
        """Params, FLOPs, group sizes and the cut energy of the split the current groups make."""
        run = self.run
        ir, scope = run.analysis.ir, run.analysis.scope
        hard = hardened(run)
        cost = count(ir, scope, hard)
        return {"phase": self.phase, "step": run.step, "init_groups": run.config.init_groups,
                "params": {"baseline": cost.baseline.params, "split": cost.split.params,
                           "reduced_pct": round(cost.params_reduced_pct, 4)},
                "flops": {"baseline": cost.baseline.flops, "split": cost.split.flops,
                          "reduced_pct": round(cost.flops_reduced_pct, 4)},
                "group_sizes": {f"{s} {ir.spaces[s].name}": v for s, v in sorted(hard.group_sizes(ir, scope).items())},
                "cut_energy": cut_shares(run).get("total"), "warnings": list(run.warnings)}


def _num_classes(model: nn.Module, example: torch.Tensor) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example[:1])
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise SplitcError(f"SplitNet needs a model whose forward returns one (batch, classes) logits tensor, "
                          f"got {type(out).__name__}{'' if not isinstance(out, torch.Tensor) else list(out.shape)}.")
    return int(out.shape[1])


def _sized(loader: DataLoader) -> bool:
    try:
        return len(loader) > 0
    except TypeError:   # a loader over an IterableDataset
        return False


def check_arguments(model: object, example_inputs: object, *, steps: object, groups: object, split_from: object,
                    split_depth: object, preset: object, steps_per_epoch: object, trained: object,
                    class_names: object, seed: object, options: dict[str, Any]) -> None:
    """SplitNet's arguments, each refused in one line naming it before any work starts (the
    values of ``probe=`` and ``val=``: :func:`splitc.data.given.given_dataset`)."""
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise SplitcError(f"SplitNet takes the model to split, an nn.Module with parameters, not {type(model).__name__}.")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.ndim < 2 or not example_inputs.is_floating_point():
        raise SplitcError("SplitNet: example_inputs= is one batch of model inputs, a float tensor such as "
                          f"torch.randn(1, 3, 32, 32), not {_shown(example_inputs)}.")
    counts = {"steps": steps, "steps_per_epoch": steps_per_epoch, "seed": seed}
    for name, value in counts.items():
        if (value is not None or name == "steps") and (isinstance(value, bool) or not isinstance(value, int)
                                                      or value < (0 if name == "seed" else 1)):
            least = "0 or more" if name == "seed" else "at least 1"
            raise SplitcError(f"SplitNet: {name}= is an int, {least}, not {_shown(value)}.")
    if not _ints_or_one(groups, 2):
        raise SplitcError(f"SplitNet: groups= is an int >= 2 (2) or a tuple of them per level ((2, 4)), not {_shown(groups)}.")
    if not _ints_or_one(split_depth, 1):
        raise SplitcError(f"SplitNet: split_depth= is an int >= 1 or a tuple of them per level, not {_shown(split_depth)}.")
    if split_from is not None and not (isinstance(split_from, str) or (
            isinstance(split_from, (tuple, list)) and split_from and all(isinstance(n, str) for n in split_from))):
        raise SplitcError(f"SplitNet: split_from= is a module name ('layer3') or a tuple of them per level, "
                          f"not {_shown(split_from)}.")
    if preset is not None and not isinstance(preset, str):
        raise SplitcError(f"SplitNet: preset= is a preset's name, not {_shown(preset)}.")
    if trained is not None and not isinstance(trained, bool):
        raise SplitcError(f"SplitNet: trained= is True, False or None (decided on val=), not {_shown(trained)}.")
    if class_names is not None and (isinstance(class_names, str) or not isinstance(class_names, (list, tuple))
                                    or not all(isinstance(c, str) for c in class_names)):
        raise SplitcError(f"SplitNet: class_names= is a list of str, one per class, not {_shown(class_names)}.")
    unknown = sorted(set(options) - set(RECIPE_OPTIONS))
    if unknown:
        raise SplitcError(f"SplitNet got an unexpected argument {unknown[0]}=; besides the scope and data it takes "
                          f"the recipe's options: {', '.join(RECIPE_OPTIONS)}.")


def _ints_or_one(value: object, least: int) -> bool:
    items = value if isinstance(value, (tuple, list)) else (value,)
    return value is None or (bool(items) and all(isinstance(v, int) and not isinstance(v, bool) and v >= least
                                                 for v in items))


def _shown(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    return repr(value) if isinstance(value, (int, float, str, bool, type(None))) else f"a {type(value).__name__}"
