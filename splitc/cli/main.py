"""The ``splitc`` command line. User errors print one line and exit 2; bugs keep tracebacks."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable

import click

from splitc.cli.options import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, SHARE
from splitc.core.errors import SplitcError, one_line_warnings
from splitc.core.files import MANIFEST_JSON
from splitc.core.version import __version__
from splitc.data.bundle import NORMALIZE_HELP
from splitc.data.loaders import FORMS
from splitc.graph.scope import DEFAULT_GROUPS
from splitc.learn.assign import ASSIGNMENT_KINDS
from splitc.learn.config import ASSIGN_OPTIMIZERS, COMMIT_GROUPS, INIT_GROUPS, TRAINED_DEFAULTS

WEIGHTS_HELP = ("Trained weights to start from: a .pt/.pth/.safetensors state_dict (or a checkpoint holding "
                "it under 'state_dict' or 'model'), torchvision:DEFAULT (or another weights enum) for a "
                "torchvision model, or timm for a timm: model; the last two only from the local caches "
                "($TORCH_HOME/hub/checkpoints, the Hugging Face cache): nothing is downloaded. A classifier "
                "with another class count is re-initialised.")


class SplitcGroup(click.Group):
    """User errors, option errors included, become one ``error: ...`` line and exit code 2.

    ``--debug`` (or ``SPLITC_DEBUG=1``) prints the traceback of the error and its cause as well,
    for when the user's own model code failed (:class:`~splitc.core.errors.UserCodeError`)."""

    def invoke(self, ctx: click.Context):
        try:
            with one_line_warnings():   # the library's warnings, one line each
                return super().invoke(ctx)
        except (SplitcError, click.UsageError) as exc:
            if debugging(ctx):
                traceback.print_exception(exc)
            usage = isinstance(exc, click.UsageError)
            message = exc.format_message() if usage else str(exc)
            where = f" (see 'splitc {ctx.invoked_subcommand} -h')" if usage and ctx.invoked_subcommand else ""
            click.echo(f"error: {message}{where}", err=True)
            sys.exit(2)


def debugging(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("SPLITC_DEBUG", "") not in ("", "0")


@click.group(cls=SplitcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="splitc")
@click.option("--debug", is_flag=True, help="Print full tracebacks of errors (also SPLITC_DEBUG=1).")
def main(debug: bool) -> None:
    """splitc: learn to split a CNN into disjoint branches (SplitNet) and compile the split.

    \b
    Pipeline:  inspect -> learn -> split -> export -> run / bench
    MODEL is a built-in (wrn16_8, resnet20, ...), a torchvision classification model name
    (resnet18, ...), or a factory written package.module:callable.
    """


def force_option(fn: Callable) -> Callable:
    return click.option("--force", is_flag=True,
                        help="Replace an existing output as a whole (no file of it survives).")(fn)


def scope_options(fn: Callable) -> Callable:
    """--groups and the three mutually exclusive ways to choose a scope."""
    options = [
        click.option("--groups", "groups", default=None, metavar="G[,G2]",
                     help=f"Groups per level; '2,4' is a hierarchical split (default {DEFAULT_GROUPS})."),
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
    fn = click.option("--weights", default=None, metavar="SRC", help=WEIGHTS_HELP)(fn)
    fn = click.option("--input-size", default=None, metavar="C,H,W",
                      help="Sample input size (default: the model's native size).")(fn)
    fn = click.option("--num-classes", type=click.IntRange(min=2), default=None, help="Number of classes.")(fn)
    return fn


@main.command()
@click.argument("model")
@model_options
@scope_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(model: str, num_classes, input_size, weights, groups, split_from, split_depth, preset, as_json) -> None:
    """Show the channel spaces, ties, layer kinds and the cost of a split of MODEL."""
    from splitc.graph.analysis import analyse, report_dict
    from splitc.graph.frontend import parse_input_size
    from splitc.graph.scope import make_spec
    from splitc.graph import zoo

    zoo.resolve(model)  # fail fast on a bad name, before the scope options
    spec = make_spec(groups, split_from, split_depth, preset, model=model)
    size = parse_input_size(input_size) if input_size else None
    built = None
    if weights is not None:
        from splitc.graph.analysis import default_num_classes
        from splitc.graph.weights import load_weights

        built = zoo.build(model, num_classes or default_num_classes(model))
        for note in load_weights(built, weights, model).notes:
            click.echo(f"note: {note}", err=True)
    report = report_dict(analyse(model, spec, num_classes, size, model=built))
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(report))
        return
    from splitc.cli.inspect_view import render

    click.echo(render(report))


@main.command()
@click.argument("model")
@click.option("--data", default="synthetic", show_default=True, help=FORMS.replace(", ", " | "))
@click.option("--input-size", default=None, metavar="C,H,W", help="Model input size (default: the data's).")
@click.option("--weights", default=None, metavar="SRC",
              help=WEIGHTS_HELP + " From trained weights (above chance on the validation split) the run has no "
                   "plain warm-up and, by default, no epochs: the classes are grouped by the trained features, the "
                   "channels placed around them and cut at once (a one-shot split; then split and finetune). "
                   "--epochs N first lets R_W clear the cut for N epochs. Its defaults are then " +
                   ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in TRAINED_DEFAULTS.items()) + ".")
@click.option("--normalize", default=None, metavar="FORM", help=NORMALIZE_HELP)
@scope_options
@click.option("--assign", type=click.Choice(list(ASSIGNMENT_KINDS)), default="softmax",
              show_default=True, help="Assignment parameterisation (random = SplitNet-Random).")
@click.option("--refit/--no-refit", default=None, help="Refit the weights the cut keeps so that the split reproduces "
              "the dense network layer by layer on 512 training images (default: on from trained --weights).")
@click.option("--transplant", is_flag=True, help="With the refit: each group starts from its classes' most important channels.")
@click.option("--init-groups", type=click.Choice(list(INIT_GROUPS)), default=None,
              help="How the groups are found. cluster-cut (the default for one-level splits): the class "
                   "map is a balanced spectral clustering of the warmed-up class-mean features and "
                   "every channel goes to the group its trained weights serve most, all fixed at the "
                   "end of the warm-up. learned (the paper's, and the default for hierarchies, "
                   "--no-commit and --assign random): every map trained by the regularizers from a "
                   "uniform start. cluster: the learned map started from that clustering. classifier-cut: "
                   "as cluster-cut, the class map clustered from the classifier's weight rows (the authors' "
                   "practice from a trained network).")
@click.option("--gamma-w", type=NON_NEGATIVE, default=None, help="Weight of R_W (0 turns it off; default 1, "
              "10 from trained weights, whose lr is 10x lower).")
@click.option("--gamma-d", type=NON_NEGATIVE, default=1.0, show_default=True, help="Weight of R_D at its start.")
@click.option("--gamma-e", type=NON_NEGATIVE, default=10.0, show_default=True, help="Weight of R_E.")
@click.option("--gamma-d-end", type=NON_NEGATIVE, default=None,
              help="γ_D rises linearly from --gamma-d to this by the last step (default 10; "
                   "equal to --gamma-d keeps it constant).")
@click.option("--gamma-d-rise", type=SHARE, default=None,
              help="Fraction of the regularized steps over which γ_D rises, then holds (default 1.0; "
                   "0.5 left the split far more accurate before finetuning in a short run).")
@click.option("--assign-optimizer", type=click.Choice(list(ASSIGN_OPTIMIZERS)), default=None,
              help="Optimizer of softmax assignment logits (default adam).")
@click.option("--assign-lr-mult", type=POSITIVE, default=None, help="LR multiplier for assignments.")
@click.option("--warmup-epochs", type=NON_NEGATIVE, default=None,
              help="Plain epochs before the regularizers start (default 3; with --warmup adaptive, the least).")
@click.option("--warmup", type=click.Choice(["adaptive", "fixed"]), default=None,
              help="adaptive (default): the warm-up lasts until the network has trained (at least "
                   "--warmup-epochs and 400 steps, at most half the run); fixed: exactly --warmup-epochs.")
@click.option("--no-commit", "commit", flag_value=False, default=None,
              help="Keep training the assignments to the end (the paper); by default the groups are "
                   "fixed once decided, so that R_W clears exactly the weights the split cuts.")
@click.option("--commit-groups", type=click.Choice(list(COMMIT_GROUPS)), default=None,
              help="Groups the commit fixes: balanced (default; equal groups nearest to the learned "
                   "probabilities, equal branches) or argmax (each node's most likely group, the paper's harden).")
@click.option("--soft-epochs", type=NON_NEGATIVE, default=None,
              help="Epochs after the warm-up over which R_D ramps in (the soft phase).")
@click.option("--lr-warmup-epochs", type=NON_NEGATIVE, default=None, help="Linear learning-rate warm-up (default 0.5 epochs, at least 150 steps, at most a "
                   "quarter of the run; 0 turns it off).")
@click.option("--epochs", type=click.IntRange(min=0), default=None,
              help="Default: 10, and at least 1500 steps on a small data set; from trained --weights "
                   f"{TRAINED_DEFAULTS['epochs']}: a one-shot split, the groups read off the network and cut "
                   "at once, nothing cleared (trained --weights only); finetune does the rest.")
@click.option("--max-steps", type=AT_LEAST_ONE, default=None, help="Stop after this many steps in total.")
@click.option("--batch-size", type=AT_LEAST_ONE, default=None)
@click.option("--lr", type=POSITIVE, default=None)
@click.option("--weight-decay", type=NON_NEGATIVE, default=None, help="Default 1e-4, as in the paper.")
@click.option("--schedule", type=click.Choice(["cosine", "step"]), default=None)
@click.option("--device", default=None, help="cpu or cuda.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Data-parallel ranks on this host (gloo on CPU, nccl on GPUs; or start it under torchrun). "
                   "Each step reads a global batch of N x --batch-size, each rank trains on its share and the "
                   "gradients are averaged: scale --lr yourself (N times for the linear rule).")
@click.option("--seed", type=int, default=None)
@click.option("--out", default=None, help="Run directory (default runs/learn).")
@click.option("--resume", is_flag=True, help="Continue a killed run from its last checkpoint.")
@force_option
@click.option("--overlap", type=FRACTION, default=None, help="Fuzzy-node threshold in (0, 1), e.g. 0.1.")
@click.option("--no-flip", is_flag=True, help="No horizontal flip augmentation.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
def learn(model: str, input_size, no_flip: bool, as_json: bool, **options) -> None:
    """Train MODEL with group assignments and the SplitNet regularizers."""
    from splitc.graph.frontend import parse_input_size
    from splitc.learn.config import LearnConfig
    from splitc.learn.dist import learn_entry as run_learn

    given = {k: v for k, v in options.items() if v is not None and v is not False}
    if options.get("resume"):
        given["resume"] = True
    if options.get("commit") is False:  # --no-commit
        given["commit"] = False
    if options.get("refit") is False:   # --no-refit
        given["refit"] = False
    if input_size:
        given["input_size"] = parse_input_size(input_size)
    config = LearnConfig(model=model, flip=not no_flip, **given)
    result = run_learn(config, progress=not as_json)
    summary = {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint),
               "train_acc": result.train_acc, "val_acc": result.val_acc,
               "group_sizes": result.group_sizes, "init_groups": result.init_groups,
               "superclass_ari": result.superclass_ari,
               "feature_ari": result.feature_ari, "classifier_energy_ari": result.classifier_energy_ari,
               "cut_energy": result.cut_energy, "masked_val_acc": result.masked_val_acc, "steps": result.steps,
               "learned": result.learned, "start_val_acc": result.start_val_acc,
               "oneshot_val_acc": result.oneshot_val_acc, "refit_val_acc": result.refit_val_acc,
               "teacher": result.teacher, "warnings": list(result.warnings)}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for key, value in summary.items():
            if key != "warnings":
                click.echo(f"{key:21s} {value}")
        for warning in result.warnings:  # again after the table, where a user looks last
            click.echo(f"warning: {warning}", err=True)


@main.command()
@click.option("--out", default="splitc-demo", show_default=True, help="Output folder.")
@click.option("--fast", is_flag=True, help="Tiny data and a few steps (about 2 minutes).")
@click.option("--data", default="synthetic", show_default=True, metavar="synthetic|fashion-mnist[:DIR]",
              help="synthetic: learn from scratch on built-in images. fashion-mnist: real photos of garments "
                   "(the idx files in DIR, or Debian's dataset-fashion-mnist): a short teacher first, then "
                   "the split from its trained weights.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object at the end.")
def demo(out: str, fast: bool, data: str, as_json: bool) -> None:
    """Run the whole pipeline on resnet20: inspect, learn, split, finetune, export, run, verify,
    bench, report (with --data fashion-mnist: train a teacher, then split it)."""
    from splitc.cli.demo import render_summary, run_demo

    summary = run_demo(out, fast, progress=not as_json, data=data)
    click.echo(json.dumps(summary) if as_json else render_summary(summary))


@main.command()
@click.argument("run_dir")
@click.option("--out", required=True, help="Split directory to write.")
@click.option("--overlap", type=FRACTION, default=None, help="Duplicate fuzzy nodes above this threshold, in (0, 1).")
@force_option
@click.option("--accept-unlearned", is_flag=True, help="Split a run whose accuracy stayed near chance.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def split(run_dir: str, out: str, overlap, force: bool, accept_unlearned: bool, as_json: bool) -> None:
    """Compile a learn run into a split model (trunk, branches, merge) and check it."""
    from splitc.compile.split_run import run_split
    from splitc.core.tables import table

    summary = run_split(run_dir, out, overlap, force=force, accept_unlearned=accept_unlearned)
    for warning in summary["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        keys = ("split_dir", "params", "flops", "params_reduced_pct", "flops_reduced_pct", "groups",
                "group_sizes", "max_rel_err", "warnings", "pass_seconds")
        click.echo(json.dumps({k: summary[k] for k in keys}))
        return
    base, est = summary["baseline"], summary["balanced_estimate"]
    click.echo(table(["", "params", "FLOPs", "params reduced", "FLOPs reduced"], [
        ["baseline", f"{base['params']:,}", f"{base['flops']:,}", "", ""],
        ["balanced estimate", f"{est['params']:,}", f"{est['flops']:,}",
         f"{est['params_reduced_pct']:.2f}%", f"{est['flops_reduced_pct']:.2f}%"],
        ["this split", f"{summary['params']:,}", f"{summary['flops']:,}",
         f"{summary['params_reduced_pct']:.2f}%", f"{summary['flops_reduced_pct']:.2f}%"],
    ]))
    click.echo(table(["subgraph", "params", "FLOPs"], [[name, f"{c['params']:,}", f"{c['flops']:,}"]
                                                      for name, c in summary["subgraphs"].items()]))
    click.echo(table(["space", "group sizes"], [[k, " ".join(map(str, v))] for k, v in summary["group_sizes"].items()]))
    click.echo(f"split vs masked: max relative error {summary['max_rel_err']:.2e}")
    click.echo(f"written to {summary['split_dir']}")


@main.command()
@click.argument("split_dir")
@click.option("--split-dir", "source", default=None,
              help="For an artifact directory: the split directory it was exported from (default: the "
                   "one its manifest names).")
@click.option("--devices", default=None, help="For an artifact directory: check this placement "
                                              "(default: the manifest's, plus per-subgraph sessions).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def verify(split_dir: str, source, devices, as_json: bool) -> None:
    """Re-check a split directory (the split model against the masked model) or an artifact
    directory from `splitc export` (the ONNX pipeline against the PyTorch split model)."""
    from pathlib import Path

    if (Path(split_dir) / MANIFEST_JSON).is_file():
        from splitc.deploy.export import verify_artifact

        result = verify_artifact(split_dir, source, devices)
    else:
        if source or devices:
            raise SplitcError("--split-dir and --devices apply to an artifact directory (with "
                              "manifest.json); a split directory is verified without them.")
        from splitc.compile.verify import verify_split

        result = verify_split(split_dir)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for check in result.get("checks", [result]):
            if check["max_rel_err"] is None:   # a split finetuned before it was written, not checkable here
                click.echo(check["checked"])
                continue
            status = "ok" if check["max_rel_err"] <= result["tolerance"] else "FAILED"
            click.echo(f"{status}: {check['checked']}: max relative error {check['max_rel_err']:.2e} "
                       f"(tolerance {result['tolerance']:.0e})")
    if not result["ok"]:
        sys.exit(1)


from splitc.cli.deploy import register  # noqa: E402  (export, run, bench)
register(main)
from splitc.cli.serve import register as register_serve; register_serve(main)  # noqa: E402,E702  (serve, triton)
from splitc.cli.finetune_cmd import finetune; main.add_command(finetune)  # noqa: E402,E702

@main.command()
@click.argument("path", metavar="RUN_DIR|SPLIT_DIR|ART_DIR")
@click.option("--out", default="report.html", show_default=True, help="HTML file to write.")
@click.option("--layer", default=None, help="Weight layer of the block-structure figure "
                                            "(default: the largest block-diagonal layer).")
@click.option("--separate-images", is_flag=True,
              help="Write the PNGs into OUT_files/ beside the page instead of embedding them.")
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def report(path: str, out: str, layer, separate_images: bool, force: bool, as_json: bool) -> None:
    """Write an HTML report of a learn run, a split or an export: the class-to-group map, the
    block structure of a layer's weights, group sizes, per-subgraph costs and training curves."""
    from splitc.report.run_report import write_report

    result = write_report(path, out, layer=layer, separate_images=separate_images, progress=not as_json,
                          force=force)
    if as_json:
        click.echo(json.dumps({k: result[k] for k in ("report", "kind", "figures", "notes")}))
        return
    for note in result["notes"]:
        click.echo(f"note: not shown: {note}", err=True)
    click.echo(f"report ({len(result['figures'])} figures) written to {result['report']}")


if __name__ == "__main__":  # pragma: no cover
    main()
