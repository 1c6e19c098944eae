"""Latency against FLOPs: is the split faster wherever it is smaller? (docs/RESULTS.md)

For each row: a random balanced split (SplitNet-Random's assignment on fresh weights; latency
does not depend on the values), exported with the one-device lowering, then, side by side in
one process and interleaved, ONNX Runtime sessions of the unsplit masked model, the fused
branch graph, the lowered graph (grouped convolutions where export measured them faster) and,
with ``--sessions``, one session per subgraph on ``cpu,cpu``. Prints the latency ratios at
batch 1 and 32 next to the FLOPs ratio and, at batch 32, the ratio the lowered graph would reach
with perfect grouped kernels (``limit``) and how far its grouped convs are from their FLOPs
share (``kernel``; ``splitc/deploy/kernel_limit.py``); asserts nothing.

    python benchmarks/latency_matrix.py [--rows resnet20-g2,...] [--devices cpu] [--reps 20]
        [--json-out docs/latency_matrix.jsonl]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from splitc.compile.split_run import random_split
from splitc.core.tables import table
from splitc.deploy import runtime
from splitc.deploy.export import export_split
from splitc.deploy.kernel_limit import kernel_limit
from splitc.deploy.lowering import median_ms
from splitc.deploy.manifest import read_manifest
from splitc.graph.scope import ScopeSpec, make_spec

# name -> (model, scope, input size)
ROWS: dict[str, tuple[str, ScopeSpec, tuple[int, int, int]]] = {
    "resnet20-g2": ("resnet20", ScopeSpec((2,), split_from=("layer3",)), (3, 32, 32)),
    "resnet20-g4": ("resnet20", ScopeSpec((4,), split_from=("layer3",)), (3, 32, 32)),
    "wrn16_8-shallow": ("wrn16_8", make_spec("2", preset="shallow", model="wrn16_8"), (3, 32, 32)),
    "wrn16_8-deep": ("wrn16_8", make_spec("2", preset="deep", model="wrn16_8"), (3, 32, 32)),
    "wrn16_8-hier": ("wrn16_8", make_spec("2,4", preset="hier", model="wrn16_8"), (3, 32, 32)),
    "resnet18-layer4": ("resnet18", ScopeSpec((2,), split_from=("layer4",)), (3, 128, 128)),
    "resnet50-layer4": ("resnet50", ScopeSpec((2,), split_from=("layer4",)), (3, 128, 128)),
    "mobilenet_v2-last": ("mobilenet_v2", ScopeSpec((2,), split_from=("features.17",)), (3, 128, 128)),
    "efficientnet_b0-last": ("efficientnet_b0", ScopeSpec((2,), split_from=("features.7",)), (3, 128, 128)),
}


def sessions_for(art: Path, devices: str) -> dict[str, object]:
    """The unsplit model and every one-device graph the artifact has, each in one session."""
    manifest = read_manifest(art)
    pipes = {"unsplit": runtime.load_unsplit(art, devices), "fused": runtime.load(art, devices, one_device="fused")}
    if manifest.lowered is not None:
        pipes["lowered"] = runtime.load(art, devices, one_device="lowered")
    return pipes


def one_row(name: str, args: argparse.Namespace, work: Path) -> dict:
    model, spec, size = ROWS[name]
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    random_split(model, spec, folder / "split", input_size=size, num_classes=100 if model == "wrn16_8" else None)
    manifest, _ = export_split(folder / "split", folder / "onnx", args.devices)
    row = {"row": name, "flops_ratio": manifest.fused.flops / manifest.unsplit.flops,
           "chosen": manifest.one_device, "export_s": round(time.perf_counter() - start, 1)}
    pipes = sessions_for(folder / "onnx", args.devices)
    if args.sessions:
        pipes["sessions"] = runtime.load(folder / "onnx", "cpu,cpu")
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
        ms = median_ms({k: (lambda p=p: p(x)) for k, p in pipes.items()}, args.budget, min_reps=args.reps,
                       max_reps=args.reps)
        for k, v in ms.items():
            row[f"{k}_ms_b{batch}"] = round(v, 3)
            if k != "unsplit":
                row[f"{k}_ratio_b{batch}"] = round(v / ms["unsplit"], 3)
        chosen = ms.get(manifest.one_device, ms["fused"])
        row[f"ratio_b{batch}"] = round(chosen / ms["unsplit"], 3)
    for p in pipes.values():
        p.close()
    limit = kernel_limit(folder / "onnx", batch=32)
    row["limit_b32"], row["kernel_b32"] = limit["limit"], limit["kernel"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--devices", default="cpu")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per row and batch, at most")
    parser.add_argument("--sessions", action="store_true", help="also one session per subgraph on cpu,cpu")
    parser.add_argument("--work", default="/tmp/splitc-latency")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in args.rows.split(","):
        if name not in ROWS:
            sys.exit(f"unknown row {name}; rows: {', '.join(ROWS)}")
        row = one_row(name, args, Path(args.work))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json_out:
            with open(args.json_out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    keys = ["row", "flops_ratio", "chosen", "ratio_b1", "ratio_b32", "limit_b32", "kernel_b32", "fused_ratio_b32",
            "lowered_ratio_b32",
            "fused_ratio_b1", "lowered_ratio_b1"] + (["sessions_ratio_b32"] if args.sessions else [])
    print(table(keys, [[f"{r.get(k):.3f}" if isinstance(r.get(k), float) else r.get(k, "-") for k in keys]
                       for r in rows]))


if __name__ == "__main__":
    main()
