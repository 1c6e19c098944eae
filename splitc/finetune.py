"""``splitc finetune``: train a split model after the split (METHOD.md §6).

The split removed the inter-group weights that learning had only shrunk, so a short
finetune recovers the accuracy they carried. Same conventions as ``learn``: SGD with momentum
and a cosine or step schedule, a tqdm bar, JSON-lines metrics, an atomic checkpoint after every
epoch, ``--resume`` after a kill, and a deterministic data order per (seed, epoch). The paper
finetunes with weight decay 5e-4, so that is the default here.

The result goes back into the split directory: ``finetuned.safetensors`` becomes its current
weights (split.json records it), and ``split.safetensors`` keeps the weights as split, which
``splitc verify`` checks against the masked model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import append_metrics, load_checkpoint, save_checkpoint, trim_metrics
from .data import accuracy, epoch_loader, load_data
from .errors import SplitcError
from .learn_optim import lr_factor
from .split_dir import FINETUNED_WEIGHTS, SPLIT_JSON, load_split, read_meta, write_json, write_tensors

CHECKPOINT = "finetune.pt"
METRICS = "finetune_metrics.jsonl"


@dataclass(frozen=True)
class FinetuneConfig:
    split_dir: str
    data: str = "synthetic"
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 5e-4      # the paper's finetuning value
    momentum: float = 0.9
    schedule: str = "cosine"
    device: str = "cpu"
    seed: int = 0
    flip: bool = True
    resume: bool = False


@dataclass(frozen=True)
class FinetuneResult:
    split_dir: str
    train_acc: float | None  # over this invocation's steps; None when there were none
    val_acc: float
    steps: int
    weights: str


def finetune(config: FinetuneConfig, progress: bool = True) -> FinetuneResult:
    folder = Path(config.split_dir)
    meta = read_meta(folder)
    loaded = load_split(folder)  # the current weights: a second finetune continues the first
    bundle = load_data(config.data, loaded.input_size, seed=config.seed, flip=config.flip)
    _check_data(meta, bundle, config)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = loaded.model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    steps_per_epoch = max(1, len(bundle.train) // config.batch_size)
    total = config.max_steps or config.epochs * steps_per_epoch
    identity = {"split": _digest(meta["plan"]), "data": config.data}
    step = 0
    if config.resume:
        ckpt = load_checkpoint(folder / CHECKPOINT, identity, kind="finetune")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        torch.set_rng_state(ckpt["rng"])
        trim_metrics(folder / METRICS, step)
    elif (folder / METRICS).exists():
        (folder / METRICS).unlink()
    bar = tqdm(total=total, initial=step, desc="finetune", disable=not progress, dynamic_ncols=True)
    correct = seen = 0
    while step < total:
        epoch = step // steps_per_epoch
        model.train()
        for x, y in epoch_loader(bundle.train, config.seed, epoch, config.batch_size, steps_per_epoch,
                                 step % steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(config.schedule, step, total)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}")
            append_metrics(folder / METRICS, {"step": step, "epoch": epoch, "loss": loss.item(),
                                              "lr": optimizer.param_groups[0]["lr"]})
            if step >= total:
                break
        _save(folder, identity, model, optimizer, step)
        val = accuracy(model, bundle.val, device)
        append_metrics(folder / METRICS, {"step": step, "epoch": epoch, "val_acc": val, "kind": "epoch_end"})
        bar.set_postfix(val_acc=f"{val:.3f}")
    bar.close()
    val_acc = accuracy(model, bundle.val, device)
    train_acc = correct / seen if seen else None  # a resumed run that was already complete trained nothing
    write_tensors(folder / FINETUNED_WEIGHTS, model.state_dict())
    write_json(folder / SPLIT_JSON, {**meta, "weights": FINETUNED_WEIGHTS,
                                     "finetune": {**asdict(config), "val_acc": val_acc, "steps": step}})
    return FinetuneResult(str(folder), train_acc, val_acc, step, FINETUNED_WEIGHTS)


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


def _save(folder: Path, identity: dict[str, Any], model, optimizer, step: int) -> None:
    save_checkpoint(folder / CHECKPOINT, {"kind": "finetune", "identity": identity,
                                          "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                          "step": step, "rng": torch.get_rng_state()})
