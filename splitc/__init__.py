"""splitc: learn to split CNNs into disjoint branches (SplitNet) and compile the split."""

__version__ = "0.1.0"
