"""Check a frozen options dataclass against its own annotations: every field's value has the type
it declares (``int``, ``float``, ``bool``, ``str``, ``Path``, ``Literal[...]``, ``tuple[int, ...]``,
``X | None``), or one line names the option as the reader wrote it (:mod:`splitc.core.naming`)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

from splitc.core.errors import SplitcError
from splitc.core.naming import Naming


def check_fields(options: Any, names: Naming) -> None:
    """Raise a SplitcError for the first field whose value does not fit its annotation."""
    hints = _hints(type(options))
    for field in dataclasses.fields(options):
        value, hint = getattr(options, field.name), hints[field.name]
        if not fits(value, hint):
            raise SplitcError(f"{names(field.name)} must be {describe(hint)}, got {value!r}.")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return len(value) > 0 and all(fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is Path:
        return isinstance(value, Path)
    return isinstance(value, hint) if isinstance(hint, type) else True


def describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return (f"a tuple of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
                if len(args) == 2 and args[1] is Ellipsis else f"a tuple of {len(args)}")
    return {type(None): "None", bool: "True or False", int: "an int", float: "a finite number", str: "a str",
            Path: "a path"}.get(hint, getattr(hint, "__name__", str(hint)))
