"""Multi-task data: the built-in synthetic scenes and the preprocessed NYUv2 layout."""

from .datasets import MultiTaskDataset, build_datasets, make_loader

__all__ = ["MultiTaskDataset", "build_datasets", "make_loader"]
