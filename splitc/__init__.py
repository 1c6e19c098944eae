"""splitc: learn to split CNNs into disjoint branches (SplitNet) and compile the split."""

import importlib

__version__ = "0.1.0"

# The library's names, imported on first use (PEP 562), not here: lower stages read
# ``splitc.__version__`` and a Ray Serve replica imports ``splitc.deploy.serve_replica``, and a
# plain import would load torch and the graph stage under both (import-linter reports
# core -> splitc -> graph). Add a name as ``"name": "splitc.stage.module"``.
EXPORTS = {
    "register_module": "splitc.graph.opkinds",
    "register_function": "splitc.graph.opkinds",
    "save": "splitc.compile.split_dir",     # a split model -> one .splitc file that loads without its class
    "load": "splitc.compile.split_dir",     # that file, or a split directory -> the SplitModel
    "SplitNet": "splitc.compile.splitnet",  # the recipe on any nn.Module, inside the user's loop
    "export": "splitc.deploy.api",          # a split (value, file or directory) -> ONNX + manifest
}
__all__ = ["__version__", *EXPORTS]


def __getattr__(name: str) -> object:
    if name in EXPORTS:
        return getattr(importlib.import_module(EXPORTS[name]), name)
    raise AttributeError(f"module 'splitc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *EXPORTS])
