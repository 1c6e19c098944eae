"""The wheel ships every stage folder inside the splitc namespace, and nothing beside it; every
import is a declared dependency; and (slow) the built wheel installs into a fresh virtual
environment and runs there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

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


WHEEL_README_RUN = """
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
section = text[text.index("## Use splitc as a library"):]
exec(compile(re.search(r"```python\\n(.*?)```", section, flags=re.S).group(1), "README.md", "exec"),
     {"__name__": "__readme__"})
"""


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    """``python -m build`` makes a wheel that installs into a fresh virtual environment outside
    the checkout (its dependencies from the package index), where ``splitc demo --fast`` and the
    README's library block run (``make wheel-check``, a step of .ci/run; a few minutes)."""
    import venv

    pytest.importorskip("build", reason="python -m build needs the build package (pip install build)")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("splitc-*.whl"))
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "splitc" / "core" / "version.py").read_text()).group(1)
    assert wheel.name.startswith(f"splitc-{version}-"), wheel.name    # the version, from its one place
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1800)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        return done

    run(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel))
    where = run(str(bin_dir / "python"), "-c", "import splitc; print(splitc.__file__, splitc.__version__)").stdout
    assert str(tmp_path / "venv") in where and version in where, where   # the installed copy, not the checkout
    demo = run(str(bin_dir / "splitc"), "demo", "--fast", "--out", str(tmp_path / "demo"), "--json")
    assert json.loads(demo.stdout.strip().splitlines()[-1])["max_rel_err"] <= 1e-4
    (tmp_path / "readme_block.py").write_text(WHEEL_README_RUN)
    run(str(bin_dir / "python"), str(tmp_path / "readme_block.py"), str(ROOT / "README.md"))
    assert (tmp_path / "split.splitc").is_file() and (tmp_path / "onnx" / "manifest.json").is_file()
