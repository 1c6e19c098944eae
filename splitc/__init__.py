"""splitc: learn to split CNNs into disjoint branches (SplitNet) and compile the split.

The library's names::

    splitc.SplitNet           the recipe on any nn.Module, inside your own training loop
    splitc.save, splitc.load  a split as one .splitc file (or a split directory), without its class
    splitc.export             a split -> ONNX per subgraph + manifest (``splitc run``/``serve``)
    splitc.register_module    declare your own layer types (and functions) as an op Kind
    splitc.register_function
    splitc.Kind               the op kinds they take (``Kind.CHANNELWISE`` or ``"channelwise"``)

Each is imported on first use (PEP 562): a Ray Serve replica imports
``splitc.deploy.serve_replica``, which runs this file first, and loading torch there would cost
every replica ~2 s and ~300 MB. The imports are plain ``import`` statements all the same, so
import-linter sees every arrow from here to the stages.
"""

from __future__ import annotations

from typing import Any

from splitc.core.version import __version__

__all__ = ["__version__", "SplitNet", "save", "load", "export", "register_module", "register_function", "Kind"]


def __getattr__(name: str) -> Any:
    if name == "SplitNet":
        from splitc.compile.splitnet import SplitNet
        return SplitNet
    if name in ("save", "load"):
        from splitc.compile.split_dir import load, save
        return {"save": save, "load": load}[name]
    if name == "export":
        from splitc.deploy.api import export
        return export
    if name in ("register_module", "register_function", "Kind"):
        from splitc.graph.opkinds import Kind, register_function, register_module
        return {"register_module": register_module, "register_function": register_function, "Kind": Kind}[name]
    raise AttributeError(f"module 'splitc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
