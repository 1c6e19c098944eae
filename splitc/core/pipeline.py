"""The pipeline, in order: every pass from a model to a deployed split, one line each.

This file is the one list. Each stage runs its passes through a :class:`PassRunner`, which
times them (``splitc split --json`` and ``splitc export --json`` report ``pass_seconds``) and,
when a pass fails with a bug rather than a user error, names the pass in a note on the error
(the exception keeps its type; the traceback ends with "in pass 'partition' ..."). The list
lives at the bottom layer so that every stage (graph, compile, deploy) can use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from splitc.core.errors import SplitcError

PASSES: tuple[tuple[str, str], ...] = (
    # -- the front half (splitc/graph/analysis.py): MODEL -> Analysis
    ("trace", "torch.fx symbolic trace in eval mode (graph/frontend.py)"),
    ("channel graph", "label interpretation by the op-rule registry -> ChannelIR (graph/channel_graph.py)"),
    ("scope", "the spaces to split per tree level, closed downstream (graph/scope.py)"),
    # -- the split (splitc/compile/split_run.py, split.py): Analysis + assignments -> SplitModel
    ("harden", "soft assignments -> HardAssignment: argmax, fuzzy nodes (passes/harden.py)"),
    ("mask", "inter-group weights zeroed: the reference the split must equal (passes/mask.py)"),
    ("permute", "channels reordered so every group is contiguous (passes/permute_channels.py)"),
    ("partition", "trunk, tree of branches, merge as standalone GraphModules (passes/partition.py)"),
    ("assemble", "SplitModel wired by its SplitPlan; no shared storage (passes/assemble.py)"),
    ("check", "split vs masked model on fresh random inputs (compile/split_run.py)"),
    ("save", "split.json + safetensors + split.splitc (torch.export programs), atomically (compile/split_dir.py)"),
    # -- the export (splitc/deploy/export.py): split directory -> ONNX artifact
    ("load split", "the split model from split.splitc with its weights, checked; no re-trace (compile/split_dir.py)"),
    ("lower", "one dense graph, grouped convs where measured faster (passes/lower_grouped.py, deploy/lowering.py)"),
    ("export subgraphs", "one ONNX file per subgraph (deploy/export.py)"),
    ("export unsplit", "the unsplit (masked) model as ONNX, the baseline (deploy/export.py)"),
    ("fuse", "every subgraph in one ONNX graph, for one device (deploy/export.py)"),
    ("choose graph", "fused vs lowered graph timed on the device: the one-device graph (deploy/lowering.py)"),
    ("manifest", "placement, checksums and wiring in manifest.json (deploy/manifest.py)"),
)
PASS_NAMES = tuple(name for name, _ in PASSES)

T = TypeVar("T")


class PassRunner:
    """Runs passes by name, in any stage; keeps the seconds each one took."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self.step(name):
            return fn(*args, **kwargs)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if name not in PASS_NAMES:
            raise ValueError(f"unknown pass {name!r}; the pipeline's passes are {PASS_NAMES}")
        start = time.perf_counter()
        try:
            yield
        except SplitcError:
            raise  # a user error says what to fix itself
        except Exception as exc:
            # a bug: the same exception, so callers and tests see its type, with the pass named
            if not any(note.startswith("in pass ") for note in getattr(exc, "__notes__", ())):
                exc.add_note(f"in pass '{name}' of the pipeline (splitc/core/pipeline.py)")
            raise
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def report(self) -> dict[str, float]:
        """Seconds per pass, in pipeline order, rounded for a JSON summary."""
        return {name: round(self.seconds[name], 3) for name in PASS_NAMES if name in self.seconds}
