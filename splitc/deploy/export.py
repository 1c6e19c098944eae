"""``splitc export``: a split directory -> ONNX files + ``manifest.json`` (see docs/RUNTIME.md).

Every subgraph is exported on its own with ``torch.onnx.export(dynamo=True)`` (opset 18, a
dynamic ``batch`` dimension, weights embedded), so each can run on its own device. The fused
graph (trunk + branches + merge in one graph, for a single device) is *composed* from those
files rather than exported again: it costs a second instead of another trace, and it is by
construction the same computation as the pipeline. The unsplit masked model is exported too:
it is what ``bench`` times the split against at equal accuracy.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.fx as fx
from tqdm import tqdm

from splitc.core.version import __version__
from splitc.core.errors import SplitcError
from splitc.core.numerics import relative_error
from splitc.core.outputs import claim, replacing, sha256_of
from splitc.deploy.manifest import (BATCH, MANIFEST, SCHEMA_VERSION, GraphEntry, Manifest, ModelIdentity, SubgraphEntry,
                       TensorInfo, file_entry, parse_devices, place, read_manifest)
from splitc.compile.split import subgraph_inputs
from splitc.graph.counting import count_graph
from splitc.core.pipeline import PassRunner
from splitc.deploy.lowering import LOWERED_FILE, choose_graph, lowered_module
from splitc.compile.split_dir import LoadedSplit, load_split, load_unsplit, read_meta, spec_from_dict, write_json
from splitc.graph.split_model import INPUT, TensorRef

OPSET = 18
EXAMPLE_BATCH = 2          # the batch traced at export; verify uses another one
VERIFY_BATCH = 3
VERIFY_TOLERANCE = 1e-4
EMBED_LIMIT = 1 << 30      # bytes of weights above which a graph keeps them in a side file
UNSPLIT_FILE = "unsplit.onnx"
FUSED_FILE = "fused.onnx"


def export_split(split_dir: str | os.PathLike, out: str | os.PathLike, devices: str | Sequence[str] = "auto",
                 progress: bool = False, force: bool = False, lower: bool | str = True
                 ) -> tuple[Manifest, dict[str, float]]:
    """Export ``split_dir`` into ``out``; returns the manifest and the seconds of each pass of
    ``core/pipeline.py`` and ``total``. ``lower`` False skips the grouped lowering (the one-device
    graph is then the fused one); ``"always"`` groups every candidate conv without timing them. All in this process: a spawned export worker was slower on 2
    cores (50-55 s against 20-36 s, resnet50)."""
    runner = PassRunner()
    start = time.perf_counter()
    target = parse_devices(devices, torch.cuda.device_count())
    meta = read_meta(split_dir)
    folder = Path(out)
    claim(folder, force)  # before the minutes of rebuilding and exporting
    steps = tqdm(total=len(meta["plan"]["subgraphs"]) + 4, desc="export", unit="step", disable=not progress,
                 leave=False)
    loaded = runner.run("load split", load_split, split_dir)
    steps.update()
    with replacing(folder, force):  # an old export is set aside, deleted once this one is written
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)  # a half-written folder must never load
        plan, size = loaded.model.plan, loaded.input_size
        costs = _stored_costs(loaded)
        split_model, weights_file, class_names = loaded.model, loaded.weights_file, loaded.class_names
        scope_text = spec_from_dict(meta["scope"]).describe()
        steps.set_postfix_str("lowering for one device")
        with runner.step("lower"):
            lowered, lowering = (lower_for_one_device(loaded, folder, target[0], size, lower == "always") if lower
                                 else (None, {"lowered": False, "reason": "export --no-lower"}))
        steps.update()
        # dropping the unsplit and masked copies halves the peak memory (a 600M-param model in 24 GiB)
        del loaded
        gc.collect()
        with runner.step("export subgraphs"):
            entries = _export_subgraphs(split_model, size, costs, folder, target[0], steps)
        steps.set_postfix_str("unsplit")
        del split_model
        gc.collect()
        with runner.step("export unsplit"):
            unsplit = export_graph(unsplit_module(split_dir), (torch.randn(EXAMPLE_BATCH, *size),), folder,
                                   UNSPLIT_FILE, costs["unsplit"], 1, in_names=("input",), out_names=("logits",))
            gc.collect()
        steps.update()
        steps.set_postfix_str("fused")
        fused = runner.run("fuse", fuse, folder, entries, FUSED_FILE)
        steps.update()
        steps.close()
        if lowered is not None:
            lowering.update(runner.run("choose graph", choose_graph, folder, FUSED_FILE, LOWERED_FILE, size, target[0]))
        with runner.step("manifest"):
            manifest = Manifest(
                schema=SCHEMA_VERSION, splitc_version=__version__,
                model=ModelIdentity(meta["model"], meta["num_classes"], tuple(size), scope_text, tuple(plan.groups)),
                source={"split_dir": str(Path(split_dir).resolve()), "weights": weights_file,
                        "weights_sha256": sha256_of(Path(split_dir) / weights_file)},
                opset=OPSET, example_batch=EXAMPLE_BATCH, class_names=tuple(class_names),
                class_groups=tuple(plan.class_groups), devices=target, subgraphs=placed(entries, target),
                fused=fused, unsplit=unsplit, unsplit_is="original" if meta.get("overlap") else "masked",
                lowered=lowered, lowering=lowering, one_device=lowering.get("one_device", "fused"))
            write_json(folder / MANIFEST, manifest.to_dict())
    return manifest, {**runner.report(), "total": round(time.perf_counter() - start, 3)}


def _export_subgraphs(split_model, size: tuple[int, ...], costs: dict[str, Any], folder: Path, device: str,
                      steps) -> list[SubgraphEntry]:
    """One ONNX file per subgraph, traced on the example inputs each one sees."""
    examples = subgraph_inputs(split_model, torch.randn(EXAMPLE_BATCH, *size))
    entries = []
    for s in split_model.plan.subgraphs:
        steps.set_postfix_str(s.name)
        graph = export_graph(split_model.subgraph(s.name), examples[s.name], folder, f"{s.name}.onnx",
                             costs[s.name], s.num_outputs, sources=s.inputs)
        entries.append(SubgraphEntry(s.name, s.role, s.level, s.group, s.parent, graph, device))
        steps.update()
    return entries


def placed(entries: list[SubgraphEntry], target: tuple[str, ...]) -> tuple[SubgraphEntry, ...]:
    where = place(tuple(entries), target)
    return tuple(replace(e, device=where[e.name]) for e in entries)


def lower_for_one_device(loaded: LoadedSplit, folder: Path, device: str, size: tuple[int, ...],
                         always: bool = False) -> tuple[GraphEntry | None, dict[str, Any]]:
    """``lowered.onnx`` (grouped convolutions where measured faster, ``deploy/lowering.py``),
    checked against the PyTorch split model; None and the reason when there is none."""
    module, record = lowered_module(loaded, device, always=always)
    if module is None:
        return None, record
    example = torch.randn(EXAMPLE_BATCH, *size)
    cost = count_graph(module.gm, example)
    graph = export_graph(module, (example,), folder, LOWERED_FILE, (cost.params, cost.flops), 1,
                         in_names=("input",), out_names=("logits",))
    session = ort.InferenceSession(str(folder / LOWERED_FILE), providers=["CPUExecutionProvider"])
    x = torch.randn(VERIFY_BATCH, *size)
    with torch.no_grad():
        want = loaded.model(x)
    err = relative_error(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), want)
    record["max_rel_err"] = err
    if not err <= VERIFY_TOLERANCE:
        for f in graph.files:
            (folder / f.path).unlink(missing_ok=True)
        record.update(lowered=False, reason=f"the lowered ONNX graph differs from the split (relative error {err:.2e})")
        return None, record
    return graph, record


def unsplit_module(split_dir: str | os.PathLike) -> fx.GraphModule:
    """The model in ``unsplit.safetensors``: the masked model of a plain split (the same
    function as the split: the baseline at equal accuracy), the original one of an overlap split
    (whose exact reference would stack G models). From the split's artifact (no re-trace), in
    eval mode."""
    return load_unsplit(split_dir)


def _stored_costs(loaded: LoadedSplit) -> dict[str, Any]:
    """Params/FLOPs per subgraph and of the unsplit model, as ``splitc split`` counted them with
    ``subgraph_costs`` (the one counting function). They depend on shapes only, not on weight
    values, and recounting costs about 8 s on resnet50 at 224x224, so export reuses them."""
    report = loaded.meta.get("report") or {}
    names = [s.name for s in loaded.model.plan.subgraphs]
    if set(report.get("subgraphs", {})) == set(names) and "baseline" in report:
        costs = {k: (v["params"], v["flops"]) for k, v in report["subgraphs"].items()}
        costs["unsplit"] = (report["baseline"]["params"], report["baseline"]["flops"])
        return costs
    from splitc.graph.counting import count_graph
    from splitc.compile.split import subgraph_costs

    costs = {k: (c.params, c.flops) for k, c in subgraph_costs(loaded.model, loaded.input_size).items()}
    base = count_graph(loaded.analysis.gm, torch.randn(1, *loaded.input_size))
    costs["unsplit"] = (base.params, base.flops)
    return costs


try:   # torch's exporter internals: where a torch version lacks them, nothing is shared
    from torch.onnx._internal.exporter import _registration as _onnx_registration
    _BUILD_REGISTRY = _onnx_registration.ONNXRegistry.from_torchlib
except (ImportError, AttributeError):
    _onnx_registration = _BUILD_REGISTRY = None


@functools.cache
def _torchlib_registry(opset_version: int | None) -> Any:
    return _BUILD_REGISTRY() if opset_version is None else _BUILD_REGISTRY(opset_version=opset_version)


@contextlib.contextmanager
def _shared_op_registry() -> Iterator[None]:
    """``torch.onnx.export`` rebuilds onnxscript's operator registry on every call (1.3 s on a
    2-core CPU, a third of exporting a resnet20 branch), and a split exports G + 3 graphs. An
    export without a custom translation table (splitc passes none) reads the registry and never
    changes it, so the exports of one process share the first one built."""
    if _BUILD_REGISTRY is None:
        yield
        return
    cls = _onnx_registration.ONNXRegistry
    original = cls.__dict__["from_torchlib"]
    cls.from_torchlib = classmethod(lambda _cls, opset_version=None: _torchlib_registry(opset_version))
    try:
        yield
    finally:
        cls.from_torchlib = original


def export_graph(module: torch.nn.Module, args: tuple[torch.Tensor, ...], folder: Path, name: str,
                 cost: tuple[int, int], n_out: int, sources: Sequence[TensorRef] = (),
                 in_names: Sequence[str] | None = None, out_names: Sequence[str] | None = None) -> GraphEntry:
    """One dynamo export with a dynamic batch; returns its manifest entry.

    ``optimize=True`` (onnxscript's constant folding, ~0.4 s on resnet50) matters at run time:
    without it every bias-free conv keeps a computed zero bias (Shape/Expand/CastLike) that
    stops ONNX Runtime from folding BatchNorm into it, and WRN-16-8 ran 15% slower."""
    in_names = list(in_names or [f"x{i}" for i in range(len(args))])
    out_names = list(out_names or [f"y{j}" for j in range(n_out)])
    batch = torch.export.Dim(BATCH, min=1)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.state_dict().values())
    embed = weight_bytes < EMBED_LIMIT
    path = folder / name
    Path(f"{path}.data").unlink(missing_ok=True)
    try:
        with warnings.catch_warnings(), _shared_op_registry():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, tuple(args), input_names=in_names, output_names=out_names,
                                        dynamic_shapes=tuple({0: batch} for _ in args), dynamo=True,
                                        opset_version=OPSET, optimize=True, verify=False, report=False,
                                        verbose=False, external_data=not embed)
            program.save(str(path), external_data=not embed)
    except Exception as exc:  # noqa: BLE001 - the exporter's own bug: re-raised as is, with the graph named
        exc.add_note(f"while exporting {name} to ONNX; please report it with the model name")
        raise
    graph = program.model.graph
    files = [file_entry(folder, name)] + ([file_entry(folder, f"{name}.data")]
                                          if Path(f"{path}.data").is_file() else [])
    inputs = tuple(TensorInfo(v.name, _shape(v.shape), str(v.dtype.numpy()), sources[i] if sources else None)
                   for i, v in enumerate(graph.inputs))
    outputs = tuple(TensorInfo(v.name, _shape(v.shape), str(v.dtype.numpy())) for v in graph.outputs)
    return GraphEntry(tuple(files), inputs, outputs, int(cost[0]), int(cost[1]))


def _shape(shape) -> tuple[int | str, ...]:
    return tuple(d if isinstance(d, int) else str(d) for d in shape)


def fuse(folder: Path, entries: Sequence[SubgraphEntry], name: str) -> GraphEntry:
    """Compose the subgraph files into one graph: each part's names get a ``<subgraph>/``
    prefix, and every part input is renamed to the output that feeds it."""
    produced: dict[tuple[str, int], str] = {(INPUT, 0): "input"}
    nodes, inits, infos, functions = [], [], [], {}
    opsets: dict[str, int] = {}
    ir_version = 0
    for entry in entries:
        part = onnx.load(str(folder / entry.graph.model_file))
        onnx.compose.add_prefix(part, f"{entry.name}/", inplace=True)
        rename = {f"{entry.name}/{t.name}": produced[(t.source.producer, t.source.index)]
                  for t in entry.graph.inputs}
        for node in part.graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise SplitcError(f"{entry.name}: control flow in an exported subgraph is not supported "
                                  "by the fused graph; please report it with the model name.")
            node.input[:] = [rename.get(i, i) for i in node.input]
        for j, t in enumerate(entry.graph.outputs):
            produced[(entry.name, j)] = f"{entry.name}/{t.name}"
        nodes += part.graph.node
        inits += part.graph.initializer
        infos += [v for v in part.graph.value_info if v.name not in rename]
        for f in part.functions:
            functions[(f.domain, f.name)] = f
        for op in part.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        ir_version = max(ir_version, part.ir_version)
    first, last = entries[0].graph, entries[-1].graph
    nodes.append(onnx.helper.make_node("Identity", [produced[(entries[-1].name, 0)]], ["logits"], name="output"))
    graph = onnx.helper.make_graph(nodes, "split_model", [_value_info("input", first.inputs[0])],
                                   [_value_info("logits", last.outputs[0])], initializer=inits, value_info=infos)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
                                   functions=list(functions.values()), producer_name="splitc",
                                   producer_version=__version__)
    model.ir_version = ir_version
    path = folder / name
    Path(f"{path}.data").unlink(missing_ok=True)
    big = sum(f.bytes for e in entries for f in e.graph.files) >= EMBED_LIMIT  # .onnx and .onnx.data
    onnx.save(model, str(path), save_as_external_data=big, location=f"{name}.data" if big else None)
    files = [file_entry(folder, name)] + ([file_entry(folder, f"{name}.data")] if big else [])
    return GraphEntry(tuple(files), (TensorInfo("input", first.inputs[0].shape, first.inputs[0].dtype),),
                      (TensorInfo("logits", last.outputs[0].shape, last.outputs[0].dtype),),
                      sum(e.graph.params for e in entries), sum(e.graph.flops for e in entries))


def _value_info(name: str, t: TensorInfo) -> onnx.ValueInfoProto:
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
    return onnx.helper.make_tensor_value_info(name, elem, list(t.shape))


def verify_artifact(art_dir: str | os.PathLike, split_dir: str | os.PathLike | None = None,
                    devices: str | None = None, batches: int = 3) -> dict[str, Any]:
    """The ONNX pipeline against the PyTorch split model (and the unsplit ONNX against the
    masked model) on fresh random inputs, at a batch size the export never traced."""
    from splitc.deploy import runtime

    folder = Path(art_dir)
    manifest = read_manifest(folder)
    source = Path(split_dir) if split_dir else Path(manifest.source["split_dir"])
    weights = source / manifest.source["weights"]
    if not weights.is_file():
        raise SplitcError(f"the split directory {source} that {folder} was exported from is gone; "
                          "pass it with --split-dir.")
    if sha256_of(weights) != manifest.source["weights_sha256"]:
        raise SplitcError(f"{weights} changed since {folder} was exported; run `splitc export` again.")
    loaded = load_split(source, weights=manifest.source["weights"])
    checks = []
    runs: list[tuple[str | None, str | None]] = [(devices, None)]
    if not devices and len(set(manifest.placement.values())) == 1:
        runs.append(("cpu,cpu", None))  # the one-device graph ran above; check the per-subgraph files too
        if manifest.lowered is not None:  # and the one-device graph that was not chosen
            runs.append((None, "fused" if manifest.one_device == "lowered" else "lowered"))
    with torch.no_grad():
        for where, graph in runs:
            with runtime.load(folder, devices=where, one_device=graph) as pipe:
                checks.append({"checked": f"ONNX pipeline ({pipe.describe()}) vs PyTorch split model",
                               "max_rel_err": _worst(pipe, loaded.model, manifest, batches)})
        with runtime.load_unsplit(folder, devices) as pipe:
            checks.append({"checked": f"unsplit ONNX vs the {manifest.unsplit_is} PyTorch model",
                           "max_rel_err": _worst(pipe, unsplit_module(source), manifest, batches)})
    worst = max(c["max_rel_err"] for c in checks)
    return {"artifact_dir": str(folder), "max_rel_err": worst, "tolerance": VERIFY_TOLERANCE,
            "ok": worst <= VERIFY_TOLERANCE, "batch_size": VERIFY_BATCH, "checks": checks,
            "checked": "; ".join(c["checked"] for c in checks)}


def _worst(pipe, reference: torch.nn.Module, manifest: Manifest, batches: int) -> float:
    worst = 0.0
    for _ in range(batches):
        x = torch.randn(VERIFY_BATCH, *manifest.model.input_size)
        want = reference(x)
        got = torch.from_numpy(np.asarray(pipe(x.numpy())))
        worst = max(worst, relative_error(got, want))
    return worst
