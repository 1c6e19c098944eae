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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from splitc.core.errors import SplitcError

from splitc.deploy.serve_replica import APP, GraphSpec, Ingress, PIN_AMOUNT, ServePlan, SubgraphModel, import_serve


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
