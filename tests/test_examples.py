"""Every script in examples/ runs end to end with ``--smoke`` (tiny budget, substitute data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE_TIMEOUT_S = 600


@pytest.mark.parametrize("script", ["wrn_cifar100.py", "custom_model.py", "resnet18_imagefolder.py",
                                    "api_end_to_end.py"])  # own_loop.py: tests/test_api.py runs it and checks its files
def test_example_smoke(script: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--smoke", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    if script == "wrn_cifar100.py":  # the paper's four presets, learned and split from the CLI
        rows = [line.split()[0] for line in done.stdout.splitlines()[-4:]]
        assert rows == ["fc", "shallow", "deep", "hier"], done.stdout[-1500:]


def test_every_example_has_a_smoke_test() -> None:
    names = {p.name for p in EXAMPLES.glob("*.py")}
    assert names == {"wrn_cifar100.py", "custom_model.py", "resnet18_imagefolder.py", "api_end_to_end.py", "own_loop.py"}
    for name in names:
        assert "--smoke" in (EXAMPLES / name).read_text(), name

