"""Trainers (``classify``, ``gan``), the analysis of a trained run (``analyze``) and what they
share: checkpoints, run records and the runtime (devices, seeds, DDP).

Import the submodules directly (``from stablerank.train.classify import run``); this package
re-exports nothing so that importing one trainer never imports the others.
"""
