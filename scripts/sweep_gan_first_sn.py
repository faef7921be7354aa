"""A sweep of our own (``reproduce --sweep scripts/sweep_gan_first_sn.py:gan_first_sn``): does
SRN-GAN's worse FID and smoother D at c = 0.1 (docs/results/gan-c/) come from D's first layer,
whose target stable rank there is 1 (a 16 x 9 matrix: r = max(1, 0.1 x 9)), or from the cap on
the other layers? Two settings of ``quick``'s 300-step GAN run, seeds 0 .. gan_seeds - 1 of SN
and SRN at c = 0.1 each:

* ``fashion-mnist/gan-cnn16``: ``quick``'s runs themselves (the same folders as
  docs/results/gan-c/'s SN and c = 0.1);
* ``fashion-mnist/gan-cnn16-first-sn``: the same with ``d_first_norm="sn"``, so SRN's arm puts SN
  on the first layer and SRN at c = 0.1 on the others. In the SN arm every layer has SN anyway:
  its runs compute what the first setting's SN runs do (a control of the rerun's determinism)."""

from __future__ import annotations

import dataclasses

from stablerank.repro import sweeps

RANK_RATIO = 0.1


def gan_first_sn(seeds: int = 20, gan_seeds: int = 20) -> list[sweeps.Run]:
    """SN and SRN (c = 0.1) of ``quick``'s GAN, with and without SN on D's first layer,
    ``gan_seeds`` seeds each (``seeds`` is unused: the sweep has no classifier)."""
    sn = next(r for r in sweeps.quick(seeds=1, gan_seeds=1) if r.kind == sweeps.KIND_GAN)
    first_sn = dataclasses.replace(sn.config, d_first_norm="sn")
    return [
        *sweeps.comparison(sweeps.KIND_GAN, sn.setting, sn.config, (RANK_RATIO,), gan_seeds,
                           sn.analysis),
        *sweeps.comparison(sweeps.KIND_GAN, f"{sn.setting}-first-sn", first_sn, (RANK_RATIO,),
                           gan_seeds, sn.analysis),
    ]  # fmt: skip


FRESH_SEEDS_FROM = 20  # gan_first_sn used seeds 0-19


def gan_first_sn_fresh(seeds: int = 40, gan_seeds: int = 40) -> list[sweeps.Run]:
    """SRN at c = 0.1 with and without SN on D's first layer, on ``gan_seeds`` seeds from 20
    on, which :func:`gan_first_sn` did not use: the runs of the declared follow-up test
    (docs/reproduction.md). No SN arm (``seeds`` is unused)."""
    sn = next(r for r in sweeps.quick(seeds=1, gan_seeds=1) if r.kind == sweeps.KIND_GAN)
    srn = dataclasses.replace(sn.config, d_norm="srn", rank_ratio=RANK_RATIO)
    arms = (
        (sn.setting, srn),
        (f"{sn.setting}-first-sn", dataclasses.replace(srn, d_first_norm="sn")),
    )
    return [
        sweeps.Run(sweeps.KIND_GAN, setting, dataclasses.replace(cfg, seed=seed), sn.analysis)
        for seed in range(FRESH_SEEDS_FROM, FRESH_SEEDS_FROM + gan_seeds)
        for setting, cfg in arms
    ]


if __name__ == "__main__":  # a sweep module, not a script: say how it is run
    print(__doc__)
