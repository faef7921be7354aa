"""Datasets, label corruption and the device-resident loader of the classification experiments.

Imports nothing else from the package (import rules in STYLE.md).
"""

from stablerank.data.datasets import (
    DATASETS,
    CorruptDatasetError,
    DatasetNotFoundError,
    DatasetShape,
    DatasetSplits,
    dataset_shape,
    load_dataset,
)
from stablerank.data.labels import corrupt_labels, subset_indices, train_subset
from stablerank.data.loader import AUGMENTS, DeviceLoader

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "DatasetShape",
    "DatasetSplits",
    "DeviceLoader",
    "corrupt_labels",
    "dataset_shape",
    "load_dataset",
    "subset_indices",
    "train_subset",
]
