"""The replica side of the Ray Serve application: what runs inside each deployment.

Imports numpy and onnxruntime only (``splitc.deploy.runtime`` and ``manifest`` import torch,
which costs every replica process ~2 s and ~300 MB): the subgraph session, the HTTP body
parsing and answers, and the ingress that calls the subgraph deployments in plan order.
``serve.py`` builds the application from the manifest on the driver.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from dataclasses import dataclass
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
