"""Split scope: which channel spaces get group assignments, at which level of the tree.

A :class:`ScopeSpec` is what the user asked for (``--groups``, and one of ``--split-from``,
``--split-depth`` or ``--preset``); :func:`resolve_scope` turns it into a :class:`Scope` over a
ChannelIR. A scope is *closed downstream*: a space in scope only feeds spaces in scope, so the
network splits into trunk -> branches -> merge. Spaces that cannot be split (opaque ops, channel
normalisation, broadcast gates) are removed along with every space that feeds them, and a note
says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from splitc.graph.channel_ir import ChannelIR, WeightLayer
from splitc.core.errors import SplitcError, did_you_mean
from splitc.core.naming import FLAG, Naming

KINDS = ("block-diagonal", "output-partitioned", "mixed", "trunk")


@dataclass(frozen=True)
class ScopeSpec:
    """The user's request. ``groups`` has one entry per level (``(2, 4)`` is hierarchical);
    ``split_from`` / ``split_depth`` have one entry per level too."""

    groups: tuple[int, ...]
    split_from: tuple[str, ...] = ()
    split_depth: tuple[int, ...] = ()
    preset: str | None = None

    def describe(self) -> str:
        how = (f"preset {self.preset}" if self.preset else
               f"split-from {','.join(self.split_from)}" if self.split_from else
               f"split-depth {','.join(map(str, self.split_depth))}")
        return f"G={','.join(map(str, self.groups))}, {how}"


# Presets of built-in models: docs/METHOD.md section 4 (Table 1 of the paper).
PRESETS: dict[str, dict[str, ScopeSpec]] = {
    "wrn16_8": {
        "fc": ScopeSpec(groups=(4,), split_depth=(1,), preset="fc"),
        "shallow": ScopeSpec(groups=(2,), split_from=("block3",), preset="shallow"),
        "deep": ScopeSpec(groups=(2,), split_from=("block2",), preset="deep"),
        "hier": ScopeSpec(groups=(2, 4), split_from=("block2", "block3"), preset="hier"),
    },
}


@dataclass(frozen=True)
class Scope:
    """Spaces with a group assignment, each at a level of the tree.

    ``branch`` spaces are computed inside the branches (downstream closed). The other assigned
    spaces are *sliced*: computed once in the trunk, and read by branches one group at a time,
    as the pooled features are for the paper's ``fc`` split.
    """

    spec: ScopeSpec
    groups: tuple[int, ...]
    level_of: dict[int, int]            # space id -> level (index into groups)
    branch: frozenset[int]
    notes: tuple[str, ...] = ()         # why spaces were left out

    def in_scope(self, space: int) -> bool:
        return space in self.level_of

    def in_branches(self, space: int) -> bool:
        return space in self.branch

    def groups_of(self, space: int) -> int:
        return self.groups[self.level_of[space]]


def make_spec(groups: str | int | tuple[int, ...] | None, split_from: str | tuple[str, ...] | None = None,
              split_depth: str | int | tuple[int, ...] | None = None, preset: str | None = None,
              model: str | None = None, names: Naming = FLAG) -> ScopeSpec:
    """Validate the scope options into a ScopeSpec (exactly one scope option). Each takes its
    typed form (``(2, 4)``, ``("layer2", "layer3")``) or its text spelling (``"2,4"``);
    ``names`` spells the options in errors (``--groups`` or ``groups=``)."""
    chosen = [names(name) for name, v in (("split_from", split_from), ("split_depth", split_depth),
                                          ("preset", preset)) if v]
    if len(chosen) > 1:
        raise SplitcError(f"conflicting scope options {' and '.join(chosen)}: give exactly one of "
                          f"{names('split_from')}, {names('split_depth')} or {names('preset')}.")
    if preset:
        return _preset_spec(preset, model, groups, names)
    levels = _parse_groups(groups, names)
    if split_from:
        modules = level_tuple(split_from, str)
        if not isinstance(modules, tuple) or not all(isinstance(m, str) and m for m in modules):
            raise SplitcError(f"{names('split_from')} takes module names, one per level, got {split_from!r}.")
        _check_levels(names("split_from"), modules, levels, names)
        return ScopeSpec(levels, split_from=modules)
    depths = _ints(names("split_depth"), split_depth or 1)
    _check_levels(names("split_depth"), depths, levels, names)
    return ScopeSpec(levels, split_depth=depths)


def level_tuple(value: object, kind: type) -> object:
    """One entry per level, from a text spelling (``"2,4"``, ``"layer2,layer3"``), one value or
    a sequence; a value that does not read so is returned as it is (for the caller to refuse)."""
    if isinstance(value, str):
        parts = tuple(part.strip() for part in value.split(","))
        if kind is int:
            try:
                return tuple(int(part) for part in parts)
            except ValueError:
                return value
        return parts
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return value


def _preset_spec(preset: str, model: str | None, groups, names: Naming) -> ScopeSpec:
    table = PRESETS.get(model or "", {})
    if not isinstance(preset, str) or preset not in table:
        where = f" for {model}" if model else ""
        known = ", ".join(f"{m}: {', '.join(p)}" for m, p in PRESETS.items())
        raise SplitcError(f"unknown preset {preset!r}{where}.{did_you_mean(str(preset), table)} "
                          f"Presets exist for: {known}.")
    spec = table[preset]
    if groups and _parse_groups(groups, names) != spec.groups:
        raise SplitcError(f"preset {preset} fixes {names('groups')} {','.join(map(str, spec.groups))}; "
                          f"drop {names('groups')} or use {names('split_from')}/{names('split_depth')} instead.")
    return spec


DEFAULT_GROUPS = "2"   # --groups when neither it nor a preset is given: inspect, learn and SplitNet alike


def _parse_groups(groups, names: Naming = FLAG) -> tuple[int, ...]:
    levels = _ints(names("groups"), groups or DEFAULT_GROUPS)
    if any(g < 2 for g in levels):
        raise SplitcError(f"{names('groups')} needs G >= 2 at every level, got {levels}.")
    for lo, hi in zip(levels, levels[1:]):
        if hi % lo:
            raise SplitcError(f"{names('groups')} {','.join(map(str, levels))}: each level must divide "
                              f"the next ({hi} is not a multiple of {lo}).")
    return levels


def _ints(option: str, value: object) -> tuple[int, ...]:
    levels = level_tuple(value, int)
    if not isinstance(levels, tuple) or not levels or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                for v in levels):
        raise SplitcError(f"{option} expects integers, one per level, got {value!r}.")
    return levels


def _check_levels(option: str, values: tuple, levels: tuple[int, ...], names: Naming = FLAG) -> None:
    if len(values) != len(levels):
        raise SplitcError(f"{option} has {len(values)} entries but {names('groups')} has {len(levels)} "
                          "levels; give one per level, e.g. --groups 2,4 --split-from a,b.")


def resolve_scope(ir: ChannelIR, spec: ScopeSpec, names: Naming = FLAG) -> Scope:
    """The closed set of spaces to split, each with its level (``names`` spells the options)."""
    regions = [(_region_from(ir, name, names) if spec.split_from else _region_depth(ir, depth, names))
               for name, depth in _per_level(spec)]
    level_of: dict[int, int] = {}
    for level, region in enumerate(regions):
        for space in region:
            level_of[space] = level
    notes = []
    for space in list(level_of):
        s = ir.spaces[space]
        if not s.splittable:
            reason = next(iter(s.flags.values()), "holds parameters only")
            notes.append(f"space {s.id} ({s.name}) not split: {reason}")
            del level_of[space]
    branch = dict(level_of)
    closure_notes = _close_downstream(ir.graph, branch, ir)
    _check_class_space(ir, branch, notes + closure_notes)
    for space in list(level_of):  # keep a trunk-computed space only if a branch reads it sliced
        if space not in branch and not any(d in branch for d in ir.graph.successors(space)):
            del level_of[space]
            notes.append(next(n for n in closure_notes if n.startswith(f"space {space} ")))
    _propagate_levels(ir.graph, level_of)
    for space, level in level_of.items():
        s, groups = ir.spaces[space], spec.groups[level]
        if s.num_nodes < groups:
            raise SplitcError(
                f"G={groups} is larger than space {s.id} ({s.name}), which has {s.num_nodes} "
                f"independent channel groups ({s.size} channels); use fewer groups or a scope "
                "that starts above it.")
    return Scope(spec, spec.groups, level_of, frozenset(branch), tuple(notes))


def _per_level(spec: ScopeSpec):
    if spec.split_from:
        return [(name, None) for name in spec.split_from]
    return [(None, depth) for depth in spec.split_depth]


def _region_from(ir: ChannelIR, name: str, names: Naming = FLAG) -> set[int]:
    """Spaces created at or after the first node of module ``name``."""
    starts = [ir.topo_of[n.name] for n in ir.gm.graph.nodes if _belongs(n, name)]
    if not starts:
        known = sorted({str(n.target).rsplit(".", k)[0] for n in ir.gm.graph.nodes
                        if n.op == "call_module" for k in range(0, str(n.target).count(".") + 1)})
        raise SplitcError(f"{names('split_from')} {name!r} is not a module of this model."
                          f"{did_you_mean(name, known)} Run `splitc inspect MODEL` to list layers.")
    start = min(starts)
    return {s.id for s in ir.spaces if s.topo >= start and s.role != "param"}


def _belongs(node, name: str) -> bool:
    if node.op == "call_module" and (node.target == name or str(node.target).startswith(name + ".")):
        return True
    stack = node.meta.get("nn_module_stack") or {}
    return any(path == name or str(path).startswith(name + ".")
               for path, _ in (v if isinstance(v, tuple) else (v, None) for v in stack.values()))


def _region_depth(ir: ChannelIR, depth: int, names: Naming = FLAG) -> set[int]:
    """In and out spaces of the top ``depth`` weight layers."""
    if depth < 1:
        raise SplitcError(f"{names('split_depth')} must be >= 1, got {depth}.")
    top = sorted(ir.layers, key=lambda layer: layer.topo, reverse=True)[:depth]
    region: set[int] = set()
    for layer in top:
        region |= set(ir.spaces_of(layer.in_elems).tolist()) | set(ir.spaces_of(layer.out_elems).tolist())
    return {s for s in region if ir.spaces[s].role != "param"}


def _close_downstream(graph: nx.DiGraph, level_of: dict[int, int], ir: ChannelIR) -> list[str]:
    """Drop spaces that feed a space outside the scope, until none does."""
    notes = []
    changed = True
    while changed:
        changed = False
        for space in list(level_of):
            outside = [d for d in graph.successors(space) if d not in level_of]
            if outside:
                del level_of[space]
                notes.append(f"space {space} ({ir.spaces[space].name}) not split: it feeds "
                             f"space {outside[0]} ({ir.spaces[outside[0]].name}), which is not split")
                changed = True
    return notes


def _check_class_space(ir: ChannelIR, level_of: dict[int, int], notes: list[str]) -> None:
    if ir.class_space not in level_of:
        why = "; ".join(notes[-3:]) or "it is outside the chosen scope"
        raise SplitcError(f"the class space cannot be split ({why}). Choose a scope closer to the "
                          "output or register channel rules for the ops named in the warnings.")


def _propagate_levels(graph: nx.DiGraph, level_of: dict[int, int]) -> None:
    """A space is at least as deep in the tree as every space that feeds it."""
    changed = True
    while changed:  # the space graph has cycles (a residual stream feeds its own blocks)
        changed = False
        for space in list(level_of):
            for succ in graph.successors(space):
                if succ in level_of and level_of[succ] < level_of[space]:
                    level_of[succ] = level_of[space]
                    changed = True


def layer_kind(ir: ChannelIR, scope: Scope, layer: WeightLayer) -> str:
    """block-diagonal, output-partitioned, mixed (some inputs shared) or trunk."""
    if not scope.in_branches(int(ir.space_of[layer.out_elems[0]])):
        return "trunk"
    inside = [scope.in_scope(int(s)) for s in ir.spaces_of(layer.in_elems)]
    if all(inside):
        return "block-diagonal"
    return "mixed" if any(inside) else "output-partitioned"


def last_stage(ir: ChannelIR) -> str:
    """The module where the network's last resolution stage starts: the widest module around
    the first conv at the last conv's resolution that holds only convs at that resolution
    (``layer4`` of a ResNet, ``features.denseblock4`` of a DenseNet). For ``--split-from``
    defaults, tests and coverage runs over many models."""
    convs = sorted((layer for layer in ir.layers if layer.op == "conv"), key=lambda layer: layer.topo)
    if not convs:
        return sorted(ir.layers, key=lambda layer: layer.topo)[-1].name
    final = convs[-1].positions
    first = next(layer for layer in convs if layer.positions == final)
    parts = first.name.split(".")
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k])
        inside = [layer for layer in convs if layer.name == prefix or layer.name.startswith(prefix + ".")]
        if all(layer.positions == final for layer in inside):
            return prefix
    return first.name
