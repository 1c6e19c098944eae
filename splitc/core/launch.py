"""Running N local ranks of a job through PyTorch's elastic launcher, as ``torchrun`` does.

Shared by ``splitc finetune --nproc N`` (model-parallel) and ``splitc learn --nproc N``
(data-parallel). The agent (``elastic_launch``, c10d rendezvous on 127.0.0.1, no restarts)
starts the ranks; their output goes to log files. The launcher shows rank 0's progress from its
metrics journal, and when a rank fails the agent stops the others within a few seconds and the
launcher reports it in one line: a user error any rank raised, else the first rank that died
(by a signal before by an exit code), with what the caller says about its last checkpoint and
where the logs are.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from splitc.core.checkpoint import load_checkpoint, read_metrics
from splitc.core.errors import SplitcError

SHUTDOWN_TIMEOUT_S = 5   # the agent's grace between SIGTERM and SIGKILL for the surviving ranks


def under_torchrun() -> int | None:
    """The world size when this process is a rank started by torchrun (or the launcher)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return None


def launch_local(worker: Callable[[Any], Any], arg: Any, nproc: int, *, job: str, metrics: Path,
                 total: int | None, progress: bool, checkpoint_note: Callable[[], str]) -> dict[int, Any]:
    """Run ``worker(arg)`` on ``nproc`` local ranks; their return values by rank. A failed rank
    stops them all and becomes one SplitcError line. ``worker`` must be a module-level function
    (the ranks are spawned); ``job`` names the work in messages and the progress bar."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logs = Path(tempfile.mkdtemp(prefix=f"splitc-{job}-"))
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"splitc-{uuid.uuid4().hex[:12]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn", shutdown_timeout=SHUTDOWN_TIMEOUT_S,
                          logs_specs=DefaultLogsSpecs(log_dir=str(logs), redirects=Std.ALL))
    _start_quiet_tracker()
    try:
        with _quiet_agent(), _progress(metrics, total, progress, job):
            outputs = elastic_launch(launch, worker)(arg)
    except ChildFailedError as exc:
        raise SplitcError(failure_line(exc.failures, job, checkpoint_note(), logs)) from None
    except SignalException as exc:  # the launcher itself was interrupted; the agent stopped the ranks
        raise SplitcError(f"stopped by {exc.sigval.name}; {checkpoint_note()}") from None
    shutil.rmtree(logs, ignore_errors=True)
    return outputs


def checkpoint_note(path: Path, kind: str, resume: str) -> str:
    """What a stopped job leaves: its last checkpoint (writes are atomic, so never a torn one)."""
    if not path.is_file():
        return "no checkpoint was written yet, so start it again"
    step = load_checkpoint(path, kind=kind)["step"]
    return f"its last checkpoint {path} (step {step}) is intact: continue with --resume ({resume})"


def failure_line(failures: dict[int, Any], job: str, note: str, logs: Path) -> str:
    """A user error any rank raised, else the first rank to die (signals before exit codes)."""
    texts = {r: _first_line(f.message) for r, f in failures.items()}
    for r in sorted(texts):
        if texts[r].startswith("SplitcError: "):
            return texts[r].removeprefix("SplitcError: ")
    rank = min(failures, key=lambda r: (failures[r].exitcode >= 0, failures[r].timestamp, r))
    f = failures[rank]
    cause = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"exited with code {f.exitcode} ({texts[rank][:160]})"
    return f"rank {rank} (pid {f.pid}) {cause}, which stopped the distributed {job}; {note}; worker logs: {logs}"


def _first_line(message: Any) -> str:
    text = message.get("message", "") if isinstance(message, dict) else str(message)
    return text.strip().splitlines()[0] if text.strip() else ""


def _start_quiet_tracker() -> None:
    """Start multiprocessing's resource tracker without its leak warnings: a killed rank leaves
    its semaphores to the tracker, which would print two lines after the one-line error."""
    from multiprocessing import resource_tracker

    saved = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = "ignore:resource_tracker:UserWarning"  # inherited by the tracker only
    try:
        resource_tracker.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = saved


@contextmanager
def _quiet_agent() -> Iterator[None]:
    """The elastic agent logs every failure at length; the launcher reports it in one line."""
    loggers = [log for name, log in logging.root.manager.loggerDict.items()
               if name.startswith(("torch.distributed", "torch.multiprocessing")) and isinstance(log, logging.Logger)]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


@contextmanager
def _progress(metrics: Path, total: int | None, enabled: bool, job: str) -> Iterator[None]:
    """Rank 0's step count, followed in its metrics journal (the ranks' own output goes to logs);
    the bar appears with the first step, so an error before training prints alone."""
    bars: list[tqdm] = []
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(0.5):
            step = last_step(metrics)
            if step is None:
                continue
            if not bars:
                bars.append(tqdm(total=total, desc=job, dynamic_ncols=True))
            if step != bars[0].n:
                bars[0].n = step
                bars[0].refresh()

    thread = threading.Thread(target=follow, daemon=True)
    if enabled:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            thread.join(timeout=2)
        for bar in bars:
            bar.close()


def last_step(metrics: Path) -> int | None:
    records = [r for r in read_metrics(metrics, tail_bytes=4096) if "step" in r]
    return int(records[-1]["step"]) if records else None
