"""The one relative-error measure of every equivalence check (split vs masked, ONNX vs PyTorch),
and the one fingerprint of a model's tensors."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import torch


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``‖got − want‖ / ‖want‖``; infinite when either side is not finite, so that a NaN never
    passes a tolerance (``max`` would drop it and a broken graph would verify at 0.0).
    Computed in float64: a float32 norm overflows at ~1e19 per entry, and an untrained
    torchvision inception_v3 has finite float32 logits of ~1e25 (its float32 norm is inf)."""
    got, want = torch.as_tensor(got).double(), torch.as_tensor(want).double()
    err = float((got - want).norm() / want.norm().clamp_min(1e-30))
    return err if math.isfinite(err) else math.inf


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """One SHA-256 over a state dict's names, dtypes, shapes and bytes: a split's weights as
    compiled, so that a value trained since (``splitc.SplitNet.compile``, then the user's loop)
    is told apart from its masked reference's."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
