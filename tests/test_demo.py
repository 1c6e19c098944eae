"""``splitc demo --fast`` runs every stage of the pipeline (issue 6, acceptance 2)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from click.testing import CliRunner

from splitc.cli.main import main


def test_demo_fast_runs_every_stage(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["demo", "--fast", "--out", str(tmp_path), "--json"], catch_exceptions=False)
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["max_rel_err"] <= 1e-4
    report = Path(summary["report"])
    assert report.is_file() and report.stat().st_size > 10_000
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,', report.read_text())) >= 4
    assert set(summary["seconds"]) == {"inspect", "learn", "split + finetune", "export", "run + verify",
                                       "bench", "report"}
    assert 0 < summary["flops_ratio"] < 1 and summary["latency_ratio"] > 0
    assert elapsed < 240, f"demo --fast took {elapsed:.0f} s"  # 2 min target, slack for a loaded CI box
    assert json.loads((tmp_path / "demo_summary.json").read_text())["report"] == summary["report"]
