"""The split model: trunk -> tree of branches -> merge, each a standalone GraphModule.

A :class:`SplitPlan` is the wiring, and nothing else: which subgraph reads which tensor of
which other subgraph. It is a frozen dataclass with plain fields, so the same object drives
the PyTorch :class:`SplitModel`, the ONNX manifest and the ONNX runtime.

Every subgraph returns a tuple of tensors (one entry per consumer-visible output), so the wiring
is uniform: a :class:`TensorRef` names ``(producer subgraph, output index)``; the model input is
``TensorRef("input", 0)``. Subgraphs are listed in a valid execution order: the trunk, then the
tree nodes level by level (siblings of one level are independent and may run concurrently),
then the merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

INPUT = "input"


@dataclass(frozen=True)
class TensorRef:
    producer: str   # subgraph name, or "input" for the model input
    index: int      # output index of that subgraph


@dataclass(frozen=True)
class SubgraphSpec:
    """One subgraph: its role, its place in the tree and the tensors it reads."""

    name: str                     # "trunk", "g0", "g0.1" (path of groups), "merge"
    role: str                     # trunk | branch | merge
    level: int                    # -1 trunk, tree level of a branch, len(groups) for the merge
    group: int | None             # group id at its level (branches only)
    parent: str | None            # the branch it hangs under (None: under the trunk)
    inputs: tuple[TensorRef, ...]
    num_outputs: int


@dataclass(frozen=True)
class SplitPlan:
    """The wiring of a split model."""

    groups: tuple[int, ...]
    subgraphs: tuple[SubgraphSpec, ...]
    class_groups: tuple[int, ...]   # for every original class, the leaf group that computes it

    def get(self, name: str) -> SubgraphSpec:
        return next(s for s in self.subgraphs if s.name == name)

    @property
    def branches(self) -> tuple[SubgraphSpec, ...]:
        return tuple(s for s in self.subgraphs if s.role == "branch")

    def to_dict(self) -> dict:
        return {
            "groups": list(self.groups),
            "class_groups": list(self.class_groups),
            "subgraphs": [{"name": s.name, "role": s.role, "level": s.level, "group": s.group,
                           "parent": s.parent, "num_outputs": s.num_outputs,
                           "inputs": [[r.producer, r.index] for r in s.inputs]}
                          for s in self.subgraphs],
        }

    @staticmethod
    def from_dict(data: dict) -> "SplitPlan":
        subgraphs = tuple(SubgraphSpec(s["name"], s["role"], s["level"], s["group"], s["parent"],
                                       tuple(TensorRef(p, i) for p, i in s["inputs"]), s["num_outputs"])
                          for s in data["subgraphs"])
        return SplitPlan(tuple(data["groups"]), subgraphs, tuple(data["class_groups"]))


class SplitModel(nn.Module):
    """Runs trunk -> branches -> merge by the plan. ``subgraph(name)`` gives a GraphModule that
    can be exported on its own."""

    def __init__(self, plan: SplitPlan, modules: dict[str, fx.GraphModule]) -> None:
        super().__init__()
        self.plan = plan
        # ModuleDict keys may not contain dots: "g0.1" is stored as "g0_1".
        self.parts = nn.ModuleDict({module_key(name): modules[name] for name in (s.name for s in plan.subgraphs)})
        # What travels with the split as a value (splitc.save, splitc.export), when known:
        self.meta: dict = {}                              # split.json's fields: model, scope, groups, classes, report
        self.input_size: tuple[int, ...] | None = None    # (C, H, W) it was compiled at
        self.references: dict[str, nn.Module] = {}        # "masked" / "unsplit": what verify compares with

    def subgraph(self, name: str) -> fx.GraphModule:
        return self.parts[module_key(name)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, tuple[torch.Tensor, ...]] = {INPUT: (x,)}
        for spec in self.plan.subgraphs:
            args = [env[ref.producer][ref.index] for ref in spec.inputs]
            env[spec.name] = tuple(self.parts[module_key(spec.name)](*args))
        return env["merge"][0]


def module_key(name: str) -> str:
    return name.replace(".", "_")
