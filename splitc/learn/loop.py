"""``splitc learn``: train a model and its group assignments together (docs/METHOD.md §2, §3, §5, §6, §8).

The loop is plain SGD on the weights plus a second optimizer for the assignments (Adam on
softmax logits, or :class:`~splitc.learn.simplex.ReducedGradient` on the simplex). The choices that
follow the measured pitfalls of docs/METHOD.md §8 (details in :mod:`splitc.learn.optim`):

- the regularizers are off during a warm-up, so the grouping is decided once features exist;
  at its end the classes are clustered by their features at the split input
  (:mod:`splitc.learn.groups`): that is ``feature_ari``, and with ``--init-groups cluster`` the
  start of the class map;
- the assignments get their own optimizer and rate, ``lr * assign_lr_mult``: at the weights'
  rate they never leave the uniform point, where R_D's gradient is zero;
- R_D's weight rises from ``gamma_d`` to ``gamma_d_end`` over the run, so that the groups are
  hard and the weights block-diagonal when the run is split; an optional soft phase ramps it in
  from 0 first (both in :mod:`splitc.learn.optim`);
- with an overlap threshold, a space whose nodes are crisp (< 20% fuzzy) is frozen, so it stops
  drifting while the others settle.

Runs are resumable and deterministic on CPU at a fixed torch thread count (another count changes
the order of float reductions, and runs drift apart: masked accuracy 0.953 on 1 thread, 0.881 on
2, same command): the data order of each epoch comes from a
generator seeded by (seed, epoch), and the checkpoint carries every RNG state, so a resumed run
continues exactly where the killed one stopped.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from splitc.core.errors import SplitcError, SplitcNote
from splitc.core.files import TEACHER
from splitc.core.outputs import atomic_write_text, fresh
from splitc.data.batches import epoch_loader
from splitc.data.loaders import load_data
from splitc.data.sizes import choose_input_size
from splitc.graph import zoo
from splitc.graph.analysis import analysis_warnings
from splitc.learn.config import (  # noqa: F401  (LearnConfig, LearnResult: the public API lives here too)
    ASSIGNMENT,
    CHECKPOINT,
    REPORT_OVERLAP,
    LearnConfig,
    LearnResult,
    check_config,
)
from splitc.learn.groups import class_groups, space_report, superclass_ari
from splitc.learn.grouping import cut_shares, evaluate, masked_val_acc, refit_after_cut, warn
from splitc.learn.health import LEARNED_FLAG, chance_warning, near_chance
from splitc.learn.optim import lr_ramp_steps, schedule_at
from splitc.learn.ranks import SINGLE, Ranks
from splitc.learn.session import SplitSession, train_acc
from splitc.learn.setup import build_run
from splitc.learn.start import build_start, save_teacher
from splitc.learn.state import LearnRun, RunData, identity, log_record, restore_run, save_run


def learn(config: LearnConfig, progress: bool = True, ranks: Ranks = SINGLE) -> LearnResult:
    """Train weights and assignments; write checkpoint, metrics and assignment.json under ``out``.
    ``ranks``: this process's rank of a data-parallel run (``splitc.learn.dist`` starts them)."""
    if config.resume and config.force:
        raise SplitcError("--resume continues the run in --out and --force replaces it; pass one of them.")
    check_config(config)
    if config.out is None or config.data is None:
        raise SplitcError("learn reads a data set and writes a run directory: give it data= and out= "
                          "(inside your own loop, splitc.SplitNet needs neither).")
    if config.nproc != ranks.world:
        raise SplitcError(f"--nproc {config.nproc} needs {config.nproc} ranks: run it through `splitc learn` "
                          "or splitc.learn.dist.learn_entry, which start them.")
    if not config.resume and ranks.main:
        fresh(config.out, config.force, resume=True)
    ranks.barrier()   # rank 0 has claimed --out before any rank reads a checkpoint from it
    run = _setup(config, ranks)
    if config.resume:
        restore_run(run)
    for line in (*run.start_notes, *analysis_warnings(run.analysis)):
        warn(run, line)
    _train(run, progress)
    # --epochs 0 from trained weights (a one-shot split): the network is the start, already measured
    val_acc = run.start_val_acc if run.step == 0 and run.start_val_acc is not None else evaluate(run)
    refit_after_cut(run)   # after the dense accuracy: from here the network is the refit cut
    save_run(run)
    result = _finish(run, val_acc)
    ranks.barrier()   # every rank returns after rank 0 has written its files
    return result


def _setup(config: LearnConfig, ranks: Ranks = SINGLE) -> LearnRun:
    """Data, model and its start, then the run (:func:`splitc.learn.setup.build_run`), all
    seeded so that two runs are identical."""
    torch.manual_seed(config.seed)
    bundle = load_data(config.data, config.input_size or pick_input_size(config), seed=config.seed,
                       flip=config.flip, normalize=config.normalize)
    start = build_start(config.model, config.weights, bundle, torch.device(config.device))
    weights = None if start.weights is None else {"source": start.weights.source, "path": start.weights.path,
                                                  "sha256": start.weights.sha256}
    run = build_run(config, start.model, RunData.of(bundle), bundle.input_size,
                    steps_per_epoch=max(1, len(bundle.train) // (config.batch_size * ranks.world)),
                    trained=start.trained, start_val_acc=start.val_acc, start_notes=start.notes, weights=weights,
                    run_dir=Path(config.out), ranks=ranks, train=bundle.train)
    SplitSession(run)
    return run


def pick_input_size(config: LearnConfig) -> tuple[int, int, int] | None:
    """Without --input-size: say which size the run uses and why (data.choose_input_size)."""
    spec = zoo.resolve(config.model)
    size, why = choose_input_size(config.data, spec.default_input_size, spec.source == "builtin")
    if size is not None:
        warnings.warn(f"input size {'x'.join(map(str, size))} ({why}; set --input-size to change it)", SplitcNote,
                      stacklevel=2)
    return size


def _epoch_loader(run: LearnRun, epoch: int, skip: int) -> DataLoader:
    return epoch_loader(run.train, run.config.seed, epoch, run.config.batch_size * run.ranks.world,
                        run.steps_per_epoch, skip)   # the global batch; each rank trains on its shard


def _train(run: LearnRun, progress: bool) -> None:
    bar = tqdm(total=run.total_steps, initial=run.step, disable=not progress, desc="learn",
               dynamic_ncols=True)
    ramp = lr_ramp_steps(run.config.lr_warmup_epochs, run.steps_per_epoch, run.total_steps)
    run.scheduler = schedule_at(run.optimizers["weights"], run.config.lr, run.config.schedule, run.total_steps, run.step, ramp)
    with bar:  # the loop resumes mid-epoch: ``skip`` batches of this epoch are already done
        run.session.start()   # a trained start ends its (empty) warm-up before the first step
        while run.step < run.total_steps:
            epoch, skip = divmod(run.step, run.steps_per_epoch)
            if skip == 0:
                run.train_correct = run.train_seen = 0
            for x, y in _epoch_loader(run, epoch, skip):
                metrics = _train_step(run, x.to(run.device), y.to(run.device))
                bar.update(1)
                bar.set_postfix({"phase": run.session.phase, **{k: f"{metrics[k]:.3g}" for k in BAR_KEYS}})
                _after_step(run, metrics)
                if run.step >= run.total_steps:
                    break


def _train_step(run: LearnRun, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """One SGD step; the session adds the regularizers (0 during the warm-up) and steps the
    assignments, exactly as it does inside a user's loop (``splitc.SplitNet``)."""
    lr = run.optimizers["weights"].param_groups[0]["lr"]
    gm, session = run.analysis.gm, run.session
    gm.train()
    x, y = run.ranks.shard(x, y)
    logits = gm(x)
    ce = F.cross_entropy(logits, y)
    loss = ce + session.regularizer()
    regs, regs_on, gamma_d = session.last.regs, session.last.on, session.last.gamma_d
    if regs_on and run.grad_share is None:
        run.grad_share = gradient_share(gm, ce, run.config.gamma_w * regs["R_W"])
        log_record(run, {"kind": "grad_share", "step": run.step, **run.grad_share})
    for opt in run.optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    run.ranks.average_gradients([*gm.parameters(), *run.aset.parameters()])
    run.optimizers["weights"].step()
    run.scheduler.step()
    session.advance()
    run.ranks.average_buffers(gm)
    correct = int((logits.argmax(dim=1) == y).sum())
    run.train_correct += correct
    run.train_seen += len(y)
    return {"kind": "step", "step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch,
            "loss": float(loss.detach()), "ce": float(ce.detach()), "acc": correct / len(y), "lr": lr,
            "regs_on": regs_on, "gamma_d": gamma_d, **{k: float(regs[k].detach()) if k in regs else 0.0 for k in ("R_W", "R_D", "R_E")},
            # R_E is at least 1 per space (balanced); shifted, a balanced assignment reads 0
            "R_E_excess": float(regs["R_E"].detach()) - len(run.aset.spaces) if regs else 0.0}


def _after_step(run: LearnRun, metrics: dict[str, Any]) -> None:
    """Logging, the session's phase changes (epoch-end evaluation, warm-up end, commit), checkpoints."""
    cfg = run.config
    if run.step % max(1, cfg.log_every) == 0 or run.step == run.total_steps:
        log_record(run, metrics)
    run.session.after(metrics["regs_on"])
    periodic = cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0
    if (run.step % run.steps_per_epoch == 0 or periodic) and run.step < run.total_steps:
        save_run(run)


BAR_KEYS = ("ce", "acc", "R_W", "R_D", "R_E_excess")


def gradient_share(gm: torch.nn.Module, ce: torch.Tensor, weighted_rw: torch.Tensor) -> dict[str, float]:
    """Norms of the weights' gradients from CE and from γ_W·R_W at the first regularized step
    (R_D and R_E act on the assignments only), for metrics.jsonl and docs/LEARN.md."""
    params = [p for p in gm.parameters() if p.requires_grad]
    norms = {}
    for name, term in (("ce", ce), ("R_W", weighted_rw)):
        if not term.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None)))
    return {"grad_norm_ce": norms["ce"], "grad_norm_rw": norms["R_W"],
            "rw_over_ce": norms["R_W"] / norms["ce"] if norms["ce"] else float("inf")}


def _finish(run: LearnRun, val_acc: float) -> LearnResult:
    """Write assignment.json (what the split pass reads) and build the result."""
    if run.teacher_sha256 is None and run.ranks.main:   # the warm-up never ended: the run's dense weights
        run.teacher_sha256 = save_teacher(run.analysis.gm, run.run_dir)
    soft, hard = run.aset.soft(), run.aset.hard().groups_of_space
    threshold = run.config.overlap if run.config.overlap is not None else REPORT_OVERLAP
    spaces = [space_report(run.analysis.ir, run.analysis.scope, s, soft[s], hard[s], threshold,
                           s in run.frozen) for s in sorted(soft)]
    shares = run.refit["cut_energy"] if run.refit is not None else cut_shares(run)   # before the refit zeroed the cut
    masked_acc = (run.refit["masked_val_acc"] if run.refit is not None   # the cut before its refit
                  else run.oneshot_val_acc if run.step == 0 and run.oneshot_val_acc is not None   # the cut, untouched
                  else masked_val_acc(run) if run.aset.by_space else None)
    classes, n_val = run.data.num_classes, len(run.data.val)
    learned = not near_chance(val_acc, classes, n_val)
    if not learned:
        warn(run, chance_warning(val_acc, classes, n_val, "at the end of the run"))
    mapping = class_groups(run.aset, run.analysis.ir, run.data.class_names)
    ari = superclass_ari(run.data.superclass_of, None if mapping is None else list(mapping.values()))
    features = (None if run.feature_groups is None
                else dict(zip(run.data.class_names, run.feature_groups)))
    doc = {**identity(run), "steps": run.step, "spaces": spaces, "class_groups": mapping,
           "superclass_ari": ari, "feature_ari": run.feature_ari, "feature_groups": features,
           "classifier_energy_ari": run.energy_ari, "cut_energy": shares, "masked_val_acc": masked_acc,
           "init_groups": run.config.init_groups, "train_acc": train_acc(run), "val_acc": val_acc,
           LEARNED_FLAG: learned, "warnings": run.warnings, "warmup_steps": run.warmup_steps,
           "committed": run.committed, "grad_share": run.grad_share, "weights": run.weights,
           "start_val_acc": run.start_val_acc, "oneshot_val_acc": run.oneshot_val_acc, "trained_start": run.trained,
           "teacher": None if run.teacher_sha256 is None else {"file": TEACHER, "sha256": run.teacher_sha256},
           "refit": run.refit}
    if run.ranks.main:
        atomic_write_text(run.run_dir / ASSIGNMENT, json.dumps(doc, indent=1))
    return LearnResult(run.run_dir, run.run_dir / CHECKPOINT, train_acc(run), val_acc,
                       {s["name"]: s["group_sizes"] for s in spaces}, ari, run.feature_ari, run.step,
                       run.energy_ari, shares.get("total"), masked_acc, learned, tuple(run.warnings),
                       run.config.init_groups, run.start_val_acc, run.oneshot_val_acc,
                       None if run.teacher_sha256 is None else str(run.run_dir / TEACHER),
                       None if run.refit is None else run.refit["refit_val_acc"])
