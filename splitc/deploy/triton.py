"""A Triton model repository from an artifact directory, validated without a server.

Layout (``write_repository``): every subgraph is ``<prefix>_<name>/1/model.onnx`` with a
``config.pbtxt`` (``onnxruntime_onnx``, dims without the batch dimension, an ``instance_group``
on the manifest's device), and ``<prefix>/config.pbtxt`` is the ensemble that wires them as the
manifest's ``source`` fields say. Ensemble tensors are named ``<producer>:<index>``; the model
input is ``input`` and the merge's output ``logits``.

``validate_repository`` reads only the repository: every config parses into tritonclient's
``ModelConfig`` protobuf and agrees with its ONNX file, the ensemble is complete (every step
input mapped, every tensor produced once, dims and dtypes chained), and
``run_ensemble`` executes the steps in order with ONNX Runtime. Writing needs no tritonclient;
validating does (the ``triton`` extra).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from splitc.core.errors import SplitcError
from splitc.deploy.manifest import Manifest, SubgraphEntry, TensorInfo, check_files, read_manifest
from splitc.graph.split_model import INPUT

DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int64": "TYPE_INT64",
          "int32": "TYPE_INT32", "bool": "TYPE_BOOL"}
NUMPY_OF = {v: k for k, v in DTYPES.items()}
MAX_BATCH = 64
OUTPUT = "logits"


@dataclass(frozen=True)
class Step:
    """One ensemble step: the model it runs and its tensor wiring (model name -> ensemble name)."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]


# --- writing -------------------------------------------------------------------------------

def model_name(prefix: str, subgraph: str) -> str:
    return f"{prefix}_{subgraph.replace('.', '_')}"


def tensor_name(producer: str, index: int) -> str:
    return "input" if producer == INPUT else f"{producer}:{index}"


def write_repository(art_dir: str | os.PathLike, out: str | os.PathLike, prefix: str | None = None,
                     max_batch_size: int = MAX_BATCH) -> dict[str, Any]:
    """Write the repository of ``art_dir`` into ``out``; returns the models and the ensemble name."""
    folder, repo = Path(art_dir), Path(out)
    manifest = read_manifest(folder)
    prefix = prefix or re.sub(r"[^A-Za-z0-9_]", "_", manifest.model.name)
    if max_batch_size < 1:
        raise SplitcError("--max-batch-size must be >= 1.")
    if repo.exists() and not repo.is_dir():
        raise SplitcError(f"--out {repo} is a file; pass a directory.")
    models = []
    for s in manifest.subgraphs:
        check_files(folder, s.graph, f"subgraph {s.name}")
        name = model_name(prefix, s.name)
        version = repo / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / s.graph.model_file, version / "model.onnx")
        for side in s.graph.files[1:]:  # external weights keep the name model.onnx refers to
            shutil.copyfile(folder / side.path, version / side.path)
        (repo / name / "config.pbtxt").write_text(subgraph_config(name, s, max_batch_size))
        models.append({"model": name, "subgraph": s.name, "device": s.device})
    (repo / prefix / "1").mkdir(parents=True, exist_ok=True)  # Triton wants a version folder
    (repo / prefix / "config.pbtxt").write_text(ensemble_config(prefix, manifest, max_batch_size))
    return {"repository": str(repo), "ensemble": prefix, "models": models, "max_batch_size": max_batch_size}


def _tensors(key: str, tensors: tuple[TensorInfo, ...], names: list[str] | None = None) -> list[str]:
    lines = []
    for t, name in zip(tensors, names or [t.name for t in tensors]):
        dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in t.shape[1:])
        lines += [f"{key} {{", f'  name: "{name}"', f"  data_type: {DTYPES[t.dtype]}", f"  dims: [ {dims} ]", "}"]
    return lines


def subgraph_config(name: str, s: SubgraphEntry, max_batch_size: int) -> str:
    if s.device.startswith("cuda"):
        group = f"instance_group {{\n  count: 1\n  kind: KIND_GPU\n  gpus: [ {int(s.device.split(':')[1])} ]\n}}"
    else:
        group = "instance_group {\n  count: 1\n  kind: KIND_CPU\n}"
    lines = [f"# splitc subgraph {s.name} ({s.role}), placed on {s.device}", f'name: "{name}"',
             'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    return "\n".join(lines + _tensors("input", s.graph.inputs) + _tensors("output", s.graph.outputs) + [group]) + "\n"


def ensemble_config(prefix: str, manifest: Manifest, max_batch_size: int) -> str:
    first, last = manifest.subgraphs[0].graph.inputs[0], manifest.subgraphs[-1].graph.outputs[0]
    lines = [f"# splitc ensemble of {manifest.model.name} ({manifest.model.scope})", f'name: "{prefix}"',
             'platform: "ensemble"', f"max_batch_size: {max_batch_size}"]
    lines += _tensors("input", (first,), ["input"]) + _tensors("output", (last,), [OUTPUT])
    lines.append("ensemble_scheduling {")
    final = manifest.subgraphs[-1].name
    for s in manifest.subgraphs:
        lines += ["  step {", f'    model_name: "{model_name(prefix, s.name)}"', "    model_version: -1"]
        for t in s.graph.inputs:
            lines.append(f'    input_map {{ key: "{t.name}" value: "{tensor_name(t.source.producer, t.source.index)}" }}')
        for j, t in enumerate(s.graph.outputs):
            value = OUTPUT if s.name == final and j == 0 else tensor_name(s.name, j)
            lines.append(f'    output_map {{ key: "{t.name}" value: "{value}" }}')
        lines.append("  }")
    return "\n".join(lines + ["}"]) + "\n"


# --- validating ----------------------------------------------------------------------------

def parse_config(path: Path):
    """``path`` as tritonclient's ``ModelConfig`` protobuf, or a one-line error."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise SplitcError("validating a Triton repository needs tritonclient; install it with "
                          "`pip install 'splitc[triton]'` (or write only, with --no-check).") from None
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise SplitcError(f"{path} is not a valid Triton ModelConfig ({exc}); write the repository again "
                          "with `splitc triton`.") from None


def read_repository(repo: str | os.PathLike) -> dict[str, Any]:
    """Every model's parsed config, keyed by model name (the folder name)."""
    root = Path(repo)
    if not root.is_dir():
        raise SplitcError(f"Triton repository {root} does not exist; write it with `splitc triton ART_DIR --out REPO`.")
    configs = {}
    for path in sorted(root.glob("*/config.pbtxt")):
        config = parse_config(path)
        if config.name and config.name != path.parent.name:
            raise SplitcError(f"{path} names model {config.name!r} but lives in folder {path.parent.name!r}; "
                              "Triton needs them equal.")
        configs[path.parent.name] = config
    ensembles = [n for n, c in configs.items() if c.platform == "ensemble"]
    if len(ensembles) != 1:
        raise SplitcError(f"{root} holds {len(ensembles)} ensemble models, expected one; write it with `splitc triton`.")
    return configs


def _io(config, which: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in getattr(config, which)}


def check_model_file(repo: Path, name: str, config) -> None:
    """A step's config agrees with its ``1/model.onnx``: names, dtypes and dims."""
    path = repo / name / "1" / "model.onnx"
    if config.platform != "onnxruntime_onnx" and config.backend != "onnxruntime":
        raise SplitcError(f"{repo / name}/config.pbtxt: platform {config.platform!r}, expected onnxruntime_onnx.")
    if not path.is_file():
        raise SplitcError(f"{path} is missing; write the repository again with `splitc triton`.")
    graph = onnx.load(str(path), load_external_data=False).graph
    from tritonclient.grpc import model_config_pb2 as pb

    for which, values in (("input", graph.input), ("output", graph.output)):
        want = _io(config, which)
        have = {}
        for v in values:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
            have[v.name] = (pb.DataType.Value(DTYPES[dtype]), dims[1:])
        if want != have:
            raise SplitcError(f"{repo / name}/config.pbtxt: its {which}s {_show(want)} differ from model.onnx's "
                              f"{_show(have)}; write the repository again with `splitc triton`.")


def _show(io: dict[str, tuple[int, tuple[int, ...]]]) -> str:
    from tritonclient.grpc import model_config_pb2 as pb

    return "{" + ", ".join(f"{n}: {pb.DataType.Name(t)}{list(d)}" for n, (t, d) in io.items()) + "}"


def ensemble_steps(repo: Path, configs: dict[str, Any]) -> tuple[str, list[Step]]:
    """The ensemble's steps in an executable order, after the completeness checks."""
    ens_name = next(n for n, c in configs.items() if c.platform == "ensemble")
    ens = configs[ens_name]
    where = f"{repo / ens_name}/config.pbtxt"
    known: dict[str, tuple[int, tuple[int, ...]]] = dict(_io(ens, "input"))  # tensor -> (dtype, dims)
    producer = {t: "the ensemble input" for t in known}
    pending = [Step(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ens.ensemble_scheduling.step]
    for step in pending:
        if step.model not in configs or step.model == ens_name:
            raise SplitcError(f"{where}: step model {step.model!r} is not in the repository.")
        _check_maps(where, step, configs[step.model])
        for key, tensor in step.output_map.items():
            if tensor in producer:
                raise SplitcError(f"{where}: tensor {tensor!r} is produced twice ({producer[tensor]} and "
                                  f"{step.model}); each tensor needs one producer.")
            producer[tensor] = step.model
    ordered: list[Step] = []
    while pending:
        ready = [s for s in pending if all(t in known for t in s.input_map.values())]
        if not ready:
            missing = sorted({t for s in pending for t in s.input_map.values() if t not in producer})
            raise SplitcError(f"{where}: tensor {missing[0] if missing else '?'} is read but never produced "
                              f"(steps {', '.join(s.model for s in pending)} cannot run).")
        for step in ready:
            _chain(where, step, configs[step.model], known)
            ordered.append(step)
            pending.remove(step)
    for name, (dtype, dims) in _io(ens, "output").items():
        if known.get(name) != (dtype, dims):
            raise SplitcError(f"{where}: ensemble output {name!r} is {'not produced' if name not in known else known[name]}"
                              f", expected {(dtype, list(dims))}.")
    return ens_name, ordered


def _check_maps(where: str, step: Step, config) -> None:
    inputs, outputs = _io(config, "input"), _io(config, "output")
    unmapped = sorted(set(inputs) - set(step.input_map))
    if unmapped:
        raise SplitcError(f"{where}: step {step.model} has no input_map for its input {unmapped[0]!r}; "
                          "every step input must be mapped.")
    foreign = sorted(set(step.input_map) - set(inputs)) + sorted(set(step.output_map) - set(outputs))
    if foreign:
        raise SplitcError(f"{where}: step {step.model} maps {foreign[0]!r}, which its config does not declare.")


def _chain(where: str, step: Step, config, known: dict[str, tuple[int, tuple[int, ...]]]) -> None:
    """Each input's dtype and dims equal its producer's; then the step's outputs become known."""
    from tritonclient.grpc import model_config_pb2 as pb

    inputs = _io(config, "input")
    for key, tensor in step.input_map.items():
        (have_t, have_d), (want_t, want_d) = known[tensor], inputs[key]
        if have_t != want_t or have_d != want_d:
            raise SplitcError(f"{where}: step {step.model} input {key!r} is {pb.DataType.Name(want_t)}{list(want_d)} "
                              f"but tensor {tensor!r} is {pb.DataType.Name(have_t)}{list(have_d)}; the dims and "
                              "dtypes must chain.")
    outputs = _io(config, "output")
    known.update({tensor: outputs[key] for key, tensor in step.output_map.items()})


# --- running the ensemble with ONNX Runtime ------------------------------------------------

class EnsembleRunner:
    """The ensemble's steps in order, one ORT session per step, from the repository's files only."""

    def __init__(self, repo: str | os.PathLike, threads: int | None = None) -> None:
        from splitc.deploy.runtime import cpu_cores, new_session

        self.repo = Path(repo)
        self.configs = read_repository(self.repo)
        self.name, self.steps = ensemble_steps(self.repo, self.configs)
        for step in self.steps:
            check_model_file(self.repo, step.model, self.configs[step.model])
        cores = threads or cpu_cores()
        self.sessions = {s.model: new_session(self.repo / s.model / "1" / "model.onnx", "cpu", cores)
                         for s in self.steps}
        ens = self.configs[self.name]
        self.max_batch_size = ens.max_batch_size
        self.input_name = ens.input[0].name
        self.output_name = ens.output[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not 1 <= len(x) <= self.max_batch_size:
            raise SplitcError(f"batch {len(x)} is outside 1..{self.max_batch_size} (max_batch_size).")
        env = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        for step in self.steps:
            outs = list(step.output_map)
            values = self.sessions[step.model].run(outs, {k: env[t] for k, t in step.input_map.items()})
            env.update({step.output_map[k]: v for k, v in zip(outs, values)})
        return env[self.output_name]


def validate_repository(repo: str | os.PathLike, art_dir: str | os.PathLike | None = None,
                        split_dir: str | os.PathLike | None = None, batches: int = 3,
                        batch_size: int = 3) -> dict[str, Any]:
    """Parse and check every config, then run the ensemble against the PyTorch split model
    that ``art_dir`` was exported from (``split_dir`` overrides where it lives)."""
    runner = EnsembleRunner(repo)
    result: dict[str, Any] = {"repository": str(repo), "ensemble": runner.name,
                              "steps": [s.model for s in runner.steps], "configs_parsed": len(runner.configs)}
    if art_dir is None:
        return result
    import torch

    from splitc.deploy.export import VERIFY_TOLERANCE
    from splitc.compile.split_dir import load_split

    manifest = read_manifest(art_dir)
    source = Path(split_dir) if split_dir else Path(manifest.source["split_dir"])
    if not (source / manifest.source["weights"]).is_file():
        raise SplitcError(f"the split directory {source} that {art_dir} was exported from is gone; "
                          "pass it with --split-dir.")
    model = load_split(source, weights=manifest.source["weights"]).model
    worst = 0.0
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    with torch.no_grad():
        for _ in range(batches):
            x = torch.randn(batch_size, *manifest.model.input_size, generator=gen)
            want, got = model(x), torch.from_numpy(runner(x.numpy()))
            worst = max(worst, float((got - want).norm() / want.norm().clamp_min(1e-30)))
    return {**result, "max_rel_err": worst, "tolerance": VERIFY_TOLERANCE, "ok": worst <= VERIFY_TOLERANCE,
            "checked": f"ensemble {runner.name} run with ONNX Runtime vs the PyTorch split model, "
                       f"{batches} batches of {batch_size}"}
