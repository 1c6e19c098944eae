"""The multi-device runtime: ``load(ART_DIR)`` gives a callable ONNX Runtime pipeline.

Strategy per placement (the measurements behind it are in docs/RUNTIME.md):

* all subgraphs on one device: the fused graph in one session. On 2 CPU cores, separate
  sessions gained nothing from concurrency, and the hand-offs between sessions cost time;
* otherwise one session per subgraph on its device; the trunk runs, then the siblings of each
  stage concurrently on a thread pool (ORT releases the GIL), then the merge.

CPU sessions get ``cores // (CPU subgraphs running at once)`` intra-op threads, so concurrent
branches do not oversubscribe the cores, and thread-pool spinning is off: with spinning on, a
session's idle workers kept a core busy for ~40 ms after each run and starved the next session
(batch 1 ran 1.07-2.13x the unsplit model's time instead of 0.69-0.71x). CUDA sessions ask for
``CUDAExecutionProvider`` with their ``device_id`` only when torch sees that GPU, and run with
IOBinding on torch tensors, so activations move device to device without visiting the host.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnxruntime as ort
import torch

from splitc.core.errors import SplitcError
from splitc.deploy.manifest import (BATCH, GraphEntry, Manifest, check_devices, check_files, parse_devices,
                       read_manifest)
from splitc.graph.split_model import INPUT

Value = Union[np.ndarray, torch.Tensor]
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
                 "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session_options(threads: int) -> ort.SessionOptions:
    """Sequential execution, ``threads`` intra-op threads, no spinning (see the module doc)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def providers_for(device: str) -> list:
    if device.startswith("cuda"):
        return [("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def new_session(path: Path, device: str, threads: int) -> ort.InferenceSession:
    """The one place sessions are made (tests replace ``ort.InferenceSession`` to check it)."""
    session = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                   providers=providers_for(device))
    if device.startswith("cuda") and session.get_providers()[:1] != ["CUDAExecutionProvider"]:
        raise SplitcError(f"onnxruntime could not start CUDA on {device} (it fell back to "
                          f"{session.get_providers()}); install the CUDA and cuDNN libraries "
                          "onnxruntime-gpu needs, or use --devices cpu.")
    return session


class _Runner:
    """One session on one device. CPU runners take and give numpy arrays; CUDA runners bind
    torch tensors on their GPU (IOBinding), so activations stay on the devices."""

    def __init__(self, name: str, graph: GraphEntry, device: str, session: ort.InferenceSession,
                 bind: bool | None = None) -> None:
        self.name, self.graph, self.device, self.session = name, graph, device, session
        self.bind = device.startswith("cuda") if bind is None else bind  # bind=True on CPU: tests
        self.out_names = [t.name for t in graph.outputs]

    def __call__(self, inputs: Sequence[Value]) -> list[Value]:
        if self.bind:
            return self._run_bound(inputs)
        feeds = {t.name: _to_numpy(v) for t, v in zip(self.graph.inputs, inputs)}
        return self.session.run(self.out_names, feeds)

    def _run_bound(self, inputs: Sequence[Value]) -> list[Value]:
        dev = torch.device(self.device.split(":")[0] if self.device.startswith("cpu") else self.device)
        kind, index = dev.type, dev.index or 0
        binding = self.session.io_binding()
        held = []  # the tensors must outlive the run
        for info, v in zip(self.graph.inputs, inputs):
            t = (torch.from_numpy(v) if isinstance(v, np.ndarray) else v).to(dev, non_blocking=True).contiguous()
            held.append(t)
            binding.bind_input(info.name, kind, index, np.dtype(info.dtype).type, tuple(t.shape), t.data_ptr())
        batch = held[0].shape[0]
        outs: list[Value | None] = []
        for info in self.graph.outputs:
            shape = tuple(batch if d == BATCH else d for d in info.shape)
            if all(isinstance(d, int) for d in shape):
                out = torch.empty(shape, dtype=_TORCH_DTYPES[info.dtype], device=dev)
                binding.bind_output(info.name, kind, index, np.dtype(info.dtype).type, shape, out.data_ptr())
                outs.append(out)
            else:  # a shape only known after the run: ORT allocates it, and it comes back via host
                binding.bind_output(info.name, kind, index)
                outs.append(None)
        if kind == "cuda":
            torch.cuda.synchronize(dev)  # the copies above ran on torch's stream; ORT uses its own
        self.session.run_with_iobinding(binding)
        if any(o is None for o in outs):
            host = binding.copy_outputs_to_cpu()
            outs = [h if o is None else o for o, h in zip(outs, host)]
        return outs


def _to_numpy(v: Value) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v


class Pipeline:
    """``pipeline(x)`` -> logits (numpy, original class order) for a float32 batch ``x``."""

    def __init__(self, manifest: Manifest, stages: list[list[_Runner]], sources: dict[str, list[tuple[str, int]]],
                 output: tuple[str, int], graph: str = "fused") -> None:
        self.manifest = manifest
        self.stages, self.sources, self.output = stages, sources, output
        self.graph = graph   # the one-device graph a single session runs: fused | lowered | unsplit
        width = max(len(s) for s in stages)
        self._pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="splitc") if width > 1 else None

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(self.manifest.model.input_size)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.manifest.class_names

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.device for stage in self.stages for r in stage))

    @property
    def fused(self) -> bool:
        return sum(len(s) for s in self.stages) == 1

    def describe(self) -> str:
        count = sum(len(s) for s in self.stages)
        how = f"one {self.graph} session" if count == 1 else f"{count} sessions"
        return f"{how} on {', '.join(self.devices)}"

    def check_input(self, x: Any) -> Value:
        """A float32 array of shape (N, C, H, W), or a one-line error naming the fix."""
        if not isinstance(x, (np.ndarray, torch.Tensor)):
            raise SplitcError(f"input must be a numpy array of shape (N, {', '.join(map(str, self.input_size))}), "
                              f"got {type(x).__name__}.")
        shape, want = tuple(x.shape), self.input_size
        if len(shape) != len(want) + 1 or shape[1:] != want or shape[0] < 1:
            raise SplitcError(f"input has shape {shape}, the model takes (N, {', '.join(map(str, want))}) "
                              "with any batch size N >= 1; resize or reshape the input.")
        dtype = str(x.dtype).replace("torch.", "")
        if dtype != "float32":
            raise SplitcError(f"input has dtype {dtype}, the model takes float32; convert it first "
                              "(x.astype(np.float32)).")
        return np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x

    def __call__(self, x: Any) -> np.ndarray:
        env: dict[tuple[str, int], Value] = {(INPUT, 0): self.check_input(x)}
        for stage in self.stages:
            if len(stage) == 1 or self._pool is None:
                results = [self._run(r, env) for r in stage]
            else:
                results = [f.result() for f in [self._pool.submit(self._run, r, env) for r in stage]]
            for runner, outs in zip(stage, results):
                env.update({(runner.name, j): v for j, v in enumerate(outs)})
        return _to_numpy(env[self.output])

    def _run(self, runner: _Runner, env: dict[tuple[str, int], Value]) -> list[Value]:
        return runner([env[ref] for ref in self.sources[runner.name]])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _placed(folder: Path, devices: str | Sequence[str] | None) -> Manifest:
    """The manifest, re-placed on ``devices`` if given; every device used must exist here."""
    manifest = read_manifest(folder)
    gpus = torch.cuda.device_count()
    if devices is not None:
        manifest = manifest.with_placement(parse_devices(devices, gpus))
    used = tuple(dict.fromkeys(manifest.placement.values()))
    check_devices(used, gpus)
    if any(d.startswith("cuda") for d in used) and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SplitcError("this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu, "
                          "or use --devices cpu.")
    return manifest


def load(art_dir: str | os.PathLike, devices: str | Sequence[str] | None = None,
         threads: int | None = None, one_device: str | None = None) -> Pipeline:
    """The pipeline of ``art_dir``, placed as its manifest says or on ``devices``
    (``auto``, ``cpu``, ``cpu,cpu``, ``cuda:0,cuda:1``). ``threads``: CPU cores to use.
    On one device it runs the manifest's ``one_device`` graph, or ``one_device`` (``fused`` or
    ``lowered``) when given."""
    folder = Path(art_dir)
    manifest = _placed(folder, devices)
    cores = threads or cpu_cores()
    where = manifest.placement
    if len(set(where.values())) == 1:
        device = next(iter(where.values()))
        name = one_device or manifest.one_device
        if name not in ("fused", "lowered") or (name == "lowered" and manifest.lowered is None):
            raise SplitcError(f"{folder} has no {name} graph; its one-device graphs: fused"
                              + (", lowered" if manifest.lowered is not None else "") + ".")
        graph = manifest.lowered if name == "lowered" else manifest.fused
        check_files(folder, graph, f"the {name} graph")
        runner = _Runner("fused", graph, device, new_session(folder / graph.model_file, device, cores))
        return Pipeline(manifest, [[runner]], {"fused": [(INPUT, 0)]}, ("fused", 0), name)
    stages, sources = [], {}
    for stage in manifest.stages():
        on_cpu = sum(1 for s in stage if not s.device.startswith("cuda"))
        runners = []
        for s in stage:
            check_files(folder, s.graph, f"subgraph {s.name}")
            share = cores if s.device.startswith("cuda") else max(1, cores // max(1, on_cpu))
            runners.append(_Runner(s.name, s.graph, s.device, new_session(folder / s.graph.model_file, s.device, share)))
            sources[s.name] = [(t.source.producer, t.source.index) for t in s.graph.inputs]
        stages.append(runners)
    return Pipeline(manifest, stages, sources, (manifest.subgraphs[-1].name, 0))


def load_unsplit(art_dir: str | os.PathLike, devices: str | Sequence[str] | None = None,
                 threads: int | None = None) -> Pipeline:
    """The unsplit masked model in one session on the first device (the bench baseline)."""
    folder = Path(art_dir)
    manifest = _placed(folder, devices)
    device = manifest.devices[0]
    check_files(folder, manifest.unsplit, "the unsplit model")
    runner = _Runner("unsplit", manifest.unsplit, device,
                     new_session(folder / manifest.unsplit.model_file, device, threads or cpu_cores()))
    return Pipeline(manifest, [[runner]], {"unsplit": [(INPUT, 0)]}, ("unsplit", 0), "unsplit")


def bench(art_dir: str | os.PathLike, batch_size: int = 32, devices: str | None = None, warmup: int = 5,
          reps: int = 30, progress: bool = False, seed: int = 0) -> dict[str, Any]:
    """Split pipeline vs unsplit model in one process, interleaved (the order alternates every
    repetition), same input, warm-up and repetitions; medians."""
    from tqdm import tqdm

    if batch_size < 1 or reps < 1 or warmup < 0:
        raise SplitcError("--batch-size and --reps must be >= 1 and --warmup >= 0.")
    with load(art_dir, devices) as split, load_unsplit(art_dir, devices) as unsplit:
        x = np.random.default_rng(seed).standard_normal((batch_size, *split.input_size)).astype(np.float32)
        for _ in range(warmup):
            split(x), unsplit(x)
        times: dict[str, list[float]] = {"split": [], "unsplit": []}
        for r in tqdm(range(reps), desc=f"bench batch {batch_size}", disable=not progress, leave=False):
            for name in (("split", "unsplit") if r % 2 == 0 else ("unsplit", "split")):
                pipe = split if name == "split" else unsplit
                start = time.perf_counter()
                pipe(x)
                times[name].append(time.perf_counter() - start)
        manifest, how = split.manifest, split.describe()
        used = list(split.devices)
    split_s, unsplit_s = statistics.median(times["split"]), statistics.median(times["unsplit"])
    return {"split_ms": 1e3 * split_s, "unsplit_ms": 1e3 * unsplit_s, "ratio": split_s / unsplit_s,
            "flops_ratio": manifest.fused.flops / manifest.unsplit.flops, "batch_size": batch_size,
            "devices": used, "split_per_s": batch_size / split_s, "unsplit_per_s": batch_size / unsplit_s,
            "strategy": how, "warmup": warmup, "reps": reps}
