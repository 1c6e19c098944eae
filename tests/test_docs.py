"""The documentation: self-contained, linked, runnable and buildable.

- No file of the repository points outside it: a clone has no workspace folder beside it, and
  the method is cited as ``docs/METHOD.md`` (inside ``docs/``, and in ``mkdocs.yml`` whose paths
  are relative to ``docs/``, a relative link to it is fine).
- Every relative Markdown link of the README and of ``docs/`` reaches a file, and its
  ``#anchor`` a heading of that file.
- The user guide's runnable blocks are the README's, which ``tests/test_readme.py`` (```bash)
  and ``tests/test_api.py`` (the library's ```python block) run; anything else is fenced
  ```text.
- ``mkdocs build --strict`` passes: no warning, no broken link, no page left out of the nav.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GUIDE = [DOCS / "tutorial.md", *sorted((DOCS / "howto").glob("*.md"))]
OUTSIDE = "../" + "shared"                                  # spelled apart so this file does not name it
METHOD_OUTSIDE_DOCS = re.compile(r"(?<!docs/)\bMETHOD\.md")
RELATIVE_TO_DOCS = ("docs/", "mkdocs.yml", "tests/test_docs.py")   # tests/test_docs.py: the rule itself
FENCE = re.compile(r"^(```+|~~~+)[^\n]*\n.*?^\1[ \t]*$", flags=re.S | re.M)
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", flags=re.M)


def repository_files() -> list[Path]:
    """The files git tracks, and the new ones it does not ignore (what a commit would carry)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in sorted(set(out.split("\0"))) if name and (ROOT / name).is_file()]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def test_no_file_points_outside_the_repository() -> None:
    bad = []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE in line:
                bad.append(f"{rel}:{number}: names {OUTSIDE}: {line.strip()}")
            elif not rel.startswith(RELATIVE_TO_DOCS) and METHOD_OUTSIDE_DOCS.search(line):
                bad.append(f"{rel}:{number}: cite docs/METHOD.md, not a bare METHOD.md: {line.strip()}")
    assert not bad, "\n".join(bad)


def markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def without_code(text: str) -> str:
    """The page with fenced blocks and inline code removed (links there are examples)."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text, flags=re.S)


def slugs(text: str) -> set[str]:
    """Heading anchors as both GitHub and MkDocs (Python-Markdown's toc) spell them."""
    found = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "").strip()
        github = re.sub(r"[^\w\- ]", "", plain.lower(), flags=re.UNICODE).replace(" ", "-")
        ascii_ = unicodedata.normalize("NFKD", plain).encode("ascii", "ignore").decode("ascii")
        mkdocs = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_).strip().lower())
        found.add(github if github == mkdocs else f"{github} != {mkdocs}")
    return found


def test_relative_links_reach_files_and_anchors() -> None:
    bad = []
    for page in markdown_pages():
        rel = page.relative_to(ROOT).as_posix()
        for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):     # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{rel}: {target}: no such file")
                continue
            try:
                dest.relative_to(ROOT)
            except ValueError:
                bad.append(f"{rel}: {target}: outside the repository")
                continue
            if anchor and dest.suffix == ".md" and anchor not in slugs(dest.read_text(encoding="utf-8")):
                near = sorted(s for s in slugs(dest.read_text(encoding="utf-8")) if anchor[:8] in s)
                bad.append(f"{rel}: {target}: no heading with this anchor (GitHub and MkDocs must agree){near}")
    assert not bad, "\n".join(bad)


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def commands(block: str) -> list[tuple[str, ...]]:
    return [tuple(words) for line in block.splitlines() if (words := shlex.split(line, comments=True))]


def test_the_guide_runs_what_the_tests_run() -> None:
    readme_commands = {c for block in blocks(README, "bash") for c in commands(block)}
    readme_python = set(blocks(README, "python"))
    assert readme_commands and readme_python
    bad = []
    for page in GUIDE:
        rel = page.relative_to(ROOT).as_posix()
        for block in blocks(page, "bash"):
            bad += [f"{rel}: `{' '.join(c)}` is not in the README's ```bash blocks, which tests/test_readme.py runs "
                    "(fence it ```text if it cannot run there)" for c in commands(block) if c not in readme_commands]
        bad += [f"{rel}: a ```python block that is not the README's library block (tests/test_api.py runs that one)"
                for block in blocks(page, "python") if block not in readme_python]
    assert not bad, "\n".join(bad)
    assert len(blocks(DOCS / "tutorial.md", "bash")) >= 5, "the tutorial runs every stage"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("mkdocs_click")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert all(name in api for name in ("SplitNet", "register_module", "export")), "the API page lost its names"
