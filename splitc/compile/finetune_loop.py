"""The single-process finetune loop (``splitc finetune`` on one device; the conventions are in
``compile/finetune.py``): prepare the run, train with the shared learn conventions, checkpoint,
and write ``finetuned.safetensors`` back into the split directory."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from splitc.core.checkpoint import append_metrics, load_checkpoint, save_checkpoint, trim_metrics
from splitc.data.batches import accuracy, epoch_loader
from splitc.data.loaders import load_data
from splitc.core.errors import SplitcError
from splitc.learn.optim import schedule_at
from splitc.compile.distill import DEFAULT_ALPHA, DEFAULT_T, distill_loss, load_teacher
from splitc.compile.split_dir import FINETUNED_WEIGHTS, SPLIT_JSON, SPLIT_WEIGHTS, load_split, read_meta, write_json, write_tensors
from splitc.core.files import FINETUNE_CHECKPOINT, FINETUNE_METRICS
from splitc.graph.split_model import module_key

CHECKPOINT, METRICS = FINETUNE_CHECKPOINT, FINETUNE_METRICS
# Epochs when --epochs is not given: after a split learned from scratch, and after one cut from
# trained weights (split.json "trained_start"), where the Fashion-MNIST table gave every row 4
# epochs after a 15-epoch teacher (docs/RESULTS.md): the from-trained path stays under a third of
# the teacher's training time.
DEFAULT_EPOCHS = {"scratch": 10, "trained": 4}
# The branches' learning rate as a multiple of --lr when --branch-lr-mult is not given (the
# trunk and the merge train at --lr). A split learned from scratch trained its branches with its
# trunk: 1. A split cut from trained weights has branches the cut just changed and a trunk that
# is the teacher's: 4, which ended above 1 in every seed of both data sets at G = 4 (Fashion-MNIST
# +0.31 pp, synthetic:families +0.26 pp, 3 seeds each; docs/RESULTS.md, "The branches' learning rate").
DEFAULT_BRANCH_LR_MULT = {"scratch": 1.0, "trained": 4.0}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class FinetuneConfig:
    split_dir: str
    data: str = "synthetic"
    epochs: int | None = None       # None: DEFAULT_EPOCHS for the split's start
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 0.01                # the peak (cosine); 0.05 won on Fashion-MNIST, lost on families
    weight_decay: float = 5e-4      # the paper's finetuning value
    momentum: float = 0.9
    schedule: str = "cosine"
    device: str = "cpu"
    seed: int = 0
    flip: bool = True
    resume: bool = False
    force: bool = False             # start over from the split's weights, replacing a finetune
    nproc: int = 1                  # model-parallel ranks (finetune_dist.py); 1: this process
    dtype: str = "float32"         # float64: for checks that compare runs summing in different orders
    distill: bool = False           # train against the dense teacher the split came from (compile.distill)
    distill_t: float = DEFAULT_T
    distill_alpha: float = DEFAULT_ALPHA
    normalize: str | None = None    # None: the learn run's (split.json "normalize")
    eval_every: int = 0             # validate after every N epochs; 0: after the last one only
    branch_lr_mult: float | None = None   # the branches' lr / lr; None: DEFAULT_BRANCH_LR_MULT for the start


@dataclass(frozen=True)
class FinetuneResult:
    split_dir: str
    train_acc: float | None  # over this invocation's steps; None when there were none
    val_acc: float
    steps: int
    weights: str


class Replica:
    """This process's part of a finetune: here all of it. ``finetune_dist.RankReplica`` is one
    rank's (a trunk replica and its own branches); the loop calls the same hooks either way."""

    world = 1       # the loss is divided by it before backward (finetune_dist's docstring says why)
    writer = True   # this process writes the metrics, the checkpoint and the weights

    def sync_grads(self) -> None:
        """Called after backward, before the optimizer step."""

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        return model.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        return optimizer.state_dict()


@dataclass(frozen=True)
class Run:
    """What a finetune fixes before its first step; a distributed rank builds the same one."""

    config: FinetuneConfig
    folder: Path
    meta: dict[str, Any]
    bundle: Any                 # data.DataBundle
    device: torch.device
    steps_per_epoch: int
    total: int
    identity: dict[str, Any]    # what --resume must match
    teacher: torch.nn.Module | None = None   # --distill: the dense model, eval mode, frozen


def finetune_single(config: FinetuneConfig, progress: bool = True) -> FinetuneResult:
    """The finetune in this process, on one device (``finetune.finetune`` picks this or the ranks)."""
    folder = Path(config.split_dir)
    meta = read_meta(folder)
    meta = claim_split_dir(folder, meta, config)
    # --resume continues from the checkpoint; a new run starts from the weights as split
    loaded = load_split(folder, weights=SPLIT_WEIGHTS)
    run = prepare(config, meta, loaded.input_size, torch.device(config.device), loaded)
    model = to_run(loaded.model, run)
    optimizer = make_optimizer(model, run.config)
    ckpt = restart(run)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    return train(run, model, optimizer, ckpt["step"] if ckpt else 0, Replica(), progress)


def prepare(config: FinetuneConfig, meta: dict[str, Any], input_size: tuple[int, int, int],
            device: torch.device, loaded: Any = None) -> Run:
    """What the loop fixes before its first step; ``loaded`` (the split as loaded) gives the
    teacher's architecture for --distill."""
    config = replace(config, epochs=default_epochs(config, meta),   # split.json records what ran
                     branch_lr_mult=default_branch_lr_mult(config, meta))
    bundle = load_data(config.data, input_size, seed=config.seed, flip=config.flip,
                       normalize=config.normalize or meta.get("normalize"))
    _check_data(meta, bundle, config)
    torch.manual_seed(config.seed)
    steps_per_epoch = max(1, len(bundle.train) // config.batch_size)
    total = config.max_steps or config.epochs * steps_per_epoch
    identity = {"split": _digest(meta["plan"]), "data": config.data, "distill": config.distill,
                "branch_lr_mult": config.branch_lr_mult}   # it fixes the optimizer's parameter groups
    teacher = None
    if config.distill:
        teacher = load_teacher(Path(config.split_dir), meta, loaded.unsplit, device)
        teacher = teacher.to(DTYPES[config.dtype])
    return Run(config, Path(config.split_dir), meta, bundle, device, steps_per_epoch, total, identity, teacher)


def default_epochs(config: FinetuneConfig, meta: dict[str, Any]) -> int:
    """``--epochs``, else :data:`DEFAULT_EPOCHS` for a split from trained weights or from scratch."""
    if config.epochs is not None:
        return config.epochs
    return DEFAULT_EPOCHS["trained" if meta.get("trained_start") else "scratch"]


def default_branch_lr_mult(config: FinetuneConfig, meta: dict[str, Any]) -> float:
    """``--branch-lr-mult``, else :data:`DEFAULT_BRANCH_LR_MULT` for the split's start."""
    if config.branch_lr_mult is not None:
        if not config.branch_lr_mult > 0:
            raise SplitcError(f"--branch-lr-mult must be positive, got {config.branch_lr_mult}.")
        return float(config.branch_lr_mult)
    return DEFAULT_BRANCH_LR_MULT["trained" if meta.get("trained_start") else "scratch"]


def branch_prefixes(plan: Any) -> tuple[str, ...]:
    """The parameter-name prefixes of ``plan``'s branches in a split model (``parts.g0.``...)."""
    return tuple(f"parts.{module_key(s.name)}." for s in plan.branches)


def lr_groups(names: list[str], prefixes: tuple[str, ...], apart: bool) -> list[list[str]]:
    """``names`` in the optimizer's parameter groups: one group, or with the branches ``apart``
    (a branch multiple other than 1) the trunk and merge then the branches, each in the given
    order. One rule for the single process and the ranks, whose checkpoints share a format."""
    if not apart:
        return [list(names)]
    return [[n for n in names if not n.startswith(prefixes)], [n for n in names if n.startswith(prefixes)]]


def to_run(model: torch.nn.Module, run: Run) -> torch.nn.Module:
    """The model on the run's device in its dtype; inputs (training and validation) are cast to it."""
    dtype = DTYPES[run.config.dtype]
    model = model.to(run.device, dtype)
    model.register_forward_pre_hook(lambda _, args: tuple(a.to(dtype) for a in args))
    return model


def make_optimizer(model: torch.nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; the branches in their own group at ``branch_lr_mult`` x lr
    (``lr_mult`` in the group, which the schedule scales from)."""
    params = dict(model.named_parameters())
    mult = 1.0 if config.branch_lr_mult is None else config.branch_lr_mult
    groups = lr_groups(list(params), branch_prefixes(model.plan), apart=mult != 1.0)
    return finetune_sgd([([params[n] for n in names], m) for names, m in zip(groups, (1.0, mult))], config.lr,
                        config.momentum, config.weight_decay)


def finetune_sgd(groups: list[tuple[list[torch.nn.Parameter], float]], lr: float,
                 momentum: float = FinetuneConfig.momentum,
                 weight_decay: float = FinetuneConfig.weight_decay) -> torch.optim.SGD:
    """finetune's optimiser over ``(parameters, lr multiple)`` groups: Nesterov SGD, each group at
    multiple x ``lr`` with ``lr_mult`` kept for the schedule. The benchmarks' baselines (a pruned
    network, a dense view) train with this too, so they follow any change to finetune's."""
    return torch.optim.SGD([{"params": params, "lr": lr * m, "lr_mult": m} for params, m in groups], lr=lr,
                           momentum=momentum, weight_decay=weight_decay, nesterov=True)


def restart(run: Run, writer: bool = True) -> dict[str, Any] | None:
    """The checkpoint to continue from (its RNG state restored), or None for a new run; the
    writer trims the metrics journal back to it, or starts a new journal."""
    metrics = run.folder / METRICS
    if not run.config.resume:
        if writer and metrics.exists():
            metrics.unlink()
        return None
    ckpt = load_checkpoint(run.folder / CHECKPOINT, run.identity, kind="finetune")
    torch.set_rng_state(ckpt["rng"])
    if writer:
        trim_metrics(metrics, ckpt["step"])
    return ckpt


def train(run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
          replica: Replica, progress: bool) -> FinetuneResult:
    """The loop from ``step`` to the last step: a checkpoint after every epoch, a validation
    after the last one and every ``eval_every`` epochs (one pass over the validation set costs
    about a third of a training epoch over as many images: on a 10,000-image Fashion-MNIST subset
    a validation per epoch was an eighth of the default finetune)."""
    config = run.config
    scheduler = schedule_at(optimizer, config.lr, config.schedule, run.total, step)
    bar = tqdm(total=run.total, initial=step, desc="finetune", disable=not progress, dynamic_ncols=True)
    correct = seen = 0
    val = None
    while step < run.total:
        epoch = step // run.steps_per_epoch
        model.train()
        for x, y in epoch_loader(run.bundle.train, config.seed, epoch, config.batch_size, run.steps_per_epoch,
                                 step % run.steps_per_epoch):
            logits, y, loss = train_step(run, model, optimizer, replica, step, x, y)
            scheduler.step()
            step += 1
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}")
            _log(run, replica, {"step": step, "epoch": epoch, "loss": loss.item(),
                                "lr": optimizer.param_groups[0]["lr"]})
            if step >= run.total:
                break
        _save(run, replica, model, optimizer, step)
        if step >= run.total or (config.eval_every and (epoch + 1) % config.eval_every == 0):
            val = accuracy(model, run.bundle.val, run.device)
            _log(run, replica, {"step": step, "epoch": epoch, "val_acc": val, "kind": "epoch_end"})
            bar.set_postfix(val_acc=f"{val:.3f}")
    bar.close()
    return _finish(run, model, replica, step, correct / seen if seen else None, val)


def train_step(run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer, replica: Replica, step: int,
          x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = x.to(run.device), y.to(run.device)
    logits = model(x)
    if run.teacher is None:
        loss = F.cross_entropy(logits, y)
    else:
        with torch.no_grad():
            target = run.teacher(x.to(DTYPES[run.config.dtype]))
        loss = distill_loss(logits, target, y, run.config.distill_t, run.config.distill_alpha)
    optimizer.zero_grad(set_to_none=True)
    (loss / replica.world).backward()  # exact for world 1: x / 1.0 == x
    replica.sync_grads()
    optimizer.step()
    return logits, y, loss


def _log(run: Run, replica: Replica, record: dict[str, Any]) -> None:
    if replica.writer:
        append_metrics(run.folder / METRICS, record)


def _finish(run: Run, model: torch.nn.Module, replica: Replica, step: int,
            train_acc: float | None, val_acc: float | None) -> FinetuneResult:
    """Write the weights and split.json with the last epoch's validation (validated here when a
    resumed run that was already complete trained nothing: train_acc and val_acc None)."""
    if val_acc is None:
        val_acc = accuracy(model, run.bundle.val, run.device)
    state = replica.model_state(model)
    if replica.writer:
        write_tensors(run.folder / FINETUNED_WEIGHTS, state)
        write_json(run.folder / SPLIT_JSON, {**run.meta, "weights": FINETUNED_WEIGHTS,
                                             "finetune": {**asdict(run.config), "val_acc": val_acc, "steps": step}})
    return FinetuneResult(str(run.folder), train_acc, val_acc, step, FINETUNED_WEIGHTS)


def claim_split_dir(folder: Path, meta: dict[str, Any], config: FinetuneConfig) -> dict[str, Any]:
    """A finetune writes into its split dir: an earlier finetune there is continued (--resume)
    or replaced (--force), never overwritten silently."""
    if config.resume and config.force:
        raise SplitcError("--resume continues the finetune in the split dir and --force replaces it; "
                          "pass one of them.")
    earlier = [folder / name for name in (CHECKPOINT, FINETUNED_WEIGHTS) if (folder / name).exists()]
    if earlier and not config.resume and not config.force:
        raise SplitcError(f"{earlier[0]} holds an earlier finetune of this split; pass --resume to "
                          "continue it, or --force to start over from the split's weights.")
    if config.force and earlier:  # split.json first, so a kill never leaves it naming a lost file
        meta = {**{k: v for k, v in meta.items() if k != "finetune"}, "weights": SPLIT_WEIGHTS}
        write_json(folder / SPLIT_JSON, meta)
        for name in (CHECKPOINT, METRICS, FINETUNED_WEIGHTS):
            (folder / name).unlink(missing_ok=True)
    return meta


def _check_data(meta: dict[str, Any], bundle, config: FinetuneConfig) -> None:
    if bundle.num_classes != meta["num_classes"]:
        raise SplitcError(f"--data {config.data} has {bundle.num_classes} classes but the split model "
                          f"has {meta['num_classes']}; finetune on the data it was learned on.")
    names = meta.get("class_names") or []
    if names and not all(n.isdigit() for n in names) and list(bundle.class_names) != names:
        raise SplitcError(f"--data {config.data} names its classes differently from the split model "
                          f"({bundle.class_names[0]!r} vs {names[0]!r}); use the data it was learned on.")


def _digest(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def _save(run: Run, replica: Replica, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          step: int) -> None:
    state, optim = replica.model_state(model), replica.optimizer_state(optimizer)
    if replica.writer:
        save_checkpoint(run.folder / CHECKPOINT, {"kind": "finetune", "identity": run.identity, "model": state,
                                                  "optimizer": optim, "step": step, "rng": torch.get_rng_state()})
