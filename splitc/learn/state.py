"""The state of one ``splitc learn`` run: what the loop mutates, and how it is checkpointed and
restored (atomic files; a resumed run continues exactly where the killed one stopped)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from splitc.graph.analysis import Analysis
from splitc.learn.assign import AssignmentSet
from splitc.core.checkpoint import append_metrics, load_checkpoint, save_checkpoint, trim_metrics
from splitc.core.errors import SplitcError
from splitc.core.naming import FLAG, Naming
from splitc.learn.config import CHECKPOINT, METRICS, LearnConfig
from splitc.learn.ranks import SINGLE, Ranks

@dataclass(frozen=True)
class RunData:
    """What the recipe reads of the data: validation (the adaptive warm-up, the near-chance
    warning), the probe images whose class means group the classes, the class names and, where
    the data has them, superclasses (the ARIs)."""

    class_names: tuple[str, ...]
    val: Dataset | None = None
    probe: Dataset | None = None                  # training images, ideally without augmentation
    superclass_of: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @staticmethod
    def of(bundle: Any) -> RunData:
        """From a loaded data set (``splitc.data``'s DataBundle)."""
        probe = bundle.train_probe if bundle.train_probe is not None else bundle.train
        return RunData(tuple(bundle.class_names), bundle.val, probe, bundle.superclass_of)


@dataclass
class LearnRun:
    """Everything the loop mutates, kept together so helpers stay short (built by
    :func:`splitc.learn.setup.build_run`)."""

    config: LearnConfig
    analysis: Analysis
    data: RunData
    aset: AssignmentSet
    optimizers: dict[str, torch.optim.Optimizer]   # "weights" only where the run trains them (learn)
    device: torch.device
    run_dir: Path | None                       # None: a run that keeps no files (splitc.SplitNet)
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int                          # the cap until an adaptive warm-up ends, then its end
    soft_steps: int
    warmup_floor: int = 0
    step: int = 0
    val_history: list[float] = field(default_factory=list)   # validation accuracy per epoch
    committed: bool = False                    # groups fixed to their argmax (learn_schedule)
    rw_scale: float = 1.0                      # γ_W's multiplier while clearing (learn_schedule)
    last_cut: float | None = None              # cut energy at the last epoch end
    grad_share: dict[str, float] | None = None  # regularizer vs CE gradient norms at their start
    frozen: tuple[int, ...] = ()
    probed: bool = False                       # the end-of-warm-up clustering has run
    feature_groups: tuple[int, ...] | None = None
    feature_ari: float | None = None
    energy_ari: float | None = None
    train_correct: int = 0
    train_seen: int = 0
    warnings: list[str] = field(default_factory=list)
    ranks: Ranks = SINGLE                      # data-parallel learn: this process's rank (learn_ranks)
    scheduler: Any = None                      # the weights' LambdaLR, positioned when training starts
    start_val_acc: float | None = None         # --weights: the trained model before the first step
    trained: bool = False                      # the trained-start recipe (config.TRAINED_DEFAULTS) applies
    start_notes: tuple[str, ...] = ()          # what loading --weights adapted or found (learn_start)
    weights: dict[str, str] | None = None      # --weights: source, path, SHA-256
    oneshot_val_acc: float | None = None       # the start cut at once by the committed groups
    refit: dict[str, Any] | None = None        # learn.refit's report and the accuracies around it
    teacher_sha256: str | None = None          # teacher.safetensors, written when the regularizers start
    session: Any = None                        # the recipe driving this run (learn.session.SplitSession)
    train: Dataset | None = None               # what learn's own loop trains on (SplitNet: the caller's loop)
    names: Naming = FLAG                       # how messages name options: --flags (learn) or args= (SplitNet)


def log_record(run: LearnRun, record: dict[str, Any]) -> None:
    """One line of metrics.jsonl (rank 0; a run without a directory, inside a user's loop, keeps none)."""
    if run.ranks.main and run.run_dir is not None:
        append_metrics(run.run_dir / METRICS, record)


def freeze_space(run: LearnRun, space: int) -> None:
    for p in run.aset.by_space[str(space)].parameters():
        p.requires_grad_(False)
        p.grad = None
    run.frozen = tuple(sorted((*run.frozen, space)))


def identity(run: LearnRun) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run."""
    a = run.analysis
    return {"model": a.model_name, "num_classes": a.num_classes, "input_size": list(a.input_size),
            "scope": a.scope.spec.describe(), "data": run.config.data, "assign": run.config.assign}


def _rng_states() -> dict[str, Any]:
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()} if cuda else {})}


def save_run(run: LearnRun) -> Path:
    """Rank 0's checkpoint (every rank holds the same state); the other ranks write nothing."""
    if not run.ranks.main:
        return run.run_dir / CHECKPOINT
    config = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
              for k, v in asdict(run.config).items()}
    return save_checkpoint(run.run_dir / CHECKPOINT, {
        "kind": "learn", "identity": identity(run), "config": config,
        "model": run.analysis.gm.state_dict(), "assignments": run.aset.state_dict(),
        "optimizers": {k: opt.state_dict() for k, opt in run.optimizers.items()},
        "step": run.step, "epoch": run.step // run.steps_per_epoch, "frozen": list(run.frozen),
        "probed": run.probed, "feature_ari": run.feature_ari, "warmup_steps": run.warmup_steps,
        "val_history": run.val_history, "committed": run.committed, "grad_share": run.grad_share,
        "rw_scale": run.rw_scale, "last_cut": run.last_cut,
        "warnings": run.warnings, "classifier_energy_ari": run.energy_ari,
        "feature_groups": list(run.feature_groups) if run.feature_groups is not None else None,
        "oneshot_val_acc": run.oneshot_val_acc, "teacher_sha256": run.teacher_sha256,
        "train_correct": run.train_correct, "train_seen": run.train_seen, "rng": _rng_states(),
    })


def restore_run(run: LearnRun) -> None:
    """Load the run's checkpoint into the freshly built run; the step count carries on."""
    ckpt = load_checkpoint(run.run_dir / CHECKPOINT, identity(run), kind="learn")
    run.analysis.gm.load_state_dict(ckpt["model"])
    run.aset.load_state_dict(ckpt["assignments"])
    for space in ckpt["frozen"]:
        freeze_space(run, int(space))
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
    run.rw_scale, run.last_cut = float(ckpt.get("rw_scale", 1.0)), ckpt.get("last_cut")
    run.grad_share, run.warnings = ckpt.get("grad_share"), list(ckpt.get("warnings", []))
    run.energy_ari = ckpt.get("classifier_energy_ari")
    run.oneshot_val_acc, run.teacher_sha256 = ckpt.get("oneshot_val_acc"), ckpt.get("teacher_sha256")
    groups = ckpt.get("feature_groups")
    run.feature_groups = tuple(groups) if groups is not None else None
    if run.ranks.main:
        trim_metrics(run.run_dir / METRICS, run.step)
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and run.device.type == "cuda":
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
