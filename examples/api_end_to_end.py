"""The Python API end to end, in one short script.

Shows: learn -> split -> finetune -> export -> run the ONNX pipeline -> verify, without the
command line, on resnet20 and the built-in synthetic data (fast variant, a minute or two on a CPU).

    .venv/bin/python examples/api_end_to_end.py [--out runs/api] [--smoke]

``--smoke`` runs every stage at a few steps on ``synthetic:tiny`` (the test suite runs it).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from splitc.deploy import runtime
from splitc.deploy.export import export_split, verify_artifact
from splitc.compile.finetune import FinetuneConfig, finetune
from splitc.learn.loop import LearnConfig, learn
from splitc.compile.split_dir import load_split
from splitc.compile.split_run import run_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/api")
    parser.add_argument("--smoke", action="store_true", help="a few steps on synthetic:tiny")
    args = parser.parse_args()
    data = "synthetic:tiny" if args.smoke else "synthetic:fast"
    budget = {"max_steps": 2, "batch_size": 8} if args.smoke else {}
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    # 1. learn group assignments with the SplitNet regularizers
    learned = learn(LearnConfig(model="resnet20", data=data, groups="2", split_from="layer3",
                                epochs=2, warmup_epochs=1, out=str(out / "run"), **budget))
    print(f"learned: val_acc={learned.val_acc:.3f} group sizes={learned.group_sizes}")

    # 2. split into trunk, two branches and a merge; 3. finetune the split model
    summary = run_split(out / "run", out / "split", accept_unlearned=args.smoke)  # smoke: 2 steps do not learn
    print(f"split: params -{summary['params_reduced_pct']:.1f}%, FLOPs -{summary['flops_reduced_pct']:.1f}%, "
          f"split vs masked rel err {summary['max_rel_err']:.1e}")
    tuned = finetune(FinetuneConfig(split_dir=str(out / "split"), data=data, epochs=1, **budget))
    print(f"finetuned: val_acc={tuned.val_acc:.3f}")

    # 4. export every subgraph to ONNX, 5. run the pipeline, 6. check it against PyTorch
    manifest, _ = export_split(out / "split", out / "onnx", devices="cpu")
    print("exported:", ", ".join(f"{s.name}@{s.device}" for s in manifest.subgraphs))
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with runtime.load(out / "onnx") as pipeline:
        logits = pipeline(x)
    with torch.no_grad():
        reference = load_split(out / "split").model(torch.from_numpy(x)).numpy()
    print(f"ONNX vs PyTorch on one batch: max abs diff {np.abs(logits - reference).max():.2e}")
    print("verify:", verify_artifact(out / "onnx"))


if __name__ == "__main__":
    main()
