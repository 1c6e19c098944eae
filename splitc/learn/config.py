"""The options and result of ``splitc learn``, and their validation (no training code here, so
that the optimiser and schedule modules can read the config without importing the loop).

:class:`LearnConfig` is the one typed options object: ``splitc learn`` builds it from its flags,
``splitc.SplitNet`` from its keyword arguments (the recipe's, :data:`RECIPE_OPTIONS`, beside the
scope). Its fields are typed values (``groups`` a tuple of ints, the kinds ``Literal`` names, ``out``
a ``Path``); the scope's text spellings (``groups="2,4"``, ``split_from="a,b"``) are read into them
on construction. :func:`check_config` checks every field against its type and the rules between
them, and names an option as the caller wrote it (``--gamma-w`` or ``gamma_w=``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import torch

from splitc.core.errors import SplitcError
from splitc.core.files import ASSIGNMENT_JSON, LEARN_CHECKPOINT, LEARN_METRICS
from splitc.core.naming import FLAG, Naming
from splitc.core.typed import check_fields
from splitc.graph.scope import DEFAULT_GROUPS, level_tuple, make_spec
from splitc.learn.assign import AssignKind

CHECKPOINT, METRICS, ASSIGNMENT = LEARN_CHECKPOINT, LEARN_METRICS, ASSIGNMENT_JSON
FREEZE_FUZZY_FRACTION = 0.2  # docs/METHOD.md §6: freeze a space once fewer than 20% of nodes are fuzzy
REPORT_OVERLAP = 0.1         # threshold for listing fuzzy nodes when no overlap is requested
# How the groups are found (issue 13; docs/LEARN.md has the table that chose the default):
# learned: the paper's (CIFAR), every map trained from a uniform start by the regularizers;
# cluster: the class map starts from a balanced clustering of the warmed-up features;
# cluster-cut: that clustering is the class map, every channel space is placed by the trained
#   weights around it (splitc.learn.cut_groups) and committed at once (the authors' ImageNet
#   code also clustered the classes first).
# classifier-cut: as cluster-cut, but the class map clusters the rows of the trained classifier's
#   weight matrix (the authors' ImageNet practice from a trained ResNet-50).
InitGroups = Literal["learned", "cluster", "cluster-cut", "classifier-cut"]
INIT_GROUPS = get_args(InitGroups)
CUT_INITS = ("cluster-cut", "classifier-cut")   # the class map fixed at once, channels placed around it
# What --init-groups means when not given, where it applies (see default_init_groups): chosen by
# the end-to-end table on synthetic:families (docs/LEARN.md, "Which grouping").
DEFAULT_INIT_GROUPS = "cluster-cut"
CommitGroups = Literal["balanced", "argmax"]   # which groups the commit fixes (learn_schedule.commit_space)
AssignOptimizer = Literal["adam", "sgd"]       # for softmax logits; see splitc.learn.optim
Warmup = Literal["adaptive", "fixed"]          # adaptive: until the network has trained (learn_schedule)
Schedule = Literal["cosine", "step"]           # the weights' learning-rate schedule
COMMIT_GROUPS, ASSIGN_OPTIMIZERS = get_args(CommitGroups), get_args(AssignOptimizer)
# The recipe's numbers that depend on the start (issue 26): from random weights (the paper's
# CIFAR schedule: a plain warm-up first), or from trained ones (--weights that clear chance): no
# warm-up, and no learn epochs at all: the groups read off the trained network are cut at once
# (a one-shot split, as the authors' ImageNet code) and finetune spends the budget. The
# from-trained table (docs/LEARN.md) measured it against 3 epochs of R_W clearing the cut first
# (the lr and γ_W below, used when --epochs is given; γ_W x lr is what R_W shrinks the cut by per
# step, the scratch product): one-shot + 6 finetune epochs ended higher at G=2 and G=4.
SCRATCH_DEFAULTS = {"lr": 0.1, "gamma_w": 1.0, "warmup_epochs": 3.0, "warmup": "adaptive", "lr_warmup_epochs": 0.5}
# The options of the recipe itself, which ``splitc.SplitNet`` takes as keywords beside the scope
# (the others say where a ``splitc learn`` run reads its data, writes, resumes, and how long it runs)
RECIPE_OPTIONS = ("assign", "init_groups", "refit", "transplant", "gamma_w", "gamma_d", "gamma_d_end", "gamma_d_rise", "gamma_e",
                  "assign_optimizer", "assign_lr_mult", "warmup_epochs", "warmup", "commit", "commit_groups",
                  "soft_epochs", "lr", "overlap")
TRAINED_DEFAULTS = {"lr": 0.01, "gamma_w": 10.0, "warmup_epochs": 0.0, "warmup": "fixed", "lr_warmup_epochs": 0.0,
                    "epochs": 0}


# A hierarchy (--groups 2,4) has no one-shot split: channels are placed around the class groups at
# one level only (learn.cut_groups), so from trained weights its groups are learned for this many
# epochs unless --epochs says otherwise (the Fashion-MNIST table's --groups 2,2 rows: docs/RESULTS.md).
TRAINED_HIERARCHY_EPOCHS = 1


@dataclass(frozen=True)
class LearnConfig:
    """The options of ``splitc learn``; see docs/METHOD.md §8 for why the defaults are what they are."""

    model: str = "resnet20"
    data: str | None = "synthetic"  # None: a run without a data source of its own (splitc.SplitNet)
    groups: tuple[int, ...] | None = None     # None: the preset's groups, else DEFAULT_GROUPS
    split_from: tuple[str, ...] | None = None  # one module per level
    split_depth: tuple[int, ...] | None = None
    preset: str | None = None
    input_size: tuple[int, int, int] | None = None
    assign: AssignKind = "softmax"
    init_groups: InitGroups | None = None   # None: default_init_groups (INIT_GROUPS says what each does)
    gamma_w: float | None = None    # None: SCRATCH_DEFAULTS or TRAINED_DEFAULTS (resolve_start)
    gamma_d: float = 1.0
    gamma_d_end: float = 10.0       # γ_D rises linearly to this by the last step (learn_optim)
    gamma_d_rise: float = 1.0       # ... over this fraction of the regularized steps, then holds
    gamma_e: float = 10.0
    assign_optimizer: AssignOptimizer = "adam"
    assign_lr_mult: float = 0.2     # Adam on logits: 0.02 per step at lr 0.1 (learn_optim)
    warmup_epochs: float | None = None  # features first (§8): the floor of an adaptive warm-up
    warmup: Warmup | None = None    # adaptive or fixed: exactly warmup_epochs (learn_schedule)
    commit: bool = True             # fix the groups once decided, so R_W clears the cut (learn_schedule)
    commit_groups: CommitGroups = "balanced"
    soft_epochs: float = 0.0        # R_D ramps from 0 to gamma_d over these epochs after warm-up
    epochs: int | None = None       # None: 10 epochs, at least MIN_TOTAL_STEPS (learn_schedule)
    max_steps: int | None = None    # stop after this many optimizer steps in total
    batch_size: int = 64
    lr: float | None = None         # None: SCRATCH_DEFAULTS or TRAINED_DEFAULTS (resolve_start)
    weight_decay: float = 1e-4
    schedule: Schedule = "cosine"
    lr_warmup_epochs: float | None = None  # linear learning-rate warm-up at the start of the run
    device: str = "cpu"
    nproc: int = 1                  # data-parallel ranks (learn_dist); the global batch is nproc x batch_size
    seed: int = 0
    out: Path | None = Path("runs/learn")   # the run directory; None: none (splitc.SplitNet keeps no files)
    resume: bool = False
    force: bool = False             # replace an existing --out as a whole
    overlap: float | None = None
    flip: bool = True
    checkpoint_every: int | None = None  # extra checkpoints every N steps (epoch ends always)
    log_every: int = 10
    weights: str | None = None      # trained weights to start from (graph.weights: file, torchvision:, timm)
    normalize: str | None = None    # input statistics (data.bundle.pick_stats); None: the data form's
    refit: bool | None = None       # refit the cut's kept weights to the dense network (learn.refit); None: from trained weights
    transplant: bool = False        # each group starts from its classes' most important channels (learn.transplant)

    def __post_init__(self) -> None:
        """Read the text spellings of the scope and the paths into their types (a value that does
        not read stays as given, for :func:`check_config` to name)."""
        fixed = {"groups": level_tuple(self.groups, int), "split_from": level_tuple(self.split_from, str),
                 "split_depth": level_tuple(self.split_depth, int),
                 "input_size": tuple(self.input_size) if isinstance(self.input_size, list) else self.input_size,
                 "out": Path(self.out) if isinstance(self.out, str) else self.out}
        if fixed["groups"] is None and self.preset is None:  # a preset brings its own groups
            fixed["groups"] = level_tuple(DEFAULT_GROUPS, int)
        for name, value in fixed.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class LearnResult:
    """What a finished run reports; the files under ``run_dir`` hold the detail."""
    run_dir: Path
    checkpoint: Path
    train_acc: float
    val_acc: float
    group_sizes: dict[str, list[int]]
    superclass_ari: float | None
    feature_ari: float | None       # the clustering reference of docs/METHOD.md §8
    steps: int
    classifier_energy_ari: float | None = None  # the same clustering of what R_W sees of each class
    cut_energy: float | None = None  # share of cut layers' weight energy between the argmax groups
    masked_val_acc: float | None = None  # accuracy with inter-group weights zeroed: the split's start
    learned: bool = True             # validation accuracy cleared chance (learn_health)
    warnings: tuple[str, ...] = ()   # one line each, already printed during the run
    init_groups: str | None = None   # how the groups were found (the default resolved)
    start_val_acc: float | None = None   # --weights: the trained model before anything changed
    oneshot_val_acc: float | None = None  # the start cut at once (a one-shot split), before clearing
    teacher: str | None = None       # the dense weights the split came from (finetune --distill)
    refit_val_acc: float | None = None   # the cut after learn.refit: the split's start (None: no refit)


def check_config(config: LearnConfig, names: Naming = FLAG) -> None:
    """Option mistakes fail before minutes of data loading and tracing; ``names`` spells the
    options as the caller wrote them (the flags, or SplitNet's keyword arguments)."""
    make_spec(config.groups, config.split_from, config.split_depth, config.preset, config.model, names)
    check_fields(config, names)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise SplitcError(f"{names('device')} cuda was asked for but no CUDA device is visible; use {names('device')} cpu.")
    if not 0 < config.gamma_d_rise <= 1:
        raise SplitcError(f"{names('gamma_d_rise')} must be in (0, 1], got {config.gamma_d_rise}.")
    check_numbers(config, names)
    if config.nproc < 1:
        raise SplitcError(f"{names('nproc')} must be at least 1, got {config.nproc}.")
    if config.device.startswith("cuda") and config.nproc > torch.cuda.device_count():
        raise SplitcError(f"{names('nproc')} {config.nproc} with {names('device')} cuda needs {config.nproc} GPUs; "
                          f"{torch.cuda.device_count()} are visible. Use fewer ranks or {names('device')} cpu.")
    init = names("init_groups")
    if config.init_groups not in (None, "learned") and config.assign == "random":
        raise SplitcError(f"{init} {config.init_groups} needs learned assignments; drop it or use "
                          f"{names('assign')} softmax / reduced-gradient.")
    if config.transplant and (config.refit is False or config.overlap is not None):
        raise SplitcError(f"{names('transplant')} hands each group the trained channels its refit then reproduces; "
                          f"drop {names.switch('refit', False) if config.refit is False else names('overlap')} "
                          f"or {names('transplant')}.")
    if config.init_groups in CUT_INITS and not config.commit:
        raise SplitcError(f"{init} {config.init_groups} commits its groups at the end of the warm-up; drop "
                          f"{names.switch('commit', False)}, or use {init} learned for the paper's schedule.")


def resolve_start(config: LearnConfig, trained: bool) -> LearnConfig:
    """Fill the options left unset with the defaults of the run's start (trained or not)."""
    if config.epochs == 0 and config.max_steps is None and not trained:
        raise SplitcError("--epochs 0 (a one-shot split: the groups read off the network and cut at once) "
                          "needs --weights of a trained network; give --epochs 1 or more.")   # a flag: SplitNet has none
    defaults = TRAINED_DEFAULTS if trained else SCRATCH_DEFAULTS
    unset = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    return replace(config, **unset)


def default_init_groups(config: LearnConfig, levels: int) -> str:
    """``--init-groups`` as given, else :data:`DEFAULT_INIT_GROUPS` where it applies, else
    ``learned``: ``cluster-cut`` places one level of groups and commits them, so a hierarchy
    (``levels > 1``), ``--no-commit`` (the paper's schedule) and SplitNet-Random keep ``learned``."""
    if config.init_groups is not None:
        return config.init_groups
    if DEFAULT_INIT_GROUPS in CUT_INITS and (levels > 1 or not config.commit or config.assign == "random"):
        return "learned"
    return DEFAULT_INIT_GROUPS


def check_numbers(config: LearnConfig, names: Naming = FLAG) -> None:
    """The ranges of the numeric options (their types: :func:`check_config`)."""
    positive = ("lr", "assign_lr_mult")
    non_negative = ("gamma_w", "gamma_d", "gamma_e", "gamma_d_end", "weight_decay", "warmup_epochs", "soft_epochs",
                    "lr_warmup_epochs")
    for name in (*positive, *non_negative):
        value = getattr(config, name)
        if value is not None and (value < 0 or (name in positive and value == 0)):   # None: resolve_start's
            kind = "a finite number > 0" if name in positive else "a finite number >= 0"
            raise SplitcError(f"{names(name)} must be {kind}, got {value}.")
    for name in ("batch_size", "max_steps"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise SplitcError(f"{names(name)} must be at least 1, got {value}.")
    if config.epochs is not None and config.epochs < 0:
        raise SplitcError(f"{names('epochs')} must be at least 0 (0: a one-shot split from --weights), got {config.epochs}.")
    if config.overlap is not None and not 0 < config.overlap < 1:
        raise SplitcError(f"{names('overlap')} must be in (0, 1), got {config.overlap}.")
