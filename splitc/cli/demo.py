"""``splitc demo``: the whole pipeline in one command.

inspect -> learn (resnet20, G=4) -> split -> finetune -> export -> run + verify -> bench ->
report. Every stage prints what it does and shows progress; the demo ends with one summary
table (also written as JSON). On the built-in synthetic data the split is learned from scratch;
the default run is sized for about 10 minutes on 2 CPU cores. ``--fast`` uses the small
synthetic set and a handful of steps, so it finishes in about two minutes and the test suite can
run it; its accuracies mean nothing, only that every stage works.

``--data fashion-mnist[:DIR]`` is the from-trained path on real photos: a short plain teacher
first (3 epochs on 1,000 training images per class), then the split made from its weights at
learn's defaults (one-shot), finetuned for 2 epochs; about 5 minutes on 2 cores. Missing data is
one line that says how to get it, before anything trains.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from splitc.core.tables import human, table

MODEL = "resnet20"
SCOPE = {"groups": "4", "split_from": "layer3"}


@dataclass(frozen=True)
class DemoPlan:
    """How long each training stage runs."""

    data: str
    learn: dict[str, Any]
    finetune: dict[str, Any]
    bench_reps: int
    teacher_epochs: int = 0           # > 0: train a plain teacher first and split its weights


# Fast: 3 regularized steps only. At learn's default assignment rate, Adam's sign-like steps
# push every node the same way and empty groups within those 3 steps on tiny data, so the fast
# demo keeps the assignments near their start (a smoke test of every stage, not of learning).
FAST = DemoPlan("synthetic:fast", {"max_steps": 12, "warmup_epochs": 0.5, "warmup": "fixed", "epochs": 2,
                                   "assign_lr_mult": 0.02},
                {"max_steps": 6}, bench_reps=5)
FULL = DemoPlan("synthetic", {"epochs": 10}, {"epochs": 3}, bench_reps=200)  # ~10 min on 2 cores; 200 reps: 30 read 0.91 where 300 read 0.885
FASHION_PER_CLASS = 1000   # training images per class the demo's teacher and split see (of 6,000)
FASHION = DemoPlan("fashion-mnist", {}, {"epochs": 2}, bench_reps=100, teacher_epochs=3)
# --fast: a 2-epoch teacher on 300 images per class, then a few learn and finetune steps (bounded
# even if that teacher stays near chance and learn takes the from-scratch recipe)
FASHION_FAST = DemoPlan("fashion-mnist", {"max_steps": 4, "epochs": 1}, {"max_steps": 6}, bench_reps=5, teacher_epochs=2)


def pick_plan(data: str, fast: bool) -> DemoPlan:
    """The plan for ``--data``: the built-in data, or Fashion-MNIST (checked before any work)."""
    from dataclasses import replace

    from splitc.core.errors import SplitcError
    from splitc.data.mnist import find_files, parse

    if data == "synthetic":
        return FAST if fast else FULL
    if data.partition(":")[0].partition("@")[0] != "fashion-mnist":
        raise SplitcError(f"demo --data {data!r}: give synthetic or fashion-mnist[:DIR].")
    fmt, folder, per_class = parse(data)
    find_files(fmt, folder)   # missing or incomplete: one line naming both ways to get the files
    spec = data if per_class else f"{data}@{300 if fast else FASHION_PER_CLASS}"
    return replace(FASHION_FAST if fast else FASHION, data=spec)


def run_demo(out: str, fast: bool, progress: bool = True, data: str = "synthetic") -> dict[str, Any]:
    from splitc.deploy import runtime
    from splitc.graph.analysis import analyse
    from splitc.cli.deploy import evaluate
    from splitc.deploy.export import export_split, verify_artifact
    from splitc.deploy.kernel_limit import kernel_limit
    from splitc.compile.finetune import FinetuneConfig, finetune
    from splitc.learn.loop import LearnConfig, learn
    from splitc.report.run_report import write_report
    from splitc.graph.scope import make_spec
    from splitc.compile.split_run import run_split

    plan = pick_plan(data, fast)
    folder = Path(out)
    shutil.rmtree(folder / "run", ignore_errors=True)   # every demo is a fresh run
    folder.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    stage = _Stages(times, total=8 if plan.teacher_epochs else 7)
    teacher = teacher_stage(plan, folder, stage, progress)

    with stage("inspect", f"{MODEL}, G={SCOPE['groups']} from {SCOPE['split_from']}"):
        analysis = analyse(MODEL, make_spec(SCOPE["groups"], SCOPE["split_from"]), 20, (3, 32, 32))
        click.echo(f"      balanced split estimate: params -{analysis.cost.params_reduced_pct:.1f}%, "
                   f"FLOPs -{analysis.cost.flops_reduced_pct:.1f}%")
    what = (f"the groups read off the teacher's weights and cut at once (one-shot) on {plan.data}" if teacher
            else f"assignments + SplitNet regularizers on {plan.data}")
    with stage("learn", what):
        learned = learn(LearnConfig(model=MODEL, data=plan.data, out=str(folder / "run"),
                                    weights=teacher and teacher["path"], **SCOPE, **plan.learn), progress=progress)
    with stage("split + finetune", "harden, mask, permute, partition; then train the split model"):
        # every demo is a fresh run: its earlier outputs are replaced; --fast does not train long
        # enough to learn, so its split is accepted as such (the summary shows the accuracy)
        split = run_split(folder / "run", folder / "split", force=True, accept_unlearned=fast)
        tuned = finetune(FinetuneConfig(split_dir=str(folder / "split"), data=plan.data, **plan.finetune),
                         progress=progress)
    with stage("export", "one ONNX file per subgraph, a fused graph and the manifest"):
        export_split(folder / "split", folder / "onnx", devices="cpu", progress=progress, force=True)
    with stage("run + verify", "accuracy through ONNX Runtime; ONNX against PyTorch"):
        with runtime.load(folder / "onnx") as pipeline:
            onnx_acc = evaluate(pipeline, plan.data, batch_size=64)["accuracy"]
        verified = verify_artifact(folder / "onnx")
    with stage("bench", "split pipeline against the unsplit model, batch 32, interleaved"):
        bench = runtime.bench(folder / "onnx", batch_size=32, reps=plan.bench_reps)
        limit = kernel_limit(folder / "onnx", batch=32)["limit"]
    with stage("report", "class-to-group heatmap, block structure, curves"):
        report = write_report(folder / "onnx", folder / "report.html", progress=progress, force=True)["report"]

    summary = {
        "unsplit_val_acc": learned.val_acc, "split_val_acc": tuned.val_acc, "onnx_val_acc": onnx_acc,
        "params_reduced_pct": split["params_reduced_pct"], "flops_reduced_pct": split["flops_reduced_pct"],
        "superclass_ari": learned.superclass_ari, "feature_ari": learned.feature_ari,
        "max_rel_err": max(split["max_rel_err"], verified["max_rel_err"]),
        "latency_ratio": bench["ratio"], "flops_ratio": bench["flops_ratio"], "latency_limit": limit,
        "report": str(Path(report)), "seconds": times, "fast": fast, "data": plan.data,
        # learn measures the --weights it starts from: the teacher's accuracy, not evaluated twice
        "teacher_val_acc": learned.start_val_acc if teacher else None, "class_groups": class_groups(folder / "run"),
        "cut_val_acc": learned.oneshot_val_acc if teacher else None, "refit_val_acc": learned.refit_val_acc,
    }
    (folder / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def teacher_stage(plan: DemoPlan, folder: Path, stage: "_Stages", progress: bool) -> dict[str, Any] | None:
    """The plan's teacher as a stage of its own (None for a plan that learns from scratch)."""
    if not plan.teacher_epochs:
        return None
    with stage("teacher", f"a plain {MODEL} trained {plan.teacher_epochs} epochs on {plan.data}"):
        return train_teacher(plan, folder / "teacher.pt", progress)


def train_teacher(plan: DemoPlan, path: Path, progress: bool) -> dict[str, Any]:
    """A plain resnet20 on the plan's data, saved as a state_dict (``learn --weights`` reads it)."""
    import torch

    from splitc.core.outputs import atomic_write
    from splitc.data.loaders import load_data
    from splitc.graph import zoo
    from splitc.learn.plain import fit_plain

    torch.manual_seed(0)
    bundle = load_data(plan.data)
    model = zoo.build(MODEL, bundle.num_classes)
    fit_plain(model, bundle, plan.teacher_epochs, progress=progress)
    atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
    return {"path": str(path)}


def class_groups(run_dir: Path) -> list[list[str]] | None:
    """The branches' classes by name (learn's assignment.json), for the summary."""
    from splitc.core.files import ASSIGNMENT_JSON
    from splitc.learn.groups import members_of_groups

    return members_of_groups(json.loads((run_dir / ASSIGNMENT_JSON).read_text(encoding="utf-8")).get("class_groups"))


def render_summary(summary: dict[str, Any]) -> str:
    def num(v, fmt="{:.3f}"):
        return "n/a" if v is None else fmt.format(v)

    rows = [["data", summary.get("data", "synthetic")]]
    if summary.get("teacher_val_acc") is not None:
        rows.append(["teacher accuracy (plain, before the split)", num(summary["teacher_val_acc"])])
    if summary.get("refit_val_acc") is not None:
        rows.append(["the cut before finetune: as cut / refit", f"{num(summary.get('cut_val_acc'))} / "
                                                             f"{num(summary['refit_val_acc'])}"])
    rows += [
        ["accuracy: unsplit (after learn) / split (after finetune) / ONNX",
         f"{num(summary['unsplit_val_acc'])} / {num(summary['split_val_acc'])} / {num(summary['onnx_val_acc'])}"],
        ["params / FLOPs reduced", f"{summary['params_reduced_pct']:.1f}% / {summary['flops_reduced_pct']:.1f}%"],
        ["superclass ARI (feature ARI)", f"{num(summary['superclass_ari'])} ({num(summary['feature_ari'])})"],
        ["max verification error", f"{summary['max_rel_err']:.1e}"],
        ["latency split/unsplit (FLOPs ratio; with perfect grouped kernels)",
         f"{summary['latency_ratio']:.2f} ({summary['flops_ratio']:.2f}; {num(summary.get('latency_limit'), '{:.2f}')})"],
        ["time", human(sum(summary["seconds"].values()), " s")],
        ["report", summary["report"]],
    ]
    for i, names in enumerate(summary.get("class_groups") or []):
        rows.append([f"branch {i} classes", ", ".join(names)])
    from splitc.deploy.kernel_limit import slower_than_flops

    slow = slower_than_flops(summary["latency_ratio"], summary["flops_ratio"])
    note = "\n(--fast: a few steps on tiny data; the accuracies only show that every stage runs)" \
        if summary["fast"] else ""
    if slow:
        note += f"\nwarning: {slow}"
    return table(["demo summary", ""], rows, align="ll") + note


class _Stages:
    """Numbered stage banners with their wall time."""

    def __init__(self, times: dict[str, float], total: int) -> None:
        self.times, self.total, self.index = times, total, 0

    def __call__(self, name: str, what: str):
        self.index += 1
        return _Stage(self, name, what)


class _Stage:
    def __init__(self, owner: _Stages, name: str, what: str) -> None:
        self.owner, self.name, self.what = owner, name, what

    def __enter__(self) -> None:
        click.echo(f"[{self.owner.index}/{self.owner.total}] {self.name}: {self.what}")
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.owner.times[self.name] = round(time.perf_counter() - self.start, 2)
        if exc[0] is None:
            click.echo(f"      done in {self.owner.times[self.name]:.1f} s")
