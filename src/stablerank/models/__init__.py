"""Models of the paper's experiments: CIFAR classifiers and SN-GAN generators/discriminators.

Normalization is not built into any model: apply it with :func:`stablerank.normalize_model`.
"""

from stablerank.models.classifiers import CLASSIFIERS, build_classifier
from stablerank.models.gan import (
    ARCHS,
    LOSSES,
    build_discriminator,
    build_generator,
    compute_d_loss,
    compute_g_loss,
)

__all__ = [
    "ARCHS",
    "CLASSIFIERS",
    "LOSSES",
    "build_classifier",
    "build_discriminator",
    "build_generator",
    "compute_d_loss",
    "compute_g_loss",
]
