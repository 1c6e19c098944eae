"""The artifact manifest (``manifest.json``) and device placement.

An artifact directory holds one ONNX file per subgraph (trunk, branches, merge), a fused graph
of the whole split model, the unsplit masked model (the baseline ``bench`` times against) and
this manifest. The manifest says what each file is (SHA-256, inputs, outputs, params, FLOPs),
how the subgraphs are wired and where each one runs. Everything is a frozen dataclass read and
written as plain JSON, so a runtime in another language could read it too.

Placement lives here because it is part of the manifest: export writes one, and ``load`` may
recompute it for other devices from the FLOPs stored here.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from splitc.core.documents import read_document
from splitc.core.errors import SplitcError
from splitc.graph.split_model import TensorRef
from splitc.core.files import MANIFEST_JSON
from splitc.core.outputs import sha256_of

SCHEMA_VERSION = 1
MANIFEST = MANIFEST_JSON
BATCH = "batch"  # the symbolic name of the dynamic batch dimension in shapes


@dataclass(frozen=True)
class FileEntry:
    path: str      # relative to the artifact directory
    sha256: str
    bytes: int


@dataclass(frozen=True)
class TensorInfo:
    name: str                         # the ONNX graph input/output name
    shape: tuple[int | str, ...]      # "batch" for the dynamic batch dimension
    dtype: str                        # numpy dtype name
    source: TensorRef | None = None   # for a subgraph input: the output that feeds it


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph: its files (the .onnx and any weight side files) and its interface."""

    files: tuple[FileEntry, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    params: int
    flops: int   # per sample, counted by splitc.graph.counting (2 x MAC)

    @property
    def model_file(self) -> str:
        return self.files[0].path


@dataclass(frozen=True)
class SubgraphEntry:
    name: str
    role: str              # trunk | branch | merge
    level: int
    group: int | None
    parent: str | None
    graph: GraphEntry
    device: str


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    num_classes: int
    input_size: tuple[int, ...]
    scope: str
    groups: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    schema: int
    splitc_version: str
    model: ModelIdentity
    source: dict[str, str]            # split_dir, weights file and its sha256 (for verify)
    opset: int
    example_batch: int
    class_names: tuple[str, ...]      # the merge's output order (the original class order)
    class_groups: tuple[int, ...]     # leaf group computing each class
    devices: tuple[str, ...]
    subgraphs: tuple[SubgraphEntry, ...]   # in execution order
    fused: GraphEntry                 # trunk + branches + merge in one graph (one device)
    unsplit: GraphEntry               # the unsplit model bench times against
    unsplit_is: str                   # "masked": the split's function (a plain split, equal
                                      # accuracy); "original": an overlap split's unsplit model
    lowered: GraphEntry | None = None  # the dense graph with grouped convs (deploy/lowering.py)
    lowering: dict[str, Any] = field(default_factory=dict)  # per-layer and per-graph choices, timings
    one_device: str = "fused"         # the graph a one-device run uses: "fused" or "lowered"

    @property
    def one_device_graph(self) -> GraphEntry:
        return self.lowered if self.one_device == "lowered" and self.lowered is not None else self.fused

    @property
    def placement(self) -> dict[str, str]:
        return {s.name: s.device for s in self.subgraphs}

    def stages(self) -> list[list[SubgraphEntry]]:
        """Subgraphs grouped by level: each stage's members are independent."""
        levels: dict[int, list[SubgraphEntry]] = {}
        for s in self.subgraphs:
            levels.setdefault(s.level, []).append(s)
        return [levels[k] for k in sorted(levels)]

    def with_placement(self, devices: tuple[str, ...]) -> "Manifest":
        where = place(self.subgraphs, devices)
        return replace(self, devices=devices, subgraphs=tuple(replace(s, device=where[s.name])
                                                               for s in self.subgraphs))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- reading and writing ------------------------------------------------------------------

def read_manifest(art_dir: str | os.PathLike) -> Manifest:
    """Parse ``manifest.json``; a missing or foreign file is a one-line error."""
    path = Path(art_dir) / MANIFEST
    data = read_document(art_dir, MANIFEST, "artifact directory", "export SPLIT_DIR --out DIR", SCHEMA_VERSION)
    try:
        return manifest_from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise SplitcError(f"{path} is malformed (bad field {exc}); run `splitc export` again.") from None


def manifest_from_dict(d: dict[str, Any]) -> Manifest:
    return Manifest(
        schema=d["schema"], splitc_version=d["splitc_version"],
        model=ModelIdentity(d["model"]["name"], d["model"]["num_classes"], tuple(d["model"]["input_size"]),
                            d["model"]["scope"], tuple(d["model"]["groups"])),
        source=dict(d["source"]), opset=d["opset"], example_batch=d["example_batch"],
        class_names=tuple(d["class_names"]), class_groups=tuple(d["class_groups"]),
        devices=tuple(d["devices"]),
        subgraphs=tuple(SubgraphEntry(s["name"], s["role"], s["level"], s["group"], s["parent"],
                                      _graph(s["graph"]), s["device"]) for s in d["subgraphs"]),
        fused=_graph(d["fused"]), unsplit=_graph(d["unsplit"]), unsplit_is=d["unsplit_is"],
        lowered=_graph(d["lowered"]) if d.get("lowered") else None, lowering=dict(d.get("lowering") or {}),
        one_device=d.get("one_device", "fused"))


def _graph(d: dict[str, Any]) -> GraphEntry:
    return GraphEntry(tuple(FileEntry(f["path"], f["sha256"], f["bytes"]) for f in d["files"]),
                      tuple(_tensor(t) for t in d["inputs"]), tuple(_tensor(t) for t in d["outputs"]),
                      d["params"], d["flops"])


def _tensor(d: dict[str, Any]) -> TensorInfo:
    src = d.get("source")
    return TensorInfo(d["name"], tuple(d["shape"]), d["dtype"],
                      TensorRef(src["producer"], src["index"]) if src else None)



def file_entry(folder: Path, name: str) -> FileEntry:
    path = folder / name
    return FileEntry(name, sha256_of(path), path.stat().st_size)


def check_files(art_dir: Path, graph: GraphEntry, what: str) -> None:
    """Every file of ``graph`` exists and has its recorded checksum (before ORT reads it)."""
    for f in graph.files:
        path = art_dir / f.path
        if not path.is_file():
            raise SplitcError(f"{path} is missing ({what}); run `splitc export` again.")
        if path.stat().st_size != f.bytes or sha256_of(path) != f.sha256:
            raise SplitcError(f"{path} does not match its SHA-256 in {MANIFEST} ({what}): the file "
                              "was changed or truncated; run `splitc export` again.")


# --- devices and placement -----------------------------------------------------------------

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_devices(spec: str | list[str] | tuple[str, ...] | None, gpu_count: int) -> tuple[str, ...]:
    """``auto`` | ``cpu`` | ``cpu,cpu`` | ``cuda:0,cuda:1`` -> canonical device names.

    ``auto`` is every GPU torch sees, or the CPU. Several CPU entries are separate logical
    devices (``cpu:0``, ``cpu:1``: one session each). Syntax only; :func:`check_devices` checks
    that they exist on this host."""
    tokens = [t.strip().lower() for t in (spec.split(",") if isinstance(spec, str) else spec or ["auto"])]
    if tokens == ["auto"]:
        return tuple(f"cuda:{i}" for i in range(gpu_count)) or ("cpu",)
    out: list[str] = []
    cpu_count = sum(1 for t in tokens if t.startswith("cpu"))
    for t in tokens:
        m = _DEVICE.match(t)
        if not m:
            raise SplitcError(f"unknown device {t!r}; use auto, cpu, cpu:N or cuda:N, comma-separated "
                              "(e.g. --devices cuda:0,cuda:1).")
        kind, index = m.group(1), m.group(2)
        if kind == "cpu":
            name = f"cpu:{index if index is not None else sum(1 for o in out if o.startswith('cpu'))}"
            out.append("cpu" if cpu_count == 1 and index is None else name)
        else:
            out.append(f"cuda:{index or 0}")
    dupes = sorted({d for d in out if out.count(d) > 1})
    if dupes:
        raise SplitcError(f"device {dupes[0]} is listed twice in {','.join(tokens)}; list each device once.")
    return tuple(out)


def check_devices(devices: tuple[str, ...], gpu_count: int) -> None:
    """Every CUDA device must exist here (``torch.cuda.device_count()``)."""
    for d in devices:
        if d.startswith("cuda"):
            index = int(d.split(":")[1])
            if index >= gpu_count:
                have = (f"this host has {gpu_count} GPU{'s' if gpu_count > 1 else ''} "
                        f"(cuda:0..cuda:{gpu_count - 1})" if gpu_count else "torch sees no GPU on this host")
                raise SplitcError(f"device {d} does not exist: {have}; use --devices auto or cpu.")


def place(subgraphs: tuple[SubgraphEntry, ...], devices: tuple[str, ...]) -> dict[str, str]:
    """Trunk and merge on the first device. The branches of a stage go on different devices,
    the largest (by FLOPs) on the least-loaded one; with more branches than devices they share
    devices round-robin in plan order, so siblings (adjacent in the plan) still differ."""
    where: dict[str, str] = {}
    load = {d: 0 for d in devices}
    levels: dict[int, list[SubgraphEntry]] = {}
    for s in subgraphs:
        levels.setdefault(s.level, []).append(s)
    for level in sorted(levels):
        stage = levels[level]
        if stage[0].role != "branch":
            for s in stage:
                where[s.name] = devices[0]
                load[devices[0]] += s.graph.flops
            continue
        if len(stage) <= len(devices):
            stage = sorted(stage, key=lambda s: -s.graph.flops)
            chosen = sorted(devices, key=lambda d: (load[d], devices.index(d)))[:len(stage)]
        else:
            chosen = [devices[i % len(devices)] for i in range(len(stage))]
        for s, d in zip(stage, chosen):
            where[s.name] = d
            load[d] += s.graph.flops
    return where
