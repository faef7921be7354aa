"""Plan expansion, run-folder hashing and the dry-run text."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from stablerank.config import classify as classify_config
from stablerank.config import config_from_dict
from stablerank.config import gan as gan_config
from stablerank.config import reproduce as reproduce_config
from stablerank.config.reproduce import REPRODUCE_PRESETS, ReproduceConfig
from stablerank.repro import pipeline
from stablerank.repro.estimate import Hardware, estimate_seconds
from stablerank.repro.plan import KIND_CLASSIFY, KIND_GAN, KIND_SHATTER, build_plan, run_dir_of

CPU2 = Hardware("cpu", "test CPU", 2)


def _preset(name: str, **overrides) -> ReproduceConfig:
    return config_from_dict(ReproduceConfig, {**REPRODUCE_PRESETS[name], **overrides})


def _names(specs) -> dict[str, str]:
    return {s.slug: s.name for s in specs}


def test_quick_plan_expands_every_mode_seed_and_kind():
    specs = build_plan(_preset("quick"))
    kinds = Counter(s.kind for s in specs)
    # 3 modes (none, sn, srn@0.3) x 2 seeds, for clean and random labels; GAN sn/srn@0.7 x 1.
    assert kinds == {KIND_CLASSIFY: 6, KIND_SHATTER: 6, KIND_GAN: 2}
    assert len({s.name for s in specs}) == len(specs)
    assert {s.mode for s in specs if s.kind == KIND_CLASSIFY} == {"none", "sn", "srn0.3"}
    assert {s.mode for s in specs if s.kind == KIND_GAN} == {"sn", "srn0.7"}
    for s in specs:
        assert run_dir_of(s).name == s.name
        assert run_dir_of(s).parent.parent.name == "reproduce-quick"
        if s.kind == KIND_SHATTER:
            assert s.config.label_noise == 1.0 and s.config.resolved_augment == "none"
            assert s.config.weight_decay == 0.0  # the shattering protocol
            assert s.analyze is None
        if s.kind == KIND_CLASSIFY:
            assert s.analyze is not None and s.config.label_noise == 0.0
        if s.kind == KIND_GAN:
            assert s.gan_eval is not None and s.config.d_norm == s.mode[:3].rstrip("0.")


def test_same_config_same_folder_changed_field_new_folder():
    a, b = build_plan(_preset("quick")), build_plan(_preset("quick"))
    assert [s.name for s in a] == [s.name for s in b]
    # Runtime settings (device, progress, threads) do not change what is computed: same folders.
    c = build_plan(_preset("quick", progress=False, num_threads=1, device="cpu"))
    assert [s.name for s in c] == [s.name for s in a]
    # More epochs: every clean-label folder changes; shattering and GAN folders stay.
    d = _names(build_plan(_preset("quick", epochs=4)))
    for s in a:
        changed = d[s.slug] != s.name
        assert changed == (s.kind == KIND_CLASSIFY), s.slug
    # Another SRN ratio adds runs and leaves the existing none/sn folders alone.
    e = _names(build_plan(_preset("quick", rank_ratios=(0.3, 0.5))))
    for s in a:
        assert e[s.slug] == s.name
    assert any("srn0.5" in slug for slug in e)


def test_folder_hash_changes_with_the_trainer_config_not_the_slug():
    spec = build_plan(_preset("quick"))[0]
    other = dataclasses.replace(spec.config, lr=spec.config.lr * 2)
    from stablerank.config import config_hash
    from stablerank.repro.plan import RUNTIME_KEYS

    assert config_hash(other, exclude=RUNTIME_KEYS) != spec.digest
    assert config_hash(spec.config, exclude=RUNTIME_KEYS) == spec.digest


def test_paper_plan_uses_the_cifar_recipes():
    specs = build_plan(_preset("paper", data_dir="/data/cifar"))
    kinds = Counter(s.kind for s in specs)
    # 2 datasets x 5 models x (none, sn, srn@0.3, srn@0.5) x 3 seeds; 2 shattering models x 4
    # modes; GAN (sn + srn@0.5/0.7/0.9) x 3 seeds.
    assert kinds == {KIND_CLASSIFY: 120, KIND_SHATTER: 8, KIND_GAN: 12}
    by_model = {s.config.model: s.config for s in specs if s.kind == KIND_CLASSIFY}
    assert set(by_model) == {"resnet110", "wrn28_10", "densenet_bc100", "vgg19", "alexnet"}
    assert by_model["resnet110"].weight_decay == 1e-4 and by_model["vgg19"].weight_decay == 5e-4
    assert all(c.epochs == 200 and c.schedule == "step" for c in by_model.values())
    assert all(s.config.data_dir == "/data/cifar" for s in specs)
    gan = [s.config for s in specs if s.kind == KIND_GAN]
    assert {g.arch for g in gan} == {"resnet"} and {g.n_dis for g in gan} == {5}
    assert {g.dataset for g in gan} == {"cifar10"}


def test_estimates_scale_with_work_and_hardware():
    specs = build_plan(_preset("quick"))
    base = estimate_seconds(specs[0], CPU2)
    longer = build_plan(_preset("quick", epochs=6))[0]
    assert estimate_seconds(longer, CPU2) > 1.5 * base
    gpu = Hardware("cuda", "test GPU", 2)
    assert estimate_seconds(specs[0], gpu) < base
    assert all(estimate_seconds(s, CPU2) > 0 for s in specs)


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys, fake):
    cfg = _preset("quick", out_dir=str(tmp_path / "q"), dry_run=True)
    pipeline.run(cfg, runners=fake.runners())
    text = capsys.readouterr().out
    assert fake.calls == [] and not (tmp_path / "q").exists()
    for spec in build_plan(cfg):
        assert spec.name in text
    assert "estimate" in text and "[    new]" in text


def test_config_lists_match_the_trainers():
    assert set(reproduce_config._DATASETS) == set(classify_config.DATASETS)
    assert set(reproduce_config._MODELS) == set(classify_config.MODELS)
    assert set(reproduce_config._GAN_PRESET_NAMES) == set(gan_config.GAN_PRESETS)
    gan_datasets = {f.name: f for f in dataclasses.fields(gan_config.GanConfig)}["dataset"]
    assert set(reproduce_config._GAN_DATASETS) == set(gan_datasets.metadata["choices"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"norms": ("srn",), "rank_ratios": ()}, "rank_ratios"),
        ({"gan_ema": 1.5}, "gan_ema"),
        ({"dry_run": True, "report_only": True}, "dry_run"),
        ({"seeds": (-1,)}, "seeds"),
    ],
)
def test_invalid_configs_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(ReproduceConfig, overrides)
