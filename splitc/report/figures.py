"""The figures of ``splitc report``: matplotlib (Agg) figures rendered to PNG bytes.

Every figure function takes plain numbers (numpy arrays, lists, dicts) and returns the PNG bytes
of one figure, so :mod:`splitc.report.run_report` decides what to show and this module only how. The
helpers above the figures map channel elements to groups (the figures' axes); metrics files
are read by ``core.checkpoint.read_metrics``, the one JSON-lines reader.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402

from splitc.graph.group_tree import node_name  # noqa: E402

DPI = 110
_GROUP_LINE = dict(color="#d62728", linewidth=1.0)   # on the Blues heatmap
_BLOCK_LINE = dict(color="#00a2ff", linewidth=1.1)   # on the magma weight matrices


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def class_order(class_group: Sequence[int], superclass_of: Sequence[int] | None = None) -> np.ndarray:
    """Row order of the heatmap: by group, then by superclass, then by class index."""
    groups = np.asarray(class_group)
    supers = np.asarray(superclass_of) if superclass_of is not None else np.zeros_like(groups)
    return np.lexsort((np.arange(len(groups)), supers, groups))


def pick_layer(ir, scope, name: str | None = None):
    """The weight layer ``name``, else the largest block-diagonal layer (preferring one whose
    spaces share a tree level), or None when the scope has none."""
    from splitc.core.errors import SplitcError, did_you_mean
    from splitc.graph.scope import layer_kind

    if name:
        names = [layer.name for layer in ir.layers]
        if name not in names:
            raise SplitcError(f"--layer {name!r} is not a weight layer of this model.{did_you_mean(name, names)}")
        return ir.layers[names.index(name)]
    found = [layer for layer in ir.layers if layer_kind(ir, scope, layer) == "block-diagonal"]

    def key(layer):
        levels = {scope.level_of[int(s)] for s in ir.spaces_of(np.r_[layer.in_elems, layer.out_elems])}
        return len(levels) == 1, len(layer.in_elems) * len(layer.out_elems) * layer.taps // layer.conv_groups
    return max(found, key=key) if found else None


def element_groups(ir, scope, hard, elems: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The group of each element (-1: trunk) and a label for each distinct group, sorted."""
    groups, levels = np.full(len(elems), -1), set()
    spaces, index = ir.space_of[elems], ir.node_index[elems]
    for s in np.unique(spaces).tolist():
        if s in hard.groups_of_space:
            groups[spaces == s] = np.asarray(hard.groups_of_space[s])[index[spaces == s]]
            levels.add(scope.level_of[s])
    level = min(levels, default=0)
    return groups, ["trunk" if g < 0 else node_name(scope.groups, level, g) for g in np.unique(groups)]


def space_sizes(ir, scope, hard) -> list[tuple[str, list[int], list[str]]]:
    """(space name, channels per group, group labels) for every space in scope."""
    return [(ir.spaces[s].name, v, [node_name(scope.groups, scope.level_of[s], g) for g in range(len(v))])
            for s, v in sorted(hard.group_sizes(ir, scope).items())]


def subgraph_entries(manifest: dict[str, Any] | None, meta: dict[str, Any] | None
                     ) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """Name, role, device, params and FLOPs of each subgraph (the artifact manifest's first, read
    defensively; else split.json's report), and the unsplit model's params and FLOPs."""
    report = (meta or {}).get("report") or {}
    if manifest is not None:
        out = []
        for s in manifest.get("subgraphs") or []:
            graph = s.get("graph") if isinstance(s.get("graph"), dict) else {}
            out.append({"name": str(s.get("name", "?")), "role": s.get("role", ""), "device": s.get("device"),
                        "params": int(graph.get("params", s.get("params")) or 0),
                        "flops": int(graph.get("flops", s.get("flops")) or 0)})
        unsplit = manifest.get("unsplit") or {}
        return out, {k: unsplit[k] for k in ("params", "flops") if k in unsplit} or report.get("baseline")
    roles = {s["name"]: s["role"] for s in ((meta or {}).get("plan") or {}).get("subgraphs", [])}
    return ([{"name": k, "role": roles.get(k, ""), "device": None, **v} for k, v in report.get("subgraphs", {}).items()],
            report.get("baseline"))


def class_heatmap(probs: np.ndarray, class_group: Sequence[int], class_names: Sequence[str],
                  column_labels: Sequence[str], superclass_of: Sequence[int] | None,
                  superclass_names: Sequence[str] | None, title: str) -> bytes:
    """Classes x groups, rows ordered by group (lines between groups, the class's own group
    outlined), superclasses as a colour strip left of the class names and as their colour."""
    order = class_order(class_group, superclass_of)
    n, G = probs.shape
    mat = probs[order]
    groups = np.asarray(class_group)[order]
    height = min(40.0, max(3.2, 0.22 * n + 1.6)) if n <= 200 else 12.0
    fig, ax = plt.subplots(figsize=(max(4.8, 0.75 * G + 3.6), height))
    im = ax.imshow(mat, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    if n * G <= 600:
        for i in range(n):
            for g in range(G):
                ax.text(g, i, f"{mat[i, g]:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if mat[i, g] > 0.6 else "#333333")
    for i, g in enumerate(groups if n <= 200 else []):  # beyond that the sorted blocks say it
        ax.add_patch(Rectangle((g - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#111111", linewidth=1.0))
    for i in np.flatnonzero(np.diff(groups)):
        ax.axhline(i + 0.5, **_GROUP_LINE)
    ax.set_xticks(range(G), column_labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xlabel("group (outlined: the class's group in the split)", fontsize=8)
    ax.xaxis.set_label_position("top")
    font = 8 if n <= 60 else max(3.0, 480 / n)
    labels = [class_names[k] for k in order]
    side = make_axes_locatable(ax).append_axes("left", size=0.14, pad=0.0)
    side.set_xticks([])
    if n <= 200:
        side.set_yticks(range(n), labels, fontsize=font)
    else:  # too many to read: the "Classes by group" table lists them
        side.set_yticks([])
        side.set_ylabel(f"{n} classes, by group", fontsize=9)
    ax.set_yticks([])
    if superclass_of is not None:
        supers = np.asarray(superclass_of)
        names = list(superclass_names or [str(s) for s in range(int(supers.max()) + 1)])
        colors = _palette(len(names))
        side.imshow(np.array([[colors[s]] for s in supers[order]]), aspect="auto", interpolation="nearest")
        for label, k in zip(side.get_yticklabels(), order):
            label.set_color(_darker(colors[supers[k]]))
        present = set(supers.tolist())
        handles = [Patch(color=colors[s], label=name) for s, name in enumerate(names) if s in present]
        ax.legend(handles=handles, title="superclass", fontsize=7, title_fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.3, 1.0), frameon=False)
    else:
        side.imshow(np.ones((n, 1, 3)), aspect="auto")
        side.spines[:].set_visible(False)
    side.set_ylim(n - 0.5, -0.5)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03, label="assignment probability")
    ax.set_title(title, fontsize=10, pad=30)
    return to_png(fig)


def magnitude(dense: np.ndarray) -> np.ndarray:
    """(out, in) magnitudes of a dense (out, in, *kernel) weight: the L2 norm over the kernel."""
    return np.sqrt((dense.astype(np.float64) ** 2).reshape(dense.shape[0], dense.shape[1], -1).sum(2))


def weight_panels(panels: Sequence[tuple[str, np.ndarray]], keep: np.ndarray, row_groups: np.ndarray,
                  col_groups: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                  layer: str) -> bytes:
    """Weight-magnitude matrices (out x in) with rows and columns sorted by group, group
    boundaries drawn, each panel on its own colour scale and titled with the share of |W|^2
    that lies outside the kept (intra-group) blocks."""
    r, c = np.argsort(row_groups, kind="stable"), np.argsort(col_groups, kind="stable")
    rows, cols = row_groups[r], col_groups[c]
    out, inn = keep.shape
    aspect = out / max(1, inn)
    fig, axes = plt.subplots(1, len(panels), figsize=((4.2 if aspect <= 1.5 else 3.2) * len(panels) + 0.6,
                                                      min(6.0, max(2.8, 4.0 * min(aspect, 1.4)))), squeeze=False)
    for ax, (title, mat) in zip(axes[0], panels):
        share = float((mat[~keep] ** 2).sum()) / (float((mat ** 2).sum()) or 1.0)
        mat = mat[r][:, c]
        vmax = float(np.percentile(mat, 99.5)) if mat.size and mat.max() > 0 else 1.0
        im = ax.imshow(mat, aspect="auto", cmap="magma_r", vmin=0.0, vmax=vmax or 1.0,
                       interpolation="nearest" if max(mat.shape) <= 256 else "antialiased")
        _boundaries(ax, rows, cols)
        _group_ticks(ax, rows, row_labels, "y")
        _group_ticks(ax, cols, col_labels, "x")
        ax.set_title(f"{title}\ninter-group share of |W|\u00b2: {100 * share:.1f}%", fontsize=9)
        ax.set_xlabel(f"input channel ({inn}), by group", fontsize=8)
        ax.set_ylabel(f"output channel ({out}), by group", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    fig.suptitle(f"{layer}: |W| per (output, input) channel pair", fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def _boundaries(ax, row_groups: np.ndarray, col_groups: np.ndarray) -> None:
    for i in np.flatnonzero(np.diff(row_groups)):
        ax.axhline(i + 0.5, **_BLOCK_LINE)
    for j in np.flatnonzero(np.diff(col_groups)):
        ax.axvline(j + 0.5, **_BLOCK_LINE)


def _group_ticks(ax, groups: np.ndarray, labels: Sequence[str], axis: str) -> None:
    """One tick at the middle of each group's run, labelled with the group."""
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    ends = np.r_[starts[1:], len(groups)]
    where = (starts + ends - 1) / 2.0
    names = [labels[k] for k in range(len(starts))]
    (ax.set_yticks if axis == "y" else ax.set_xticks)(where, names, fontsize=7)


def group_sizes(spaces: Sequence[tuple[str, Sequence[int], Sequence[str]]]) -> bytes:
    """One horizontal bar per space, stacked by group (channels per group), sizes on the right."""
    n = len(spaces)
    fig, ax = plt.subplots(figsize=(8.5, max(2.0, 0.42 * n + 1.2)))
    max_g = max((len(sizes) for _, sizes, _ in spaces), default=1)
    colors = _palette(max_g)
    widest = max((sum(sizes) for _, sizes, _ in spaces), default=1) or 1
    for row, (name, sizes, labels) in enumerate(spaces):
        left = 0
        for g, size in enumerate(sizes):
            ax.barh(row, size, left=left, color=colors[g % len(colors)], edgecolor="white", linewidth=0.8)
            if size >= 0.09 * widest:
                ax.text(left + size / 2, row, labels[g], ha="center", va="center", fontsize=7, color="white")
            left += size
        empty = any(s == 0 for s in sizes)
        ax.text(widest * 1.02, row, " / ".join(map(str, sizes)) + ("   empty group!" if empty else ""),
                va="center", fontsize=7.5, color="#d62728" if empty else "#333333")
    ax.set_yticks(range(n), [name for name, _, _ in spaces], fontsize=8)
    ax.set_xlim(0, widest * 1.45)
    ax.invert_yaxis()
    ax.set_xlabel("channels (each node's channels summed)", fontsize=8)
    ax.set_title("Group sizes per channel space (sizes listed by group on the right)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


def subgraph_costs(subgraphs: Sequence[dict[str, Any]], baseline: dict[str, int] | None) -> bytes:
    """Params and FLOPs per subgraph (bars coloured by device when a placement is known, else by
    role), with the split's total and the unsplit model as reference bars."""
    devices = [s.get("device") for s in subgraphs]
    placed = any(devices)
    device_names = list(dict.fromkeys(d or "?" for d in devices))
    dev_colors = dict(zip(device_names, _palette(len(device_names))))
    role_colors = {"trunk": "#7f7f7f", "branch": "#1f77b4", "merge": "#2ca02c"}
    colors = [dev_colors[d or "?"] if placed else role_colors.get(s.get("role", ""), "#1f77b4")
              for s, d in zip(subgraphs, devices)]
    rows = len(subgraphs) + 1 + bool(baseline)
    fig, axes = plt.subplots(1, 2, figsize=(11.0, max(2.6, 0.36 * rows + 1.5)))
    for ax, key, what in ((axes[0], "params", "params"), (axes[1], "flops", "FLOPs per sample")):
        values = [s.get(key, 0) for s in subgraphs] + [sum(s.get(key, 0) for s in subgraphs)]
        labels = [s["name"] for s in subgraphs] + ["split total"]
        bar_colors = list(colors) + ["white"]
        if baseline and key in baseline:
            values.append(baseline[key])
            labels.append("unsplit")
            bar_colors.append("#dddddd")
        unit, scale = _unit(max(values) if values else 1)
        bars = ax.barh(range(len(values)), [v / scale for v in values], color=bar_colors,
                       edgecolor="#555555", linewidth=0.6)
        if baseline and key in baseline:
            bars[-1].set_hatch("//")
        top = max(values) / scale if values and max(values) else 1.0
        for k, v in enumerate(values):
            ax.text(v / scale + 0.01 * top, k, _fmt(v), va="center", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.axhline(len(subgraphs) - 0.5, color="#999999", linewidth=0.6, linestyle="--")
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.2)
        ax.set_xlabel(f"{what} ({unit})" if unit else what, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    if placed:
        handles = [Patch(color=dev_colors[d], label=d) for d in device_names]
        title = "Params and FLOPs per subgraph, coloured by device placement"
    else:
        handles = [Patch(color=c, label=r) for r, c in role_colors.items()]
        title = "Params and FLOPs per subgraph, coloured by role (no placement before export)"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7.5, frameon=False,
               title="device" if placed else "role", title_fontsize=8)
    return to_png(fig)


def learn_curves(records: Sequence[dict[str, Any]], title: str) -> bytes | None:
    """Loss, accuracy and the regularizer terms of ``metrics.jsonl`` against the step."""
    steps = [r for r in records if r.get("kind", "step") == "step" and "loss" in r]
    epochs = [r for r in records if r.get("kind") in ("epoch", "epoch_end")]
    if not steps and not epochs:
        return None
    warm = next((r["step"] for r in records if r.get("kind") == "warmup_end"), None)
    regs = [k for k in ("R_W", "R_D", "R_E") if any(k in r for r in steps)]
    n_panels = 3 if regs else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.2))
    x = [r["step"] for r in steps]
    ax = axes[0]
    has_ce = any("ce" in r for r in steps)
    _line(ax, x, [r.get("loss") for r in steps], "loss (total)" if has_ce else "loss")
    if has_ce:
        _line(ax, x, [r.get("ce") for r in steps], "cross-entropy", "--")
    losses = [r["loss"] for r in steps if isinstance(r.get("loss"), (int, float)) and r["loss"] > 0]
    if losses and max(losses) / min(losses) > 20:
        ax.set_yscale("log")
    ax.set_title("loss" + (" (log scale)" if ax.get_yscale() == "log" else ""), fontsize=9)
    ax = axes[1]
    if any("acc" in r for r in steps):
        acc = [r.get("acc") for r in steps]
        _line(ax, x, acc, "batch acc", alpha=0.35)
        if len(acc) >= 8 and all(isinstance(v, (int, float)) for v in acc):
            _line(ax, x, _smooth(acc), "batch acc (smoothed)")
    for key, marker in (("train_acc", "s"), ("val_acc", "o")):
        pts = [(r["step"], r[key]) for r in epochs if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=marker, linestyle="-", label=f"{key} (epoch)", markersize=4)
    ax.set_ylim(bottom=0)
    ax.set_title("accuracy", fontsize=9)
    if regs:
        ax = axes[2]
        for k in regs:
            _line(ax, x, [r.get(k) for r in steps], k)
        ax.set_title("regularizers (0 during the warm-up)", fontsize=9)
    last = max([r["step"] for r in records] or [1])
    for ax in axes:
        ax.set_xlim(0, last * 1.03 + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if warm is not None:
            ax.axvline(warm, color="#999999", linestyle=":", linewidth=1)
            ax.text(warm, 1.0, " warm-up end", transform=ax.get_xaxis_transform(), fontsize=6.5,
                    va="top", color="#666666")
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def _line(ax, x, y, label, style="-", alpha=1.0) -> None:
    pts = [(a, b) for a, b in zip(x, y) if b is not None]
    if pts:
        ax.plot(*zip(*pts), style, label=label, alpha=alpha, marker="." if len(pts) < 20 else None)


def _smooth(values: Sequence[float], window: int = 9) -> list[float]:
    arr = np.asarray(values, dtype=float)
    kernel = np.ones(min(window, len(arr)))
    return (np.convolve(arr, kernel, "same") / np.convolve(np.ones_like(arr), kernel, "same")).tolist()


def _unit(value: float) -> tuple[str, float]:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return unit, scale
    return "", 1.0


def _fmt(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(max(1, n))]


def _darker(color, factor: float = 0.7):
    return tuple(c * factor for c in color[:3])
