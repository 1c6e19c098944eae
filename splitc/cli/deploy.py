"""``splitc export``, ``splitc run`` and ``splitc bench``: deploy a split directory with ONNX
Runtime. cli.py calls :func:`register` on its group (a function rather than decorators on an
imported ``main``, so that ``python -m splitc.cli`` sees the commands too)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from splitc.core.errors import SplitcError

DEVICES_HELP = ("auto (every GPU torch sees, else the CPU), cpu, cpu,cpu (two CPU sessions) or "
                "cuda:0,cuda:1,...")


@click.command()
@click.argument("split_dir")
@click.option("--out", required=True, help="Artifact directory to write (ONNX files + manifest.json).")
@click.option("--devices", default="auto", show_default=True, help=f"Placement: {DEVICES_HELP}.")
@click.option("--force", is_flag=True, help="Replace an existing artifact directory as a whole.")
@click.option("--no-lower", is_flag=True,
              help="Skip the lowering for one device (grouped convolutions, chosen by timing each layer).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def export(split_dir: str, out: str, devices: str, force: bool, no_lower: bool, as_json: bool) -> None:
    """Export a split directory to ONNX: one file per subgraph, a fused graph, the unsplit model,
    and for one device a lowered graph (grouped convolutions) when it measures faster."""
    from splitc.deploy.export import export_split

    manifest, times = export_split(split_dir, out, devices, progress=not as_json, force=force, lower=not no_lower)
    rows = [{"name": s.name, "role": s.role, "device": s.device, "file": s.graph.model_file,
             "params": s.graph.params, "flops": s.graph.flops} for s in manifest.subgraphs]
    summary = {"artifact_dir": str(out), "devices": list(manifest.devices), "subgraphs": rows,
               "flops_ratio": manifest.fused.flops / manifest.unsplit.flops,
               "seconds": times["total"], "pass_seconds": {k: v for k, v in times.items() if k != "total"},
               "one_device": manifest.one_device, "lowering": manifest.lowering}
    if as_json:
        click.echo(json.dumps(summary))
        return
    from splitc.core.tables import table

    click.echo(table(["subgraph", "role", "device", "file", "params", "FLOPs"],
                     [[r["name"], r["role"], r["device"], r["file"], f"{r['params']:,}", f"{r['flops']:,}"]
                      for r in rows], align="llllrr"))
    click.echo(f"FLOPs split/unsplit {summary['flops_ratio']:.3f}; exported in {times['total']:.1f} s "
               f"(loading the split {times['load split']:.1f} s); written to {out}")
    click.echo(one_device_line(manifest))


def one_device_line(manifest) -> str:
    """What a one-device run will use, and why, in one line."""
    low = manifest.lowering
    if manifest.one_device == "lowered":
        grouped = sum(1 for c in low["layers"].values() if c["choice"] == "grouped")
        return (f"one device: lowered graph ({grouped} of {len(low['layers'])} block-diagonal convs grouped), "
                f"{low['lowered_ms']:.2f} ms vs {low['fused_ms']:.2f} ms for the branch graph at batch {low['time_batch']}")
    if "lowered_ms" in low:
        return (f"one device: branch graph, {low['fused_ms']:.2f} ms vs {low['lowered_ms']:.2f} ms for the lowered "
                f"graph at batch {low['time_batch']}")
    return f"one device: branch graph ({low.get('reason', 'no lowering')})"


@click.command()
@click.argument("art_dir")
@click.option("--data", default=None, help="Evaluate accuracy on this data's validation split "
                                           "(synthetic, digits, cifar100:PATH, imagefolder:PATH).")
@click.option("--input", "input_npy", default=None, help="Run a raw float32 array (N,C,H,W) from this .npy file.")
@click.option("--output", "output_npy", default=None, help="Write the logits here (.npy), with --input.")
@click.option("--devices", default=None, help=f"Override the manifest's placement: {DEVICES_HELP}.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def run(art_dir: str, data, input_npy, output_npy, devices, batch_size: int, as_json: bool) -> None:
    """Run an exported split: accuracy on --data, or logits of --input into --output."""
    from splitc.deploy.runtime import load

    if (data is None) == (input_npy is None):
        raise SplitcError("pass exactly one of --data DATA (accuracy) or --input X.npy (raw logits).")
    if output_npy and not input_npy:
        raise SplitcError("--output goes with --input X.npy; --data prints accuracy instead.")
    with load(art_dir, devices) as pipe:
        result = (evaluate(pipe, data, batch_size, progress=not as_json) if data
                  else run_array(pipe, input_npy, output_npy, batch_size))
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key:10s} {value}")


def evaluate(pipe, data: str, batch_size: int, progress: bool = False) -> dict:
    """Top-1 accuracy of the pipeline on the validation split of ``data``."""
    import numpy as np

    from splitc.data.batches import top1_counts

    from splitc.data.loaders import load_data

    bundle = load_data(data, pipe.input_size, flip=False)
    if bundle.num_classes != len(pipe.class_names):
        raise SplitcError(f"--data {data} has {bundle.num_classes} classes, the model has "
                          f"{len(pipe.class_names)}; evaluate on the data it was trained on.")
    correct, total = top1_counts(lambda x: pipe(x.numpy().astype(np.float32, copy=False)), bundle.val,
                                 batch_size, progress, desc="run")
    return {"accuracy": correct / max(total, 1), "correct": correct, "samples": total, "data": data,
            "devices": list(pipe.devices), "strategy": pipe.describe()}


def run_array(pipe, input_npy: str, output_npy: str | None, batch_size: int) -> dict:
    import numpy as np

    path = Path(input_npy)
    if not path.is_file():
        raise SplitcError(f"--input {path} does not exist.")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SplitcError(f"--input {path} is not a .npy array ({str(exc)[:80]}).") from None
    pipe.check_input(x)
    logits = np.concatenate([pipe(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    if output_npy:
        np.save(output_npy, logits)
    return {"samples": int(len(x)), "output": output_npy, "logits_shape": list(logits.shape),
            "devices": list(pipe.devices), "strategy": pipe.describe()}


@click.command()
@click.argument("art_dir")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--reps", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--devices", default=None, help=f"Override the manifest's placement: {DEVICES_HELP}.")
@click.option("--limit", is_flag=True, help="Also profile the lowered graph: the ratio a perfect grouped "
              "kernel would reach on this CPU (`limit`) and how far the grouped kernels are from it (`kernel`).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(art_dir: str, batch_size: int, warmup: int, reps: int, devices, limit: bool, as_json: bool) -> None:
    """Time the split pipeline against the unsplit model, interleaved in one process."""
    from splitc.deploy.kernel_limit import kernel_limit, slower_than_flops
    from splitc.deploy.runtime import bench as run_bench

    r = run_bench(art_dir, batch_size, devices, warmup, reps, progress=not as_json)
    if limit:
        r["kernel_limit"] = kernel_limit(Path(art_dir), batch_size)
    warning = slower_than_flops(r["ratio"], r["flops_ratio"])
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        keys = ("split_ms", "unsplit_ms", "ratio", "flops_ratio", "batch_size", "devices", "kernel_limit")
        click.echo(json.dumps({k: r[k] for k in keys if k in r}))
        return
    from splitc.core.tables import table

    click.echo(table(["", "median ms", "samples/s"], [
        ["split", f"{r['split_ms']:.2f}", f"{r['split_per_s']:.1f}"],
        ["unsplit", f"{r['unsplit_ms']:.2f}", f"{r['unsplit_per_s']:.1f}"]]))
    click.echo(f"ratio split/unsplit {r['ratio']:.3f} (FLOPs ratio {r['flops_ratio']:.3f}); batch {batch_size}, "
               f"{r['strategy']}, {warmup} warm-up + {reps} interleaved repetitions")
    if limit:
        k = r["kernel_limit"]
        click.echo(f"perfect grouped kernels would reach {k['limit']:.3f}; the grouped convs run at {k['kernel']:.2f}x "
                   "their FLOPs share of the dense conv" if k["limit"] is not None and k["kernel"] is not None
                   else f"no kernel limit: {k.get('reason', 'no conv of the lowered graph is grouped')}")


def register(group: click.Group) -> None:
    for command in (export, run, bench):
        group.add_command(command)
