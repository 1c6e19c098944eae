"""The library API (issue 27): ``splitc.SplitNet`` inside a plain loop is ``splitc learn``; a split of
a class that exists only in a script's ``__main__`` saves, loads in a fresh process without it,
exports and verifies; the README's API block runs as written. A split directory and its file load
into values that export; a list of batches is a probe; a split finetuned after ``compile()``
verifies against its own finetuned masked reference (issue 32)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import splitc
from splitc.compile.split_run import load_run
from splitc.core.errors import SplitcError
from splitc.data.batches import epoch_loader
from splitc.data.loaders import load_data
from splitc.graph import opkinds, zoo
from splitc.learn.grouping import hardened
from splitc.learn.loop import LearnConfig, learn
from splitc.learn.optim import schedule_at
from splitc.passes.harden import harden
from test_api_inputs import Tiny

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RECIPE = {"groups": 2, "split_from": "layer3", "warmup": "fixed", "warmup_epochs": 1.0}


def test_splitnet_in_a_plain_loop_is_splitc_learn(tmp_path: Path) -> None:
    """Same seed, data order, optimiser and schedule: the same groups and validation accuracy."""
    steps, batch, seed = 90, 32, 0
    cli = learn(LearnConfig(model="resnet20", data="synthetic:fast", max_steps=steps, batch_size=batch, seed=seed,
                            out=str(tmp_path / "run"), lr_warmup_epochs=0.0, **RECIPE), progress=False)
    doc = json.loads((tmp_path / "run" / "assignment.json").read_text())

    torch.manual_seed(seed)
    data = load_data("synthetic:fast", (3, 32, 32), seed=seed)
    model = zoo.build("resnet20", data.num_classes)
    per_epoch = len(data.train) // batch
    sp = splitc.SplitNet(model, example_inputs=torch.zeros(1, 3, 32, 32), steps=steps, probe=data.train_probe,
                         val=data.val, steps_per_epoch=per_epoch, seed=seed, trained=False, **RECIPE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = schedule_at(opt, 0.1, "cosine", steps, 0)
    step = 0
    while step < steps:
        for x, y in epoch_loader(data.train, seed, step // per_epoch, batch, per_epoch):
            model.train()
            loss = F.cross_entropy(model(x), y) + sp.regularizer()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            sp.step()
            step += 1
            if step == steps:
                break
    assert sp.run.committed and doc["committed"] and sp.run.config.init_groups == doc["init_groups"] == "cluster-cut"
    assert list(sp.run.feature_groups) == list(doc["feature_groups"].values())
    _, analysis, aset = load_run(tmp_path / "run")
    cli_groups = harden(analysis.ir, analysis.scope, aset.soft()).assignment.groups_of_space
    api_groups = hardened(sp.run).groups_of_space
    assert cli_groups.keys() == api_groups.keys()
    assert all(np.array_equal(cli_groups[s], api_groups[s]) for s in cli_groups)
    assert sp.finish() == cli.val_acc
    split = sp.compile()
    assert sp.verify(split) <= 1e-5
    assert split.meta["groups_of_space"] == {str(s): g.tolist() for s, g in api_groups.items()}


SCRIPT_CHECK = """
import sys, torch, splitc
out = sys.argv[1]
assert "SmallNet" not in dir(sys.modules["__main__"])
split = splitc.load(out + "/split.splitc")
x, want = torch.load(out + "/x.pt"), torch.load(out + "/logits.pt")
got = split(x).detach()
assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), float((got - want).abs().max())
print("equal logits")
"""


def test_own_loop_example_loads_without_its_class_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "own_loop.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "channel rule" not in done.stderr   # ChannelScale is registered: no barrier
    fresh = subprocess.run([sys.executable, "-c", SCRIPT_CHECK, str(out)], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert fresh.returncode == 0 and "equal logits" in fresh.stdout, fresh.stderr[-3000:]
    verify = subprocess.run([sys.executable, "-m", "splitc.cli", "verify", str(out / "onnx"), "--json"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout + verify.stderr
    report = subprocess.run([sys.executable, "-m", "splitc.cli", "report", str(out / "onnx"), "--out",
                             str(tmp_path / "report.html")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert report.returncode == 0 and "cannot be built here" in report.stderr, report.stderr[-2000:]
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_readme_api_block_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use splitc as a library"):]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    registered = dict(opkinds.USER_MODULE_KINDS), dict(opkinds.USER_FUNCTION_KINDS)
    try:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    finally:   # the block registers its MyNorm: other tests in this process start from an empty registry
        for table, before in zip((opkinds.USER_MODULE_KINDS, opkinds.USER_FUNCTION_KINDS), registered):
            table.clear()
            table.update(before)
    assert (tmp_path / "split.splitc").is_file() and (tmp_path / "onnx" / "manifest.json").is_file()


def test_bad_input_is_one_line() -> None:
    model = zoo.build("resnet20", 10)
    with pytest.raises(SplitcError, match="example_inputs"):
        splitc.SplitNet(model, example_inputs=None, steps=10, groups=2, split_from="layer3")
    with pytest.raises(SplitcError, match="pass probe="):
        splitc.SplitNet(model, example_inputs=torch.zeros(1, 3, 32, 32), steps=10, groups=2, split_from="layer3")


def test_a_split_directory_and_its_file_load_into_values_that_export(tmp_path: Path) -> None:
    from splitc.compile.split_run import random_split
    from splitc.graph.scope import ScopeSpec

    random_split("tiny_residual", ScopeSpec((2,), split_from=("res2",)), tmp_path / "split", num_classes=4)
    for source, out in ((tmp_path / "split", "from_dir"), (tmp_path / "split" / "split.splitc", "from_file")):
        manifest = splitc.export(splitc.load(source), tmp_path / out, devices="cpu", lower=False)
        assert (tmp_path / out / "manifest.json").is_file() and len(manifest.subgraphs) == 4


def test_a_list_of_batches_probe_and_a_split_finetuned_after_compile(tmp_path: Path) -> None:
    from splitc.compile.verify import verify_split, verify_value

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 3, 16, 16, generator=g)
    batches = []
    for _ in range(6):   # a list of (x, y) batches, what many loops iterate
        y = torch.randint(0, 4, (16,), generator=g)
        batches.append((protos[y] + 0.5 * torch.randn(16, 3, 16, 16, generator=g), y))
    model = Tiny()
    sp = splitc.SplitNet(model, example_inputs=torch.zeros(1, 3, 16, 16), steps=12, groups=2, split_from="layer3",
                         probe=batches, val=batches, steps_per_epoch=6, warmup="fixed", warmup_epochs=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches + batches:
        loss = F.cross_entropy(model(x), y) + sp.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sp.step()
    split = sp.compile()
    assert sp.run.committed and sp.verify(split) <= 1e-5
    tune = torch.optim.SGD(split.parameters(), lr=0.05, momentum=0.9)
    split.train()
    for x, y in batches[:3]:   # the user's own finetune of the split
        loss = F.cross_entropy(split(x), y)
        tune.zero_grad()
        loss.backward()
        tune.step()
    assert sp.verify(split) <= 1e-5                       # against the masked model carrying the new weights
    with pytest.raises(SplitcError, match="finetuned since compile"):
        verify_value(split)                               # no model at hand to rebuild that reference
    splitc.save(split, tmp_path / "tuned.splitc")
    loaded = splitc.load(tmp_path / "tuned.splitc")
    assert sp.verify(loaded) <= 1e-5 and not any(w.startswith("the split differs") for w in sp.warnings)
    splitc.export(loaded, tmp_path / "onnx", devices="cpu", lower=False)
    checked = verify_split(tmp_path / "onnx.split")       # the directory holds the finetuned weights
    assert checked["ok"] and "finetuned weights" in checked["checked"], checked
