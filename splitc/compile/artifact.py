"""The ``.splitc`` file format: a split model as one self-contained file, every subgraph as a
``torch.export`` program (``compile/split_dir.py`` owns saving and loading it).

The file is a zip (stored, not compressed)::

    artifact.json          format, torch version, input size, the plan (wiring), the caller's
                           meta, and per program the momentum of each BatchNorm
    programs/<name>.pt2    ``torch.export.save`` of every subgraph (the plan's names) and of the
                           references (``ref/masked``, ``ref/unsplit``) when given

Why exported programs and not each GraphModule's generated ``code`` plus its state dict:
loading code means running Python out of the file, and a subgraph can hold the user's leaf
modules, which only the user's class rebuilds. A program is ATen ops and tensors resolved by
name, so it loads in a process where the model's class does not exist.

Safety: ``torch.export.load`` unpickles payloads its config marks as pickled, retries the
sample inputs with ``weights_only=False``, resolves call targets by ``getattr`` from ``torch``
and parses symbolic sizes with ``sympy.sympify`` (an eval). :func:`check_program` refuses an
archive with any of these (a pickled entry, a target outside the op namespaces, a size that is
not plain sympy arithmetic) before torch reads it, so loading runs no code from the file.

Trainable again: a program exported in eval mode fixes BatchNorm and dropout to eval, and its
module refuses ``train()``. :func:`trainable` rebuilds a plain GraphModule in which every such
op is a torch.nn layer again (``BatchNorm1d/2d/3d`` with the saved momentum over the same
tensors, ``Dropout``), so parameter names, ``train()`` and ``eval()`` behave as in the split.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._sympy import functions as sympy_functions

from splitc.compile.split import subgraph_inputs
from splitc.core.errors import SplitcError, SplitcWarning
from splitc.core.outputs import atomic_write
from splitc.graph.split_model import SplitModel, SplitPlan

FORMAT = 1
HEADER = "artifact.json"
PROGRAMS = "programs/"
REFERENCE = "ref/"          # programs/ref/<name>.pt2: the split's references (masked, unsplit)
EXAMPLE_BATCH = 2           # traced batch; the batch dimension is exported dynamic
ATEN = torch.ops.aten
DROPOUTS = {ATEN.dropout.default: {0: nn.Dropout}, ATEN.alpha_dropout.default: {0: nn.AlphaDropout},
            ATEN.feature_dropout.default: {3: nn.Dropout1d, 4: nn.Dropout2d, 5: nn.Dropout3d},
            ATEN.feature_alpha_dropout.default: {0: nn.FeatureAlphaDropout}}
BATCH_NORMS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
# what a program's graph (models/*.json) may name: ops, Python's arithmetic on sizes, and the
# sympy words of symbolic sizes, which torch parses with sympify (an eval)
SAFE_TARGET = re.compile(r"torch\.ops\.(?!.*__)[\w.]+|_operator\.(add|sub|mul|floordiv|truediv|mod|neg|pow|getitem|"
                         r"eq|ne|lt|le|gt|ge|and_|or_|not_|pos|abs)|math\.[a-z0-9_]+|torch\._?sym_[a-z_]+")
SYMPY_WORDS = {"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
               "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo", "positive", "integer", "real", "nonnegative",
               "finite", *sympy_functions.__all__}


@dataclass(frozen=True)
class SplitArtifact:
    """What an artifact file holds, rebuilt: the split model and its references."""

    model: SplitModel
    input_size: tuple[int, ...]
    meta: dict[str, Any]
    references: dict[str, nn.Module] = field(default_factory=dict)
    eval_only: tuple[str, ...] = ()   # ops that stay in eval mode when the model trains


def write_artifact(path: str | os.PathLike, model: SplitModel, meta: dict[str, Any],
                   references: dict[str, nn.Module] | None = None) -> Path:
    """The one writer of the format: export every subgraph (and every reference, a whole-model
    module) at ``meta["input_size"]`` and write the file atomically; ``meta`` (JSON) is stored
    as is (``splitc.compile.split_dir.save`` is its caller)."""
    meta = dict(meta or {})
    size = tuple(meta["input_size"])
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(EXAMPLE_BATCH, *size)
        examples = subgraph_inputs(model, x)
        parts = [(s.name, model.subgraph(s.name), examples[s.name]) for s in model.plan.subgraphs]
        parts += [(REFERENCE + name, module, (x,)) for name, module in (references or {}).items()]
        header = {"format": FORMAT, "torch": torch.__version__, "input_size": list(size), "meta": meta,
                  "plan": model.plan.to_dict(), "references": sorted(references or {}), "batchnorm": {}}
        atomic_write(path, lambda tmp: _write_zip(tmp, header, parts))
    finally:
        model.train(was_training)
    return Path(path)


def _write_zip(tmp: str, header: dict[str, Any], parts: list[tuple[str, nn.Module, tuple]]) -> None:
    """One program at a time (a program's bytes are the size of its weights), the header last."""
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, module, args in parts:
            blob, header["batchnorm"][name] = export_module(module, args)
            archive.writestr(f"{PROGRAMS}{name}.pt2", blob)
            del blob
        archive.writestr(HEADER, json.dumps(header, indent=1))


def export_module(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[bytes, dict[str, float | None]]:
    """``module`` exported in eval mode with a dynamic batch, as ``torch.export.save`` bytes,
    and the momentum of each of its BatchNorm layers by name (the eval graph loses it)."""
    was_training = module.training
    module.eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(module, tuple(args), dynamic_shapes=tuple({0: batch} for _ in args))
    except Exception as exc:  # noqa: BLE001 - torch.export's own error, re-raised as is with the module named
        exc.add_note(f"while exporting {type(module).__name__} with torch.export for the split artifact")
        raise
    finally:
        module.train(was_training)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    momenta = {name: m.momentum for name, m in module.named_modules() if isinstance(m, _BatchNorm)}
    return buffer.getvalue(), momenta


def read_artifact(path: str | os.PathLike, references: bool = True) -> SplitArtifact:
    """Rebuild everything the artifact at ``path`` holds (the references only if asked);
    a missing, foreign or corrupt file is one SplitcError."""
    path = Path(path)
    header, modules, eval_only = _read(path, lambda h: [s["name"] for s in h["plan"]["subgraphs"]]
                                       + ([REFERENCE + r for r in h["references"]] if references else []))
    if eval_only:
        warnings.warn(f"{path}: {', '.join(eval_only)} stay in eval mode when the model trains", SplitcWarning,
                      stacklevel=2)
    plan = SplitPlan.from_dict(header["plan"])
    model = SplitModel(plan, {s.name: modules[s.name] for s in plan.subgraphs}).eval()
    refs = {n[len(REFERENCE):]: m.eval() for n, m in modules.items() if n.startswith(REFERENCE)}
    model.meta, model.input_size, model.references = dict(header["meta"]), tuple(header["input_size"]), dict(refs)
    return SplitArtifact(model, tuple(header["input_size"]), header["meta"], refs, tuple(eval_only))


def read_reference(path: str | os.PathLike, name: str) -> nn.Module:
    """One reference of the artifact (``masked`` or ``unsplit``), without the split model."""
    _, modules, _ = _read(Path(path), lambda h: [REFERENCE + name])
    return modules[REFERENCE + name].eval()


def _read(path: Path, pick: Callable[[dict[str, Any]], list[str]]
          ) -> tuple[dict[str, Any], dict[str, fx.GraphModule], list[str]]:
    """The header and the programs ``pick(header)`` names, rebuilt; every way the file can be
    unreadable (missing, truncated, flipped bytes: the zip's CRC, foreign, unsafe) is one SplitcError."""
    if not path.is_file():
        raise SplitcError(f"{path} does not exist (a split artifact, written by splitc.save or splitc split).")
    header: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            header = _read_header(archive, path)
            modules, eval_only = {}, []
            for name in pick(header):
                modules[name], fixed = load_program(archive.read(f"{PROGRAMS}{name}.pt2"),
                                                    header["batchnorm"].get(name, {}))
                eval_only += [f"{name}: {op}" for op in fixed]
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, EOFError, RuntimeError) as exc:
        saved = header.get("torch")
        other = (f"; it was saved with torch {saved}, this is torch {torch.__version__}"
                 if saved and saved != torch.__version__ else "")
        raise SplitcError(f"{path} is corrupt or not a split artifact ({type(exc).__name__}: {str(exc)[:120]})"
                          f"{other}; save the split again.") from None
    return header, modules, eval_only


def _read_header(archive: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    header = json.loads(archive.read(HEADER).decode("utf-8"))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise SplitcError(f"{path} is a split artifact of format {found!r}, this splitc reads format "
                          f"{FORMAT}; save the split again with this version.")
    return header


def load_program(blob: bytes, momenta: dict[str, float | None]) -> tuple[fx.GraphModule, list[str]]:
    """One exported program as a trainable GraphModule, and the ops left in eval mode."""
    check_program(blob)
    program = torch.export.load(io.BytesIO(blob))
    return trainable(program.module(check_guards=False), momenta)


def check_program(blob: bytes) -> None:
    """Refuse a program archive that would make ``torch.export.load`` unpickle: a payload marked
    as pickled, a custom or opaque object, a legacy ``.pt`` weights file, or sample inputs that
    ``weights_only`` loading rejects (torch then retries them with full unpickling)."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        for name in archive.namelist():
            if "/models/" in name and name.endswith(".json"):
                _check_graph(json.loads(archive.read(name)), name)
            elif name.endswith("_config.json") and "/data/" in name:
                config = json.loads(archive.read(name)).get("config", {})
                if any(entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(("weight_", "tensor_"))
                       for entry in config.values()):
                    raise ValueError(f"{name} holds a pickled payload, which splitc does not load")
            elif name.endswith(".pt") and "/sample_inputs/" not in name:
                raise ValueError(f"{name} is a pickled file, which splitc does not load")
            elif name.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as exc:  # noqa: BLE001 - any failure means torch would unpickle it fully
                    raise ValueError(f"{name} is not plain tensors ({type(exc).__name__})") from None


def _check_graph(document: Any, name: str) -> None:
    """Refuse a graph that names a call target outside the op namespaces (torch resolves targets
    by ``getattr`` from ``torch``) or a symbolic size that is not plain sympy arithmetic."""
    for target in _strings(document, "target"):
        if not SAFE_TARGET.fullmatch(target):
            raise ValueError(f"{name} calls a non-op, {target[:40]!r}")
    for expr in _strings(document, "expr_str"):
        quoted = re.findall(r"'([^']*)'", expr)
        words = set(re.findall(r"[A-Za-z_]\w*", re.sub(r"'[^']*'", "", expr)))
        if (re.search(r"[^\w\s(),'=.+\-*/]", expr) or any(not re.fullmatch(r"[a-z]+\d+", q) for q in quoted)
                or any(w not in SYMPY_WORDS and not re.fullmatch(r"[a-z]+\d+", w) for w in words)):
            raise ValueError(f"{name} has a symbolic size that is not plain arithmetic, {expr[:30]!r}")


def _strings(document: Any, key: str) -> list[str]:
    """Every string value under ``key`` anywhere in a JSON document."""
    found, stack = [], [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found += [v for k, v in item.items() if k == key and isinstance(v, str)]
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return found


def trainable(module: fx.GraphModule, momenta: dict[str, float | None]) -> tuple[fx.GraphModule, list[str]]:
    """A plain GraphModule over ``module``'s graph and tensors in which BatchNorm and dropout
    are torch.nn layers again (they follow train()/eval()); the ops it could not rebuild."""
    graph, fixed = module.graph, []
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is ATEN.batch_norm.default:
            if not _as_batch_norm(module, node, momenta):
                fixed.append(f"batch_norm {node.name}")
        elif node.target in DROPOUTS:
            if not _as_dropout(module, node):
                fixed.append(f"{node.target.__name__} {node.name}")
    graph.eliminate_dead_code()
    for node in graph.nodes:
        node.meta = {}   # fake-tensor values of the export: not needed, and they do not deepcopy
    rebuilt = fx.GraphModule(module, graph, class_name="ExportedSubgraph")
    _constants_as_buffers(rebuilt)
    return rebuilt, fixed


def _constants_as_buffers(module: fx.GraphModule) -> None:
    """Tensor constants of the program (lifted by torch.export) as non-persistent buffers, so
    ``.to(device)`` moves them and the state dict stays the split's."""
    for node in module.graph.nodes:
        if node.op != "get_attr":
            continue
        parent, _, leaf = node.target.rpartition(".")
        owner = module.get_submodule(parent)
        value = getattr(owner, leaf)
        if isinstance(value, torch.Tensor) and leaf not in owner._parameters and leaf not in owner._buffers:
            delattr(owner, leaf)
            owner.register_buffer(leaf, value, persistent=False)


def _as_batch_norm(module: fx.GraphModule, node: fx.Node, momenta: dict[str, float | None]) -> bool:
    """Replace one eval-mode ``aten.batch_norm`` by a call of a BatchNorm layer that owns the
    same tensors, at the path they already have; False when they are not one layer's."""
    x, weight, bias, mean, var, training, momentum, eps = node.args[:8]
    refs = dict(zip(BN_TENSORS, (weight, bias, mean, var)))
    held = {leaf: ref for leaf, ref in refs.items() if ref is not None}
    if not held or any(not isinstance(r, fx.Node) or r.op != "get_attr" for r in held.values()):
        return False
    prefixes = {r.target.rpartition(".")[0] for r in held.values()}
    prefix = prefixes.pop() if len(prefixes) == 1 else ""
    if not prefix or any(r.target != f"{prefix}.{leaf}" for leaf, r in held.items()) or (training and mean is not None):
        return False
    holder = module.get_submodule(prefix)
    own = {n for n, _ in holder.named_parameters(recurse=False)} | {n for n, _ in holder.named_buffers(recurse=False)}
    if own - set(held) - {"num_batches_tracked"} or list(holder.children()) or x.meta.get("val") is None:
        return False
    cls = BATCH_NORMS.get(x.meta["val"].dim())
    if cls is None:
        return False
    first = getattr(holder, next(iter(held)))
    layer = cls(first.shape[0], eps=eps, momentum=momenta.get(prefix, momentum), affine=weight is not None,
                track_running_stats=mean is not None)
    for leaf in own:
        setattr(layer, leaf, getattr(holder, leaf))
    parent, _, leaf = prefix.rpartition(".")
    setattr(module.get_submodule(parent), leaf, layer)
    with module.graph.inserting_before(node):
        call = module.graph.call_module(prefix, (x,))
    node.replace_all_uses_with(call)
    module.graph.erase_node(node)
    return True


def _as_dropout(module: fx.GraphModule, node: fx.Node) -> bool:
    """Replace one eval-mode dropout by a torch.nn dropout layer of the same rate."""
    x, p, train = node.args[:3]
    classes = DROPOUTS[node.target]
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    cls = classes.get(0) or (classes.get(val.dim()) if val is not None else None)
    if train or cls is None:
        return False
    name = node.name
    while hasattr(module, name):
        name += "_"
    module.add_submodule(name, cls(p))
    with module.graph.inserting_before(node):
        call = module.graph.call_module(name, (x,))
    node.replace_all_uses_with(call)
    module.graph.erase_node(node)
    return True
