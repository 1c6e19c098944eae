"""The wheel ships every stage folder inside the splitc namespace, and nothing beside it."""

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
    for path in ("splitc/passes/permute_channels.py", "splitc/models/wrn.py", "splitc/graph/channel_rules.py",
                 "splitc/learn/loop.py", "splitc/compile/split.py", "splitc/deploy/export.py",
                 "splitc/report/figures.py", "splitc/cli/__main__.py", "splitc/core/errors.py",
                 "splitc/data/synthetic.py"):
        assert path in names, path
    top_level = {n.split("/")[0] for n in names}
    assert top_level <= {"splitc"} | {n for n in top_level if n.endswith(".dist-info")}, sorted(top_level)


# import name -> the extra's distribution, for packages the shipped code imports lazily
OPTIONAL = {"timm": "timm", "huggingface_hub": "huggingface-hub", "ray": "ray", "tritonclient": "tritonclient", "torch_pruning": "torch-pruning",
            "google": "protobuf"}
# import name -> distribution name, where they differ
DISTRIBUTION_OF = {"PIL": "pillow", "sklearn": "scikit-learn", "mpl_toolkits": "matplotlib", "onnxruntime": "onnxruntime-gpu"}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """A test environment can hide a missing install step (the test extra once brought scipy in,
    and `make demo` failed on a fresh clone): every package the shipped code imports must be in
    [project].dependencies, not only in an extra."""
    import ast
    import re
    import tomllib

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    name_of = lambda dep: re.split(r"[<>=!;\[ ]", dep, maxsplit=1)[0].strip().lower()  # noqa: E731
    declared = {name_of(dep) for dep in project["dependencies"]}
    # optional packages: imported only behind a guard that names the extra, and declared in it
    extras = {name_of(dep) for name, deps in project["optional-dependencies"].items() if name != "test"
              for dep in deps}
    assert set(OPTIONAL.values()) <= extras, sorted(set(OPTIONAL.values()) - extras)
    imported = set()
    for folder in ("splitc",):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "splitc"}
    missing = {DISTRIBUTION_OF.get(m, m) for m in third_party if m not in OPTIONAL} - declared
    assert not missing, f"imported but not in [project].dependencies: {sorted(missing)}"
