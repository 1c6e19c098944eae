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


def test_status_blames_the_split_only_for_error_beyond_onnx_runtimes_own(coverage):
    def checks(*errs):
        return [{"checked": str(i), "max_rel_err": e} for i, e in enumerate(errs)]  # last: unsplit

    assert coverage.status_of(1e-7, checks(2e-6, 3e-6, 1e-6)) == "ok"
    assert coverage.status_of(1e-4, checks(2e-6, 3e-6, 1e-6)) == "mismatch"      # split != masked
    assert coverage.status_of(1e-7, checks(6e-4, 5e-4, 4e-4)) == "ok"            # ORT's own noise
    assert coverage.status_of(1e-7, checks(2e-3, 5e-4, 4e-4)) == "mismatch"      # beyond twice it
    assert coverage.status_of(1e-7, checks(3e-4, 1e-6, 1e-6)) == "mismatch"
    assert coverage.status_of(1e-7, checks(3e-3, 3e-3, 2e-3)) == "mismatch"      # ORT itself is off
