"""Did the run learn? One rule for ``learn``'s warning, its ``"learned"`` flag and ``split``'s check.

A run whose network stayed near chance writes a checkpoint that looks like any other; splitting
it would compile groups learned from noise. The rule: validation accuracy must clear chance
(1 / classes) by a margin that is both meaningful and statistically clear on the validation set:

    threshold = max(chance + 4 * sqrt(chance * (1 - chance) / n_val),     # 4 sigma above a coin
                    min(1.5 * chance, chance + (1 - chance) / 4))          # and 1.5x chance (2 classes: 0.625)

(10 classes, 2000 images: 0.15; 100 classes, 10000 images: 0.015; 12 classes, 600 images: 0.125.)
"""

from __future__ import annotations

import math

LEARNED_FLAG = "learned"


def chance_level(num_classes: int) -> float:
    return 1.0 / max(1, num_classes)


def learned_threshold(num_classes: int, n_val: int) -> float:
    """The accuracy a run must reach to count as having learned (see the module docstring)."""
    p = chance_level(num_classes)
    noise = 4.0 * math.sqrt(p * (1 - p) / max(1, n_val))
    return max(p + noise, min(1.5 * p, p + (1 - p) / 4))


def near_chance(accuracy: float, num_classes: int, n_val: int) -> bool:
    return accuracy < learned_threshold(num_classes, n_val)


def chance_warning(accuracy: float, num_classes: int, n_val: int, when: str, cli: bool = True) -> str:
    """The one warning line, with the fix (``cli``: in the command line's words, else in a
    training loop's: ``splitc.SplitNet``)."""
    fix = ("Train longer (--epochs / --max-steps), check the data and --input-size, or lower --lr." if cli else
           "Train longer (and give SplitNet those steps=), check the data and example_inputs, or lower the "
           "learning rate.")
    return (f"validation accuracy {accuracy:.3f} {when} is near chance ({chance_level(num_classes):.3f} for "
            f"{num_classes} classes; needs >= {learned_threshold(num_classes, n_val):.3f}): the network has not "
            f"learned, so its groups are noise. {fix}")
