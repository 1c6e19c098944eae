"""``splitc learn``: train a model and its group assignments together (METHOD.md §2, §3, §5, §6, §8).

The loop is plain SGD on the weights plus a second optimizer for the assignments (Adam on
softmax logits, or :class:`~splitc.simplex.ReducedGradient` on the simplex). The choices that
follow the measured pitfalls of METHOD.md §8 (details in :mod:`splitc.learn_optim`):

- the regularizers are off during a warm-up, so the grouping is decided once features exist;
  at its end the classes are clustered by their features at the split input
  (:mod:`splitc.learn_groups`): that is ``feature_ari``, and with ``--init-groups cluster`` the
  start of the class map;
- the assignments get their own optimizer and rate, ``lr * assign_lr_mult``: at the weights'
  rate they never leave the uniform point, where R_D's gradient is zero;
- R_D's weight rises from ``gamma_d`` to ``gamma_d_end`` over the run, so that the groups are
  hard and the weights block-diagonal when the run is split; an optional soft phase ramps it in
  from 0 first (both in :mod:`splitc.learn_optim`);
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
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import zoo
from .analysis import Analysis, analyse, analysis_warnings
from .assign import (
    ASSIGNMENT_KINDS,
    AssignmentSet,
    cut_energy,
    splitnet_loss,
    splitnet_regularizers,
)
from .checkpoint import append_metrics, load_checkpoint, save_checkpoint, trim_metrics
from .data import DataBundle, accuracy, choose_input_size, epoch_loader, load_data
from .errors import SplitcError
from .outputs import fresh
from .learn_groups import (
    class_groups,
    class_space_levels,
    classifier_energy,
    cluster_classes,
    init_class_assignment,
    space_report,
    split_input_class_means,
    superclass_ari,
)
from .learn_health import LEARNED_FLAG, chance_warning, near_chance
from . import learn_schedule as schedule
from .learn_optim import ASSIGN_OPTIMIZERS, disjoint_weight, make_optimizers, set_lr
from .passes.harden import fuzzy_nodes
from .passes.mask import mask_inter_group
from .scope import make_spec

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
ASSIGNMENT = "assignment.json"
FREEZE_FUZZY_FRACTION = 0.2  # METHOD.md §6: freeze a space once fewer than 20% of nodes are fuzzy
REPORT_OVERLAP = 0.1         # threshold for listing fuzzy nodes when no overlap is requested
INIT_GROUPS = ("learned", "cluster")
DEFAULT_GROUPS = "4"


@dataclass(frozen=True)
class LearnConfig:
    """The options of ``splitc learn``; see METHOD.md §8 for why the defaults are what they are."""

    model: str = "resnet20"
    data: str = "synthetic"
    groups: str | None = None       # None: the preset's groups, else DEFAULT_GROUPS
    split_from: str | None = None
    split_depth: str | None = None
    preset: str | None = None
    input_size: tuple[int, int, int] | None = None
    assign: str = "softmax"
    init_groups: str = "learned"    # or "cluster": class groups from the warmed-up features
    gamma_w: float = 1.0
    gamma_d: float = 1.0
    gamma_d_end: float = 10.0       # γ_D rises linearly to this by the last step (learn_optim)
    gamma_d_rise: float = 1.0       # ... over this fraction of the regularized steps, then holds
    gamma_e: float = 10.0
    assign_optimizer: str = "adam"  # for softmax logits; see splitc.learn_optim
    assign_lr_mult: float = 0.2     # Adam on logits: 0.02 per step at lr 0.1 (learn_optim)
    warmup_epochs: float = 3.0      # features first (§8): the floor of an adaptive warm-up
    warmup: str = "adaptive"        # or "fixed": exactly warmup_epochs (learn_schedule)
    commit: bool = True             # fix the groups once decided, so R_W clears the cut (learn_schedule)
    soft_epochs: float = 0.0        # R_D ramps from 0 to gamma_d over these epochs after warm-up
    epochs: int | None = None       # None: 10 epochs, at least MIN_TOTAL_STEPS (learn_schedule)
    max_steps: int | None = None    # stop after this many optimizer steps in total
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    lr_warmup_epochs: float = 0.5   # linear learning-rate warm-up at the start of the run
    device: str = "cpu"
    seed: int = 0
    out: str = "runs/learn"
    resume: bool = False
    force: bool = False             # replace an existing --out as a whole
    overlap: float | None = None
    flip: bool = True
    checkpoint_every: int | None = None  # extra checkpoints every N steps (epoch ends always)
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.groups is None and self.preset is None:  # a preset brings its own groups
            object.__setattr__(self, "groups", DEFAULT_GROUPS)


@dataclass(frozen=True)
class LearnResult:
    """What a finished run reports; the files under ``run_dir`` hold the detail."""
    run_dir: Path
    checkpoint: Path
    train_acc: float
    val_acc: float
    group_sizes: dict[str, list[int]]
    superclass_ari: float | None
    feature_ari: float | None       # the clustering reference of METHOD.md §8
    steps: int
    classifier_energy_ari: float | None = None  # the same clustering of what R_W sees of each class
    cut_energy: float | None = None  # share of cut layers' weight energy between the argmax groups
    masked_val_acc: float | None = None  # accuracy with inter-group weights zeroed: the split's start
    learned: bool = True             # validation accuracy cleared chance (learn_health)
    warnings: tuple[str, ...] = ()   # one line each, already printed during the run


@dataclass
class _Run:
    """Everything the loop mutates, kept together so helpers stay short."""

    config: LearnConfig
    analysis: Analysis
    bundle: DataBundle
    aset: AssignmentSet
    optimizers: dict[str, torch.optim.Optimizer]
    device: torch.device
    run_dir: Path
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int                          # the cap until an adaptive warm-up ends, then its end
    soft_steps: int
    warmup_floor: int = 0
    step: int = 0
    val_history: list[float] = field(default_factory=list)   # validation accuracy per epoch
    committed: bool = False                    # groups fixed to their argmax (learn_schedule)
    grad_share: dict[str, float] | None = None  # regularizer vs CE gradient norms at their start
    frozen: tuple[int, ...] = ()
    probed: bool = False                       # the end-of-warm-up clustering has run
    feature_groups: tuple[int, ...] | None = None
    feature_ari: float | None = None
    energy_ari: float | None = None
    train_correct: int = 0
    train_seen: int = 0
    warnings: list[str] = field(default_factory=list)


def learn(config: LearnConfig, progress: bool = True) -> LearnResult:
    """Train weights and assignments; write checkpoint, metrics and assignment.json under ``out``."""
    if config.resume and config.force:
        raise SplitcError("--resume continues the run in --out and --force replaces it; pass one of them.")
    _check_config(config)
    if not config.resume:
        fresh(config.out, config.force, resume=True)
    run = _setup(config)
    if config.resume:
        _restore(run)
    for line in analysis_warnings(run.analysis):
        warn(run, line)
    _train(run, progress)
    val_acc = evaluate(run)
    _save(run)
    return _finish(run, val_acc)


def _check_config(config: LearnConfig) -> None:
    """Option mistakes fail before minutes of data loading and tracing."""
    if config.assign not in ASSIGNMENT_KINDS:
        raise SplitcError(f"unknown --assign {config.assign!r}; choose {', '.join(ASSIGNMENT_KINDS)}.")
    if config.assign_optimizer not in ASSIGN_OPTIMIZERS:
        raise SplitcError(f"unknown --assign-optimizer {config.assign_optimizer!r}; choose "
                          f"{', '.join(ASSIGN_OPTIMIZERS)}.")
    if config.schedule not in ("step", "cosine"):
        raise SplitcError(f"unknown --schedule {config.schedule!r}; choose step or cosine.")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise SplitcError("--device cuda was asked for but no CUDA device is visible; use --device cpu.")
    if not 0 < config.gamma_d_rise <= 1:
        raise SplitcError(f"--gamma-d-rise must be in (0, 1], got {config.gamma_d_rise}.")
    check_numbers(config)
    if config.warmup not in ("adaptive", "fixed"):
        raise SplitcError(f"unknown --warmup {config.warmup!r}; choose adaptive or fixed.")
    if config.init_groups not in INIT_GROUPS:
        raise SplitcError(f"unknown --init-groups {config.init_groups!r}; choose {', '.join(INIT_GROUPS)}.")
    if config.init_groups == "cluster" and config.assign == "random":
        raise SplitcError("--init-groups cluster needs learned assignments; drop it or use "
                          "--assign softmax / reduced-gradient.")


def check_numbers(config: LearnConfig) -> None:
    """The CLI's option types say the same; this guards API callers."""
    positive = {"--lr": config.lr, "--assign-lr-mult": config.assign_lr_mult}
    non_negative = {"--gamma-w": config.gamma_w, "--gamma-d": config.gamma_d, "--gamma-e": config.gamma_e,
                    "--gamma-d-end": config.gamma_d_end, "--weight-decay": config.weight_decay,
                    "--warmup-epochs": config.warmup_epochs, "--soft-epochs": config.soft_epochs,
                    "--lr-warmup-epochs": config.lr_warmup_epochs}
    for name, value in {**positive, **non_negative}.items():
        if not math.isfinite(value) or value < 0 or (name in positive and value == 0):
            kind = "a finite number > 0" if name in positive else "a finite number >= 0"
            raise SplitcError(f"{name} must be {kind}, got {value}.")
    counts = {"--epochs": config.epochs, "--batch-size": config.batch_size, "--max-steps": config.max_steps}
    for name, value in counts.items():
        if value is not None and value < 1:
            raise SplitcError(f"{name} must be at least 1, got {value}.")
    if config.overlap is not None and not 0 < config.overlap < 1:
        raise SplitcError(f"--overlap must be in (0, 1), got {config.overlap}.")


def _setup(config: LearnConfig) -> _Run:
    """Data, model, assignments and optimizers, all seeded so that two runs are identical."""
    torch.manual_seed(config.seed)
    bundle = load_data(config.data, config.input_size or pick_input_size(config), seed=config.seed,
                       flip=config.flip)
    spec = make_spec(config.groups, config.split_from, config.split_depth, config.preset, config.model)
    analysis = analyse(config.model, spec, bundle.num_classes, bundle.input_size)
    device = torch.device(config.device)
    analysis.gm.to(device)
    aset = AssignmentSet.create(analysis.ir, analysis.scope, config.assign, seed=config.seed).to(device)
    steps_per_epoch = max(1, len(bundle.train) // config.batch_size)
    total = schedule.total_steps(config.epochs, config.max_steps, steps_per_epoch)
    floor, cap = schedule.warmup_bounds(config.warmup_epochs, steps_per_epoch, total, config.warmup == "adaptive")
    soft = round(config.soft_epochs * steps_per_epoch)
    return _Run(config, analysis, bundle, aset, make_optimizers(config, analysis.gm, aset), device,
                Path(config.out), steps_per_epoch, total, cap, soft, floor)


def pick_input_size(config: LearnConfig) -> tuple[int, int, int] | None:
    """Without --input-size: say which size the run uses and why (data.choose_input_size)."""
    spec = zoo.resolve(config.model)
    size, why = choose_input_size(config.data, spec.default_input_size, spec.source == "builtin")
    if size is not None:
        tqdm.write(f"input size {'x'.join(map(str, size))} ({why}; set --input-size to change it)", file=sys.stderr)
    return size


def _epoch_loader(run: _Run, epoch: int, skip: int) -> DataLoader:
    return epoch_loader(run.bundle.train, run.config.seed, epoch, run.config.batch_size,
                        run.steps_per_epoch, skip)


def _train(run: _Run, progress: bool) -> None:
    bar = tqdm(total=run.total_steps, initial=run.step, disable=not progress, desc="learn",
               dynamic_ncols=True)
    with bar:  # the loop resumes mid-epoch: ``skip`` batches of this epoch are already done
        _maybe_end_warmup(run)
        while run.step < run.total_steps:
            epoch, skip = divmod(run.step, run.steps_per_epoch)
            if skip == 0:
                run.train_correct = run.train_seen = 0
            for x, y in _epoch_loader(run, epoch, skip):
                metrics = _train_step(run, x.to(run.device), y.to(run.device))
                bar.update(1)
                bar.set_postfix({"phase": phase(run), **{k: f"{metrics[k]:.3g}" for k in BAR_KEYS}})
                _after_step(run, metrics)
                if run.step >= run.total_steps:
                    break


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """One SGD step; the regularizers join the loss only after the warm-up."""
    ramp = round(run.config.lr_warmup_epochs * run.steps_per_epoch)
    lr = run.config.lr * set_lr(run.optimizers, run.config.schedule, run.step, run.total_steps, ramp)
    gm = run.analysis.gm
    gm.train()
    logits = gm(x)
    ce = F.cross_entropy(logits, y)
    regs_on = run.step >= run.warmup_steps
    if regs_on:
        regs = splitnet_regularizers(gm, run.analysis.ir, run.analysis.scope, run.aset)
        cfg = run.config
        gamma_d = disjoint_weight(run.step, run.warmup_steps, run.soft_steps, run.total_steps,
                                  cfg.gamma_d, cfg.gamma_d_end, cfg.gamma_d_rise)
        loss = splitnet_loss(ce, regs, (cfg.gamma_w, gamma_d, cfg.gamma_e))
        if run.grad_share is None:
            run.grad_share = gradient_share(gm, ce, cfg.gamma_w * regs["R_W"])
            _log(run, {"kind": "grad_share", "step": run.step, **run.grad_share})
    else:
        regs, loss, gamma_d = {}, ce, 0.0
    for opt in run.optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizers["weights"].step()
    if regs_on and "assign" in run.optimizers:
        run.optimizers["assign"].step()
    correct = int((logits.argmax(dim=1) == y).sum())
    run.train_correct += correct
    run.train_seen += len(y)
    run.step += 1
    return {"kind": "step", "step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch,
            "loss": float(loss.detach()), "ce": float(ce.detach()), "acc": correct / len(y), "lr": lr,
            "regs_on": regs_on, "gamma_d": gamma_d, **{k: float(regs[k].detach()) if k in regs else 0.0 for k in ("R_W", "R_D", "R_E")},
            # R_E is at least 1 per space (balanced); shifted, a balanced assignment reads 0
            "R_E_excess": float(regs["R_E"].detach()) - len(run.aset.spaces) if regs else 0.0}


def _after_step(run: _Run, metrics: dict[str, Any]) -> None:
    """Logging, overlap freezing, epoch-end evaluation and checkpoints."""
    cfg = run.config
    if metrics["regs_on"] and cfg.overlap is not None:
        _freeze_crisp_spaces(run)
    if run.step % max(1, cfg.log_every) == 0 or run.step == run.total_steps:
        _log(run, metrics)
    epoch_end = run.step % run.steps_per_epoch == 0
    if epoch_end:
        run.val_history.append(evaluate(run))
        _log(run, {"kind": "epoch", "epoch": run.step // run.steps_per_epoch - 1, "step": run.step,
                   "train_acc": train_acc(run), "val_acc": run.val_history[-1], "frozen": list(run.frozen),
                   "cut_energy": _cut_energy(run).get("total"), "phase": phase(run)})
        _decide_warmup(run)
    _maybe_end_warmup(run)  # before the checkpoint, so a resumed run never probes twice
    _maybe_commit(run)
    periodic = cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0
    if (epoch_end or periodic) and run.step < run.total_steps:
        _save(run)


BAR_KEYS = ("ce", "acc", "R_W", "R_D", "R_E_excess")


def phase(run: _Run) -> str:
    if run.step < run.warmup_steps:
        return "warm-up"
    return "clearing" if run.committed else "grouping"


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


def _decide_warmup(run: _Run) -> None:
    """At an epoch end of an adaptive warm-up: end it now if the network has trained."""
    if run.config.warmup != "adaptive" or run.probed or run.step >= run.warmup_steps:
        return
    if schedule.warmup_done(run.step, run.warmup_floor, run.warmup_steps, run.val_history,
                            run.bundle.num_classes, len(run.bundle.val)):
        run.warmup_steps = run.step


def _maybe_commit(run: _Run) -> None:
    """Grouping -> clearing: fix every space to its argmax groups once decided (learn_schedule)."""
    if not run.config.commit or run.committed or not run.probed or run.config.assign == "random":
        return
    matrices = dict(run.aset.items())
    crisp = {s: schedule.crispness(m) for s, m in matrices.items()}
    if not schedule.commit_due(run.step, run.warmup_steps, run.total_steps, crisp):
        return
    for space, matrix in matrices.items():
        schedule.commit_space(run.aset.by_space[str(space)], matrix)
        if space not in run.frozen:
            _freeze(run, space)
    run.committed = True
    _log(run, {"kind": "commit", "step": run.step, "crispness": {str(s): c for s, c in crisp.items()},
               "cut_energy": _cut_energy(run).get("total")})


def _cut_energy(run: _Run) -> dict[str, float]:
    return cut_energy(run.analysis.gm, run.analysis.ir, run.analysis.scope, run.aset)


def _maybe_end_warmup(run: _Run) -> None:
    """At the end of the warm-up, cluster the classes by their features at the split input:
    ``feature_ari`` when superclasses are known, and the class-space start for ``cluster``."""
    ir, scope = run.analysis.ir, run.analysis.scope
    if run.probed or run.step < run.warmup_steps:
        return
    run.probed = True
    if run.val_history or run.config.warmup == "adaptive":
        acc = run.val_history[-1] if run.val_history and run.step % run.steps_per_epoch == 0 else evaluate(run)
        if near_chance(acc, run.bundle.num_classes, len(run.bundle.val)):
            warn(run, chance_warning(acc, run.bundle.num_classes, len(run.bundle.val),
                                     f"at the end of the warm-up (step {run.step})"))
    wanted = run.bundle.superclass_of is not None or run.config.init_groups == "cluster"
    if not wanted or ir.class_space not in run.aset:
        return
    dataset = run.bundle.train_probe if run.bundle.train_probe is not None else run.bundle.train
    means = split_input_class_means(run.analysis.gm, ir, scope, dataset, run.bundle.num_classes, run.device)
    labels = cluster_classes(means, class_space_levels(scope, ir), seed=run.config.seed)
    run.feature_groups = tuple(int(g) for g in labels)
    run.feature_ari = superclass_ari(run.bundle.superclass_of, labels)
    energy = cluster_classes(classifier_energy(run.analysis.gm, ir), class_space_levels(scope, ir),
                             seed=run.config.seed)
    run.energy_ari = superclass_ari(run.bundle.superclass_of, energy)
    if run.config.init_groups == "cluster":
        init_class_assignment(run.aset, ir, labels)
    _log(run, {"kind": "warmup_end", "step": run.step, "feature_ari": run.feature_ari,
               "classifier_energy_ari": run.energy_ari,
               "feature_groups": dict(zip(run.bundle.class_names, run.feature_groups)),
               "init_groups": run.config.init_groups})


def _freeze_crisp_spaces(run: _Run) -> None:
    """METHOD.md §6: stop training a space once fewer than 20% of its nodes are fuzzy."""
    for space, matrix in run.aset.soft().items():
        if space in run.frozen:
            continue
        if len(fuzzy_nodes(matrix, run.config.overlap)) < FREEZE_FUZZY_FRACTION * matrix.shape[1]:
            _freeze(run, space)


def _freeze(run: _Run, space: int) -> None:
    for p in run.aset.by_space[str(space)].parameters():
        p.requires_grad_(False)
        p.grad = None
    run.frozen = tuple(sorted((*run.frozen, space)))


def train_acc(run: _Run) -> float:
    """Accuracy over the current epoch's training batches so far."""
    return run.train_correct / run.train_seen if run.train_seen else 0.0


def evaluate(run: _Run, model: torch.nn.Module | None = None) -> float:
    """Validation accuracy of the dense model, or of ``model`` (the masked one)."""
    return accuracy(model if model is not None else run.analysis.gm, run.bundle.val, run.device)


def masked_val_acc(run: _Run) -> float:
    """Accuracy of the model with its inter-group weights zeroed under the argmax groups: what
    ``splitc split`` will compute before any finetuning. Weight-energy shares alone do not tell
    this: on resnet20, zeroing 0.08% of one conv's energy cost 14 pp, because the residual
    stream's large activations and batch norm amplify small weights. (With ``--overlap`` the
    split keeps fuzzy nodes in several groups, so this is its lower bound.)"""
    masked = mask_inter_group(run.analysis.gm, run.analysis.ir, run.analysis.scope, run.aset.hard())
    return evaluate(run, masked.to(run.device))


def warn(run: _Run, message: str) -> None:
    """One warning line, printed now (above the progress bar) and kept for the summary."""
    if message not in run.warnings:
        run.warnings.append(message)
        tqdm.write(f"warning: {message}", file=sys.stderr)
        _log(run, {"kind": "warning", "step": run.step, "message": message})


def _log(run: _Run, record: dict[str, Any]) -> None:
    append_metrics(run.run_dir / METRICS, record)


def identity(run: _Run) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run."""
    a = run.analysis
    return {"model": a.model_name, "num_classes": a.num_classes, "input_size": list(a.input_size),
            "scope": a.scope.spec.describe(), "data": run.config.data, "assign": run.config.assign}


def _rng_states() -> dict[str, Any]:
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()} if cuda else {})}


def _save(run: _Run) -> Path:
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(run.config).items()}
    return save_checkpoint(run.run_dir / CHECKPOINT, {
        "kind": "learn", "identity": identity(run), "config": config,
        "model": run.analysis.gm.state_dict(), "assignments": run.aset.state_dict(),
        "optimizers": {k: opt.state_dict() for k, opt in run.optimizers.items()},
        "step": run.step, "epoch": run.step // run.steps_per_epoch, "frozen": list(run.frozen),
        "probed": run.probed, "feature_ari": run.feature_ari, "warmup_steps": run.warmup_steps,
        "val_history": run.val_history, "committed": run.committed, "grad_share": run.grad_share,
        "warnings": run.warnings, "classifier_energy_ari": run.energy_ari,
        "feature_groups": list(run.feature_groups) if run.feature_groups is not None else None,
        "train_correct": run.train_correct, "train_seen": run.train_seen, "rng": _rng_states(),
    })


def _restore(run: _Run) -> None:
    """Load the run's checkpoint into the freshly built run; the step count carries on."""
    ckpt = load_checkpoint(run.run_dir / CHECKPOINT, identity(run), kind="learn")
    run.analysis.gm.load_state_dict(ckpt["model"])
    run.aset.load_state_dict(ckpt["assignments"])
    for space in ckpt["frozen"]:
        _freeze(run, int(space))
    for name, opt in run.optimizers.items():
        if name not in ckpt["optimizers"]:
            raise SplitcError(f"checkpoint {run.run_dir / CHECKPOINT} has no {name} optimizer "
                              "state; start a new run without --resume.")
        rates = [group["base_lr"] for group in opt.param_groups]
        opt.load_state_dict(ckpt["optimizers"][name])
        for group, rate in zip(opt.param_groups, rates):  # this run's --lr / multiplier win
            group["base_lr"] = rate
    run.step, run.train_correct, run.train_seen = ckpt["step"], ckpt["train_correct"], ckpt["train_seen"]
    run.probed, run.feature_ari = bool(ckpt.get("probed", False)), ckpt.get("feature_ari")
    run.warmup_steps = ckpt.get("warmup_steps", run.warmup_steps)
    run.val_history, run.committed = list(ckpt.get("val_history", [])), bool(ckpt.get("committed", False))
    run.grad_share, run.warnings = ckpt.get("grad_share"), list(ckpt.get("warnings", []))
    run.energy_ari = ckpt.get("classifier_energy_ari")
    groups = ckpt.get("feature_groups")
    run.feature_groups = tuple(groups) if groups is not None else None
    trim_metrics(run.run_dir / METRICS, run.step)
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and run.device.type == "cuda":
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


def _finish(run: _Run, val_acc: float) -> LearnResult:
    """Write assignment.json (what the split pass reads) and build the result."""
    soft, hard = run.aset.soft(), run.aset.hard().groups_of_space
    threshold = run.config.overlap if run.config.overlap is not None else REPORT_OVERLAP
    spaces = [space_report(run.analysis.ir, run.analysis.scope, s, soft[s], hard[s], threshold,
                           s in run.frozen) for s in sorted(soft)]
    shares = _cut_energy(run)
    masked_acc = masked_val_acc(run) if run.aset.by_space else None
    classes, n_val = run.bundle.num_classes, len(run.bundle.val)
    learned = not near_chance(val_acc, classes, n_val)
    if not learned:
        warn(run, chance_warning(val_acc, classes, n_val, "at the end of the run"))
    mapping = class_groups(run.aset, run.analysis.ir, run.bundle.class_names)
    ari = superclass_ari(run.bundle.superclass_of, None if mapping is None else list(mapping.values()))
    features = (None if run.feature_groups is None
                else dict(zip(run.bundle.class_names, run.feature_groups)))
    doc = {**identity(run), "steps": run.step, "spaces": spaces, "class_groups": mapping,
           "superclass_ari": ari, "feature_ari": run.feature_ari, "feature_groups": features,
           "classifier_energy_ari": run.energy_ari, "cut_energy": shares, "masked_val_acc": masked_acc,
           "init_groups": run.config.init_groups, "train_acc": train_acc(run), "val_acc": val_acc,
           LEARNED_FLAG: learned, "warnings": run.warnings, "warmup_steps": run.warmup_steps,
           "committed": run.committed, "grad_share": run.grad_share}
    tmp = run.run_dir / f".{ASSIGNMENT}.tmp"
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, run.run_dir / ASSIGNMENT)
    return LearnResult(run.run_dir, run.run_dir / CHECKPOINT, train_acc(run), val_acc,
                       {s["name"]: s["group_sizes"] for s in spaces}, ari, run.feature_ari, run.step,
                       run.energy_ari, shares.get("total"), masked_acc, learned, tuple(run.warnings))
