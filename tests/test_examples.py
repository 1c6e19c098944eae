"""Every script in examples/ runs end to end with ``--smoke`` (tiny budget, substitute data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE_TIMEOUT_S = 600


# own_loop.py: tests/test_api.py runs it and checks its files. wrn_cifar100.py learns and splits
# the paper's four WRN-16-8 presets (170 s of one core, a sixth of the default suite): `-m slow`.
@pytest.mark.parametrize("script", [pytest.param("wrn_cifar100.py", marks=pytest.mark.slow), "custom_model.py",
                                    "resnet18_imagefolder.py", "api_end_to_end.py"])
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



def test_examples_use_only_import_splitc_and_the_cli() -> None:
    """An example is what a user copies: the public ``splitc`` names and the ``splitc`` command,
    never a module inside the package."""
    import ast

    for path in EXAMPLES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("splitc"), f"{path.name}: from {node.module} import ..."
            elif isinstance(node, ast.Import):
                assert all(a.name == "splitc" or not a.name.startswith("splitc") for a in node.names), path.name
