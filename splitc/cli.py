"""The ``splitc`` command line. User errors print one line and exit 2; bugs keep tracebacks."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import click

from . import __version__
from .errors import SplitcError


class SplitcGroup(click.Group):
    """Turns a SplitcError (or a data error) into ``error: ...`` and exit code 2."""

    def invoke(self, ctx: click.Context):
        from .data import DataError

        try:
            return super().invoke(ctx)
        except (SplitcError, DataError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=SplitcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="splitc")
def main() -> None:
    """splitc: learn to split a CNN into disjoint branches (SplitNet) and compile the split.

    \b
    Pipeline:  inspect -> learn -> split -> export -> run / bench
    MODEL is a built-in (wrn16_8, resnet20, ...), a torchvision classification model name
    (resnet18, ...), or a factory written package.module:callable.
    """


def scope_options(fn: Callable) -> Callable:
    """--groups and the three mutually exclusive ways to choose a scope."""
    options = [
        click.option("--groups", "groups", default=None, metavar="G[,G2]",
                     help="Groups per level; '2,4' is a hierarchical split (default 2)."),
        click.option("--split-from", default=None, metavar="NAME[,NAME2]",
                     help="Split everything from this module on (e.g. layer4); its input is shared."),
        click.option("--split-depth", default=None, metavar="D[,D2]",
                     help="Make the top D weight layers block-diagonal (default 1)."),
        click.option("--preset", default=None, help="A named scope of a built-in (wrn16_8: fc, shallow, deep, hier)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def model_options(fn: Callable) -> Callable:
    fn = click.option("--input-size", default=None, metavar="C,H,W",
                      help="Sample input size (default: the model's native size).")(fn)
    fn = click.option("--num-classes", type=int, default=None, help="Number of classes.")(fn)
    return fn


@main.command()
@click.argument("model")
@model_options
@scope_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(model: str, num_classes, input_size, groups, split_from, split_depth, preset, as_json) -> None:
    """Show the channel spaces, ties, layer kinds and the cost of a split of MODEL."""
    from .analysis import analyse, report_dict
    from .frontend import parse_input_size
    from .scope import make_spec
    from . import zoo

    zoo.resolve(model)  # fail fast on a bad name, before the scope options
    spec = make_spec(groups, split_from, split_depth, preset, model=model)
    size = parse_input_size(input_size) if input_size else None
    report = report_dict(analyse(model, spec, num_classes, size))
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(report))
        return
    from .inspect_view import render

    click.echo(render(report))


@main.command()
@click.option("--out", default="splitc-demo", show_default=True, help="Output folder.")
@click.option("--fast", is_flag=True, help="Smaller data and fewer steps (about 2 minutes).")
def demo(out: str, fast: bool) -> None:
    """Run the pipeline on built-in models and data (for now: the inspect stage)."""
    from .demo import run_demo

    run_demo(out, fast)


if __name__ == "__main__":  # pragma: no cover
    main()
