"""The paper's WRN-16-8 on CIFAR-100, with the fc, shallow, deep and hier presets (Table 1).

Shows: the paper's own setting. Meant for a GPU (``--device cuda``); on a CPU an epoch of
WRN-16-8 takes many minutes. CIFAR-100 is read from a local ``cifar-100-python`` folder in the
official pickle format (nothing is downloaded); its coarse labels are the superclasses, so the
learned groups' superclass ARI is reported.

    .venv/bin/python examples/wrn_cifar100.py --data /path/to/cifar-100-python --device cuda \
        [--presets fc,shallow,deep,hier] [--learn-epochs 100] [--finetune-epochs 50] [--out runs/wrn]

``--smoke`` runs the same four presets end to end at a tiny budget on the CPU (2 learn steps,
1 finetune step, batch 8), on the built-in ``synthetic:tiny`` images when ``--data`` is not
given: it checks the commands, not the accuracy. The test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def splitc(*args: str) -> dict:
    """Run one splitc command with --json and return its summary."""
    command = [sys.executable, "-m", "splitc.cli", *args, "--json"]
    print("$ splitc " + " ".join(args), flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"splitc {args[0]} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="path of the cifar-100-python folder")
    parser.add_argument("--smoke", action="store_true", help="tiny budget on the CPU (synthetic data without --data)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--presets", default="fc,shallow,deep,hier")
    parser.add_argument("--learn-epochs", type=int, default=100)
    parser.add_argument("--finetune-epochs", type=int, default=50)
    parser.add_argument("--out", default="runs/wrn")
    args = parser.parse_args()
    if args.data is None and not args.smoke:
        parser.error("--data PATH (the cifar-100-python folder) is required, or pass --smoke")
    data = f"cifar100:{args.data}" if args.data else "synthetic:tiny"
    device = "cpu" if args.smoke else args.device
    # smoke: 2 steps, assignments kept near their start (at the default rate Adam's first steps can
    # push every class to one group on tiny data, and an empty group cannot be split)
    learn_budget = ["--max-steps", "2", "--batch-size", "8", "--warmup", "fixed", "--warmup-epochs", "0",
                    "--assign-lr-mult", "0.02"] if args.smoke \
        else ["--epochs", str(args.learn_epochs)]
    tune_budget = ["--max-steps", "1", "--batch-size", "8"] if args.smoke else ["--epochs", str(args.finetune_epochs)]
    rows = []
    for preset in args.presets.split(","):
        out = Path(args.out) / preset
        # --force: each run of the script replaces its own earlier outputs
        learned = splitc("learn", "wrn16_8", "--data", data, "--preset", preset, *learn_budget,
                         "--device", device, "--out", str(out / "run"), "--force")
        smoke = ["--accept-unlearned"] if args.smoke else []  # 2 steps do not learn, by design
        split = splitc("split", str(out / "run"), "--out", str(out / "split"), "--force", *smoke)
        tuned = splitc("finetune", str(out / "split"), "--data", data, *tune_budget, "--device", device)
        rows.append((preset, split["params_reduced_pct"], split["flops_reduced_pct"], tuned["val_acc"],
                     learned["superclass_ari"]))
    print(f"\n{'preset':8s} {'params -%':>10s} {'FLOPs -%':>9s} {'val acc':>8s} {'superclass ARI':>15s}")
    for preset, p, f, acc, ari in rows:
        print(f"{preset:8s} {p:10.2f} {f:9.2f} {acc:8.4f} {ari if ari is None else round(ari, 3)!s:>15s}")


if __name__ == "__main__":
    main()
