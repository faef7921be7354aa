"""Datasets, label corruption and the device-resident loader of the classification experiments.

Imports nothing else from the package (import rules in STYLE.md).
"""

from stablerank.data.datasets import (
    DATASETS,
    CorruptDatasetError,
    DatasetNotFoundError,
    DatasetSplits,
    load_dataset,
)
from stablerank.data.labels import corrupt_labels, subset_indices, train_subset
from stablerank.data.loader import AUGMENTS, DeviceLoader

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "DatasetSplits",
    "DeviceLoader",
    "corrupt_labels",
    "load_dataset",
    "subset_indices",
    "train_subset",
]
