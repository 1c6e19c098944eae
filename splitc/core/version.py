"""The version of splitc, in one place: the package (``splitc.__version__``), every file it
writes (split.json, manifests, checkpoints) and the wheel's metadata (pyproject.toml reads it)."""

__version__ = "0.1.0"
