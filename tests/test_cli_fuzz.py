"""A CLI fuzz test: drawn command lines for inspect, learn, split, export and run.

Every drawn line, valid or not, must end with exit 0 or 2 and never a traceback, and nothing
outside its own temporary folder may change (the shared learn run, split and artifact
directories it reads are checked byte for byte afterwards). The training loop is stubbed to at
most one step so that hundreds of lines fit in a couple of minutes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import splitc.learn.loop as learn_module
from splitc.cli.main import main

EXAMPLES = 200
MODELS = ["tiny_residual", "tiny_seq", "nope_net", "torch.nn:Identity", "missing.module:f"]
NUMBERS = ["1", "2", "0", "-1", "nan", "inf", "0.5", "1e309", "abc", ""]
SCOPES = [["--split-depth", "2"], ["--split-depth", "0"], ["--split-from", "layer9"], ["--preset", "deep"],
          ["--split-depth", "1", "--split-from", "x"], ["--groups", "2"], ["--groups", "3,4"], ["--groups", "1"], []]


def options(*names: str) -> st.SearchStrategy[list[str]]:
    """A subset of ``names``, each with a drawn value (some invalid)."""
    pair = st.sampled_from(names).flatmap(lambda n: st.sampled_from(NUMBERS).map(lambda v: [n, v]))
    return st.lists(pair, max_size=3).map(lambda pairs: [x for p in pairs for x in p])


def command_lines(shared: dict[str, str]) -> st.SearchStrategy[list[str]]:
    model = st.sampled_from(MODELS)
    scope = st.sampled_from(SCOPES)
    data = st.sampled_from(["synthetic:tiny", "synthetic:nope", "digits:x", "imagefolder:/no/such/dir"])
    inspect = st.tuples(model, scope, options("--num-classes", "--input-size"),
                        st.sampled_from([[], ["--json"]])).map(lambda t: ["inspect", t[0], *t[1], *t[2], *t[3]])
    learn = st.tuples(model, scope, data, options("--lr", "--epochs", "--batch-size", "--gamma-w", "--overlap",
                                                   "--warmup-epochs", "--max-steps"),
                      st.sampled_from([[], ["--force"], ["--resume"], ["--assign", "random"], ["--assign", "x"]]),
                      st.sampled_from(["out/run", shared["run"]])).map(lambda t: learn_line(*t, shared))
    split = st.tuples(st.sampled_from([shared["run"], "missing", shared["split"]]),
                      st.sampled_from(["out/split", shared["split"], shared["art"]]),
                      options("--overlap"), st.sampled_from([[], ["--accept-unlearned"], ["--force"]])).map(
        lambda t: ["split", t[0], "--out", safe_out(t[1], t[3], shared), *t[2], *t[3], "--json"])
    export = st.tuples(st.sampled_from([shared["split"], shared["run"], "missing"]),
                       st.sampled_from(["out/art", shared["art"], shared["split"]]),
                       st.sampled_from(["cpu", "cpu,cpu", "cuda:7", "tpu", "auto"])).map(
        lambda t: ["export", t[0], "--out", t[1], "--devices", t[2], "--json"])
    run = st.tuples(st.sampled_from([shared["art"], shared["split"], "missing"]),
                    st.sampled_from([["--data", "synthetic:tiny"], ["--input", "x.npy"], [], ["--data", "bad"]]),
                    options("--batch-size"), st.sampled_from([[], ["--devices", "cpu"], ["--devices", "gpu9"]])).map(
        lambda t: ["run", t[0], *t[1], *t[2], *t[3], "--json"])
    return st.one_of(inspect, learn, split, export, run)


def safe_out(out: str, flags: list[str], shared: dict[str, str]) -> str:
    """--force and --resume on a shared folder would rightly change it; send those to a fresh one."""
    return out.replace(str(Path(out).parent), "out") if out in shared.values() and flags else out


def learn_line(model, scope, data, numbers, flags, out, shared) -> list[str]:
    return ["learn", model, *scope, "--data", data, *numbers, *flags, "--out", safe_out(out, flags, shared), "--json"]


def snapshot(*folders: str) -> dict[str, tuple[int, int]]:
    found = {}
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("shared")
    paths = {"run": str(root / "run"), "split": str(root / "split"), "art": str(root / "art")}
    invoke = CliRunner().invoke
    assert invoke(main, ["learn", "tiny_residual", "--data", "synthetic:tiny", "--groups", "2", "--split-depth", "2",
                         "--max-steps", "1", "--batch-size", "8", "--out", paths["run"]]).exit_code == 0
    assert invoke(main, ["split", paths["run"], "--out", paths["split"], "--accept-unlearned"]).exit_code == 0
    assert invoke(main, ["export", paths["split"], "--out", paths["art"], "--devices", "cpu"]).exit_code == 0
    return paths


@pytest.fixture()
def one_step(monkeypatch):
    """learn trains at most one step (the fuzz test checks the edges, not the training)."""
    original = learn_module._setup

    def setup(config, *args, **kwargs):
        run = original(config, *args, **kwargs)
        run.total_steps = min(run.total_steps, run.step + 1)
        return run
    monkeypatch.setattr(learn_module, "_setup", setup)


def test_cli_fuzz(shared: dict[str, str], one_step) -> None:
    before = snapshot(*shared.values())
    repo = Path(__file__).resolve().parents[1]
    repo_before = {p.name for p in repo.iterdir()}
    seen = {"exit0": 0, "exit2": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(command_lines(shared))
    def check(argv: list[str]) -> None:
        with tempfile.TemporaryDirectory() as work:
            cwd = os.getcwd()
            os.chdir(work)
            try:
                result = CliRunner().invoke(main, argv)
            finally:
                os.chdir(cwd)
        shown = f"splitc {' '.join(argv)}\n{result.output}"
        assert result.exit_code in (0, 2), shown + repr(result.exception)
        assert "Traceback" not in result.output, shown
        assert result.exception is None or isinstance(result.exception, SystemExit), shown
        seen[f"exit{result.exit_code}"] += 1
    check()
    assert snapshot(*shared.values()) == before, "a fuzzed command changed the shared run, split or artifact"
    assert {p.name for p in repo.iterdir()} == repo_before
    assert seen["exit0"] >= 5 and seen["exit2"] >= 50, seen  # both outcomes were really exercised
