"""``splitc demo``: the pipeline on built-in models. This stage reproduces the structure of
the paper's Table 1 with ``inspect``; later stages (learn, split, export) extend it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .analysis import analyse
from .scope import PRESETS
from .tables import human, table


def run_demo(out: str, fast: bool) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    click.echo("[1/1] inspect: WRN-16-8 on 32x32 CIFAR-100 inputs, the paper's Table 1 scopes")
    rows, summary = [], {}
    for preset, spec in PRESETS["wrn16_8"].items():
        a = analyse("wrn16_8", spec, 100, (3, 32, 32))
        summary[preset] = {"params": a.cost.split.params, "flops": a.cost.split.flops,
                           "params_reduced_pct": a.cost.params_reduced_pct,
                           "flops_reduced_pct": a.cost.flops_reduced_pct}
        rows.append((preset, ",".join(map(str, spec.groups)), human(a.cost.split.params),
                     human(a.cost.split.flops), f"{a.cost.params_reduced_pct:.2f}%",
                     f"{a.cost.flops_reduced_pct:.2f}%"))
    base = a.cost.baseline
    rows.insert(0, ("baseline", "1", human(base.params), human(base.flops), "-", "-"))
    click.echo(table(["scope", "G", "params", "FLOPs", "params reduced", "FLOPs reduced"], rows))
    path = out_dir / "demo_summary.json"
    path.write_text(json.dumps(summary, indent=2))
    click.echo(f"\nsummary written to {path}")
    return summary
