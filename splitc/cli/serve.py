"""``splitc serve`` (Ray Serve) and ``splitc triton`` (a Triton model repository): deploy an
artifact directory on an existing engine. cli.py calls :func:`register` on its group, as for
cli_deploy. Ray and tritonclient are extras, imported only when a command runs."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click

from splitc.cli.deploy import DEVICES_HELP
from splitc.core.errors import SplitcError


@click.command()
@click.argument("art_dir")
@click.option("--address", default=None, help="Join this Ray cluster (e.g. auto or HOST:6379); "
                                              "default: start a local one.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP host of Serve's proxy.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replicas per deployment.")
@click.option("--fused", is_flag=True, help="Serve fused.onnx as one deployment (one device).")
@click.option("--devices", default=None, help=f"Override the manifest's placement: {DEVICES_HELP}.")
@click.option("--pin-prefix", default=None, metavar="PREFIX",
              help="Each subgraph also asks for the custom resource PREFIX<device> (e.g. splitc/cuda:1), "
                   "so nodes started with those resources receive the subgraphs the manifest puts there.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds to wait for the application to run.")
@click.option("--write-config", "config_file", default=None, metavar="FILE",
              help="Write a Serve config file (for `serve run FILE` / `serve deploy FILE`) and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoint and deployments as one JSON object.")
def serve(art_dir: str, address, host: str, port: int, replicas: int, fused: bool, devices, pin_prefix,
          timeout_s: float, config_file, as_json: bool) -> None:
    """Serve an exported split with Ray Serve: POST a float32 batch (.npy or JSON) to /predict."""
    from splitc.deploy import serve as serving

    serving.import_serve()  # the install hint before anything else
    if config_file:
        config = serving.serve_config(art_dir, replicas, fused, devices, host, port, pin_prefix)
        Path(config_file).write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML too
        click.echo(json.dumps({"config": config_file}) if as_json else
                   f"Serve config written to {config_file}; run it with `serve run {config_file}`")
        return
    try:
        info = _start(art_dir, address, host, port, replicas, fused, devices, pin_prefix, timeout_s)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # after ray.init: `kill` stops Ray too
        if as_json:
            click.echo(json.dumps(info))
        else:
            _print_table(info)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(joined=address is not None)


def _start(art_dir: str, address, host: str, port: int, replicas: int, fused: bool, devices, pin_prefix,
           timeout_s: float) -> dict:
    """Start (or join) Ray, start Serve's HTTP proxy and deploy ``art_dir``; returns the endpoint
    and the deployment table once the application runs."""
    import ray
    from ray import serve as ray_serve

    from splitc.deploy.serve import APP, bind, plan_deployments, run_app

    planned = plan_deployments(art_dir, replicas, fused, devices, pin_prefix=pin_prefix)
    rows, app = planned[1], bind(*planned)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    ray_serve.start(http_options={"host": host, "port": port})
    run_app(app, APP, "/", timeout_s)
    return {"endpoint": f"http://{host}:{port}/predict", "application": APP, "fused": fused,
            "deployments": [{"name": r.name, "role": r.role, "device": r.device, "replicas": r.replicas,
                             **r.ray_actor_options} for r in rows]}


def _print_table(info: dict) -> None:
    from splitc.core.tables import table

    click.echo(table(["deployment", "role", "device", "replicas", "resources"],
                     [[d["name"], d["role"], d["device"], d["replicas"],
                       ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("name", "role", "device", "replicas"))]
                      for d in info["deployments"]], align="lllrl"))
    click.echo(f"serving at {info['endpoint']} (POST a float32 .npy batch or JSON; Ctrl-C stops)")


def _stop(joined: bool) -> None:
    """On a cluster we joined, delete only our application; a local Ray goes down whole."""
    import ray
    from ray import serve as ray_serve

    from splitc.deploy.serve import APP

    if not ray.is_initialized():
        return
    if joined:
        ray_serve.delete(APP)
    else:
        ray_serve.shutdown()
    ray.shutdown()


@click.command()
@click.argument("art_dir")
@click.option("--out", required=True, help="Model repository folder to write.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--prefix", default=None, help="Model name prefix and ensemble name (default: the model name).")
@click.option("--split-dir", default=None, help="Where the split directory is now (for the PyTorch check).")
@click.option("--no-check", is_flag=True, help="Write only; skip the validation and the ONNX Runtime check.")
@click.option("--check-only", is_flag=True, help="Validate the repository at --out as it is; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def triton(art_dir: str, out: str, max_batch_size: int, prefix, split_dir, no_check: bool, check_only: bool,
           as_json: bool) -> None:
    """Write a Triton model repository (one ONNX model per subgraph + an ensemble) and validate it
    without a server: configs parse, the ensemble chains, and it equals the PyTorch split model."""
    from splitc.deploy.triton import validate_repository, write_repository

    if no_check and check_only:
        raise SplitcError("--no-check and --check-only exclude each other; pass one.")
    written = {"repository": out} if check_only else write_repository(art_dir, out, prefix, max_batch_size)
    checked = {} if no_check else validate_repository(out, art_dir, split_dir)
    if checked and not checked["ok"]:
        raise SplitcError(f"the ensemble of {out} differs from the PyTorch split model (relative error "
                          f"{checked['max_rel_err']:.2e} > {checked['tolerance']}); please report it.")
    if as_json:
        click.echo(json.dumps({**written, **checked}))
        return
    if not check_only:
        click.echo(f"Triton repository written to {out}: ensemble {written['ensemble']} over "
                   f"{len(written['models'])} models")
    if checked:
        click.echo(f"validated: {checked['configs_parsed']} configs parse as ModelConfig, the ensemble chains; "
                   f"{checked['checked']}: max relative error {checked['max_rel_err']:.2e}")
    click.echo(f"start it with: tritonserver --model-repository {out}")


def register(group: click.Group) -> None:
    for command in (serve, triton):
        group.add_command(command)
