"""The from-trained table's report: the rows' names, the JSON it keeps, the summary per row
(mean ± std over seeds), the printed comparisons the issue's acceptance reads, and the markdown
table for docs/. Split from ``from_trained.py`` (which runs the rows) so that each stays short."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from splitc.core.tables import table

SOFT_KD = (2.0, 0.5)   # a second distillation setting beside the common (DEFAULT_T, DEFAULT_ALPHA)
ROWS = {
    "default": "splitc from the teacher, R_W clears the cut (learn --epochs 3)",
    "default+kd": "splitc from the teacher, R_W clears the cut, --distill",
    "classifier": "splitc, classes grouped by the classifier's rows",
    "classifier+kd": "splitc, classes by the classifier's rows, --distill",
    "oneshot": "splitc default from the teacher: one-shot (learn --epochs 0)",
    "oneshot+kd": "splitc default from the teacher: one-shot, --distill",
    "oneshot-norefit": "splitc from the teacher: one-shot, --no-refit (the default before the refit)",
    "transplant": "splitc from the teacher: one-shot, --transplant",
    "random": "SplitNet-Random from the teacher, R_W clears the cut",
    "random+kd": "SplitNet-Random from the teacher, R_W clears the cut, --distill",
    "random-oneshot": "SplitNet-Random from the teacher, one-shot",
    "random-transplant": "SplitNet-Random from the teacher, one-shot, --transplant",
    "random-oneshot+kd": "SplitNet-Random from the teacher, one-shot, --distill",
    "random-oneshot-norefit": "SplitNet-Random from the teacher, one-shot, --no-refit",
    "oneshot-norefit+kd": "splitc from the teacher: one-shot, --no-refit, --distill",
    "random-oneshot-norefit+kd": "SplitNet-Random from the teacher, one-shot, --no-refit, --distill",
    "oneshot+kd-soft": f"splitc default from the teacher: one-shot, --distill-t {SOFT_KD[0]:g} --distill-alpha {SOFT_KD[1]:g}",
    "pruned": "Torch-Pruning from the teacher (L2, DepGraph)",
    "pruned+kd": "Torch-Pruning from the teacher, distilled",
    "narrow": "narrow resnet20 from scratch (teacher + post steps)",
    "scratch": "the split architecture from scratch (teacher + post steps)",
    "e2e": "splitc from scratch: learn, split, finetune at their defaults",
}
SPLITC = ("default", "classifier", "oneshot", "oneshot-norefit", "transplant")     # splitc's own rows, compared with the anchors


def dump(args: argparse.Namespace, runs: list[dict]) -> None:
    path = Path(args.json_out or Path(args.out) / "from_trained.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"args": vars(args), "runs": runs, "rows": summarise(runs)}, indent=1))
    tmp.replace(path)


def stat(values: list[float]) -> list[float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for groups in sorted({r["groups"] for r in runs if "groups" in r}, key=str):
        for key in ROWS:
            mine = [r for r in runs if r.get("groups") == groups and r["key"] == key]
            if mine:
                out.append({"groups": groups, "key": key, "method": ROWS[key], "seeds": len(mine),
                            "params": mine[0]["params"], "flops": mine[0].get("flops"), **{f: stat([r.get(f) for r in mine]) for f in (
                                "val_acc", "oneshot_val_acc", "cleared_val_acc", "recal_val_acc", "superclass_ari")},
                            "seconds": statistics.fmean(r["seconds"] for r in mine)})
    return out


def report(runs: list[dict]) -> None:
    teachers = stat([r["val_acc"] for r in runs if r["key"] == "teacher"]
                    or list({r["seed"]: r["start_val_acc"] for r in runs if r["key"] == "default"}.values()))
    ms = lambda v: "" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    print(f"teacher (plain resnet20): {ms(teachers)}")
    timed = [r["seconds"] for r in runs if r["key"] == "teacher" and r.get("seconds")]
    teacher_seconds = statistics.fmean(timed) if timed else None
    rows = summarise(runs)
    print(table(["G", "method", "params", "val acc", "one-shot split", "split before finetune", "BN re-estimated",
                 "superclass ARI", "seconds per run"],
                [[r["groups"], r["method"], r["params"], ms(r["val_acc"]), ms(r["oneshot_val_acc"]),
                  ms(r["cleared_val_acc"]), ms(r["recal_val_acc"]), ms(r["superclass_ari"]), f"{r['seconds']:.0f}"]
                 for r in rows]))
    by = {(r["groups"], r["key"]): r for r in rows}
    for (g, key), r in by.items():
        kd = key[len(key.split("+")[0]):]
        for ref in ("pruned" + kd, "random" + kd, "random-oneshot" + kd, "default" + kd, "oneshot" + kd,
                    "oneshot-norefit" + kd):
            if key.split("+")[0] in SPLITC and key != ref and (g, ref) in by:
                o = by[(g, ref)]
                print(f"G={g} {key} vs {ref}: {100 * (r['val_acc'][0] - o['val_acc'][0]):+.2f} pp "
                      f"(sum of stds {100 * (r['val_acc'][1] + o['val_acc'][1]):.2f} pp)")
        if key.split("+")[0] in SPLITC and teachers:
            print(f"G={g} {key} vs teacher: {100 * (r['val_acc'][0] - teachers[0]):+.2f} pp")
        if key in SPLITC and teacher_seconds:   # acceptance 4: learn + split + finetune against training the teacher
            print(f"G={g} {key} wall time / the teacher's: {r['seconds'] / teacher_seconds:.2f} "
                  f"({r['seconds']:.0f} s vs {teacher_seconds:.0f} s, both one torch thread, two runs at once)")
        if key in SPLITC and (g, "e2e") in by:
            e2e = by[(g, "e2e")]
            print(f"G={g} {key} wall time / the from-scratch path's: {r['seconds'] / e2e['seconds']:.2f} "
                  f"({r['seconds']:.0f} s vs {e2e['seconds']:.0f} s; accuracy {r['val_acc'][0]:.4f} vs {e2e['val_acc'][0]:.4f})")


def markdown(runs: list[dict]) -> str:
    """The table for docs/: per G and row, every seed's accuracy, mean ± std, one-shot, after
    clearing, seconds per run."""
    ms = lambda v: "" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}"  # noqa: E731
    lines = ["| G | method | params | MFLOPs | val acc per seed | val acc | one-shot split | split before finetune | "
             "BN re-estimated | superclass ARI | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summarise(runs):
        seeds = sorted((x["seed"], x["val_acc"]) for x in runs if x.get("groups") == r["groups"] and x["key"] == r["key"])
        mflops = "" if r.get("flops") is None else f"{r['flops'] / 1e6:.1f}"
        lines.append(f"| {r['groups']} | {r['method']} | {r['params']:,} | {mflops} | {' / '.join(f'{v:.4f}' for _, v in seeds)} | "
                     f"{ms(r['val_acc'])} | {ms(r['oneshot_val_acc'])} | {ms(r['cleared_val_acc'])} | "
                     f"{ms(r['recal_val_acc'])} | {ms(r['superclass_ari'])} | {r['seconds']:.0f} |")
    lines += ["", "Class groups (one branch each) per seed:", ""]
    for x in sorted((x for x in runs if x.get("class_groups")), key=lambda x: (str(x["groups"]), x["key"], x["seed"])):
        groups = " | ".join(", ".join(g) for g in x["class_groups"])
        ari = "" if x.get("superclass_ari") is None else f" (ARI {x['superclass_ari']:.2f})"
        lines.append(f"- G={x['groups']} {x['key']} seed {x['seed']}{ari}: {groups}")
    curves = [x for x in runs if x.get("epoch_val_acc")]
    if curves:
        lines += ["", "Validation accuracy after each epoch after the cut (mean over seeds):", ""]
        for (g, key) in sorted({(str(x["groups"]), x["key"]) for x in curves}):
            mine = [x["epoch_val_acc"] for x in curves if str(x["groups"]) == g and x["key"] == key]
            n = min(len(c) for c in mine)
            mean = [statistics.fmean(c[i] for c in mine) for i in range(n)]
            lines.append(f"- G={g} {key}: " + " → ".join(f"{v:.3f}" for v in mean))
    return "\n".join(lines) + "\n"


def fill_flops(args: argparse.Namespace, runs: list[dict]) -> None:
    """FLOPs for anchor rows run before they were recorded. A narrow resnet20's structure is set by
    its params target; so is a pruned one's, since the pruning ratio is uniform and the channel
    counts (not which channels) set the FLOPs: each is rebuilt from a fresh model. The split
    architecture from scratch has its split row's."""
    from anchors import flops, narrow_widths, prune_to
    from from_trained import data_of, split_from

    from splitc.graph import zoo
    from splitc.models.resnet_cifar import CifarResNet

    split = {(r["groups"], r["params"]): r["flops"] for r in runs if r["key"] in SPLITC and r.get("flops")}
    for r in runs:
        if r["key"] == "scratch" and r.get("flops") is None:
            r["flops"] = split.get((r["groups"], r["params"]))
    missing = [r for r in runs if r.get("flops") is None and r["key"].split("+")[0] in ("narrow", "pruned")]
    cache: dict = {}
    for r in missing:
        key = (r["key"].split("+")[0], r["groups"], r["target_params"])
        if key not in cache:
            bundle = data_of(args, r["seed"])
            if key[0] == "narrow":
                model = CifarResNet(20, bundle.num_classes, narrow_widths(r["target_params"], bundle.num_classes))
            else:
                model = prune_to(zoo.build(args.model, bundle.num_classes), tuple(split_from(args, r["groups"]).split(",")),
                                 r["target_params"], bundle.input_size)
            assert sum(p.numel() for p in model.parameters()) == r["params"], (key, r["params"])
            cache[key] = flops(model, args.model, bundle.num_classes, bundle.input_size)
        r["flops"] = cache[key]
