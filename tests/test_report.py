"""``splitc report``: the page for a learn run, a split and an artifact directory, its images,
the heatmap's row order and the one-line errors for bad input."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from PIL import Image

from splitc.cli.main import main
from splitc.core.errors import SplitcError
from splitc.learn.loop import LearnConfig, learn
from splitc.report.run_report import write_report
from splitc.compile.split_run import run_split

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """A 4-step learn run of tiny_residual (regularizers still off, so no group can collapse), its
    split with a few finetune metrics, and an artifact manifest pointing at the split."""
    root = tmp_path_factory.mktemp("report")
    learn(LearnConfig(model="tiny_residual", data="synthetic:fast", groups="2", split_from="res2", max_steps=4,
                      warmup_epochs=0.25, log_every=1, out=str(root / "run")), progress=False)
    run_split(root / "run", root / "split", accept_unlearned=True)  # a few steps: not meant to learn
    (root / "split" / "finetune_metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "epoch": 0, "loss": 3.0 - 0.1 * s, "lr": 0.01}) + "\n" for s in (1, 2, 3))
        + json.dumps({"step": 3, "epoch": 0, "val_acc": 0.1, "kind": "epoch_end"}) + "\n")
    meta = json.loads((root / "split" / "split.json").read_text())
    art = root / "art"
    art.mkdir()
    devices = {"trunk": "cpu:0", "merge": "cpu:0"}
    subgraphs = [{"name": s["name"], "role": s["role"], "level": s["level"], "group": s["group"],
                  "parent": s["parent"], "device": devices.get(s["name"], f"cpu:{(s['group'] or 0) % 2}"),
                  "graph": {"files": [], **meta["report"]["subgraphs"][s["name"]]}}
                 for s in meta["plan"]["subgraphs"]]
    (art / "manifest.json").write_text(json.dumps({
        "schema": 1, "source": {"split_dir": str(root / "split")}, "class_names": meta["class_names"],
        "class_groups": meta["plan"]["class_groups"], "devices": ["cpu:0", "cpu:1"],
        "subgraphs": subgraphs, "unsplit": {"files": [], **meta["report"]["baseline"]}}))
    return {"run": root / "run", "split": root / "split", "art": art, "root": root}


def images(page: Path) -> list[bytes]:
    """The bytes of every image the page shows: decoded data URIs, or files beside the page."""
    found = []
    for src in re.findall(r'<img src="([^"]+)"', page.read_text(encoding="utf-8")):
        if src.startswith("data:"):
            head, _, data = src.partition(",")
            assert head == "data:image/png;base64"
            found.append(base64.b64decode(data, validate=True))
        else:
            path = page.parent / unquote(src)
            assert path.is_file(), f"{page} references {src}, which does not exist"
            found.append(path.read_bytes())
    return found


def check_pngs(blobs: list[bytes]) -> None:
    for blob in blobs:
        assert len(blob) > 1000 and blob.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            assert im.width > 100 and im.height > 100


def test_run_report_embeds_its_figures(dirs, tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    result = cli("report", dirs["run"], "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["kind"] == "run"
    assert set(summary["figures"]) == {"class_groups", "weights", "group_sizes", "learn_curves"}
    blobs = images(out)
    assert len(blobs) == 4
    check_pngs(blobs)
    assert not list(tmp_path.glob("*_files"))  # self-contained: nothing beside the page
    assert any("splitc split" in note for note in summary["notes"])  # per-subgraph costs need a split


@pytest.fixture(scope="module")
def split_report(dirs) -> tuple[Path, dict]:
    out = dirs["root"] / "pages" / "split.html"
    return out, write_report(dirs["split"], out, separate_images=True, progress=False)


def test_split_report_references_existing_images(split_report) -> None:
    out, summary = split_report
    assert summary["kind"] == "split" and summary["notes"] == []
    assert set(summary["figures"]) == {"class_groups", "weights", "group_sizes", "subgraphs", "learn_curves",
                                       "finetune_curves"}
    assert all(Path(f).parent == out.parent / "split_files" for f in summary["figures"].values())
    blobs = images(out)
    assert len(blobs) == len(summary["figures"])
    check_pngs(blobs)
    page = out.read_text(encoding="utf-8")
    for text in ("this split params / FLOPs", "max relative error", "Classes by group", "res2"):
        assert text in page


def test_heatmap_rows_are_grouped(dirs, split_report) -> None:
    rows = split_report[1]["class_rows"]
    meta = json.loads((dirs["split"] / "split.json").read_text())
    want = dict(zip(meta["class_names"], meta["plan"]["class_groups"]))
    assert sorted(rows) == sorted(want.items())       # every class once, with the split's group
    groups = [g for _, g in rows]
    assert groups == sorted(groups) and len(set(groups)) == 2   # one contiguous run per group
    position = {name: k for k, name in enumerate(meta["class_names"])}
    for g in set(groups):  # synthetic superclasses are position // 5; sorted inside each group
        supers = [position[n] // 5 for n, h in rows if h == g]
        assert supers == sorted(supers)


def test_artifact_report_shows_placement(dirs, tmp_path: Path) -> None:
    out = tmp_path / "art.html"
    result = write_report(dirs["art"], out, progress=False, separate_images=True)
    assert result["kind"] == "artifacts" and "subgraphs" in result["figures"]
    check_pngs(images(out))
    page = out.read_text(encoding="utf-8")
    assert "<td>cpu:1</td>" in page and "devices (placement)" in page
    assert "the device of each subgraph in the manifest" in page


def test_orphaned_artifacts_still_report(dirs, tmp_path: Path) -> None:
    art = tmp_path / "art"
    art.mkdir()
    manifest = json.loads((dirs["art"] / "manifest.json").read_text())
    manifest["source"]["split_dir"] = str(tmp_path / "gone")
    (art / "manifest.json").write_text(json.dumps(manifest))
    result = write_report(art, tmp_path / "a.html", progress=False)
    assert set(result["figures"]) == {"class_groups", "subgraphs"}
    assert any("is not here" in note for note in result["notes"])


@pytest.mark.parametrize("case", ["missing", "empty", "out_is_dir", "bad_layer", "bad_manifest"])
def test_bad_input_is_one_line(dirs, tmp_path: Path, case: str) -> None:
    target, out, extra = tmp_path / "nope", tmp_path / "r.html", []
    if case == "empty":
        target.mkdir()
    elif case == "out_is_dir":
        target, out = dirs["run"], tmp_path
    elif case == "bad_layer":
        target, extra = dirs["run"], ["--layer", "res2.conv"]
    elif case == "bad_manifest":
        target.mkdir()
        (target / "manifest.json").write_text("{not json")
    result = cli("report", target, "--out", out, "--json", *extra)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not out.is_file()


def test_write_report_raises_splitc_error(tmp_path: Path) -> None:
    with pytest.raises(SplitcError, match="not a directory"):
        write_report(tmp_path / "missing", tmp_path / "r.html", progress=False)


def test_superclasses_follow_the_embedded_set_the_run_learned_on() -> None:
    from splitc.data import families, synthetic
    from splitc.report.inputs import Inputs, superclasses

    for spec, data in (("synthetic:families-fast", families), ("synthetic:fast", synthetic)):
        src = Inputs("run", Path("."), ckpt={"identity": {"data": spec}})
        of, names = superclasses(src, list(data.CLASS_NAMES))
        assert names == list(data.SUPERCLASS_NAMES) and of == list(data.SUPERCLASS_OF), spec
