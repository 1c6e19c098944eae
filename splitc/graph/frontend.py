"""Frontend: turn an ``nn.Module`` into the model IR, a traced ``torch.fx.GraphModule``.

Tracing is symbolic (``torch.fx.symbolic_trace``), in eval mode so that train-only branches
(auxiliary heads) stay out of the graph. A model whose forward branches on tensor *shapes*
(timm's TF-style "same" padding, VGG's pre-logits pooling) cannot be traced symbolically; given
the input size, :class:`ShapeTracer` retraces it with the shapes of every dimension but the
batch known (computed on a sample input as the graph grows), so shape arithmetic and branches
on shapes run in Python and the graph holds for that input size, which splitc fixes anyway. A
branch on tensor *values*, or any other failure, gets one line naming the construct that failed
and the fix: make the offending submodule a leaf, or ``torch.fx.wrap`` the offending function.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from splitc.core.errors import SplitcError
from splitc.graph.opkinds import user_functions, user_leaf_types


class LeafTracer(fx.Tracer):
    """A tracer that also treats the given module types as leaves (not traced through), and the
    user's registered modules and functions (``splitc.register_module`` / ``register_function``):
    they keep their own forward and get their declared kind's rule."""

    def __init__(self, leaf_types: Sequence[type] = ()) -> None:
        super().__init__(autowrap_functions=user_functions())
        self.leaf_types = tuple(leaf_types) + user_leaf_types()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        # A BatchNorm subclass (timm's BatchNormAct2d) traced through becomes
        # F.batch_norm(training=False) under eval-mode tracing: frozen statistics in learn and
        # finetune. As a leaf it keeps its train/eval behaviour and gets the BatchNorm rule.
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return True
        return super().is_leaf_module(m, qualname)


class ShapeProxy(fx.Proxy):
    """A proxy whose ``size()``, ``shape``, ``dim()`` and ``ndim`` are concrete Python ints, except
    the batch size, which stays a graph value (``size(0)``) so the graph runs at any batch."""

    def size(self, dim: int | None = None) -> Any:
        shape = self.tracer.concrete(self.node).shape
        if dim is None:
            return (self.tracer.create_proxy("call_method", "size", (self, 0), {}), *shape[1:])
        if dim in (0, -len(shape)):
            return self.tracer.create_proxy("call_method", "size", (self, 0), {})
        return int(shape[dim])

    @property
    def shape(self) -> Any:
        return self.size()

    def dim(self) -> int:
        return self.tracer.concrete(self.node).dim()

    @property
    def ndim(self) -> int:
        return self.dim()


class ShapeTracer(LeafTracer):
    """:class:`LeafTracer` with concrete shapes: each node's value on ``example`` is computed
    once, when a shape is first asked of it (one forward in all, node by node)."""

    def __init__(self, example: torch.Tensor, leaf_types: Sequence[type] = ()) -> None:
        super().__init__(leaf_types)
        self.example = example
        self.interpreter: fx.Interpreter | None = None
        self.evaluating = False   # computing values: modules run and parameters read as usual

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ShapeProxy(node, self)

    def call_module(self, m: nn.Module, forward, args, kwargs) -> Any:
        return forward(*args, **kwargs) if self.evaluating else super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        return attr_val if self.evaluating else super().getattr(attr, attr_val, parameter_proxy_cache)

    def concrete(self, target: fx.Node) -> Any:
        if self.interpreter is None:
            self.interpreter = fx.Interpreter(self.root, garbage_collect_values=False, graph=self.graph)
            self.interpreter.args_iter = iter([self.example])
        env = self.interpreter.env
        self.evaluating = True
        try:
            with torch.no_grad():
                for node in self.graph.nodes:
                    if node not in env:
                        env[node] = self.interpreter.run_node(node)
                    if node is target:
                        return env[node]
        finally:
            self.evaluating = False
        raise KeyError(target)


def trace(model: nn.Module, leaf_types: Sequence[type] = (),
          input_size: tuple[int, ...] | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode); with ``input_size``, a forward that branches
    on shapes is retraced with concrete shapes (``gm.meta["specialised"]`` says so). Raises
    SplitcError naming what failed."""
    was_training = model.training
    model.eval()
    specialised = False
    try:
        tracer: LeafTracer = LeafTracer(leaf_types)
        try:
            graph = tracer.trace(model)
        except (fx.proxy.TraceError, TypeError):
            if input_size is None:
                raise
            tracer = ShapeTracer(torch.zeros(2, *input_size), leaf_types)
            graph = tracer.trace(model)
            specialised = True
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported as a user error
        raise SplitcError(_describe_trace_failure(model, exc, _failing_module(tracer))) from None
    finally:
        model.train(was_training)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    if specialised:
        gm.meta["specialised"] = tuple(input_size)
    return gm


def _failing_module(tracer: fx.Tracer) -> str | None:
    """The type name of the innermost submodule being traced when tracing failed (fx leaves its
    stack as it was), or None when it failed in the model's own forward."""
    stack = list(getattr(tracer, "module_stack", {}).values())
    return stack[-1][1].__name__ if stack and isinstance(stack[-1], tuple) else None


def _describe_trace_failure(model: nn.Module, exc: Exception, module: str | None = None) -> str:
    """One line: what failed, where in the user's code, and how to fix it."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    where = f" at {frames[-1].filename}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""
    which = f"{module} (the submodule it failed in)" if module else "the submodule's type"
    return (
        f"cannot trace {type(model).__name__} with torch.fx: {first_line}{where}. "
        f"Fix: declare {which} with splitc.register_module({module or 'Type'}, KIND) so tracing keeps it "
        'whole as a leaf (KIND "channelwise" if it treats each channel apart), or mark the function '
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
