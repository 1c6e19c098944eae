"""Compiling a learned split: the split pipeline, split directory, split run, finetune."""
