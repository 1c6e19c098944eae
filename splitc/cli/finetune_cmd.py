"""``splitc finetune``: the command over :mod:`splitc.compile.finetune`."""

from __future__ import annotations

import json

import click

from splitc.cli.options import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, SHARE
from splitc.data.bundle import NORMALIZE_HELP
from splitc.data.loaders import FORMS


@click.command()
@click.argument("split_dir")
@click.option("--data", default="synthetic", show_default=True, help="The data the run learned on: " + FORMS)
@click.option("--epochs", type=AT_LEAST_ONE, default=None,
              help="Default 10, or 4 for a split cut from trained --weights (its teacher already trained).")
@click.option("--max-steps", type=AT_LEAST_ONE, default=None, help="Stop after this many steps in total.")
@click.option("--batch-size", type=AT_LEAST_ONE, default=None)
@click.option("--lr", type=POSITIVE, default=None, help="Peak (cosine); default 0.01.")
@click.option("--weight-decay", type=NON_NEGATIVE, default=None, help="Default 5e-4, as in the paper.")
@click.option("--schedule", type=click.Choice(["cosine", "step"]), default=None)
@click.option("--device", default=None, help="cpu or cuda.")
@click.option("--seed", type=int, default=None)
@click.option("--resume", is_flag=True, help="Continue a killed finetune from its last checkpoint.")
@click.option("--force", is_flag=True, help="Start over from the split's weights, replacing an earlier finetune of this split dir.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Model-parallel over N local workers: each holds the trunk and its own branches "
                   "(gloo on CPU, nccl on GPU; docs/DISTRIBUTED.md). Under torchrun the ranks are torchrun's.")
@click.option("--distill/--no-distill", default=None,
              help="Train against the dense model the split came from (its teacher.safetensors: the --weights "
                   "of learn, or the dense weights when its regularizers started): (1-a)·CE + a·T²·KL.")
@click.option("--distill-t", type=POSITIVE, default=None, help="Distillation temperature T (default 4).")
@click.option("--distill-alpha", type=SHARE, default=None, help="Weight a of the soft term (default 0.9).")
@click.option("--normalize", default=None, metavar="FORM",
              help="Input normalisation; default: the one the learn run used. " + NORMALIZE_HELP)
@click.option("--branch-lr-mult", type=POSITIVE, default=None, metavar="M",
              help="The branches train at M x --lr, the trunk and merge at --lr (default 1, or 4 for a split "
                   "cut from trained --weights: its trunk is the teacher's, its branches were just cut).")
@click.option("--eval-every", type=click.IntRange(min=0), default=None, metavar="N",
              help="Validate after every N epochs too (default 0: after the last epoch only).")
@click.option("--no-flip", is_flag=True, help="No horizontal flip augmentation.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
def finetune(split_dir: str, no_flip: bool, as_json: bool, **options) -> None:
    """Train a split model (its branches and trunk) after the split."""
    from dataclasses import asdict

    from splitc.compile.finetune import FinetuneConfig, finetune as run_finetune

    given = {k: v for k, v in options.items() if v is not None and v is not False}
    result = run_finetune(FinetuneConfig(split_dir=split_dir, flip=not no_flip, **given), progress=not as_json)
    lines = [json.dumps(asdict(result))] if as_json else [f"{k:10s} {v}" for k, v in asdict(result).items()]
    click.echo("\n".join(lines))
