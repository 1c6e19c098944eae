"""Where does a plain network carry its superclasses? The signal SplitNet's class groups can follow.

    .venv/bin/python benchmarks/grouping_signal.py [--model resnet20] [--data synthetic]
        [--epochs 10] [--split-from layer3] [--groups 4] [--json]

It trains the network plainly and, after each epoch, clusters the classes into balanced groups
(the same balanced spectral clustering as ``feature_ari``) by four views of them, and prints each
clustering's ARI against the data's superclasses:

- ``split input``: class-mean features entering the split (learn's ``feature_ari`` view, though
  probed here on augmented training images, where learn uses un-augmented ones when it has them);
- ``classifier input``: class-mean features entering the classifier (the top stage's output);
- ``classifier |W|^2``: each class's squared classifier weights, the only view of a class that
  R_W has (learn's ``classifier_energy_ari``), so the only signal that moves a class between
  groups under the paper's objective;
- ``classifier W``: the signed classifier weights, which R_W cannot see.

Why (docs/METHOD.md §8, issue 3): the learned class groups can only be as semantic as what the
regularizers see. Where ``split input`` is high and ``classifier |W|^2`` low, the data has the
superclasses but the paper's objective has no gradient towards them. Every number is measured
in this run.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from end_to_end import fit_plain, training_parser
from splitc.graph.analysis import analyse
from splitc.learn.cluster import balanced_spectral_clustering
from splitc.data.batches import accuracy
from splitc.data.loaders import load_data
from splitc.learn.groups import (classifier_energy, classifier_layer, layer_input_class_means,
                                 split_input_class_means, superclass_ari)
from splitc.graph.scope import make_spec
from splitc.core.tables import table

VIEWS = ("split input", "classifier input", "classifier |W|^2", "classifier W")


def class_views(analysis, bundle) -> dict[str, np.ndarray]:
    """One row per class for each view, from the model as it is now."""
    gm, ir, device = analysis.gm, analysis.ir, torch.device("cpu")
    layer = classifier_layer(ir)
    return {
        "split input": split_input_class_means(gm, ir, analysis.scope, bundle.train, bundle.num_classes, device),
        "classifier input": layer_input_class_means(gm, layer, bundle.train, bundle.num_classes, device),
        "classifier |W|^2": classifier_energy(gm, ir),
        "classifier W": gm.get_submodule(layer.name).weight.detach().float().cpu().numpy(),
    }


def main() -> None:
    parser = training_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    bundle = load_data(args.data, seed=args.seed)
    if bundle.superclass_of is None:
        raise SystemExit(f"--data {args.data} has no superclasses; use synthetic, cifar100:PATH or an "
                         "imagefolder with hierarchy.json.")
    analysis = analyse(args.model, make_spec(str(args.groups), args.split_from), bundle.num_classes,
                       bundle.input_size)
    rows: list[dict] = []

    def probe(epoch: int) -> None:
        views = class_views(analysis, bundle)
        aris = {name: superclass_ari(bundle.superclass_of,
                                     balanced_spectral_clustering(views[name], args.groups, seed=args.seed))
                for name in VIEWS}
        rows.append({"epoch": epoch, "val_acc": accuracy(analysis.gm, bundle.val, torch.device("cpu")), **aris})

    started = time.perf_counter()
    fit_plain(analysis.gm, bundle, args.epochs, args.batch_size, args.lr, args.seed, on_epoch=probe)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "groups": args.groups, "rows": rows}))
        return
    print(f"\n{args.model} on {args.data}, trained plainly for {args.epochs} epochs "
          f"({time.perf_counter() - started:.0f} s); ARI of a balanced {args.groups}-way clustering "
          "of the classes against the superclasses, by view:")
    print(table(["epoch", "val acc", *VIEWS],
                [[r["epoch"], f"{r['val_acc']:.4f}", *(f"{r[v]:.3f}" for v in VIEWS)] for r in rows]))


if __name__ == "__main__":
    main()
