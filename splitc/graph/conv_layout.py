"""The grouped-conv weight layout, both ways: ``(out, in/k, ...)`` <-> dense ``(out, in, ...)``.

A conv with ``groups = k`` stores, for output block b, the weights from input block b only.
R_W needs the dense connectivity, the mask pass builds masks in the dense layout, the
permutation pass permutes there, and the one-device lowering goes the other way (a dense
block-diagonal conv to ``groups = k``). One value serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ConvLayout:
    """``k`` conv groups over ``out`` output and ``inp`` (full) input channels."""

    out: int
    inp: int
    k: int

    def __post_init__(self) -> None:
        if self.k < 1 or self.out % self.k or self.inp % self.k:
            raise ValueError(f"{self.out} outputs and {self.inp} inputs do not split into {self.k} conv groups")

    @property
    def out_per(self) -> int:
        return self.out // self.k

    @property
    def in_per(self) -> int:
        return self.inp // self.k

    def block_mask(self) -> np.ndarray:
        """(out, in) bool: True on the k diagonal blocks, where the conv has weights."""
        return np.kron(np.eye(self.k, dtype=bool), np.ones((self.out_per, self.in_per), dtype=bool))

    def to_dense(self, w: Tensor) -> Tensor:
        """``(out, in/k, ...)`` -> ``(out, in, ...)``, zeros off the blocks (differentiable)."""
        if self.k == 1:
            return w
        blocks = w.reshape(self.k, self.out_per, self.in_per, -1)                  # (k, o, i, rest)
        eye = torch.eye(self.k, dtype=w.dtype, device=w.device)
        return torch.einsum("koit,kl->kolit", blocks, eye).reshape(self.out, self.inp, *w.shape[2:])

    def from_dense(self, dense: Tensor, check: bool = True) -> Tensor:
        """``(out, in, ...)`` -> ``(out, in/k, ...)``: the diagonal blocks. With ``check``, a
        non-zero weight off the blocks (it would be lost) is an error."""
        if self.k == 1:
            return dense
        if check and bool(dense[~torch.as_tensor(self.block_mask())].any()):
            raise ValueError(f"weights lie off the {self.k} conv-group blocks")
        ob, ib = self.out_per, self.in_per
        return torch.cat([dense[b * ob:(b + 1) * ob, b * ib:(b + 1) * ib] for b in range(self.k)], dim=0)
