"""The reproduction suite: ``stablerank reproduce`` (sweeps, executors, claims, report).

* :mod:`stablerank.repro.sweeps`: sweeps as Python functions returning trainer configs;
* :mod:`stablerank.repro.execute`: one run (train, analyse; cached, resumed, locked);
* :mod:`stablerank.repro.executors`: sequential, local process pool, submitit (local, SLURM);
* :mod:`stablerank.repro.records`: the typed results of a sweep read back from disk;
* :mod:`stablerank.repro.claims`: the paper's claims, sub-claims and their tests over seeds;
* :mod:`stablerank.repro.report`: ``report.md``, ``claims.json`` and figures;
* :mod:`stablerank.repro.pipeline`: the command, end to end.

Nothing is imported here: ``import stablerank.repro`` stays free of torch and scipy.
"""
