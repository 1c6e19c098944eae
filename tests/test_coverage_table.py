"""benchmarks/coverage.py keeps every finished model across stopped runs and lists the rest."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("coverage_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(model: str, status: str = "ok", **extra) -> dict:
    return {"model": model, "status": status, "note": "", "scope": "layer4", "params_reduced": 10.0,
            "flops_reduced": 5.0, "split_err": 1e-7, "onnx_err": 2e-7,
            "seconds": {"trace+inspect": 1.0, "learn": 2.0}, **extra}


def test_later_rows_win_and_unrun_models_are_listed(coverage, tmp_path):
    results = tmp_path / "coverage.jsonl"
    coverage.append_result(results, _row("resnet18", status="fail: RuntimeError: boom", seconds={}))
    coverage.append_result(results, _row("resnet18"))
    coverage.append_result(results, _row("vgg11", note="only the classifier splits"))
    rows = coverage.load_results(results)
    assert rows["resnet18"]["status"] == "ok"
    out = tmp_path / "coverage.md"
    coverage.write_table(out, ["alexnet", "resnet18", "vgg11"], rows)
    text = out.read_text()
    assert "**2 of 3 ok**, 1 not run yet." in text
    assert "| alexnet | not run yet (`benchmarks/coverage.py --models alexnet`) |" in text
    assert "| vgg11 | ok (only the classifier splits) | `layer4` | 10.0 | 5.0 |" in text
    assert len(results.read_text().splitlines()) == 3 and json.loads(results.read_text().splitlines()[0])
