"""Output folders and files that never overwrite another run's results silently.

Every command that writes (``learn``, ``split``, ``finetune``, ``export``, ``report``) calls
:func:`claim` before it starts: an output that already holds results is refused with one line
that names the file and offers ``--force`` (and ``--resume`` where the command has it). With
``--force`` the old output is replaced *as a whole*: :func:`replacing` moves it aside with one
``rename`` (atomic on a POSIX filesystem), the command writes a fresh folder, and only when the
command succeeded is the old one deleted; if it fails, the partial output is removed and the old
one put back. So no file of the earlier run survives beside the new ones, and a failed
``--force`` run loses nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from splitc.core.errors import SplitcError
from splitc.core.naming import FLAG, Naming


def held_file(path: Path) -> Path | None:
    """The first entry of a non-empty folder (or the file itself), for the refusal message."""
    if path.is_file():
        return path
    if path.is_dir():
        return next(iter(sorted(path.iterdir())), None)
    return None


def claim(out: str | os.PathLike, force: bool, option: str | None = None, resume: bool = False,
          is_dir: bool = True, names: Naming = FLAG) -> Path:
    """Check that ``out`` may be written: missing, empty, or ``force``. Raises a one-line
    SplitcError naming what it holds otherwise; ``option`` names ``out`` (default ``--out``, or
    ``out=`` with ``names`` ARG, as the library's callers write it)."""
    path = Path(out)
    option = option or names("out")
    if is_dir and path.exists() and not path.is_dir():
        raise SplitcError(f"{option} {path} is a file; pass a directory.")
    if not is_dir and path.is_dir():
        raise SplitcError(f"{option} {path} is a directory; pass a file name.")
    held = held_file(path)
    if held is not None and not force:
        also = f"{names.switch('resume')} to continue that run, " if resume else ""
        raise SplitcError(f"{held} already exists (the output of an earlier run); pass {also}{names.switch('force')} "
                          f"to replace {path} as a whole, or choose another {option}.")
    return path


@contextmanager
def replacing(out: str | os.PathLike, force: bool, option: str | None = None,
              is_dir: bool = True) -> Iterator[Path]:
    """Claim ``out`` and yield it; with ``force`` the old output is set aside first and deleted
    only once the body succeeded (restored if it raised)."""
    path = claim(out, force, option, is_dir=is_dir)
    aside = _set_aside(path) if held_file(path) is not None else None
    try:
        yield path
    except BaseException:
        if aside is not None:
            remove(path)
            os.replace(aside, path)
        raise
    if aside is not None:
        remove(aside)


def _set_aside(path: Path) -> Path:
    aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
    remove(aside)
    os.replace(path, aside)
    return aside


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fresh(out: str | os.PathLike, force: bool, option: str | None = None, resume: bool = False) -> Path:
    """For commands that write as they go (``learn``): claim ``out`` and, with ``force``, delete
    what it held (renamed aside first, so the folder is never half old, half new)."""
    path = claim(out, force, option, resume=resume)
    if held_file(path) is not None:
        remove(_set_aside(path))
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], durable: bool = False) -> Path:
    """Write a file so that a kill at any moment leaves the old file or the new one, never half
    of one: ``write(tmp)`` fills a temporary file beside ``path``, which then replaces it with
    one rename. ``durable`` also fsyncs the file and the folder (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent, os.O_RDONLY)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _fsync(target: str | os.PathLike, flags: int) -> None:
    """fsync a file or a folder; some platforms cannot open a folder, which is fine."""
    try:
        fd = os.open(target, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in blocks: what split.json and manifests record of the files
    they name (weights, teachers, exported graphs), so a changed file is caught."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
