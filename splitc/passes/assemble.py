"""Pass: assemble a Partition into a runnable :class:`~splitc.graph.split_model.SplitModel`.

Contract
  before: a :class:`~splitc.passes.partition.Partition` (a plan and one GraphModule per
          subgraph).
  after:  a SplitModel that runs trunk -> branches -> merge by the plan; every subgraph stays
          a standalone GraphModule (``model.subgraph(name)``) so it can be exported alone.
  changes: nothing; checks that the plan and the modules agree and that no two subgraphs
          share a parameter's storage.
"""

from __future__ import annotations

from splitc.graph.split_model import SplitModel

from .partition import Partition


def assemble(part: Partition) -> SplitModel:
    names = [s.name for s in part.plan.subgraphs]
    missing = [n for n in names if n not in part.modules]
    if missing:
        raise ValueError(f"partition has no module for subgraph(s) {missing}")
    seen: dict[int, str] = {}
    for name in names:
        for tensor in list(part.modules[name].parameters()) + list(part.modules[name].buffers()):
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen and seen[ptr] != name and tensor.numel():
                raise ValueError(f"subgraphs {seen[ptr]} and {name} share a tensor's storage")
            seen[ptr] = name
    return SplitModel(part.plan, part.modules)
