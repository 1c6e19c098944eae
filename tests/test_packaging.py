"""The wheel ships passes/ and models/ only inside the splitc namespace."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("splitc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "splitc/passes/permute_channels.py" in names
    assert "splitc/models/wrn.py" in names
    top_level = {n.split("/")[0] for n in names}
    assert "passes" not in top_level and "models" not in top_level, sorted(top_level)
