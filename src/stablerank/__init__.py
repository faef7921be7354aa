"""stablerank: Stable Rank Normalization (Sanyal, Torr & Dokania, ICLR 2020) for PyTorch.

The public API is re-exported here; importing the package has no side effects.
"""

__version__ = "0.1.0"
