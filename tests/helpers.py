"""Helpers shared by the tests: relative error, random weights, analysis of a model."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import gc
import os
import tempfile
import warnings

import numpy as np
import torch
import torch.nn as nn

from splitc.graph import zoo
from splitc.graph.channel_graph import build_channel_graph
from splitc.graph.channel_ir import ChannelIR
from splitc.graph.frontend import trace

# Reduced input sizes that every listed torchvision model accepts.
SMALL_INPUT = {"inception_v3": (3, 75, 75), "alexnet": (3, 64, 64)}
FIXED_INPUT = ("vit_", "swin_", "maxvit_")  # these need their native 224x224


# Models at or above this many parameters run one at a time across xdist workers: under -n 2 the
# kernel killed workers on vgg19, vit_l_16, vit_l_32 and regnet_y_128gf (14.5 GB peak alone) on 24 GiB.
HEAVY_PARAMS = 100_000_000


@functools.lru_cache(maxsize=None)
def param_count(name: str) -> int:
    """Parameters of a zoo model, built on the meta device (on the CPU where meta fails: RegNet)."""
    try:
        with torch.device("meta"):
            return sum(p.numel() for p in zoo.build(name).parameters())
    except (NotImplementedError, RuntimeError):
        count = sum(p.numel() for p in zoo.build(name).parameters())
        release_memory()
        return count


def release_memory() -> None:
    """Hand freed heap back to the OS: after vit_l_16's test glibc kept 3.5 of its 5.9 GB peak
    resident (0.8 GB after ``malloc_trim``), and an xdist worker that had run regnet_y_128gf
    kept enough to get the next heavy model beside it OOM-killed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@contextlib.contextmanager
def heavy_model_slot(name: str):
    """Hold a machine-wide lock while a model of HEAVY_PARAMS or more is under test, so the slow
    matrices fit in memory under ``-n 2``; smaller models pass straight through. Either way the
    freed memory goes back to the OS afterwards."""
    with machine_slot() if param_count(name) >= HEAVY_PARAMS else contextlib.nullcontext():
        try:
            yield
        finally:
            release_memory()


@contextlib.contextmanager
def machine_slot():
    """A lock every xdist worker on this machine shares: held by the heavy models' tests and by
    the timed acceptance run, so none of them runs beside another."""
    path = os.path.join(tempfile.gettempdir(), f"splitc-tests-heavy-{os.getuid()}.lock")
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def input_size_for(name: str) -> tuple[int, int, int]:
    if name.startswith(FIXED_INPUT):
        return (3, 224, 224)
    spec = zoo.resolve(name)
    if spec.source == "builtin":
        return spec.default_input_size
    return SMALL_INPUT.get(name, (3, 64, 64))


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    """torch.randn returns an exact 0.0 about once in 10 million draws (Box-Muller at u = 1);
    tests that count a masked model's nonzero weights must not see one by chance."""
    return torch.where(x == 0, torch.full_like(x, 0.5), x)


def randomize(model: nn.Module, seed: int | None = None) -> nn.Module:
    """Give every parameter and BN statistic a random non-trivial value, so zero-initialised
    heads or gammas cannot hide a wrong permutation. The scales keep deep nets well
    conditioned: with gammas ~ N(1, 1), efficientnet_b7's logits cancelled so badly that float64
    round-off reached 1.5e-5."""
    gen = torch.Generator().manual_seed(seed if seed is not None else int(np.random.SeedSequence().entropy % 2**31))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:  # fan-in scaled, so activations stay O(1) through deep nets
                p.copy_(_nonzero(torch.randn(p.shape, generator=gen)) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):  # norm gammas: near 1, all different
                p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return model.eval()


def analyse(model: nn.Module, input_size) -> tuple[torch.fx.GraphModule, ChannelIR]:
    gm = trace(model, input_size=tuple(input_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir = build_channel_graph(gm, tuple(input_size))
    return gm, ir
