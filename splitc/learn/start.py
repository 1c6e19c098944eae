"""Where a learn run starts: random weights, or the user's trained ones (``--weights``, issue 26).

From trained weights the network is measured first (``start_val_acc``). If it clears chance
(:mod:`splitc.learn.health`'s rule) the run takes the trained-start recipe
(:data:`~splitc.learn.config.TRAINED_DEFAULTS`: no plain warm-up, the class groups read off the
trained network at step 0 and cut at once, no epochs unless asked: a one-shot split); if not (e.g. the classifier was
re-initialised for another class count) it says so and keeps the from-scratch recipe.

The dense weights at the moment the regularizers start (the trained start itself, or the end of
a warm-up) are the teacher of ``finetune --distill``: written once as ``teacher.safetensors`` in
the run directory, with their SHA-256 in assignment.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from splitc.core.files import TEACHER
from splitc.core.outputs import atomic_write, sha256_of
from splitc.data.batches import accuracy
from splitc.data.bundle import DataBundle
from splitc.graph import zoo
from splitc.graph.weights import LoadedWeights, load_weights
from splitc.learn.health import near_chance



@dataclass(frozen=True)
class Start:
    """The model a run starts from and what is known about it before the first step."""

    model: nn.Module
    weights: LoadedWeights | None = None
    val_acc: float | None = None      # measured only for --weights
    trained: bool = False             # --weights that clear chance: the trained-start recipe
    notes: tuple[str, ...] = ()       # one line each (a re-initialised classifier, an untrained start)


def build_start(model_name: str, weights: str | None, bundle: DataBundle, device: torch.device) -> Start:
    """Build ``model_name`` for the data's classes and load ``weights`` into it (when given)."""
    model = zoo.build(model_name, bundle.num_classes)
    if weights is None:
        return Start(model)
    loaded = load_weights(model, weights, model_name)
    acc = accuracy(model.to(device), bundle.val, device)
    trained = not near_chance(acc, bundle.num_classes, len(bundle.val))
    notes = list(loaded.notes)
    if not trained:
        notes.append(f"--weights {weights} start at validation accuracy {acc:.3f}, near chance on this data: "
                     "the run takes the from-scratch recipe (a plain warm-up first)")
    return Start(model, loaded, acc, trained, tuple(notes))


def save_teacher(model: nn.Module, run_dir: Path) -> str:
    """Write the dense weights the split will come from; returns their SHA-256."""
    from safetensors.torch import save_file

    path = run_dir / TEACHER
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return sha256_of(path)
