"""A Ray Serve application built from ``manifest.json`` (``splitc serve ART_DIR``).

One deployment per subgraph runs its ONNX file with ONNX Runtime. The ingress calls them in plan
order, handing each call its producers' ``DeploymentResponse``s: Serve awaits those together
before it routes the call, so the trunk runs, then the siblings concurrently, then the merge,
and activations go replica to replica. ``fused=True`` serves ``fused.onnx`` inside the ingress
instead: one deployment, for one device.

Placement follows the manifest: a subgraph on ``cuda:g`` asks Ray for ``num_gpus: 1`` (Ray
picks the GPU and sets ``CUDA_VISIBLE_DEVICES``, so the session uses device 0 of what it sees);
every replica asks for a share of ``cpus`` (default 1 CPU for the whole application), so it
starts on a 2-core machine. ``pin_prefix`` also asks each subgraph for 0.01 of the custom
resource ``<prefix><device>``: start each node with ``--resources '{"splitc/cuda:1": 1}'`` and
the subgraphs land where the manifest says.

Replica code imports numpy and onnxruntime only: splitc.deploy.runtime and splitc.deploy.manifest import
torch, which costs every replica process ~2 s and ~300 MB. The driver reads the manifest.
The artifact directory must be at the same path on every node (or on a shared filesystem).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from splitc.core.errors import SplitcError

INSTALL = "Ray Serve is not installed; install it with `pip install 'splitc[serve]'`."
APP = "splitc"
PIN_AMOUNT = 0.01
NPY_MAGIC = b"\x93NUMPY"


def import_serve():
    """``ray.serve``, or the one-line install hint."""
    try:
        from ray import serve
    except ImportError:
        raise SplitcError(INSTALL) from None
    return serve


@dataclass(frozen=True)
class GraphSpec:
    """What a replica needs to open one ONNX file: plain data, no manifest (no torch)."""

    name: str
    path: str
    device: str
    concurrent: int        # CPU subgraphs of its stage that run at once (they share the cores)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    sources: tuple[tuple[str, int], ...] = (("input", 0),)   # (producer, output index) per input


def producers(sources: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """The distinct producers of a subgraph's inputs, in order: one call argument each."""
    return tuple(dict.fromkeys(p for p, _ in sources))


@dataclass(frozen=True)
class ServePlan:
    """The wiring the ingress needs: stages of subgraph names and where each input comes from."""

    stages: tuple[tuple[str, ...], ...]
    sources: dict[str, tuple[tuple[str, int], ...]]
    output: tuple[str, int]
    input_size: tuple[int, ...]
    class_names: tuple[str, ...]


# --- replica code (no torch) -------------------------------------------------------------

def open_session(spec: GraphSpec):
    """An ORT session with splitc.deploy.runtime's settings (sequential, no spinning, a core share)."""
    import onnxruntime as ort

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, cores // max(1, spec.concurrent))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    if spec.device.startswith("cuda"):  # Ray set CUDA_VISIBLE_DEVICES: our GPU is device 0
        providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(spec.path, sess_options=so, providers=providers)
    if spec.device.startswith("cuda") and session.get_providers()[0] != "CUDAExecutionProvider":
        raise SplitcError(f"{spec.name}: onnxruntime could not start CUDA in its Ray replica; install the "
                          "CUDA libraries onnxruntime-gpu needs on that node, or export with --devices cpu.")
    return session


class SubgraphModel:
    """One subgraph's session inside a Serve replica. Called with one argument per producer
    (see :func:`producers`): that producer's list of outputs; returns the list of its own."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.session = open_session(spec)

    def __call__(self, *parts: list[np.ndarray]) -> list[np.ndarray]:
        given = dict(zip(producers(self.spec.sources), parts))
        feeds = {name: given[p][j] for name, (p, j) in zip(self.spec.inputs, self.spec.sources)}
        return self.session.run(list(self.spec.outputs), feeds)

    def node(self) -> str:
        """The Ray node this replica runs on (the placement tests ask)."""
        import ray

        return ray.get_runtime_context().get_node_id()


def check_batch(x: Any, input_size: tuple[int, ...]) -> np.ndarray:
    """A float32 (N, C, H, W) array, or a one-line error."""
    want = ", ".join(map(str, input_size))
    if not isinstance(x, np.ndarray):
        raise SplitcError(f"input must be a float32 array of shape (N, {want}), got {type(x).__name__}.")
    if x.ndim != len(input_size) + 1 or tuple(x.shape[1:]) != tuple(input_size) or x.shape[0] < 1:
        raise SplitcError(f"input has shape {tuple(x.shape)}, the model takes (N, {want}) with N >= 1.")
    if x.dtype != np.float32:
        raise SplitcError(f"input has dtype {x.dtype}, the model takes float32; convert it first.")
    return np.ascontiguousarray(x)


def parse_body(body: bytes, input_size: tuple[int, ...]) -> np.ndarray:
    """An HTTP body (.npy bytes, a JSON nested list, or {"inputs": list}) -> a checked batch."""
    if not body:
        raise SplitcError("empty body; POST a float32 batch as .npy bytes or as a JSON nested list.")
    if body.startswith(NPY_MAGIC):
        try:
            x = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise SplitcError(f"the body is not a readable .npy array ({str(exc)[:80]}).") from None
        return check_batch(x, input_size)
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SplitcError("the body is neither .npy bytes nor JSON; send np.save output or a nested list.") from None
    if isinstance(data, dict):
        data = data.get("inputs")
    try:
        x = np.asarray(data)
    except ValueError:  # ragged nesting
        raise SplitcError("the JSON is not a rectangular nested list of numbers.") from None
    if x.dtype.kind not in "iuf":
        what = "booleans" if x.dtype.kind == "b" else "non-numbers"
        raise SplitcError(f"the JSON holds {what}; send a nested list of numbers (or {{\"inputs\": [...]}}).")
    return check_batch(x.astype(np.float32), input_size)


def top_k(logits: np.ndarray, k: int, class_names: tuple[str, ...]) -> list[list[dict[str, Any]]]:
    """The k most probable classes of each sample, with softmax probabilities as scores."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1)[:, :k]
    return [[{"class": class_names[j], "score": float(row[j])} for j in idx] for row, idx in zip(p, order)]


class Ingress:
    """The HTTP and handle entry point: runs the plan through the subgraph deployments (or the
    fused graph in-process when ``fused`` is given)."""

    def __init__(self, plan: ServePlan, handles: dict | None = None, fused: GraphSpec | None = None) -> None:
        self.plan, self.handles = plan, handles or {}
        self.fused = SubgraphModel(fused) if fused is not None else None

    async def predict(self, x: np.ndarray) -> np.ndarray:
        x = check_batch(x, self.plan.input_size)
        if self.fused is not None:
            return (await asyncio.get_running_loop().run_in_executor(None, self.fused, [x]))[0]
        # Chained: each call gets its producers' DeploymentResponses, which Serve resolves
        # together before routing it (siblings start as soon as their parent is done), and the
        # activations go replica to replica through the object store, not through here.
        calls: dict[str, Any] = {"input": [x]}
        for stage in self.plan.stages:
            for name in stage:
                calls[name] = self.handles[name].remote(*[calls[p] for p in producers(self.plan.sources[name])])
        name, index = self.plan.output
        return (await calls[name])[index]

    def __serve_build_asgi_app__(self):
        """Serve's late-bound ingress: a raw ASGI app over :meth:`asgi` (no web framework)."""
        return _AsgiApp(self)

    async def asgi(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        status, body, kind = await self.respond(scope, await _read_body(receive))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode())]})
        await send({"type": "http.response.body", "body": body})

    async def respond(self, scope: dict, body: bytes) -> tuple[int, bytes, str]:
        """(status, body, content type) of one HTTP request; every error is one line."""
        from ray.exceptions import RayError
        from ray.serve.exceptions import RayServeException

        text = "text/plain; charset=utf-8"
        if not scope["path"].rstrip("/").endswith("/predict"):
            return 404, b"not found; POST a batch to /predict\n", text
        if scope["method"] != "POST":
            return 405, b"use POST /predict with a float32 batch (.npy or JSON)\n", text
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            top = _top(query.get("top", [None])[-1], len(self.plan.class_names))
            x = parse_body(body, self.plan.input_size)
        except SplitcError as exc:
            return 400, f"{exc}\n".encode(), text
        try:
            logits = await self.predict(x)
        except (RayError, RayServeException) as exc:
            status, line = _failure(exc)
            return status, f"{line}\n".encode(), text
        headers = dict(scope.get("headers", []))
        if b"application/x-npy" in headers.get(b"accept", b""):
            buf = io.BytesIO()
            np.save(buf, logits)
            return 200, buf.getvalue(), "application/x-npy"
        doc = {"top": top_k(logits, top, self.plan.class_names)} if top else {"logits": logits.tolist()}
        return 200, json.dumps(doc).encode(), "application/json"


class _AsgiApp:
    """An ASGI 3 callable (uvicorn takes a bound method for ASGI 2)."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress

    async def __call__(self, scope: dict, receive, send) -> None:
        await self.ingress.asgi(scope, receive, send)


async def _read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _failure(exc: Exception) -> tuple[int, str]:
    """503 when a replica died or was unavailable (retrying helps); 500 when a subgraph's own
    code raised (a bug: the traceback is in that replica's log)."""
    from ray.exceptions import ObjectLostError, RayActorError, RayTaskError
    from ray.serve.exceptions import RayServeException

    cause = exc.cause if isinstance(exc, RayTaskError) else exc
    if isinstance(cause, (RayActorError, ObjectLostError, RayServeException)) or not isinstance(exc, RayTaskError):
        return 503, f"a subgraph replica is unavailable ({type(cause).__name__}); retry the request"
    return 500, f"a subgraph failed ({type(cause).__name__}: {str(cause).splitlines()[0][:160] if str(cause) else ''})"


def _top(value: str | None, classes: int) -> int:
    if value is None:
        return 0
    if not value.isdigit() or not 1 <= int(value) <= classes:
        raise SplitcError(f"?top={value} must be an integer from 1 to {classes}.")
    return int(value)


# --- driver code: the application from the manifest ----------------------------------------

@dataclass(frozen=True)
class DeploymentRow:
    """One deployment as built: what ``--json`` prints and the config file lists."""

    name: str
    role: str
    device: str
    replicas: int
    ray_actor_options: dict[str, Any]


def _manifest(art_dir: str | os.PathLike, devices: str | None, fused: bool):
    """The manifest (re-placed on ``devices``); the files to be served match their SHA-256."""
    from splitc.deploy.manifest import check_files, parse_devices, read_manifest

    manifest = read_manifest(art_dir)
    if devices:
        manifest = manifest.with_placement(parse_devices(devices, 0))  # Ray, not this host, has the GPUs
    graphs = [("the fused graph", manifest.fused)] if fused else [(f"subgraph {s.name}", s.graph)
                                                                  for s in manifest.subgraphs]
    for what, graph in graphs:
        check_files(Path(art_dir), graph, what)
    return manifest


def _options(device: str, share: float, pin_prefix: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": share}
    if device.startswith("cuda"):
        options["num_gpus"] = 1
    if pin_prefix is not None:
        options["resources"] = {f"{pin_prefix}{device}": PIN_AMOUNT}
    return options


def plan_deployments(art_dir: str | os.PathLike, replicas: int = 1, fused: bool = False,
                     devices: str | None = None, cpus: float = 1.0,
                     pin_prefix: str | None = None) -> tuple[ServePlan, list[DeploymentRow], dict[str, GraphSpec]]:
    """The ingress plan, the deployment table and each subgraph's GraphSpec (no Ray needed)."""
    if replicas < 1 or cpus <= 0:
        raise SplitcError("--replicas must be >= 1 and the CPU budget > 0.")
    folder = Path(art_dir).resolve()
    manifest = _manifest(folder, devices, fused)
    plan = ServePlan(tuple(tuple(s.name for s in stage) for stage in manifest.stages()),
                     {s.name: tuple((t.source.producer, t.source.index) for t in s.graph.inputs)
                      for s in manifest.subgraphs},
                     (manifest.subgraphs[-1].name, 0), tuple(manifest.model.input_size), manifest.class_names)
    first = manifest.subgraphs[0].device
    if fused:
        specs = {"ingress": GraphSpec("fused", str(folder / manifest.fused.model_file), first, 1,
                                      tuple(t.name for t in manifest.fused.inputs),
                                      tuple(t.name for t in manifest.fused.outputs))}
        share = round(cpus / replicas, 4)
        return plan, [DeploymentRow("ingress", "fused", first, replicas, _options(first, share, pin_prefix))], specs
    share = max(1e-4, round(cpus / ((len(manifest.subgraphs) + 1) * replicas), 4))
    rows = [DeploymentRow("ingress", "ingress", "cpu", replicas, _options("cpu", share, None))]
    specs = {}
    for stage in manifest.stages():
        on_cpu = sum(1 for s in stage if not s.device.startswith("cuda"))
        for s in stage:
            specs[s.name] = GraphSpec(s.name, str(folder / s.graph.model_file), s.device,
                                      1 if s.device.startswith("cuda") else on_cpu,
                                      tuple(t.name for t in s.graph.inputs), tuple(t.name for t in s.graph.outputs),
                                      plan.sources[s.name])
            rows.append(DeploymentRow(s.name, s.role, s.device, replicas, _options(s.device, share, pin_prefix)))
    return plan, rows, specs


def build_app(art_dir: str | os.PathLike, replicas: int = 1, fused: bool = False, devices: str | None = None,
              cpus: float = 1.0, pin_prefix: str | None = None):
    """The bound Serve application of ``art_dir``: hand it to ``serve.run`` or a config file."""
    return bind(*plan_deployments(art_dir, replicas, fused, devices, cpus, pin_prefix))


def bind(plan: ServePlan, rows: list[DeploymentRow], specs: dict[str, GraphSpec]):
    """Deployments composed with ``.bind()``: the subgraph apps become the ingress's handles."""
    serve = import_serve()
    row = {r.name: r for r in rows}

    def deployment(cls, name: str):
        cls = serve.ingress()(cls) if cls is Ingress else cls
        return serve.deployment(cls).options(name=name, num_replicas=row[name].replicas,
                                             ray_actor_options=row[name].ray_actor_options,
                                             max_ongoing_requests=64 if name == "ingress" else 8)

    if row["ingress"].role == "fused":
        return deployment(Ingress, "ingress").bind(plan, None, specs["ingress"])
    handles = {name: deployment(SubgraphModel, name).bind(spec) for name, spec in specs.items()}
    return deployment(Ingress, "ingress").bind(plan, handles)


def app_builder(args: dict[str, Any]):
    """The ``import_path`` of a Serve config file: ``splitc.deploy.serve:app_builder``."""
    allowed = {"art_dir", "replicas", "fused", "devices", "cpus", "pin_prefix"}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise SplitcError(f"unknown args {unknown} in the Serve config; allowed: {sorted(allowed)}.")
    return build_app(**args)


def serve_config(art_dir: str | os.PathLike, replicas: int = 1, fused: bool = False, devices: str | None = None,
                 host: str = "127.0.0.1", port: int = 8000, pin_prefix: str | None = None,
                 name: str = APP) -> dict[str, Any]:
    """A Serve config (``serve deploy FILE`` / ``serve run FILE``) for this artifact."""
    _, rows, _ = plan_deployments(art_dir, replicas, fused, devices, pin_prefix=pin_prefix)
    args = {"art_dir": str(Path(art_dir).resolve()), "replicas": replicas, "fused": fused,
            **({"devices": devices} if devices else {}), **({"pin_prefix": pin_prefix} if pin_prefix else {})}
    return {"proxy_location": "HeadOnly", "http_options": {"host": host, "port": port},
            "applications": [{"name": name, "route_prefix": "/", "import_path": "splitc.deploy.serve:app_builder",
                              "args": args,
                              "deployments": [{"name": r.name, "num_replicas": r.replicas,
                                               "ray_actor_options": r.ray_actor_options} for r in rows]}]}


def run_app(app, name: str = APP, route_prefix: str = "/", timeout_s: float = 300.0):
    """Deploy ``app`` and wait, at most ``timeout_s``, until it runs; returns its handle.

    ``serve.run`` waits without a deadline (forever when the cluster lacks a resource), so
    this deploys without blocking and polls ``serve.status()``."""
    import_serve()._run(app, name=name, route_prefix=route_prefix, _blocking=False)
    return wait_running(name, timeout_s)


def wait_running(name: str, timeout_s: float):
    """The handle of application ``name`` once it runs, or a one-line error after ``timeout_s``."""
    import time

    serve = import_serve()
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(name)
        state = str(status.status) if status else "NOT_STARTED"
        if state.endswith("RUNNING"):
            return serve.get_app_handle(name)
        if state.endswith("DEPLOY_FAILED") or state.endswith("UNHEALTHY"):
            first = (status.message or "").strip().splitlines()[:1]
            raise SplitcError(f"Serve could not deploy {name}: {first[0] if first else state}; see the replica "
                              "logs under /tmp/ray/session_latest/logs/serve.")
        if time.monotonic() > deadline:
            raise SplitcError(f"Serve application {name} is not running after {timeout_s:.0f} s ({state}); the "
                              "cluster may lack the CPUs/GPUs/resources it asks for: check `ray status`.")
        time.sleep(0.25)
