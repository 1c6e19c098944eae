"""User-facing errors, and the warnings of the library.

A :class:`SplitcError` is a mistake in the user's input (unknown model, bad scope, corrupt file).
The CLI prints its message as one line and exits with code 2, without a traceback. Anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
import warnings
from collections.abc import Iterable, Iterator


class SplitcError(Exception):
    """A user error: one line that names the problem and the fix."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Candidates that look like ``word``, best first (for 'did you mean' hints)."""
    pool = list(candidates)
    hits = difflib.get_close_matches(word, pool, n=n, cutoff=0.5)
    if len(hits) < n:
        hits += [c for c in pool if word.lower() in c.lower() and c not in hits][: n - len(hits)]
    return hits


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    hits = close_matches(word, candidates)
    return f" Did you mean: {', '.join(hits)}?" if hits else ""


class UserCodeError(SplitcError):
    """The user's own code (a model factory, a forward pass) raised: one line naming it and the
    exception; ``--debug`` / ``SPLITC_DEBUG=1`` prints the traceback (kept as ``__cause__``)."""

    def __init__(self, what: str, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        super().__init__(f"{what} raised {detail} (rerun with --debug or SPLITC_DEBUG=1 for the traceback).")


class SplitcWarning(UserWarning):
    """A library warning (a barrier op, a run near chance, a split that saves nothing): one line
    that names what happened and what to do, issued through Python's ``warnings``."""


class SplitcNote(SplitcWarning):
    """A choice the library made that the user should know of (the input size it picked)."""


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show every warning as one line on stderr, ``note: ...`` or ``warning: ...``, printed above
    a progress bar and not once per process but each time (a library run keeps its own list
    without repeats): how the command line shows them."""
    from tqdm import tqdm

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001 - warnings' signature
        label = "note" if issubclass(category, SplitcNote) else "warning"
        tqdm.write(f"{label}: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SplitcWarning)
        warnings.showwarning = show
        yield
