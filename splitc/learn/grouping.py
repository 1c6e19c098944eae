"""The moments of a learn run that read the network: the end of the warm-up (the class groups
from the trained features or classifier, the teacher's weights, a cut init's commit and its
one-shot accuracy), and the accuracy and warning helpers the loop and these share."""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader, Subset

from splitc.core.errors import SplitcError, SplitcWarning
from splitc.data.batches import accuracy
from splitc.learn import schedule
from splitc.learn.assign import cut_energy
from splitc.learn.config import CUT_INITS
from splitc.learn.cut_groups import cut_groups
from splitc.learn.refit import REFIT_IMAGES, refit_cut
from splitc.learn.transplant import transplant
from splitc.learn.groups import (
    class_space_levels,
    classifier_energy,
    classifier_rows,
    cluster_classes,
    dataset_labels,
    init_class_assignment,
    probe_indices,
    split_input_class_means,
    superclass_ari,
)
from splitc.learn.health import chance_warning, near_chance
from splitc.learn.start import save_teacher
from splitc.learn.state import LearnRun, freeze_space, log_record
from splitc.graph.group_tree import HardAssignment
from splitc.passes.harden import harden
from splitc.passes.mask import mask_inter_group, weight_masks


def end_warmup(run: LearnRun) -> None:
    """At the end of the warm-up, cluster the classes by their features at the split input:
    ``feature_ari`` when superclasses are known, and the class-space start for ``cluster``."""
    ir, scope = run.analysis.ir, run.analysis.scope
    if run.probed or run.step < run.warmup_steps:
        return
    run.probed = True
    if run.ranks.main and run.run_dir is not None:
        run.teacher_sha256 = save_teacher(run.analysis.gm, run.run_dir)
    if run.data.val is not None and (run.val_history or run.config.warmup == "adaptive"):
        acc = run.val_history[-1] if run.val_history and run.step % run.steps_per_epoch == 0 else evaluate(run)
        if near_chance(acc, run.data.num_classes, len(run.data.val)):
            warn(run, chance_warning(acc, run.data.num_classes, len(run.data.val),
                                     f"at the end of the warm-up (step {run.step})", run.names.cli))
    wanted = run.data.superclass_of is not None or run.config.init_groups != "learned"
    if not wanted or ir.class_space not in run.aset:
        return
    levels = class_space_levels(scope, ir)
    by_classifier = run.config.init_groups == "classifier-cut"   # the authors' practice: the classifier's rows
    if run.data.superclass_of is not None or not by_classifier:  # the split-input class means: used or reported
        dataset = run.data.probe
        means = split_input_class_means(run.analysis.gm, ir, scope, dataset, run.data.num_classes, run.device)
        features = cluster_classes(means, levels, seed=run.config.seed)
        run.feature_groups = tuple(int(g) for g in features)
        run.feature_ari = superclass_ari(run.data.superclass_of, features)
    labels = (cluster_classes(classifier_rows(run.analysis.gm, ir), levels, seed=run.config.seed)
              if by_classifier else features)
    energy = cluster_classes(classifier_energy(run.analysis.gm, ir), levels, seed=run.config.seed)
    run.energy_ari = superclass_ari(run.data.superclass_of, energy)
    if run.config.init_groups == "cluster":
        init_class_assignment(run.aset, ir, labels)
    elif run.config.init_groups in CUT_INITS:
        commit_cut_groups(run, labels)
        if run.data.val is not None:
            run.oneshot_val_acc = masked_val_acc(run)   # the start cut at once: a one-shot split
    log_record(run, {"kind": "warmup_end", "step": run.step, "feature_ari": run.feature_ari,
               "classifier_energy_ari": run.energy_ari,
               "feature_groups": (None if run.feature_groups is None
                                  else dict(zip(run.data.class_names, run.feature_groups))),
               "class_groups_start": dict(zip(run.data.class_names, (int(g) for g in labels))),
               "init_groups": run.config.init_groups})


def commit_cut_groups(run: LearnRun, class_group) -> None:
    """``cluster-cut``: every space committed at once to the groups that keep the most weight
    energy around the class clusters (:mod:`splitc.learn.cut_groups`); clearing starts now."""
    ir, scope = run.analysis.ir, run.analysis.scope
    for space, nodes in cut_groups(run.analysis.gm, ir, scope, class_group).items():
        schedule.commit_groups(run.aset.by_space[str(space)], nodes, scope.groups_of(space))
        if space not in run.frozen:
            freeze_space(run, space)
    run.committed = True
    log_record(run, {"kind": "commit", "step": run.step, "init_groups": run.config.init_groups,
               "cut_energy": cut_shares(run).get("total")})


def cut_shares(run: LearnRun) -> dict[str, float]:
    return cut_energy(run.analysis.gm, run.analysis.ir, run.analysis.scope, run.aset)


def evaluate(run: LearnRun, model: torch.nn.Module | None = None) -> float:
    """Validation accuracy of the dense model, or of ``model`` (the masked one)."""
    return run.ranks.broadcast(accuracy(model if model is not None else run.analysis.gm, run.data.val, run.device))


def masked_val_acc(run: LearnRun) -> float | None:
    """Accuracy of the model with its inter-group weights zeroed under the argmax groups: what
    ``splitc split`` will compute before any finetuning. Weight-energy shares alone do not tell
    this: on resnet20, zeroing 0.08% of one conv's energy cost 14 pp, because the residual
    stream's large activations and batch norm amplify small weights. (With ``--overlap`` the
    split keeps fuzzy nodes in several groups, so this is its lower bound.)"""
    try:
        hard = hardened(run)
    except SplitcError as exc:   # e.g. an empty group under argmax: split refuses it the same way
        warn(run, f"no masked accuracy: {exc}")
        return None
    masked = mask_inter_group(run.analysis.gm, run.analysis.ir, run.analysis.scope, hard)
    return evaluate(run, masked.to(run.device))


def hardened(run: LearnRun) -> HardAssignment:
    """The groups ``splitc split`` will cut by: the harden pass on the current assignments (the
    one rule, so learn's masked accuracy and the split agree)."""
    return harden(run.analysis.ir, run.analysis.scope, run.aset.soft()).assignment


def warn(run: LearnRun, message: str) -> None:
    """One warning, issued now through Python's ``warnings`` (the command line prints it as one
    line above the progress bar) and kept for the summary; a run says each once."""
    if message not in run.warnings:
        run.warnings.append(message)
        warnings.warn(message, SplitcWarning, stacklevel=2)
        log_record(run, {"kind": "warning", "step": run.step, "message": message})


def wants_refit(run: LearnRun) -> bool:
    """``refit`` as given, else on for a run from trained weights (a cut of a trained network)
    without ``overlap`` (an overlapping split keeps inter-group weights the refit would zero)."""
    wanted = run.config.refit if run.config.refit is not None else (run.trained and run.config.overlap is None)
    return bool(wanted) and bool(run.aset.by_space) and run.data.probe is not None


def refit_model(run: LearnRun, hard: HardAssignment) -> tuple[torch.nn.Module, dict]:
    """The cut of the run's network by ``hard`` with its kept weights refit to reproduce the
    network (:mod:`splitc.learn.refit`) on ``REFIT_IMAGES`` probe images, balanced over the
    classes; the network itself is not changed. Returns the masked, refit model and its record.
    With ``transplant``, each group's channels first take the values of the trained channels
    most important to its classes (:mod:`splitc.learn.transplant`), and the refit reproduces those."""
    ir, scope, gm = run.analysis.ir, run.analysis.scope, run.analysis.gm
    labels = dataset_labels(run.data.probe)
    per_class = -(-REFIT_IMAGES // max(1, len(set(labels.tolist()))))
    subset = Subset(run.data.probe, probe_indices(labels, per_class))
    with torch.random.fork_rng():   # a random augmentation must not shift the run's stream
        torch.manual_seed(run.config.seed)
        pairs = [(x.to(run.device), y.to(run.device)) for x, y in DataLoader(subset, batch_size=128)]
    batches = [x for x, _ in pairs]
    moved = transplant(gm, ir, scope, hard, pairs) if run.config.transplant else None
    masked = mask_inter_group(gm if moved is None else moved.gm, ir, scope, hard)
    report = refit_cut(gm, masked, weight_masks(ir, scope, hard), batches,
                       sources=None if moved is None else moved.sources)
    record = {"layers": list(report.refit), "skipped": [list(s) for s in report.skipped], "images": report.images,
              "error_before": report.error_before, "error_after": report.error_after, "seconds": report.seconds}
    if moved is not None:
        record["transplant"] = {"importance_held": moved.kept_before, "importance_transplanted": moved.kept_after,
                                "channels_used": moved.channels_used}
    if report.skipped:
        warn(run, f"refit left {len(report.skipped)} cut layer(s) as cut: "
                  + "; ".join(f"{name} ({why})" for name, why in report.skipped[:3]))
    return masked, record


def refit_after_cut(run: LearnRun) -> None:
    """learn's last step where the refit applies (:func:`wants_refit`): the network then holds
    the masked, refit weights, which the split slices, and the record says how much of the
    cut it won back. The dense weights are saved first as the teacher (finetune --distill)."""
    if not wants_refit(run):
        return
    try:
        hard = hardened(run)
    except SplitcError as exc:
        warn(run, f"no refit: {exc}")
        return
    if run.teacher_sha256 is None and run.ranks.main and run.run_dir is not None:
        run.teacher_sha256 = save_teacher(run.analysis.gm, run.run_dir)
    before = (run.oneshot_val_acc if run.step == 0 and run.oneshot_val_acc is not None else masked_val_acc(run))
    shares = cut_shares(run)   # what the cut removes, measured before the refit zeroes it
    refit, record = refit_model(run, hard)
    with torch.no_grad():
        run.analysis.gm.load_state_dict(refit.state_dict())
    run.refit = {"masked_val_acc": before, "refit_val_acc": evaluate(run), "cut_energy": shares, **record}
    log_record(run, {"kind": "refit", "step": run.step, **run.refit})
