"""Human-readable rendering of the ``inspect`` report."""

from __future__ import annotations

from splitc.core.tables import human, table


def render(report: dict) -> str:
    parts = [f"{report['model']}  input {'x'.join(map(str, report['input_size']))}  "
             f"{report['num_classes']} classes  scope: {report['scope']}", ""]
    rows = [(l["name"], l["op"] + (f"/g{l['conv_groups']}" if l["conv_groups"] > 1 else ""), l["kind"],
             l["in_channels"], l["out_channels"], ",".join(map(str, l["in_spaces"])), l["out_space"],
             human(l["params"]), human(l["split_params"])) for l in report["layers"]]
    parts.append(table(["layer", "op", "kind", "in", "out", "in space", "out space", "params", "split"],
                       rows, "lllrrrrrr"))
    parts += ["", "Channel spaces (tied channels share one space; a node is one assignment column)"]
    rows = [(s["id"], s["name"], s["channels"], s["nodes"], s["sources"], s["status"],
             "" if s["groups"] is None else f"L{s['level']} G={s['groups']}", s["reason"] or "")
            for s in report["spaces"]]
    parts.append(table(["id", "space", "channels", "nodes", "tied sources", "status", "level", "note"],
                       rows, "llrrrlll"))
    b, s = report["baseline"], report["split"]
    parts += ["", table(["", "params", "FLOPs"], [
        ("baseline", human(b["params"]), human(b["flops"])),
        ("split", human(s["params"]), human(s["flops"])),
        ("reduced", f"{s['params_reduced_pct']:.2f}%", f"{s['flops_reduced_pct']:.2f}%"),
    ])]
    if report["notes"]:
        parts += ["", "Notes:"] + [f"  - {n}" for n in report["notes"]]
    return "\n".join(parts)
