"""Latency and throughput of one artifact three ways, side by side in one run: the in-process
runtime (``splitc.deploy.runtime.load``), Ray Serve with one deployment per subgraph, and Ray Serve
with the fused graph as one deployment.

Each request is one call from a single client, timed end to end (the Serve calls go through
the ingress's ``DeploymentHandle``; ``--http`` times ``POST /predict`` with .npy bodies instead).
The three modes are interleaved (the order rotates every repetition), with the same input,
warm-up and repetitions. Throughput is samples per second of that closed loop. Prints a
markdown table with each Serve figure over the in-process one, and the 1-minute load average.

    python benchmarks/serve_bench.py ART_DIR [--batches 1,32] [--reps 100,30] [--http]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
import urllib.request

import numpy as np

MODES = ("in-process", "serve", "serve fused")


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def callers(art: str, http: bool, port: int) -> dict:
    """mode -> a function of x that returns the logits."""
    import ray
    from ray import serve

    from splitc.deploy import runtime
    from splitc.deploy.serve import build_app, run_app

    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    pipe = runtime.load(art)
    handles = {"serve": run_app(build_app(art), "split", "/split", 600),
               "serve fused": run_app(build_app(art, fused=True), "fused", "/fused", 600)}

    def over_http(route: str):
        def call(x: np.ndarray) -> np.ndarray:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/{route}/predict", data=_npy(x),
                                             method="POST", headers={"Accept": "application/x-npy"})
            with urllib.request.urlopen(request, timeout=120) as r:
                return np.load(io.BytesIO(r.read()))
        return call

    def over_handle(handle):
        return lambda x: handle.predict.remote(x).result(timeout_s=120)

    out = {"in-process": pipe}
    for mode, route in (("serve", "split"), ("serve fused", "fused")):
        out[mode] = over_http(route) if http else over_handle(handles[mode])
    return out


def measure(calls: dict, x: np.ndarray, warmup: int, reps: int) -> dict[str, list[float]]:
    want = calls["in-process"](x)
    for mode, call in calls.items():
        got = call(x)
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), mode
        for _ in range(warmup):
            call(x)
    times: dict[str, list[float]] = {m: [] for m in calls}
    order = list(calls)
    for r in range(reps):
        for mode in order[r % len(order):] + order[:r % len(order)]:
            start = time.perf_counter()
            calls[mode](x)
            times[mode].append(time.perf_counter() - start)
    return times


def row(mode: str, batch: int, t: list[float], base: list[float]) -> str:
    p50, p99 = 1e3 * statistics.median(t), 1e3 * float(np.percentile(t, 99))
    b50, b99 = 1e3 * statistics.median(base), 1e3 * float(np.percentile(base, 99))
    rate, base_rate = batch * len(t) / sum(t), batch * len(base) / sum(base)
    ratio = "" if t is base else f" | {p50 / b50:.2f}x | {p99 / b99:.2f}x | {rate / base_rate:.2f}x"
    return f"| {batch} | {mode} | {p50:.2f} | {p99:.2f} | {rate:.1f}" + (ratio or " | 1 | 1 | 1") + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("art_dir")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--reps", default="100,30", help="Repetitions per batch size (comma-separated).")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--http", action="store_true", help="Time POST /predict instead of the handle.")
    parser.add_argument("--port", type=int, default=8311)
    args = parser.parse_args()
    import ray
    from ray import serve

    from splitc.deploy.manifest import read_manifest

    manifest = read_manifest(args.art_dir)
    batches, reps = [int(b) for b in args.batches.split(",")], [int(r) for r in args.reps.split(",")]
    calls = callers(args.art_dir, args.http, args.port)
    try:
        print(f"{manifest.model.name} {manifest.model.scope}, {len(manifest.subgraphs)} subgraphs, "
              f"{os.cpu_count()} cores, Serve via {'HTTP' if args.http else 'DeploymentHandle'}")
        print("| batch | mode | p50 ms | p99 ms | samples/s | p50 / in-process | p99 / in-process | "
              "throughput / in-process |")
        print("|---|---|---|---|---|---|---|---|")
        rng = np.random.default_rng(0)
        for batch, n in zip(batches, reps + reps[-1:] * len(batches)):
            x = rng.standard_normal((batch, *manifest.model.input_size)).astype(np.float32)
            times = measure(calls, x, args.warmup, n)
            for mode in MODES:
                print(row(mode, batch, times[mode], times["in-process"]), flush=True)
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    finally:
        calls["in-process"].close()
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
