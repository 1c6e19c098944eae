"""splitc.deploy.runtime and the deploy commands: placement at load, sessions and their options, the
CUDA request (ORT's session factory mocked: this host has no GPU), one-line validation errors,
run (accuracy on data, raw arrays), bench and verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from splitc.deploy import runtime
from splitc.cli.main import main
from splitc.core.errors import SplitcError
from splitc.deploy.manifest import read_manifest
from splitc.compile.split_dir import load_split, write_json
from test_export import TINY_NAMES, tiny  # noqa: F401  (the shared small artifact: a 2 -> 4 tree)


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def art_copy(tiny, tmp_path: Path) -> Path:  # noqa: F811
    """A private copy of the small artifact, to damage."""
    return Path(shutil.copytree(tiny[1], tmp_path / "art"))


class FakeSession:
    """Records what the runtime asks ONNX Runtime for, instead of starting a session."""

    made: list[tuple[str, list, object]] = []

    def __init__(self, path: str, sess_options=None, providers=None) -> None:
        self.providers = providers
        FakeSession.made.append((Path(path).stem, providers, sess_options))

    def get_providers(self) -> list[str]:
        return [p[0] if isinstance(p, tuple) else p for p in self.providers]


@pytest.fixture
def fake_ort(monkeypatch):
    FakeSession.made = []
    monkeypatch.setattr(runtime.ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(runtime.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    return FakeSession


def gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def cuda(k: int) -> list:
    return [("CUDAExecutionProvider", {"device_id": k}), "CPUExecutionProvider"]


def test_cuda_sessions_request_their_gpu(tiny, fake_ort, monkeypatch) -> None:  # noqa: F811
    gpus(monkeypatch, 2)
    for devices in ("cuda:0,cuda:1", "auto"):
        fake_ort.made = []
        pipe = runtime.load(tiny[1], devices)
        asked = {name: providers for name, providers, _ in fake_ort.made}
        assert list(asked) == TINY_NAMES
        assert asked["trunk"] == asked["merge"] == cuda(0)
        assert all(p in (cuda(0), cuda(1)) for p in asked.values())
        for siblings in (("g0", "g1"), ("g0.0", "g0.1"), ("g1.2", "g1.3")):  # siblings on different GPUs
            assert asked[siblings[0]] != asked[siblings[1]]
        assert pipe.devices == ("cuda:0", "cuda:1") and not pipe.fused
        pipe.close()
    fake_ort.made = []
    runtime.load(tiny[1], "cuda:1").close()  # one device: the fused graph, on that GPU
    assert [(n, p) for n, p, _ in fake_ort.made] == [("fused", cuda(1))]
    with pytest.raises(SplitcError, match=r"cuda:2 does not exist: this host has 2 GPUs"):
        runtime.load(tiny[1], "cuda:0,cuda:2")


def test_no_gpu_means_no_cuda_request(tiny, art_copy, fake_ort, monkeypatch) -> None:  # noqa: F811
    gpus(monkeypatch, 0)  # ORT still lists CUDAExecutionProvider (onnxruntime-gpu)
    runtime.load(tiny[1], "auto").close()
    runtime.load(tiny[1], "cpu,cpu").close()
    assert all(p == ["CPUExecutionProvider"] for _, p, _ in fake_ort.made)
    with pytest.raises(SplitcError, match="cuda:0 does not exist: torch sees no GPU"):
        runtime.load(tiny[1], "cuda:0")
    manifest = read_manifest(art_copy).with_placement(("cuda:0", "cuda:1"))  # exported for a GPU host
    write_json(art_copy / "manifest.json", manifest.to_dict())
    with pytest.raises(SplitcError, match="does not exist"):
        runtime.load(art_copy)
    result = cli("run", art_copy, "--input", "x.npy", "--devices", "cuda:3")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cpu_threads_and_spinning(tiny, fake_ort) -> None:  # noqa: F811
    runtime.load(tiny[1], "cpu,cpu", threads=2).close()
    threads = {name: so.intra_op_num_threads for name, _, so in fake_ort.made}
    assert threads == {"trunk": 2, "g0": 1, "g1": 1, "g0.0": 1, "g0.1": 1, "g1.2": 1, "g1.3": 1,
                       "merge": 2}  # concurrent branches share the 2 cores
    for _, _, so in fake_ort.made:
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    fake_ort.made = []
    runtime.load(tiny[1], threads=2).close()
    assert [(n, so.intra_op_num_threads) for n, _, so in fake_ort.made] == [("fused", 2)]


def test_strategy_follows_placement(tiny) -> None:  # noqa: F811
    x = np.random.default_rng().standard_normal((5, 3, 32, 32)).astype(np.float32)
    with runtime.load(tiny[1]) as fused, runtime.load(tiny[1], "cpu,cpu") as parts:
        assert fused.fused and fused.describe() == "one fused session on cpu"
        assert not parts.fused and parts.devices == ("cpu:0", "cpu:1")
        a, b = fused(x), parts(x)
    assert a.shape == (5, 20) and np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


@pytest.mark.parametrize("damage, devices, words", [
    ("flip g0.onnx", "cpu,cpu", "SHA-256"),
    ("flip fused.onnx", None, "SHA-256"),
    ("delete merge.onnx", "cpu,cpu", "missing"),
    ("schema 99", None, "schema 99"),
    ("delete manifest.json", None, "not an artifact directory"),
])
def test_damaged_artifact_is_refused(art_copy: Path, damage: str, devices, words: str) -> None:
    action, target = damage.split(" ")
    if action == "flip":
        data = bytearray((art_copy / target).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (art_copy / target).write_bytes(bytes(data))
    elif action == "delete":
        (art_copy / target).unlink()
    else:
        doc = json.loads((art_copy / "manifest.json").read_text())
        doc["schema"] = int(target)
        (art_copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(SplitcError, match=words):
        runtime.load(art_copy, devices)
    result = cli("bench", art_copy, "--reps", "1", *(["--devices", devices] if devices else []))
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1


def test_bad_inputs_are_refused(tiny) -> None:  # noqa: F811
    with runtime.load(tiny[1]) as pipe:
        for x, words in ((np.zeros((2, 3, 16, 16), np.float32), r"shape \(2, 3, 16, 16\)"),
                         (np.zeros((3, 32, 32), np.float32), "shape"),
                         (np.zeros((0, 3, 32, 32), np.float32), "N >= 1"),
                         (np.zeros((2, 3, 32, 32), np.float64), "dtype float64"),
                         (torch.zeros(2, 3, 32, 32, dtype=torch.float16), "dtype float16"),
                         ([[0.0]], "numpy array")):
            with pytest.raises(SplitcError, match=words):
                pipe(x)
        assert pipe(torch.zeros(1, 3, 32, 32)).shape == (1, 20)


def test_run_on_two_cpu_devices_matches_pytorch_accuracy(tiny) -> None:  # noqa: F811
    from splitc.data.loaders import load_data

    split_dir, art_dir = tiny
    result = cli("run", art_dir, "--data", "synthetic:fast", "--devices", "cpu,cpu", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got["devices"] == ["cpu:0", "cpu:1"] and got["samples"] == 400
    model = load_split(split_dir).model
    val = load_data("synthetic:fast", (3, 32, 32), flip=False).val
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    assert got["correct"] == correct and got["accuracy"] == correct / 400


def test_run_raw_arrays(tiny, tmp_path: Path) -> None:  # noqa: F811
    split_dir, art_dir = tiny
    x = np.random.default_rng().standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = cli("run", art_dir, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
                 "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        want = load_split(split_dir).model(torch.from_numpy(x)).numpy()
    got = np.load(tmp_path / "y.npy")
    assert got.shape == (5, 20) and np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want)
    np.save(tmp_path / "bad.npy", x.astype(np.float64))
    result = cli("run", art_dir, "--input", tmp_path / "bad.npy")
    assert result.exit_code == 2 and "dtype float64" in result.output
    result = cli("run", art_dir)
    assert result.exit_code == 2 and "exactly one of --data" in result.output


def test_bench_json(tiny) -> None:  # noqa: F811
    result = cli("bench", tiny[1], "--batch-size", "2", "--warmup", "1", "--reps", "3", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)  # a slower-than-FLOPs warning goes to stderr
    assert set(r) == {"split_ms", "unsplit_ms", "ratio", "flops_ratio", "batch_size", "devices"}
    assert r["batch_size"] == 2 and r["devices"] == ["cpu"] and 0 < r["flops_ratio"] < 1
    assert r["ratio"] == pytest.approx(r["split_ms"] / r["unsplit_ms"])
    text = cli("bench", tiny[1], "--batch-size", "1", "--warmup", "0", "--reps", "2", "--devices", "cpu,cpu").output
    assert "ratio split/unsplit" in text and "8 sessions on cpu:0, cpu:1" in text


def test_verify_cli(tiny) -> None:  # noqa: F811
    result = cli("verify", tiny[1], "--json")
    assert result.exit_code == 0, result.output
    checked = json.loads(result.output)
    assert checked["ok"] and checked["max_rel_err"] <= 1e-4 and len(checked["checks"]) == 3
    text = cli("verify", tiny[1]).output
    assert text.count("ok: ") == 3 and "8 sessions on cpu:0, cpu:1" in text
    result = cli("verify", tiny[1], "--split-dir", tiny[1].parent / "gone")
    assert result.exit_code == 2 and "is gone; pass it with --split-dir" in result.output
    result = cli("verify", tiny[0], "--devices", "cpu")
    assert result.exit_code == 2 and "apply to an artifact directory" in result.output


def test_io_binding_path_gives_the_same_logits(tiny) -> None:  # noqa: F811
    """The CUDA runner's IOBinding code (bound torch buffers), exercised on the CPU."""
    manifest = read_manifest(tiny[1])
    session = runtime.new_session(tiny[1] / manifest.fused.model_file, "cpu", 1)
    bound = runtime._Runner("fused", manifest.fused, "cpu", session, bind=True)
    plain = runtime._Runner("fused", manifest.fused, "cpu", session)
    x = np.random.default_rng().standard_normal((3, 3, 32, 32)).astype(np.float32)
    got, want = bound([x])[0], plain([x])[0]
    assert isinstance(got, torch.Tensor) and got.shape == (3, 20)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_bench_says_when_the_split_saves_less_time_than_flops(tiny, monkeypatch) -> None:  # noqa: F811
    """A ratio above FLOPs + 0.05 is one warning line; --limit reports why there is no limit on
    an artifact exported without the lowering."""
    from splitc.deploy import runtime as rt

    real = rt.bench
    monkeypatch.setattr(rt, "bench", lambda *a, **k: {**real(*a, **k), "ratio": 2.0})
    result = cli("bench", tiny[1], "--batch-size", "2", "--warmup", "0", "--reps", "1", "--limit", "--json")
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2.00 of the unsplit model's time" in warnings[0]
    report = json.loads(result.stdout)
    assert report["kernel_limit"]["limit"] is None and "no lowered graph" in report["kernel_limit"]["reason"]
