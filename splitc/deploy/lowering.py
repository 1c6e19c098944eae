"""The one-device graph, chosen by measuring on the target device at export time.

When every subgraph runs on one device, the split need not run as separate branches: its
block-diagonal convolutions can run as grouped convolutions over the dense, permuted graph
(``passes/lower_grouped.py``), with no slice or concat between branches. Which is faster
depends on the device and the shapes, so export measures:

1. per layer: each block-diagonal conv as the dense masked conv and as one grouped conv, as a
   one-node ONNX graph at the layer's real input shape and the bench batch, interleaved
   (medians); the faster form is kept;
2. per graph: the fused branch graph (``fused.onnx``) against the lowered graph
   (``lowered.onnx``), interleaved; the faster becomes the manifest's ``one_device`` graph.

Every choice and its timings go into the manifest (``lowering``). The lowered graph is
checked against the PyTorch split model (relative error at most ``export.VERIFY_TOLERANCE``)
before it can be chosen.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from splitc.compile.dense_view import dense_split, max_error
from splitc.compile.split import module_inputs
from splitc.compile.split_dir import LoadedSplit
from splitc.deploy.runtime import cpu_cores, providers_for, session_options
from splitc.passes.lower_grouped import ConvBlocks, conv_blocks, grouped_conv, lower_grouped
from splitc.passes.pad_groups import pad_groups

LOWERED_FILE = "lowered.onnx"
TIME_BATCH = 32       # the batch the choices are measured at (bench's default)
LAYER_BUDGET_S = 0.6  # seconds of timing per layer candidate pair, at most
GRAPH_BUDGET_S = 4.0  # seconds of timing for fused vs lowered, at most
PAD_TOLERANCE = 1e-5  # the padded dense graph against the split model


def median_ms(runs: dict[str, Callable[[], Any]], budget_s: float, warmup: int = 2, min_reps: int = 5,
              max_reps: int = 40) -> dict[str, float]:
    """Interleaved timing of every callable (the order alternates), medians in ms; stops after
    ``budget_s`` once ``min_reps`` repetitions are in."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    start = time.perf_counter()
    for r in range(max_reps):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t)
        if r + 1 >= min_reps and time.perf_counter() - start > budget_s:
            break
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def conv_session(conv: nn.Conv2d, weight: torch.Tensor, groups: int, device: str) -> ort.InferenceSession:
    """A one-node ONNX Conv with ``conv``'s geometry and the given weight and groups."""
    w = onnx.numpy_helper.from_array(weight.detach().cpu().numpy().astype(np.float32), "w")
    inits, inputs = [w], ["x", "w"]
    if conv.bias is not None:
        inits.append(onnx.numpy_helper.from_array(conv.bias.detach().cpu().numpy().astype(np.float32), "b"))
        inputs.append("b")
    pads = list(conv.padding) * 2 if not isinstance(conv.padding, str) else None
    attrs = dict(kernel_shape=list(conv.kernel_size), strides=list(conv.stride), dilations=list(conv.dilation),
                 group=groups, **({"pads": pads} if pads is not None else {"auto_pad": "SAME_UPPER"}))
    node = onnx.helper.make_node("Conv", inputs, ["y"], **attrs)
    graph = onnx.helper.make_graph([node], "conv", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], initializer=inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), session_options(cpu_cores()), providers=providers_for(device))


def choose_layers(gm: nn.Module, candidates: list[ConvBlocks], x: torch.Tensor, device: str) -> dict[str, dict]:
    """Dense vs grouped for every candidate conv, timed at its real input shape."""
    modules = dict(gm.named_modules())
    inputs = {n: args[0] for n, args in module_inputs(gm, {c.name: modules[c.name] for c in candidates}, x).items()}
    choices = {}
    for c in candidates:
        conv = modules[c.name]
        feed = {"x": inputs[c.name].cpu().numpy().astype(np.float32)}
        dense = conv_session(conv, conv.weight, 1, device)
        grouped = conv_session(conv, grouped_conv(conv, c.blocks).weight, c.blocks, device)
        ms = median_ms({"dense": lambda s=dense: s.run(None, feed), "grouped": lambda s=grouped: s.run(None, feed)},
                       LAYER_BUDGET_S)
        choices[c.name] = {"blocks": c.blocks, "dense_ms": round(ms["dense"], 4), "grouped_ms": round(ms["grouped"], 4),
                           "choice": "grouped" if ms["grouped"] < ms["dense"] else "dense"}
    return choices


def lowered_module(loaded: LoadedSplit, device: str, batch: int = TIME_BATCH, always: bool = False
                   ) -> tuple[nn.Module | None, dict]:
    """The lowered one-device module of ``loaded`` and the record of how it was chosen; None
    (with the reason in the record) when the split has no dense view or nothing to lower.
    ``always`` groups every candidate without timing (tests; a device measured elsewhere)."""
    dense, why = dense_split(loaded)
    if dense is None:
        return None, {"lowered": False, "reason": why}
    a = loaded.analysis
    sizes = dense.assignment.group_sizes(a.ir, a.scope)
    padded = any(len(set(v)) > 1 for s, v in sizes.items() if s != a.ir.class_space)
    gm = dense.gm
    if padded:   # unequal groups: zero channels make them equal (passes/pad_groups.py)
        gm, candidates, why = pad_groups(dense.gm, a.ir, a.scope, dense.assignment)
        if gm is None:
            return None, {"lowered": False, "reason": f"unequal groups, and {why}"}
        err = max_error(dense.module(gm), loaded.model, loaded.input_size)
        if not err <= PAD_TOLERANCE:
            return None, {"lowered": False, "reason": f"the padded graph differs from the split ({err:.2e})"}
    else:
        candidates = conv_blocks(gm, a.ir, a.scope, dense.assignment)
    if not candidates:
        return None, {"lowered": False, "reason": "no convolution of the split is block-diagonal"}
    x = torch.randn(batch, *loaded.input_size)
    layers = ({c.name: {"blocks": c.blocks, "choice": "grouped"} for c in candidates} if always
              else choose_layers(gm, candidates, x, device))
    chosen = {name for name, c in layers.items() if c["choice"] == "grouped"}
    record = {"lowered": bool(chosen), "padded": padded, "time_batch": batch, "layers": layers}
    if not chosen:
        record["reason"] = "the dense conv was faster than the grouped one for every layer"
        return None, record
    return dense.module(lower_grouped(gm, candidates, chosen)), record


def choose_graph(folder: Path, fused_file: str, lowered_file: str, input_size: tuple[int, ...], device: str,
                 batch: int = TIME_BATCH) -> dict[str, float | str]:
    """Fused branch graph vs lowered graph on ``device``, interleaved: the faster one's name."""
    x = np.random.default_rng(0).standard_normal((batch, *input_size)).astype(np.float32)
    sessions = {name: ort.InferenceSession(str(folder / f), session_options(cpu_cores()), providers=providers_for(device))
                for name, f in (("fused", fused_file), ("lowered", lowered_file))}
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    ms = median_ms({name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()}, GRAPH_BUDGET_S)
    return {"fused_ms": round(ms["fused"], 3), "lowered_ms": round(ms["lowered"], 3),
            "one_device": "lowered" if ms["lowered"] < ms["fused"] else "fused"}
