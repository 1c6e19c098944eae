"""``splitc report``: one HTML page that shows what a run learned and how it was split.

The input is a learn run (``checkpoint.pt``), a split directory (``split.json``) or an artifact
directory (``manifest.json``). Links are followed back (artifacts -> split -> run) as far as the
folders still exist; whatever is missing is listed on the page under "Not shown" instead of
failing. The model is analysed once (no split compile); figures come from
:mod:`splitc.report.figures` and are embedded as PNG data URIs, so the page is one file that can
be mailed, or written into ``<page>_files/`` beside it with ``separate_images``.
"""

from __future__ import annotations

import base64
import html
import os
import urllib.parse
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from splitc.report import figures as figs
from splitc.core.outputs import atomic_write_text, claim, remove
from splitc.core.files import FINETUNE_METRICS, LEARN_METRICS
from splitc.core.checkpoint import read_metrics
from splitc.report.inputs import Inputs, locate, load, class_names, superclasses, class_matrix

def write_report(path: str | os.PathLike, out: str | os.PathLike, layer: str | None = None,
                 separate_images: bool = False, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Build the report of ``path`` into the HTML file ``out``; returns a summary with the
    figures written and the heatmap's class rows (name, group) in display order."""
    target = claim(out, force, is_dir=False)
    claim(side_folder(target), force)  # the PNGs of an earlier --separate-images report
    if force:
        for old in (target, side_folder(target)):
            remove(old)
    with tqdm(total=5, desc="report", disable=not progress, leave=False) as bar:
        bar.set_postfix_str("loading")
        src = load(locate(path))
        bar.update()
        if layer and src.analysis is not None:
            figs.pick_layer(src.analysis.ir, src.analysis.scope, layer)  # fail before drawing
        names = class_names(src)
        supers, super_names = superclasses(src, names)
        figures: list[tuple[str, str, bytes]] = []   # (file stem, caption, PNG)
        bar.set_postfix_str("class map")
        rows, labels = _class_figure(src, names, supers, super_names, figures)
        bar.update()
        bar.set_postfix_str("weights")
        _weights_figure(src, layer, figures)
        bar.update()
        bar.set_postfix_str("costs, curves")
        subs = _cost_figures(src, figures)
        _curve_figures(src, figures)
        bar.update()
        bar.set_postfix_str("writing")
        page, files = render(src, figures, summary_rows(src), subgraph_rows(subs),
                             group_table(rows, labels, names, supers, super_names), target, separate_images)
        atomic_write_text(target, page)
        bar.update()
    return {"report": str(target), "kind": src.kind, "figures": files, "class_rows": rows, "notes": src.notes}


# --- figures ------------------------------------------------------------------------------------

def _class_figure(src: Inputs, names, supers, super_names, figures) -> tuple[list[tuple[str, int]], list[str]]:
    heat = class_matrix(src)
    if heat is None:
        src.notes.append("the class space is not in the split scope, so there is no class-to-group map")
        return [], []
    probs, groups, labels, what = heat
    order = figs.class_order(groups, supers)
    ari = src.doc.get("superclass_ari")
    title = "Classes x groups" + (f" (superclass ARI {ari:.2f})" if isinstance(ari, (int, float)) else "")
    how = (", then by superclass (colour strip and name colour)" if supers
           else "; the superclasses of this data are unknown")
    figures.append(("class_groups", f"Class-to-group map: {what}. Rows are ordered by group (red lines between "
                    f"groups){how}; the outlined cell is the group that computes the class.",
                    figs.class_heatmap(probs, groups, names, labels, supers, super_names, title)))
    return [(names[k], int(groups[k])) for k in order], labels


def _weights_figure(src: Inputs, name: str | None, figures) -> None:
    """|W| of one block-diagonal layer before learning, after learning and after the split."""
    from splitc.graph import zoo
    from splitc.learn.assign import dense_conv_weight
    from splitc.passes.mask import keep_mask

    if src.analysis is None:
        return
    a = src.analysis
    layer = figs.pick_layer(a.ir, a.scope, name)
    if layer is None:
        src.notes.append("no layer of this scope is block-diagonal, so there is no weight-structure figure")
        return
    key = f"{layer.name}.weight"
    seed = int(((src.ckpt or {}).get("config") or {}).get("seed", 0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = dict(zoo.build(a.model_name, a.num_classes).named_parameters()).get(key)
    overlap = any((src.meta or {}).get("overlap", {}).values())
    learned, learned_from = (src.ckpt or {}).get("model", {}).get(key), "the learn run's checkpoint"
    if learned is None and src.unsplit is not None and overlap:
        learned, learned_from = src.unsplit[key], "the split's stored weights (unmasked, as the split has overlap)"
    if src.unsplit is not None and not overlap:
        cut, cut_from = src.unsplit[key], ("the masked weights stored in the split (unsplit.safetensors), of "
                                           "which the branches are exact slices")
    else:
        cut, cut_from = learned, ("the learned weights with the inter-group weights zeroed by the hardened "
                                  "assignment, as `splitc split` cuts them")
    keep = keep_mask(a.ir, a.scope, src.hard, layer).numpy()
    panels = []
    for title, w, masked in (("before learning", fresh, False), ("after learning", learned, False),
                             ("after the split", cut, True)):
        if w is not None:
            mag = figs.magnitude(dense_conv_weight(w.detach().float(), layer.conv_groups).numpy())
            if mag.shape != keep.shape:
                src.notes.append(f"{layer.name}: its weight does not match its channel records; no weight figure")
                return
            panels.append((title, mag * keep if masked else mag))
    if not panels:
        return
    rows, row_labels = figs.element_groups(a.ir, a.scope, src.hard, layer.out_elems)
    cols, col_labels = figs.element_groups(a.ir, a.scope, src.hard, layer.in_elems)
    before = (f"a fresh initialisation of the same model (torch seed {seed}), standing in for the run's starting "
              "weights, which are not stored" if fresh is not None else "not available")
    figures.append(("weights", f"Layer {layer.name} ({layer.op}, {len(layer.out_elems)} outputs x "
                    f"{len(layer.in_elems)} inputs): the magnitude of each (output, input) channel pair "
                    f"{'(L2 norm over the kernel) ' if layer.taps > 1 else ''}with rows and columns ordered by "
                    "group (blue lines), so the block-diagonal structure of the paper's Figure 2 shows. "
                    f"Before learning: {before}. After learning: "
                    f"{learned_from if learned is not None else 'not available (the learn run is not here)'}. "
                    f"After the split: {cut_from}. Each panel has its own colour scale.",
                    figs.weight_panels(panels, keep, rows, cols, row_labels, col_labels, layer.name)))


def _cost_figures(src: Inputs, figures) -> list[dict[str, Any]]:
    sizes = figs.space_sizes(src.analysis.ir, src.analysis.scope, src.hard) if src.analysis else []
    if sizes:
        figures.append(("group_sizes", "Channels per group in every space of the scope (each node's channels "
                        "summed; a duplicated fuzzy node counts in each of its groups).", figs.group_sizes(sizes)))
    subs, baseline = figs.subgraph_entries(src.manifest, src.meta)
    if subs:
        placed = any(s.get("device") for s in subs)
        figures.append(("subgraphs", "Params and FLOPs (2 x MAC per sample) of each subgraph, counted from its "
                        "real tensors, beside the split's total and the unsplit model (hatched); colour: "
                        + ("the device of each subgraph in the manifest's placement." if placed else
                           "the subgraph's role (placement comes with `splitc export`)."),
                        figs.subgraph_costs(subs, baseline)))
    elif src.kind == "run":
        src.notes.append("per-subgraph costs need a split: run `splitc split RUN_DIR --out DIR` and report on DIR")
    return subs


def _curve_figures(src: Inputs, figures) -> None:
    for stem, folder, file, what in (
            ("learn_curves", src.run_dir, LEARN_METRICS, "learning (the run's metrics.jsonl); the dotted line "
             "marks the end of the warm-up, when the regularizers start"),
            ("finetune_curves", src.split_dir, FINETUNE_METRICS, "finetuning the split model "
             "(finetune_metrics.jsonl)")):
        png = figs.learn_curves(read_metrics(folder / file), file) if folder else None
        if png is not None:
            figures.append((stem, f"Training curves of {what}.", png))


# --- tables -------------------------------------------------------------------------------------

def summary_rows(src: Inputs) -> list[list[Any]]:
    from splitc.graph.counting import count

    meta, doc, man, a = src.meta or {}, src.doc, src.manifest or {}, src.analysis
    ident, report = (src.ckpt or {}).get("identity") or {}, meta.get("report") or {}
    rows = [["model", ident.get("model") or meta.get("model") or (man.get("model") or {}).get("name")],
            ["scope", a.scope.spec.describe() if a else (man.get("model") or {}).get("scope")],
            ["data", ident.get("data") or meta.get("data")], ["assignments", ident.get("assign") or meta.get("assign")],
            ["learn steps", doc.get("steps", (src.ckpt or {}).get("step"))]]
    base = report.get("baseline") or (vars(count(a.ir).baseline) if a else None)
    if base:
        rows.append(["baseline params / FLOPs", f"{base['params']:,} / {base['flops']:,}"])
    if report:
        rows.append(["this split params / FLOPs", f"{report['params']:,} / {report['flops']:,} "
                     f"({report['params_reduced_pct']:.2f}% / {report['flops_reduced_pct']:.2f}% fewer)"])
        est = report.get("balanced_estimate") or {}
        if est:
            rows.append(["balanced-groups estimate", f"{est['params_reduced_pct']:.2f}% / "
                         f"{est['flops_reduced_pct']:.2f}% fewer"])
        rows.append(["max relative error, split vs masked", f"{report['max_rel_err']:.2e}"])
    elif a is not None:
        cost = count(a.ir, a.scope, src.hard)
        rows.append(["estimated split params / FLOPs (hardened assignment; not split yet)",
                     f"{cost.split.params:,} / {cost.split.flops:,} ({cost.params_reduced_pct:.2f}% / "
                     f"{cost.flops_reduced_pct:.2f}% fewer)"])
        empty = [a.ir.spaces[s].name for s, v in src.hard.group_sizes(a.ir, a.scope).items() if 0 in v]
        if empty:
            rows.append(["spaces with an empty group (`splitc split` refuses them)", ", ".join(empty)])
    for label, value in (("learn train accuracy (last epoch's batches)", doc.get("train_acc")),
                         ("learn val accuracy (dense model, before the split)", doc.get("val_acc")),
                         ("finetuned split val accuracy", (meta.get("finetune") or {}).get("val_acc")),
                         ("superclass ARI (learned class groups)", doc.get("superclass_ari")),
                         ("feature ARI (clustering reference)", doc.get("feature_ari"))):
        if isinstance(value, (int, float)):
            rows.append([label, f"{value:.4f}"])
    if man:
        rows.append(["devices (placement)", ", ".join(man.get("devices") or []) or "-"])
    return [[k, "-" if v is None else v] for k, v in rows]


def subgraph_rows(subs: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["name"], s["role"], f"{s['params']:,}", f"{s['flops']:,}", s.get("device") or "-"] for s in subs]


def group_table(rows, labels, names, supers, super_names) -> list[list[str]]:
    """One row per group: its classes in heatmap order and the superclasses they come from."""
    index = {n: k for k, n in enumerate(names)}
    out = []
    for g in sorted({g for _, g in rows}):
        members = [n for n, h in rows if h == g]
        sup = sorted({supers[index[n]] for n in members}) if supers else []
        out.append([labels[g], ", ".join(members), ", ".join(super_names[s] for s in sup) or "-"])
    return out


# --- the page -----------------------------------------------------------------------------------

def side_folder(target: Path) -> Path:
    return target.with_name(f"{target.stem}_files")


def render(src: Inputs, figures, summary, subgraph_table, groups_table, target: Path,
           separate: bool) -> tuple[str, dict[str, str]]:
    """The HTML page; each figure is a data URI, or a PNG in ``<stem>_files/`` when ``separate``."""
    files: dict[str, str] = {}
    side = side_folder(target)
    if separate:
        side.mkdir(parents=True, exist_ok=True)
    parts = []
    for stem, caption, png in figures:
        if separate:
            (side / f"{stem}.png").write_bytes(png)
            uri, files[stem] = urllib.parse.quote(f"{side.name}/{stem}.png"), str(side / f"{stem}.png")
        else:
            uri, files[stem] = "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "embedded"
        parts.append(f'<figure id="{stem}"><img src="{uri}" alt="{stem}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    title = f"splitc report: {src.path.resolve().name}"
    chain = [f"{k} {p}" for k, p in (("learn run", src.run_dir), ("split directory", src.split_dir),
                                      ("artifact directory", src.path if src.kind == "artifacts" else None)) if p]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class=lead>Made from the {html.escape(', the '.join(chain))}.</p>",
            "<h2>Summary</h2>", _table(["", "value"], summary)]
    if subgraph_table:
        body += ["<h2>Subgraphs</h2>", _table(["subgraph", "role", "params", "FLOPs", "device"], subgraph_table)]
    if groups_table:
        body += ["<h2>Classes by group</h2>", _table(["group", "classes", "superclasses"], groups_table)]
    body += ["<h2>Figures</h2>", *parts]
    if src.notes:
        body += ["<h2>Not shown</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in src.notes) + "</ul>"]
    page = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return page, files


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.lead{color:#555;font-size:.92em}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr:nth-child(even) td{background:#fafafa}
figure{margin:1.4em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#444;margin-top:.3em;max-width:1000px}
"""
