"""The latency a split could reach on this runtime: its lowered graph with perfect grouped kernels.

A split's FLOPs ratio counts every multiply-add the same, but ONNX Runtime does not run every
conv at the same speed per FLOP: on resnet20 the 16-channel convs of ``layer1`` take ~1.5x the
time of the 64-channel convs of ``layer3`` for the same FLOPs, so a split of ``layer3`` saves
less time than FLOPs. Whether a latency ratio above the FLOPs ratio is a lowering still to
improve or the runtime's own limit is measured here, from ONNX Runtime's per-node profile:

* ``limit``: the unsplit model's kernel time with every conv that the lowered graph runs as a
  grouped conv (``groups=k``) charged ``1/k`` of its dense time, over the unsplit kernel time:
  what the lowered graph would reach if each grouped kernel ran exactly at its FLOPs share of
  the dense kernel and nothing else changed;
* ``kernel``: the grouped convs' measured time over ``1/k`` of their dense time (1.0 is a
  perfect grouped kernel; 2.0 means they cost twice their FLOPs share).

Nodes are matched by name between the two optimised graphs (the lowered graph is the unsplit
graph with some convs grouped, exported from the same FX graph); ``unmatched`` counts grouped
convs with no dense twin, which are left out of both figures. CPU only (the profile of the
CPU execution provider). ``splitc bench --limit`` and ``benchmarks/latency_matrix.py`` print it.
"""

from __future__ import annotations

import collections
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from splitc.deploy.manifest import read_manifest
from splitc.deploy.runtime import cpu_cores, session_options


def node_profile(model: Path, x: np.ndarray, reps: int, threads: int, work: Path) -> tuple[dict[str, float], onnx.ModelProto]:
    """Median kernel time (ms) of every node of ``model`` as ONNX Runtime optimised and ran it,
    and the optimised graph (to read each node's attributes)."""
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = str(work / model.stem)
    so.optimized_model_filepath = str(work / f"{model.stem}.opt.onnx")
    session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(reps):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[e["name"].removesuffix("_kernel_time")].append(e["dur"] / 1e3)
    return {k: statistics.median(v) for k, v in times.items()}, onnx.load(so.optimized_model_filepath)


def conv_groups(model: onnx.ModelProto) -> dict[str, int]:
    """Every Conv node's name -> its ``group`` attribute (NCHWc convs included)."""
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            out[node.name] = next((a.i for a in node.attribute if a.name == "group"), 1)
    return out


def kernel_limit(art: Path, batch: int = 32, reps: int = 40, threads: int | None = None) -> dict:
    """The perfect-grouped-kernel limit of ``art``'s lowered graph at ``batch`` (module doc);
    ``{"limit": None, ...}`` when the artifact has no lowered graph."""
    manifest = read_manifest(art)
    if manifest.lowered is None:
        return {"limit": None, "kernel": None, "reason": "the artifact has no lowered graph (exported with "
                "--no-lower, or nothing of the split is block-diagonal)"}
    size = tuple(manifest.model.input_size)
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    threads = threads or cpu_cores()
    with tempfile.TemporaryDirectory() as tmp:
        dense_t, dense_g = node_profile(art / manifest.unsplit.model_file, x, reps, threads, Path(tmp))
        low_t, low_g = node_profile(art / manifest.lowered.model_file, x, reps, threads, Path(tmp))
    dense_groups, low_groups = conv_groups(dense_g), conv_groups(low_g)
    total = sum(dense_t.values())
    saved = grouped_ms = share_ms = 0.0
    unmatched = grouped = 0
    for name, k in low_groups.items():
        base = dense_groups.get(name)
        if base is None or name not in dense_t or name not in low_t:
            unmatched += k > 1
            continue
        if k > base:  # a conv the lowering grouped (depthwise convs are grouped in both)
            grouped += 1
            share = dense_t[name] * base / k
            saved += dense_t[name] - share
            share_ms += share
            grouped_ms += low_t[name]
    return {"limit": round((total - saved) / total, 3) if total else None,
            "kernel": round(grouped_ms / share_ms, 2) if share_ms else None,
            "unsplit_kernel_ms": round(total, 3), "lowered_kernel_ms": round(sum(low_t.values()), 3),
            "grouped": grouped, "unmatched": unmatched}


LATENCY_SLACK = 0.05  # a split slower than its FLOPs ratio + this is reported


def slower_than_flops(ratio: float, flops_ratio: float) -> str | None:
    """The one-line warning for a split that saves less time than FLOPs, or None."""
    if ratio <= flops_ratio + LATENCY_SLACK:
        return None
    return (f"the split runs at {ratio:.2f} of the unsplit model's time for {flops_ratio:.2f} of its FLOPs "
            f"(more than {LATENCY_SLACK} above) on this device; `splitc bench ART_DIR --limit` measures how "
            "much of the gap this runtime's kernels allow")
