"""The file names of splitc's directories, spelled once.

A learn run directory, a split directory and an export artifact directory each hold a fixed
set of files; every stage that reads or writes one of them takes its name from here.
"""

from __future__ import annotations

# learn run directory (splitc learn --out)
LEARN_CHECKPOINT = "checkpoint.pt"
LEARN_METRICS = "metrics.jsonl"
ASSIGNMENT_JSON = "assignment.json"
TEACHER = "teacher.safetensors"   # the dense weights a split came from (learn writes it, split copies it)
# split directory (splitc split --out; finetune writes into it)
SPLIT_JSON = "split.json"
SPLIT_ARTIFACT = "split.splitc"   # the compiled split as exported programs (compile/artifact.py)
UNSPLIT_WEIGHTS = "unsplit.safetensors"
SPLIT_WEIGHTS = "split.safetensors"
FINETUNED_WEIGHTS = "finetuned.safetensors"
FINETUNE_CHECKPOINT = "finetune.pt"
FINETUNE_METRICS = "finetune_metrics.jsonl"
# export artifact directory (splitc export --out)
MANIFEST_JSON = "manifest.json"
