"""Frontend: turn an ``nn.Module`` into the model IR, a traced ``torch.fx.GraphModule``.

Tracing is symbolic (``torch.fx.symbolic_trace``), in eval mode so that train-only branches
(auxiliary heads) stay out of the graph. A model that cannot be traced gets one line naming the
construct that failed and the fix: make the offending submodule a leaf, or ``torch.fx.wrap``
the offending function.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

import torch.fx as fx
import torch.nn as nn

from splitc.core.errors import SplitcError


class LeafTracer(fx.Tracer):
    """A tracer that also treats the given module types as leaves (not traced through)."""

    def __init__(self, leaf_types: Sequence[type] = ()) -> None:
        super().__init__()
        self.leaf_types = tuple(leaf_types)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        # A BatchNorm subclass (timm's BatchNormAct2d) traced through becomes
        # F.batch_norm(training=False) under eval-mode tracing: frozen statistics in learn and
        # finetune. As a leaf it keeps its train/eval behaviour and gets the BatchNorm rule.
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaf_types: Sequence[type] = ()) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode); raise SplitcError naming what failed."""
    was_training = model.training
    model.eval()
    try:
        tracer = LeafTracer(leaf_types)
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported as a user error
        raise SplitcError(_describe_trace_failure(model, exc)) from None
    finally:
        model.train(was_training)
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def _describe_trace_failure(model: nn.Module, exc: Exception) -> str:
    """One line: what failed, where in the user's code, and how to fix it."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    where = f" at {frames[-1].filename}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""
    return (
        f"cannot trace {type(model).__name__} with torch.fx: {first_line}{where}. "
        "Fix: make that submodule a leaf (pass its type as a leaf module) or mark the function "
        "with torch.fx.wrap so tracing does not enter it."
    )


def parse_input_size(text: str) -> tuple[int, int, int]:
    """Parse ``C,H,W`` (as given to --input-size)."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0:
        raise SplitcError(f"--input-size must be C,H,W with positive integers, got {text!r}.")
    return parts  # type: ignore[return-value]
