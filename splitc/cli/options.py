"""Validated option types shared by every command: a bad value is one line and exit 2 at the edge.

click's own ``FloatRange`` lets ``nan`` through (every comparison with nan is false), and a
learning rate of nan or an epoch count of -1 used to reach the training loop (a traceback, or a
run of 0 steps that wrote a checkpoint). These types refuse them before anything is loaded.
"""

from __future__ import annotations

import math

import click


class FiniteFloat(click.ParamType):
    """A finite float within bounds; ``open_low``/``open_high`` exclude the bound itself."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None,
                 open_low: bool = False, open_high: bool = False) -> None:
        self.low, self.high, self.open_low, self.open_high = low, high, open_low, open_high

    def describe(self) -> str:
        left = "" if self.low is None else f"{self.low} {'<' if self.open_low else '<='} "
        right = "" if self.high is None else f" {'<' if self.open_high else '<='} {self.high}"
        return f"{left}x{right}"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float) and math.isfinite(value) and self._inside(value):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        if not self._inside(number):
            self.fail(f"{value!r} is outside {self.describe()}.", param, ctx)
        return number

    def _inside(self, x: float) -> bool:
        if self.low is not None and (x < self.low or (self.open_low and x == self.low)):
            return False
        return not (self.high is not None and (x > self.high or (self.open_high and x == self.high)))


POSITIVE = FiniteFloat(0.0, open_low=True)                   # learning rates
NON_NEGATIVE = FiniteFloat(0.0)                              # gammas (0 switches a term off), decay, epochs of a phase
FRACTION = FiniteFloat(0.0, 1.0, open_low=True, open_high=True)   # thresholds in (0, 1)
SHARE = FiniteFloat(0.0, 1.0, open_low=True)                 # a share of a phase, (0, 1]
AT_LEAST_ONE = click.IntRange(min=1)                         # epochs, steps, batch sizes, replicas
