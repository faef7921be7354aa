"""Fakes for the reproduce pipeline: runners that write what the real trainers write (same file
names and keys), from synthetic numbers, in milliseconds."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stablerank.config import config_from_dict
from stablerank.config.reproduce import ReproduceConfig
from stablerank.repro.pipeline import Runners
from stablerank.repro.plan import run_dir_of_config

# A 1x1 grey PNG (the report only links sample grids; it never decodes them).
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
    "0000000a49444154789c6360000000020001e221bc330000000049454e44ae426082"
)

# Synthetic "truth" per normalization: SRN better on everything, by far more than the seed noise
# (0.001 * seed), so the claims' rule must say "reproduced" where n >= 2.
_EFFECT = {"none": 0.0, "sn": 0.5, "srn0.3": 1.0, "srn0.7": 1.0}


def _mode(cfg: Any) -> str:
    norm = getattr(cfg, "norm", None) or cfg.d_norm
    return f"srn{cfg.rank_ratio:g}" if norm == "srn" else norm


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_classifier_run(cfg: Any) -> Path:
    """metrics.json + log.jsonl + checkpoint.pt + config.json/env.json like train.classify.run."""
    run_dir = run_dir_of_config(cfg)
    e, noise = _EFFECT[_mode(cfg)], 0.001 * cfg.seed
    shatter = cfg.label_noise > 0
    log = []
    for epoch in range(1, cfg.epochs + 1):
        fit = epoch / cfg.epochs
        train_acc = (0.9 - 0.4 * e) * fit + noise if shatter else 0.95 - 0.01 * e + noise
        log.append(
            {
                "epoch": epoch,
                "train_acc": train_acc,
                "test_acc": 0.9 + 0.01 * e + noise,
                "sigma_max/features.0": 2.0 - e,
                "srank/features.0": 5.0 - 2 * e + epoch,
                "sigma_max/fc.1": 1.5,
                "srank/fc.1": 3.0,
            }
        )
    (run_dir).mkdir(parents=True, exist_ok=True)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (run_dir / "checkpoint.pt").write_bytes(b"fake")
    _write(run_dir / "config.json", cfg.to_dict())
    _write(
        run_dir / "env.json",
        {
            "stablerank": "0.1.0",
            "git_commit": "abc",
            "torch": "2.x",
            "device": "cpu",
            "seed": cfg.seed,
        },
    )
    last = log[-1]
    _write(
        run_dir / "metrics.json",
        {
            "train_acc": last["train_acc"],
            "test_acc": last["test_acc"],
            "gap_acc": last["train_acc"] - last["test_acc"],
            "gap_loss": 0.1 - 0.02 * e + noise,
            "train_loss": 0.2,
            "test_loss": 0.3,
            "epochs": cfg.epochs,
            "layers": [],
            "protocol": {
                "dataset": cfg.dataset,
                "model": cfg.model,
                "train_size": 100,
                "test_size": 50,
                "epochs": cfg.epochs,
                "augment": "none",
                "label_noise": cfg.label_noise,
                "head_normalized": False,
            },
        },
    )
    return run_dir


def write_analysis(acfg: Any, run_dir: Path) -> dict:
    """analysis.json with the keys of train.analyze.run."""
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    e = _EFFECT["srn0.3" if cfg["norm"] == "srn" else cfg["norm"]]
    noise = 0.001 * cfg["seed"]
    summ = {
        "max": 2.0 - e + noise,
        "mean": 1.0,
        "n": 10,
        "q50": 1.0 - 0.5 * e + noise,
        "q90": 1.5 - e / 2 + noise,
        "q99": 1.9 - e + noise,
    }
    result = {
        "accuracy": {},
        "generalization_gap": {},
        "el_pairwise": {"train": summ, "test": summ},
        "jacobian_norm": {"train": summ, "test": summ, "interpolated": summ},
        "complexity": {
            "margin": 1.0,
            "log10_neyshabur": 5.0 - e + noise,
            "log10_bartlett": 4.0 - e + noise,
            "log10_spectral_product": 1.0,
            "sum_srank": 10.0,
        },
        "protocol": {"margin_quantile": acfg.margin_quantile, "n_pairs": acfg.n_pairs},
    }
    _write(Path(run_dir) / "analysis.json", result)
    return result


def write_gan_run(cfg: Any) -> Path:
    """metrics.json, log.jsonl, checkpoints, samples like train.gan.run."""
    run_dir = run_dir_of_config(cfg)
    e, noise = _EFFECT[_mode(cfg)], 0.01 * cfg.seed
    log = [{"step": s, "d_loss": 1.0, "g_loss": 1.0} for s in range(1, cfg.g_steps + 1)]
    log += [{"step": cfg.g_steps, "eval_fid": 30.0 - 10 * e + noise}]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / f"step_{cfg.g_steps:07d}.pt").write_bytes(b"fake")
    (run_dir / "samples").mkdir(exist_ok=True)
    (run_dir / "samples" / f"step_{cfg.g_steps:07d}.png").write_bytes(_PNG)
    _write(run_dir / "config.json", cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg))
    _write(
        run_dir / "metrics.json",
        {
            "g_steps": cfg.g_steps,
            "fid": 20.0 - 10 * (e - 0.5) + noise,
            "kid_mean": 0.1,
            "is_mean": 5.0 + e + noise,
            "untrained_fid": 300.0,
            "real_train_fid": 1.0,
            "untrained_is_mean": 1.0,
            "real_train_is_mean": 9.0,
            "real_train_kid_mean": 0.0,
            "protocol": {
                "feature_net": "fmnist-cnn",
                "weights_sha256": "0" * 64,
                "reference_split": "test",
                "n_real": 10000,
                "n_fake": 100,
                "is_splits": 10,
                "kid_subsets": 100,
                "kid_subset_size": 100,
                "seed": cfg.seed,
            },
        },
    )
    return run_dir


def write_gan_eval(run_dir: Path, settings: Any) -> dict:
    cfg = json.loads((Path(run_dir) / "config.json").read_text())
    e = _EFFECT["srn0.7" if cfg["d_norm"] == "srn" else cfg["d_norm"]]
    noise = 0.01 * cfg["seed"]
    values = {
        t: [(2.0 - e + noise) * (i + 1) / 10 for i in range(10)]
        for t in ("real-real", "fake-fake", "real-fake")
    }
    result = {
        "neural_divergence": 1.0 - 0.5 * e + noise,
        "neural_divergence_real_train": 0.0,
        "d_el_values": values,
        "protocol": {"neural_divergence": {"n_critic_steps": settings.nd_critic_steps}},
    }
    _write(Path(run_dir) / "gan_analysis.json", result)
    return result


@dataclass
class FakeRunners:
    """Fake trainers that count calls; ``fail`` / ``interrupt`` name slugs to sabotage."""

    calls: list[tuple[str, str, bool]] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)
    interrupt: set[str] = field(default_factory=set)

    def _train(self, writer: Callable[[Any], Path]) -> Callable[[Any], Path]:
        def train(cfg: Any) -> Path:
            name = run_dir_of_config(cfg).name
            self.calls.append(("train", name, cfg.resume))
            if any(s in name for s in self.fail):
                raise RuntimeError(f"synthetic failure of {name}")
            if any(s in name for s in self.interrupt) and not cfg.resume:
                run_dir = run_dir_of_config(cfg)
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "checkpoint.pt").write_bytes(b"half")
                (run_dir / "checkpoints").mkdir(exist_ok=True)
                (run_dir / "checkpoints" / "step_0000001.pt").write_bytes(b"half")
                raise KeyboardInterrupt
            return writer(cfg)

        return train

    def runners(self) -> Runners:
        def analyze(acfg: Any, run_dir: Path) -> dict:
            self.calls.append(("analyze", Path(run_dir).name, False))
            return write_analysis(acfg, run_dir)

        def evaluate(run_dir: Path, settings: Any) -> dict:
            self.calls.append(("evaluate", Path(run_dir).name, False))
            return write_gan_eval(run_dir, settings)

        return Runners(
            self._train(write_classifier_run), analyze, self._train(write_gan_run), evaluate
        )

    def trained(self) -> list[str]:
        return [name for kind, name, _ in self.calls if kind == "train"]


def _small_config(tmp_path: Path, **overrides: Any) -> ReproduceConfig:
    """A plan of 6 clean-label + 6 shattering + 4 GAN runs on digits (2 seeds each)."""
    data = {
        "out_dir": str(tmp_path / "repro"),
        "datasets": ("digits",),
        "models": ("mlp",),
        "norms": ("none", "sn", "srn"),
        "rank_ratios": (0.3,),
        "seeds": (0, 1),
        "epochs": 2,
        "width": 0.25,
        "train_eval_size": 0,
        "shatter_models": ("mlp",),
        "shatter_dataset": "digits",
        "shatter_seeds": (0, 1),
        "shatter_subset": 200,
        "shatter_epochs": 3,
        "gan_dataset": "digits",
        "gan_norms": ("sn", "srn"),
        "gan_rank_ratios": (0.7,),
        "gan_seeds": (0, 1),
        "gan_steps": 4,
        "gan_width": 8,
        "gan_n_samples": 0,
        "gan_eval_points": 0,
        "nd_critic_steps": 2,
        "nd_eval_batches": 1,
        "d_el_pairs": 20,
        "n_pairs": 20,
        "n_jacobian": 4,
        "n_interpolated": 4,
        "jacobian_iterations": 2,
        "progress": False,
        "device": "cpu",
        "num_threads": 1,
    }
    data.update(overrides)
    return config_from_dict(ReproduceConfig, data)


@pytest.fixture
def fake() -> FakeRunners:
    """Fake runners recording their calls."""
    return FakeRunners()


@pytest.fixture(scope="session")
def fake_runners_cls() -> type[FakeRunners]:
    """The :class:`FakeRunners` class (for module-scoped fixtures)."""
    return FakeRunners


@pytest.fixture(scope="session")
def small_config_at() -> Callable[..., ReproduceConfig]:
    """``small_config_at(folder, **overrides)``: the 16-run digits plan under ``folder``."""
    return _small_config


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the report (figures cost seconds) in tests of the run bookkeeping only."""
    import stablerank.repro.report as report

    monkeypatch.setattr(report, "write_report", lambda out_dir, **kw: _NoReport(Path(out_dir)))
    monkeypatch.setattr(report, "claims_summary", lambda rep: "")


@dataclass
class _NoReport:
    out_dir: Path

    @property
    def path(self) -> Path:
        return self.out_dir / "report.md"


@pytest.fixture
def small_config(tmp_path: Path) -> Callable[..., ReproduceConfig]:
    """``small_config(**overrides)``: the 16-run digits plan under tmp_path."""
    return lambda **overrides: _small_config(tmp_path, **overrides)
