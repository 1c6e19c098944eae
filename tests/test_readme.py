"""Every ```bash block of the README runs as written, at a tiny budget.

The budget is the only change: ``--data synthetic`` becomes ``synthetic:tiny``, training stops
after a step or two, ``bench`` times two repetitions, and ``split`` accepts the (necessarily
unlearned) 2-step run. Blocks fenced as ```text are not commands to run here (``make``, servers).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import torch
from click.testing import CliRunner

from splitc.cli.main import main
from splitc.graph import zoo

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"learn": ["--max-steps", "2", "--batch-size", "8"], "finetune": ["--max-steps", "1", "--batch-size", "8"],
        "bench": ["--reps", "2", "--warmup", "0"], "split": ["--accept-unlearned"]}


def readme_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                assert words[0] == "splitc", f"a ```bash block of the README runs splitc only: {line}"
                commands.append(words[1:])
    return commands


def tiny(argv: list[str]) -> list[str]:
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word == "--epochs":
            skip = True
            continue
        out.append("synthetic:tiny" if word == "synthetic" and i and argv[i - 1] == "--data" else word)
    return out + TINY.get(argv[0], [])


def test_readme_has_the_pipeline() -> None:
    stages = [argv[0] for argv in readme_commands()]
    assert stages[:4] == ["inspect", "learn", "split", "finetune"] and "export" in stages and "report" in stages


def test_readme_commands_run(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    torch.save(zoo.build("resnet20", 20).state_dict(), tmp_path / "resnet20.pt")   # "a model you trained"
    try:
        for argv in readme_commands():
            result = CliRunner().invoke(main, tiny(argv))
            assert result.exit_code == 0, f"splitc {' '.join(tiny(argv))}\n{result.output}"
    finally:
        os.chdir(cwd)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "runs" / "onnx" / "manifest.json").is_file()
