"""How a message names an option: ``--gamma-w`` to a command-line user, ``gamma_w=`` to a
Python caller. The checks shared by ``splitc learn`` and ``splitc.SplitNet`` take one of the
two, so that an error names what the reader typed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Naming:
    cli: bool

    def __call__(self, field: str) -> str:
        """The option ``field`` (a Python name) as written: ``--split-from`` or ``split_from=``."""
        return "--" + field.replace("_", "-") if self.cli else f"{field}="

    def switch(self, field: str, on: bool = True) -> str:
        """A boolean option set: ``--force`` / ``force=True``, ``--no-commit`` / ``commit=False``."""
        if self.cli:
            return "--" + ("" if on else "no-") + field.replace("_", "-")
        return f"{field}={on}"


FLAG = Naming(cli=True)
ARG = Naming(cli=False)
