"""A sweep of our own (``reproduce --sweep scripts/sweep_gan_c.py:gan_c``): the ``quick`` sweep's
300-step SN-GAN against SRN-GANs at c = 0.1, 0.2, 0.3 and 0.5, to see whether SRN-GAN's worse
FID at c = 0.1 (docs/results/quick-gan41/) holds where the cap binds less. Every run is the
``quick`` GAN run with its seed and c replaced, so its SN and c = 0.1 runs are the same folders
as ``quick``'s (docs/results/gan-c/)."""

from __future__ import annotations

from stablerank.repro import sweeps

RANK_RATIOS = (0.1, 0.2, 0.3, 0.5)


def gan_c(seeds: int = 20, gan_seeds: int = 20) -> list[sweeps.Run]:
    """SN and SRN at each c of :data:`RANK_RATIOS`, ``gan_seeds`` seeds each (``seeds`` is
    unused: the sweep has no classifier)."""
    sn = next(r for r in sweeps.quick(seeds=1, gan_seeds=1) if r.kind == sweeps.KIND_GAN)
    return sweeps.comparison(
        sweeps.KIND_GAN, sn.setting, sn.config, RANK_RATIOS, gan_seeds, sn.analysis
    )


if __name__ == "__main__":  # a sweep module, not a script: say how it is run
    print(__doc__)
