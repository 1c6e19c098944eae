"""``finetune --distill``: train the split model against the dense model it came from.

Hinton et al.'s loss, ``(1 - a) * CE(student, y) + a * T^2 * KL(softmax(teacher / T) ||
softmax(student / T))``; the T^2 keeps the soft term's gradient on the scale of the hard one.
The teacher is the dense network whose weights the split was cut from: ``learn --weights``'s
trained model, or for a run from scratch the dense weights when its regularizers started
(``learn/start.py`` writes them; ``split`` copies them into the split directory as
``teacher.safetensors`` with their SHA-256 in split.json). It runs in eval mode, under
``no_grad``, on the same batch; with ``--nproc`` every rank computes the same teacher logits,
as it computes the same student logits.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from splitc.core.errors import SplitcError
from splitc.core.files import TEACHER
from splitc.core.outputs import sha256_of

DEFAULT_T = 4.0        # Hinton's common defaults; the from-trained table measures them here
DEFAULT_ALPHA = 0.9


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, t: float, alpha: float) -> torch.Tensor:
    """(1 - a) CE + a T^2 KL(teacher/T || student/T), batch-mean."""
    hard = F.cross_entropy(student, y)
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * t * t * soft


def load_teacher(folder: Path, meta: dict[str, Any], dense: nn.Module, device: torch.device) -> nn.Module:
    """The dense teacher: a copy of the split's unsplit graph with the recorded teacher weights
    (their SHA-256 checked), on ``device``, in eval mode and frozen."""
    record = meta.get("teacher")
    path = folder / TEACHER
    if not record or not path.is_file():
        raise SplitcError(f"{folder} records no teacher (dense weights the split came from); split a learn run of "
                          "this splitc again (it writes teacher.safetensors), or finetune without --distill.")
    if sha256_of(path) != record["sha256"]:
        raise SplitcError(f"{path} does not match the SHA-256 in split.json: the teacher was changed; "
                          "split again, or finetune without --distill.")
    teacher = copy.deepcopy(dense).to(device)
    state = load_file(str(path))
    own = teacher.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise SplitcError(f"{path} does not fit the unsplit model of {folder}; split again.")
    teacher.load_state_dict(state)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()
