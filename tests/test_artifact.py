"""The split as a self-contained artifact: it reloads where the model's class does not exist.

A script defines its model only in ``__main__``, splits it and saves it (``splitc.save``, and a
split directory as ``splitc split`` writes one); a second, fresh process that never defines the
class loads both and gives the same logits. This pytest process does not define the class
either, so ``splitc verify``, ``finetune`` and ``export`` below run from the artifact alone.
``report`` shows what the directory holds and says in one note what it skips. Also: BatchNorm
and dropout train after a reload as before the save, a directory of the earlier format is
upgraded once, and a corrupt or unsafe artifact is one clear error.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import splitc
from splitc.cli.main import main
from splitc.compile import split_dir as split_dir_module
from splitc.compile.artifact import PROGRAMS, read_artifact
from splitc.compile.build import build_split
from splitc.compile.split_dir import load_split, save
from splitc.compile.split_run import random_split
from splitc.core.errors import SplitcError
from splitc.core.files import FINETUNED_WEIGHTS, SPLIT_ARTIFACT, SPLIT_JSON
from splitc.graph.analysis import analyse
from splitc.graph.group_tree import balanced_assignment
from splitc.graph.scope import ScopeSpec

ROOT = Path(__file__).resolve().parents[1]
SIZE = (3, 32, 32)

MAKE = textwrap.dedent('''
    """Defines Net in __main__ only, splits it, saves the artifact and a split directory."""
    import sys
    from pathlib import Path

    import numpy as np
    import torch
    from torch import nn

    import splitc
    from splitc.compile.build import build_split
    from splitc.compile.split_run import write_split
    from splitc.graph.analysis import analyse
    from splitc.graph.group_tree import balanced_assignment
    from splitc.graph.scope import ScopeSpec


    class Scale(nn.Module):
        """A user layer: a learned per-channel gain."""

        def __init__(self, channels):
            super().__init__()
            self.gain = nn.Parameter(torch.linspace(0.5, 1.5, channels))

        def forward(self, x):
            return x * self.gain[None, :, None, None]


    class Block(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
            self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
            self.scale = Scale(channels)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.scale(self.bn2(self.conv2(y))))


    class Net(nn.Module):
        def __init__(self, num_classes=20):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.block1, self.block2 = Block(16), Block(16)
            self.drop, self.fc = nn.Dropout(0.25), nn.Linear(16, num_classes)

        def forward(self, x):
            x = self.block2(self.block1(self.stem(x)))
            return self.fc(self.drop(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


    if __name__ == "__main__":
        out = Path(sys.argv[1])
        torch.manual_seed(0)
        model = Net()
        with torch.no_grad():  # running statistics that are not the initial 0 and 1
            model.train()(torch.randn(16, 3, 32, 32) * 2 + 0.5)
        analysis = analyse("__main__:Net", ScopeSpec((2,), split_from=("block2",)), 20, (3, 32, 32), model=model.eval())
        hard = balanced_assignment(analysis.ir, analysis.scope, np.random.default_rng(0))
        split = build_split(analysis, hard)
        splitc.save(split, out / "net.splitc")
        write_split(analysis, hard, out / "split")
        x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.save({"x": x, "y": split(x), "masked": split.references["unsplit"](x)}, out / "made.pt")
''')

LOAD = textwrap.dedent('''
    """A fresh process that never defines Net: load the artifact and the split directory."""
    import sys
    from pathlib import Path

    import torch

    import splitc
    from splitc.compile.artifact import read_artifact

    out = Path(sys.argv[1])
    assert "Net" not in vars(sys.modules["__main__"])
    made = torch.load(out / "made.pt", weights_only=True)
    artifact = read_artifact(out / "net.splitc")
    with torch.no_grad():
        torch.save({"y": splitc.load(out / "net.splitc")(made["x"]), "dir": splitc.load(out / "split")(made["x"]),
                    "masked": artifact.references["unsplit"](made["x"])}, out / "loaded.pt")
''')


def run_script(source: str, folder: Path) -> None:
    script = folder / "script.py"
    script.write_text(source)
    done = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=600,
                          cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The __main__-only model split and saved, then loaded by a second fresh process."""
    folder = tmp_path_factory.mktemp("main_model")
    run_script(MAKE, folder)
    run_script(LOAD, folder)
    return folder


def test_fresh_process_without_the_class_gives_equal_logits(made: Path) -> None:
    saved, loaded = torch.load(made / "made.pt", weights_only=True), torch.load(made / "loaded.pt", weights_only=True)
    torch.testing.assert_close(loaded["y"], saved["y"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded["dir"], saved["y"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded["masked"], saved["masked"], rtol=1e-5, atol=1e-6)
    assert not hasattr(sys.modules["__main__"], "Net")  # nor does this process define it


def test_verify_finetune_export_without_the_class(made: Path, tmp_path: Path) -> None:
    work = tmp_path / "split"
    shutil.copytree(made / "split", work)
    checked = json.loads(cli("verify", work, "--json").output)
    assert checked["ok"] and "stored masked reference" in checked["checked"], checked
    tuned = cli("finetune", work, "--data", "synthetic:tiny", "--max-steps", "2", "--json")
    assert tuned.exit_code == 0, tuned.output
    assert json.loads((work / SPLIT_JSON).read_text())["weights"] == FINETUNED_WEIGHTS
    before = splitc.load(made / "split").state_dict()
    after = splitc.load(work).state_dict()   # the finetuned weights, through the artifact
    assert any(not torch.equal(before[k], after[k]) for k in before)
    bn = next(k for k in after if k.endswith("running_mean"))
    assert not torch.equal(before[bn], after[bn])   # BatchNorm trained in train mode
    exported = cli("export", work, "--out", tmp_path / "onnx", "--json")
    assert exported.exit_code == 0, exported.output
    summary = json.loads(exported.output)
    assert [s["file"] for s in summary["subgraphs"]] == ["trunk.onnx", "g0.onnx", "g1.onnx", "merge.onnx"]
    assert "defined in the script that split it" in summary["lowering"]["reason"]   # no dense view: no lowering
    assert json.loads(cli("verify", tmp_path / "onnx", "--json").output)["ok"]


def test_report_without_the_class(made: Path, tmp_path: Path) -> None:
    """The report shows what the split directory has and says in one note what it skips."""
    result = cli("report", made / "split", "--out", tmp_path / "report.html", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert "subgraphs" in summary["figures"]
    assert any("cannot be built here" in note and "skipped" in note for note in summary["notes"]), summary["notes"]


def test_old_format_is_upgraded_once(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "split"
    random_split("resnet20", ScopeSpec((2,), split_from=("layer3",)), out, num_classes=10)
    (out / SPLIT_ARTIFACT).unlink()   # as an earlier splitc wrote it
    calls = []
    real = split_dir_module.analyse
    monkeypatch.setattr(split_dir_module, "analyse", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = load_split(out)
    assert (out / SPLIT_ARTIFACT).is_file() and len(calls) == 1 and first.rebuilt is not None
    second = load_split(out)
    assert len(calls) == 1 and second.rebuilt is None   # self-contained from now on
    x = torch.randn(3, *second.input_size)
    with torch.no_grad():
        torch.testing.assert_close(second.model(x), first.model(x), rtol=1e-5, atol=1e-6)


def test_old_format_of_a_model_that_cannot_be_built_is_refused(made: Path, tmp_path: Path) -> None:
    work = tmp_path / "split"
    shutil.copytree(made / "split", work)
    (work / SPLIT_ARTIFACT).unlink()
    message = one_line_error(cli("verify", work))
    assert "has no split.splitc" in message and "__main__:Net" in message


UNSAFE = {  # program entries rewritten into what torch.export.load would run code from
    "pickled": ("model_weights_config.json", b'"use_pickle": false', b'"use_pickle": true'),
    "foreign_call": ("models/model.json", b'"torch.ops.aten.relu.default"', b'"torch.os.system"'),
    "eval_in_size": ("models/model.json", b"Symbol(", b"__import__('os').system('true') or Symbol("),
}


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not_a_zip", *UNSAFE])
def test_corrupt_or_unsafe_artifact_is_one_error(made: Path, tmp_path: Path, damage: str) -> None:
    work = tmp_path / "split"
    shutil.copytree(made / "split", work)
    path = work / SPLIT_ARTIFACT
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":   # one byte inside the trunk's weights: the zip's CRC catches it
        at = data.index(b"weight_0") + 200
        path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    elif damage == "not_a_zip":
        path.write_text("not an artifact")
    else:
        path.write_bytes(rewrite_trunk(data, *UNSAFE[damage]))
    message = one_line_error(cli("verify", work))
    assert "split.splitc is corrupt or not a split artifact" in message
    expected = {"pickled": "pickled payload", "foreign_call": "calls a non-op",
                "eval_in_size": "not plain arithmetic"}.get(damage, "")
    assert expected in message, message
    with pytest.raises(SplitcError, match="corrupt"):
        splitc.load(path)


def rewrite_trunk(artifact: bytes, entry: str, old: bytes, new: bytes) -> bytes:
    """The artifact with ``old`` replaced by ``new`` in the trunk program's ``entry``."""
    outer, out = zipfile.ZipFile(io.BytesIO(artifact)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as rewritten:
        for name in outer.namelist():
            blob = outer.read(name)
            if name == f"{PROGRAMS}trunk.pt2":
                inner, program = zipfile.ZipFile(io.BytesIO(blob)), io.BytesIO()
                with zipfile.ZipFile(program, "w") as target:
                    for part in inner.namelist():
                        data = inner.read(part)
                        if part.endswith(entry):
                            assert old in data, (part, old)
                            data = data.replace(old, new, 1)
                        target.writestr(part, data)
                blob = program.getvalue()
            rewritten.writestr(name, blob)
    return out.getvalue()


class DropNet(nn.Module):
    """BatchNorm in 2-d and 1-d, dropout and a BatchNorm with momentum None (cumulative)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.bn1d = nn.Linear(8, 16), nn.BatchNorm1d(16)
        self.drop, self.fc2 = nn.Dropout(0.5), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn(self.conv(x))))))
        return self.fc2(self.drop(torch.relu(self.bn1d(self.fc1(x.mean((2, 3)))))))


def test_reloaded_model_trains_like_the_split(tmp_path: Path) -> None:
    """Train-mode steps on the compiled split and on its reload: the same outputs, gradients
    and running statistics (BatchNorm and dropout follow train()/eval() again)."""
    torch.manual_seed(0)
    analysis = analyse("DropNet", ScopeSpec((2,), split_from=("conv2",)), 4, (3, 16, 16), model=DropNet().eval())
    hard = balanced_assignment(analysis.ir, analysis.scope, np.random.default_rng(0))
    compiled = build_split(analysis, hard)
    artifact = read_artifact(save(compiled, tmp_path / "drop.splitc"))
    assert not artifact.eval_only
    kinds = {type(m).__name__ for m in artifact.model.modules()}
    assert {"BatchNorm2d", "BatchNorm1d", "Dropout"} <= kinds
    original, reloaded = copy.deepcopy(compiled).train(), copy.deepcopy(artifact.model).train()
    for step in range(2):
        x = torch.randn(8, 3, 16, 16)
        outputs = []
        for model in (original, reloaded):
            torch.manual_seed(step)   # the same dropout masks
            outputs.append(model(x))
            outputs[-1].square().mean().backward()
        torch.testing.assert_close(outputs[1], outputs[0])
    grads = {k: p.grad for k, p in reloaded.named_parameters()}
    for name, p in original.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)
    state = reloaded.state_dict()
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(state[name], tensor)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), original.eval()(x))
