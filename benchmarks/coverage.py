"""Which classification models go through the whole pipeline (issue 6: torchvision; issue 17: timm).

For every model of the zoo (``--zoo torchvision``: ``torchvision.models.list_models``; ``--zoo
timm``: one small CNN per timm family, ``TIMM_FAMILIES``):
trace -> inspect (analysis, scope from the start of the last resolution stage, G=2) -> learn for
2 steps on random data (softmax assignments, the three regularizers) at a small input -> split
(harden; if two steps leave a group empty, the balanced assignment is used and the row says so)
-> export to ONNX -> run the ONNX pipeline -> verify it against PyTorch. Writes
``docs/coverage.md`` (``docs/coverage-timm.md``): status (or the one-line reason for a failure),
params and FLOPs reduced, the largest relative error (split vs masked, ONNX vs PyTorch) and
seconds per stage. A row that verifies but saves no parameters is ``no-op``, never ``ok``; the
timm table also names the op that stopped the scope where a model splits less than its last stage.

    .venv/bin/python benchmarks/coverage.py [--models resnet18,vgg11] [--out docs/coverage.md]
    .venv/bin/python benchmarks/coverage.py --zoo timm --threads 1     # docs/coverage-timm.md
    .venv/bin/python benchmarks/coverage.py --shard 1/2 --threads 1 &   # two workers on 2 cores
    .venv/bin/python benchmarks/coverage.py --shard 2/2 --threads 1

Every finished model is appended to ``--results`` (JSONL) at once, so a stopped run loses nothing:
rerunning skips the models already there (``--redo`` runs them again), and the table is always
rebuilt from every result on file, listing the models not yet run.

Not part of the test suite: the full torchvision list takes one to two hours on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import multiprocessing as mp
import os
import signal
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from splitc.deploy import runtime
from splitc.graph.analysis import analyse
from splitc.learn.assign import AssignmentSet, splitnet_loss, splitnet_regularizers
from splitc.graph.group_tree import balanced_assignment
from splitc.core.errors import SplitcError
from splitc.deploy.export import export_split, verify_artifact
from splitc.passes.harden import harden
from splitc.graph.opkinds import target_name
from splitc.graph.scope import ScopeSpec, _region_from, last_stage, make_spec
from splitc.compile.split_run import write_split

SMALL_INPUT = {"inception_v3": (3, 75, 75), "alexnet": (3, 64, 64)}
NATIVE_ONLY = ("vit_", "swin_", "maxvit_")   # position embeddings / window sizes fix 224x224
TRANSFORMERS = NATIVE_ONLY


# One small CNN per timm family (family -> model): the families issue 17 names first, then the
# others, cheapest first within each, so that a short run covers most.
TIMM_FAMILIES = {
    "ResNet": "resnet18", "ResNet-D": "resnet26d", "SE-ResNet": "seresnet18",
    "Legacy SENet": "legacy_seresnet18", "Res2Net": "res2net50_26w_4s", "SelecSLS": "selecsls42b",
    "DLA": "dla34", "ResNeXt (ByoB)": "resnext26ts", "SK-ResNet": "skresnet18", "ResNeSt": "resnest14d",
    "RegNetX": "regnetx_002", "RegNetY": "regnety_002", "EfficientNet": "efficientnet_b0",
    "EfficientNet-Lite": "efficientnet_lite0", "MobileNetV2": "mobilenetv2_050",
    "MobileNetV3": "mobilenetv3_small_050", "MixNet": "mixnet_s", "FBNet": "fbnetc_100",
    "GhostNet": "ghostnet_050", "LCNet": "lcnet_050", "TinyNet": "tinynet_e", "RepVGG": "repvgg_a0",
    "DPN": "dpn48b", "Darknet": "darknet17", "CSPNet": "cspresnet50", "VoVNet": "ese_vovnet19b_slim_dw",
    "HRNet": "hrnet_w18_small", "ReXNet": "rexnet_100", "ConvNeXt": "convnext_atto",
    "Xception": "xception41", "ConvMixer": "convmixer_768_32", "DenseNet": "densenet121",
    "Inception-v3": "inception_v3",
    # families the issue does not name
    "MnasNet": "mnasnet_small", "HardCoRe-NAS": "hardcorenas_a", "MobileNetV4": "mobilenetv4_conv_small",
    "EfficientNet-EdgeTPU": "efficientnet_es", "GhostNetV2": "ghostnetv2_100", "RepGhostNet": "repghostnet_050",
    "GENet": "gernet_s", "ECA-ResNet": "ecaresnet26t", "GC-ResNeXt": "gcresnext26ts", "CS3-Darknet": "cs3darknet_s",
    "HGNetV2": "hgnetv2_b0", "InceptionNeXt": "inception_next_atto", "ConvNeXt-V2": "convnextv2_atto",
    "EfficientNetV2": "efficientnetv2_rw_t", "ResNetV2": "resnetv2_50", "RegNetZ": "regnetz_b16",
    "MobileOne": "mobileone_s0", "RDNet": "rdnet_tiny", "NFNet": "nf_resnet26",
    # the remaining CNN modules of timm 1.0.31 (hybrids with attention, MetaFormer / MambaOut
    # templates and CPUBone are left out: not CNN families)
    "StarNet": "starnet_s050", "CSPNeXt": "cspnext_tiny", "FasterNet": "fasternet_t0",
    "LCNetV2": "lcnetv2_small", "RepViT": "repvit_m0_9", "HGNet": "hgnet_tiny",
    "Xception (legacy)": "legacy_xception", "TResNet": "tresnet_m", "Inception-v4": "inception_v4",
    "Inception-ResNet-v2": "inception_resnet_v2", "VGG": "vgg11_bn", "NASNet": "nasnetalarge",
    "PNASNet": "pnasnet5large",
}
TIMM_INPUT = {"inception_v3": (3, 75, 75), "inception_v4": (3, 75, 75), "inception_resnet_v2": (3, 75, 75)}
NOOP_PCT = 0.05  # a split that saves less than this share of params (percent) is a no-op


def zoo_names(zoo_name: str) -> list[str]:
    if zoo_name == "timm":
        return [f"timm:{m}" for m in TIMM_FAMILIES.values()]
    return torchvision.models.list_models(module=torchvision.models)


def input_size(name: str) -> tuple[int, int, int]:
    if name.startswith("timm:"):
        return TIMM_INPUT.get(name[5:], (3, 64, 64))
    if name.startswith(NATIVE_ONLY):
        return (3, 224, 224)
    return SMALL_INPUT.get(name, (3, 64, 64))


def stage_start(ir, name: str) -> str:
    """``last_stage``; for timm, convs at one position (a 1x1-conv classifier as in DLA, a
    conv_head after global pooling as in MobileNetV3) are head layers, not the last stage."""
    if not name.startswith("timm:"):
        return last_stage(ir)
    body = [layer for layer in ir.layers if not (layer.op == "conv" and layer.positions == 1)]
    return last_stage(dataclasses.replace(ir, layers=body)) if any(l.op == "conv" for l in body) else last_stage(ir)


def stopped_by(ir, start: str) -> str:
    """The op that flagged the first unsplittable space of the region from ``start`` (what kept
    the scope short of the last stage), named by its target; '' when nothing there is flagged."""
    spaces = sorted((ir.spaces[s] for s in _region_from(ir, start)), key=lambda space: space.topo)
    flagged = next((space for space in spaces if space.flags), None)
    if flagged is None:  # no weight layer left before the head (NFNet: every conv declined)
        barriers = [r.split(" (node")[0].removeprefix("no channel rule for ") for space in ir.spaces
                    for r in space.flags.values() if " (node " in r]
        return max(set(barriers), key=barriers.count) if barriers else ""
    reason = next(iter(flagged.flags.values()))
    if " (node " in reason:  # an op without a rule, or whose rule declined: "[no channel rule for ]OP[ why]"
        return reason.removeprefix("no channel rule for ").split(" (node")[0]
    nodes = {n.name: n for n in ir.gm.graph.nodes}
    words = reason.replace("(", " ").replace(")", " ").split()
    node = next((nodes[w] for w in reversed(words) if w in nodes), None)
    return f"{target_name(node)} ({reason})" if node is not None else reason


def learn_two_steps(analysis, steps: int = 2, lr: float = 0.01):
    """Two SGD steps of CE + the SplitNet regularizers on random images and labels."""
    aset = AssignmentSet.create(analysis.ir, analysis.scope, "softmax")
    params = list(analysis.gm.parameters()) + list(aset.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    analysis.gm.train()
    for _ in range(steps):
        x = torch.randn(4, *analysis.input_size)
        y = torch.randint(0, analysis.num_classes, (4,))
        regs = splitnet_regularizers(analysis.gm, analysis.ir, analysis.scope, aset)
        loss = splitnet_loss(F.cross_entropy(analysis.gm(x), y), regs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # a 600M-param model's gradients are 2.6 GB (momentum goes with the optimizer)
    analysis.gm.eval()
    return aset


def finite_outputs(analysis) -> bool:
    """Whether the learned model's logits are finite on a random batch. timm's BatchNormAct2d
    traces to F.batch_norm in eval mode (running statistics fixed while learning), so two
    SGD steps at lr 0.01 can overflow a deep timm net (fbnetc_100)."""
    with torch.no_grad():
        return bool(torch.isfinite(analysis.gm(torch.randn(3, *analysis.input_size))).all())


def unsplit_reason(analysis) -> str:
    """Why the scope kept (almost) nothing splittable: the analysis's first note, in one line."""
    notes = analysis.scope.notes
    return f"only the classifier splits; {notes[0]}" if notes else "only the classifier splits"


def cover(name: str, work: Path) -> dict:
    row: dict = {"model": name, "status": "ok", "note": "", "seconds": {}}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        row["seconds"][stage] = now - clock
        clock = now

    size = input_size(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = analyse(name, make_spec("2", split_depth="1"), input_size=size)
        lap("trace+inspect")
        start = stage = stage_start(probe.ir, name)
        why = ""
        try:
            analysis = analyse(name, ScopeSpec((2,), split_from=(start,)), input_size=size)
        except SplitcError as exc:
            analysis, start, why = probe, "the classifier (split-depth 1)", str(exc).split(". ")[0]
        row["scope"] = start
        stop = stopped_by(probe.ir, stage) or why
        if start != stage or analysis.scope.notes:
            row["stopped_by"] = stop
        del probe  # one copy of the weights at a time: the largest models need most of 24 GiB
        aset = learn_two_steps(analysis)
        if not finite_outputs(analysis):  # else split = masked compares inf with inf and passes
            analysis = analyse(name, analysis.scope.spec, input_size=size)
            aset = learn_two_steps(analysis, lr=1e-3)
            row["note"] = "2 steps at lr 0.01 overflowed the logits: learned at lr 1e-3"
            if not finite_outputs(analysis):
                raise RuntimeError("logits not finite after 2 learn steps at lr 1e-3: timm's BatchNormAct2d "
                                   "traces to eval-mode F.batch_norm")
        lap("learn")
        try:
            hard = harden(analysis.ir, analysis.scope, aset.soft()).assignment
        except SplitcError:
            hard = balanced_assignment(analysis.ir, analysis.scope)
            row["note"] = "2 steps left a group empty: balanced assignment"
        summary = write_split(analysis, hard, work / "split")
        lap("split")
    row.update(params_reduced=summary["params_reduced_pct"], flops_reduced=summary["flops_reduced_pct"],
               split_err=summary["max_rel_err"])
    if summary["params_reduced_pct"] < NOOP_PCT:
        row["note"] = row["note"] or unsplit_reason(analysis)
        row.setdefault("stopped_by", stop)
    del analysis, aset, hard  # export rebuilds the model from the split directory
    gc.collect()
    export_split(work / "split", work / "onnx", devices="cpu")
    lap("export")
    with runtime.load(work / "onnx") as pipeline:
        pipeline(np.random.default_rng(0).standard_normal((3, *size)).astype(np.float32))
    lap("onnx run")
    verified = verify_artifact(work / "onnx")
    lap("verify")
    row["onnx_err"] = verified["max_rel_err"]
    row["onnx_checks"] = {c["checked"]: c["max_rel_err"] for c in verified["checks"]}
    row["status"] = status_of(summary["max_rel_err"], verified["checks"])
    if row["status"] == "ok" and row["params_reduced"] < NOOP_PCT:
        row["status"] = "no-op"
    if row["status"] == "ok" and verified["max_rel_err"] > ONNX_TOL:
        row["note"] = (f"ONNX Runtime's own error on the unsplit model is {verified['checks'][-1]['max_rel_err']:.1e}; "
                       "the split pipeline stays within twice that")
    return row


SPLIT_TOL, ONNX_TOL = 1e-5, 1e-4


def status_of(split_err: float, checks: list[dict]) -> str:
    """ok when the split equals the masked model (PyTorch, <= 1e-5) and the ONNX pipeline equals
    the split model within 1e-4, or within twice ONNX Runtime's own error on the *unsplit* model
    when that is larger: very wide models (regnet_y_128gf, 7392-channel convs) pick up more
    float32 rounding in ORT's kernels than 1e-4 with or without a split, and the split must add
    nothing beyond it. ``checks[-1]`` is the unsplit check (``verify_artifact``'s order)."""
    if split_err > SPLIT_TOL:
        return "mismatch"
    own = checks[-1]["max_rel_err"]
    bound = max(ONNX_TOL, 2 * own)
    return "ok" if own <= 10 * ONNX_TOL and all(c["max_rel_err"] <= bound for c in checks) else "mismatch"


def row_status(row: dict) -> str:
    """The status shown: a verified split that saves no parameters is a no-op, never ok (rows
    written before the no-op status existed are judged by their numbers)."""
    if row["status"] == "ok" and row.get("params_reduced", 0.0) < NOOP_PCT:
        return "no-op"
    return row["status"]


def markdown(rows: list[dict], elapsed: float, zoo_name: str = "torchvision") -> str:
    statuses = [row_status(r) for r in rows]
    ok, noop = statuses.count("ok"), statuses.count("no-op")
    pending = statuses.count("not run yet")
    timm = zoo_name == "timm"
    what = ("timm CNNs, one per family" if timm else "torchvision classification models")
    lines = [
        f"# Coverage: {what}",
        "",
        f"Generated by `benchmarks/coverage.py{' --zoo timm' if timm else ''}` (last run {datetime.date.today()}; "
        f"{elapsed / 60:.0f} min of per-model stage time on this 2-core machine): **{ok} of {len(rows)} ok**"
        + (f", {noop} no-op" if noop else "") + (f", {pending} not run yet." if pending else ".")
        + " Each model: trace, inspect, learn 2 steps on random data "
        "(G=2, split from the start of its last resolution stage), split, export to ONNX, run, verify. "
        "Errors: split vs masked (PyTorch) and ONNX pipeline vs PyTorch split model, relative. "
        "`no-op`: verified, but the split saves no parameters.",
        "",
        "| model | status | scope from | params -% | FLOPs -% | split err | ONNX err | "
        + ("stopped by | " if timm else "") + "seconds (trace+inspect / learn / split / export / run / verify) |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if timm else ""),
    ]
    for r, shown in zip(rows, statuses):
        lines.append(_table_row(r, shown, timm))
    return "\n".join(lines) + "\n"


def _table_row(r: dict, shown: str, timm: bool) -> str:
    s = r["seconds"]
    secs = " / ".join(f"{s[k]:.1f}" for k in ("trace+inspect", "learn", "split", "export", "onnx run", "verify") if k in s)
    status = shown + (f" ({r['note']})" if r.get("note") else "")
    name = r["model"]
    if timm:
        family = {f"timm:{m}": f for f, m in TIMM_FAMILIES.items()}.get(name)
        name = name.removeprefix("timm:") + (f" ({family})" if family else "")
    stop = f" {r.get('stopped_by', '')} |" if timm else ""
    if r["status"] not in ("ok", "mismatch", "no-op"):
        return f"| {name} | {status} | {r.get('scope', '')} | | | | |{stop} {secs} |"
    return (f"| {name} | {status} | `{r['scope']}` | {r['params_reduced']:.1f} | {r['flops_reduced']:.1f} "
            f"| {r['split_err']:.1e} | {r['onnx_err']:.1e} |{stop} {secs} |")


def _child(name: str, threads: int | None, conn) -> None:
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            row = cover(name, Path(tmp))
        except Exception as exc:  # one line per failure in the table; the run goes on
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            row = {"model": name, "status": f"fail: {type(exc).__name__}: {reason[:160]}", "seconds": {}}
            traceback.print_exc(limit=2)
    conn.send(row)


def cover_in_child(name: str, threads: int | None) -> dict:
    """Each model in a fresh process: memory is returned between models, and a model that the
    kernel kills (out of memory) becomes a row saying so instead of ending the whole run."""
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe(duplex=False)
    proc = spawn.Process(target=_child, args=(name, threads, child))
    started = time.perf_counter()
    proc.start()
    child.close()
    try:
        row = parent.recv()
    except EOFError:  # the worker died without a row
        row = None
    proc.join()
    if row is None:
        how = ("killed by SIGKILL: the kernel's out-of-memory killer, unless someone killed it"
               if proc.exitcode == -signal.SIGKILL else f"worker exited with code {proc.exitcode}")
        row = {"model": name, "status": f"fail: {how} (peak above {_ram_gib():.0f} GiB RAM)",
               "seconds": {"until killed": time.perf_counter() - started}}
    return row


def _ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def load_results(path: Path) -> dict[str, dict]:
    """Latest row per model from the JSONL results file (later lines win)."""
    rows: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["model"]] = row
    return rows


def append_result(path: Path, row: dict) -> None:
    """One line per model, flushed and fsynced so a killed run keeps every finished model."""
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_table(out: Path, all_names: list[str], results: dict[str, dict], zoo_name: str = "torchvision") -> None:
    flag = " --zoo timm" if zoo_name == "timm" else ""
    rows = [results.get(n) or {"model": n, "status": "not run yet", "seconds": {},
                               "note": f"`benchmarks/coverage.py{flag} --models {n}`"} for n in all_names]
    elapsed = sum(sum(r["seconds"].values()) for r in rows)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(markdown(rows, elapsed, zoo_name))
    os.replace(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", choices=("torchvision", "timm"), default="torchvision")
    parser.add_argument("--models", default=None, help="comma-separated subset (default: all; timm names "
                        "as timm:NAME)")
    parser.add_argument("--out", default=None, help="default docs/coverage.md (docs/coverage-timm.md)")
    parser.add_argument("--results", default=None, help="one JSON row per finished model (default "
                        "docs/coverage.jsonl, docs/coverage-timm.jsonl)")
    parser.add_argument("--shard", default="1/1", help="K/N: run every N-th model starting at the K-th")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for this worker")
    parser.add_argument("--exclude", default="", help="comma-separated models to leave for later "
                        "(the two 600M-parameter models need most of 24 GiB alone)")
    parser.add_argument("--redo", action="store_true", help="rerun models already in --results")
    args = parser.parse_args()
    all_names = zoo_names(args.zoo)
    names = args.models.split(",") if args.models else all_names
    k, n = (int(v) for v in args.shard.split("/"))
    suffix = "-timm" if args.zoo == "timm" else ""
    results_path = Path(args.results or f"docs/coverage{suffix}.jsonl")
    out = Path(args.out or f"docs/coverage{suffix}.md")
    done = set() if args.redo else set(load_results(results_path))
    skip = done | set(filter(None, args.exclude.split(",")))
    todo = [name for i, name in enumerate(names) if i % n == k - 1 and name not in skip]
    for i, name in enumerate(todo, 1):
        row = cover_in_child(name, args.threads)
        row["date"] = str(datetime.date.today())
        append_result(results_path, row)
        total = sum(row["seconds"].values())
        print(f"[{i}/{len(todo)}] {name}: {row['status']} {row.get('note', '')} ({total:.0f} s)", flush=True)
        write_table(out, all_names, load_results(results_path), args.zoo)
    write_table(out, all_names, load_results(results_path), args.zoo)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
