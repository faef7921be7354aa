"""ClassifyConfig / AnalyzeConfig: ranges, cross-field rules, presets, names shared with data and
models."""

from __future__ import annotations

import dataclasses

import pytest

from stablerank.config import check_config, config_from_dict, config_to_dict, option, read_yaml
from stablerank.config.classify import (
    AUGMENTS,
    CLASSIFY_PRESETS,
    DATASETS,
    MODELS,
    NORMS,
    AnalyzeConfig,
    ClassifyConfig,
    classify_preset,
)


def test_every_field_has_help_text():
    for cls in (ClassifyConfig, AnalyzeConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_names_match_the_data_models_and_core_packages():
    # config may not import data/models (import rules), so its lists are checked here.
    import stablerank as sr
    from stablerank.data import AUGMENTS as LOADER_AUGMENTS
    from stablerank.data import DATASETS as DATA_DATASETS
    from stablerank.models.classifiers import CLASSIFIERS

    assert set(DATASETS) == set(DATA_DATASETS)
    assert set(MODELS) == set(CLASSIFIERS)
    assert set(NORMS) == set(sr.NORMS)
    assert set(AUGMENTS) == {*LOADER_AUGMENTS, "auto"}


@pytest.mark.parametrize("name", sorted(CLASSIFY_PRESETS))
def test_presets_build_and_validate(name):
    cfg = classify_preset(name)
    assert isinstance(cfg, ClassifyConfig)
    assert cfg.resolved_augment in AUGMENTS and cfg.resolved_augment != "auto"


def test_shatter_preset_is_the_zhang_protocol():
    cfg = classify_preset("shatter")
    assert cfg.label_noise == 1.0 and cfg.train_subset == 2000
    assert cfg.resolved_augment == "none" and cfg.weight_decay == 0.0
    assert cfg.train_eval_size == 0  # train accuracy over the whole 2,000-image subset


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError, match=r"valid presets: .*fmnist-cnn"):
        classify_preset("nope")


def test_preset_overrides_apply_and_are_checked():
    assert classify_preset("fmnist-cnn", norm="srn").norm == "srn"
    with pytest.raises(ValueError, match="'norm' must be one of"):
        classify_preset("fmnist-cnn", norm="bn")


def test_ranges_are_checked_on_direct_construction():
    with pytest.raises(ValueError, match=r"'rank_ratio' must be > 0\.0 and <= 1\.0"):
        ClassifyConfig(rank_ratio=0.0)
    with pytest.raises(ValueError, match=r"'label_noise' must be >= 0\.0 and <= 1\.0, got 1\.5"):
        ClassifyConfig(label_noise=1.5)
    with pytest.raises(ValueError, match=r"'seed' must be >= 0 and <= 2147483647"):
        ClassifyConfig(seed=2**64)  # torch's generators overflow (as the GAN's range)
    with pytest.raises(ValueError, match="'n_pairs' must be >= 1"):
        AnalyzeConfig(n_pairs=0)
    with pytest.raises(ValueError, match=r"'seed' must be >= 0 and <= 2147483647"):
        AnalyzeConfig(seed=2**64)  # it was torch's "Overflow when unpacking long long", mid-work


def test_a_users_own_config_is_declared_and_checked_with_the_public_names():
    @dataclasses.dataclass(frozen=True)
    class Probe:
        steps: int = option(10, "steps", min=1)

        def __post_init__(self) -> None:
            check_config(self)

    assert config_from_dict(Probe, {"steps": "3"}).steps == 3
    with pytest.raises(ValueError, match="'steps' must be >= 1, got 0"):
        Probe(steps=0)


def test_random_labels_forbid_augmentation():
    with pytest.raises(ValueError, match=r"label_noise=0\.5 .* requires augment 'none' or 'auto'"):
        ClassifyConfig(label_noise=0.5, augment="crop")
    assert ClassifyConfig(label_noise=0.5).resolved_augment == "none"
    assert ClassifyConfig(label_noise=0.0).resolved_augment == "crop"  # Fashion-MNIST default


def test_step_schedule_needs_increasing_milestones():
    with pytest.raises(ValueError, match="milestones strictly increasing"):
        ClassifyConfig(schedule="step", milestones=(0.75, 0.5))
    with pytest.raises(ValueError, match="milestones strictly increasing"):
        ClassifyConfig(schedule="step", milestones=())
    assert ClassifyConfig(schedule="step", milestones=(0.3,)).milestones == (0.3,)


def test_warmup_shorter_than_the_run():
    with pytest.raises(ValueError, match="warmup_epochs must be < epochs=2"):
        ClassifyConfig(epochs=2, warmup_epochs=2)


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet20\nepochs: 3\nmilestones: [0.5, 0.8]\n")
    cfg = config_from_dict(ClassifyConfig, {**read_yaml(path), "epochs": "4", "norm": "sn"})
    assert (cfg.model, cfg.epochs, cfg.norm, cfg.milestones) == ("resnet20", 4, "sn", (0.5, 0.8))


def test_round_trip_through_dict():
    cfg = classify_preset("shatter", norm="srn", rank_ratio=0.5)
    assert config_from_dict(ClassifyConfig, config_to_dict(cfg)) == cfg


def test_one_default_rank_ratio_for_the_library_and_both_trainers():
    from stablerank.config.gan import GanConfig
    from stablerank.srn import DEFAULT_RANK_RATIO

    assert ClassifyConfig().rank_ratio == GanConfig().rank_ratio == DEFAULT_RANK_RATIO


def test_the_options_both_trainers_share_accept_the_same_values():
    # Except where the GAN's differ on purpose: batch_size (>= 2 real and fake samples) and
    # dataset (no 1-D signals for the image GANs).
    from stablerank.config.gan import GanConfig

    def ranges(cfg: type) -> dict[str, dict[str, object]]:
        return {f.name: dict(f.metadata) for f in dataclasses.fields(cfg)}

    classify, gan = ranges(ClassifyConfig), ranges(GanConfig)
    for name in set(classify) & set(gan) - {"batch_size", "dataset"}:
        keys = ("choices", "min", "max", "min_exclusive", "max_exclusive")
        assert [classify[name][k] for k in keys] == [gan[name][k] for k in keys], name


def test_an_int_in_a_float_field_gives_the_same_dict_hash_and_run_folder():
    from stablerank.config import config_hash
    from stablerank.train.rundir import RunDir

    in_python = ClassifyConfig(lr=1)
    in_python = dataclasses.replace(in_python, weight_decay=0)
    from_flags = config_from_dict(ClassifyConfig, {"lr": "1", "weight_decay": "0"})
    assert in_python == from_flags  # 1 == 1.0: equal configs...
    assert config_to_dict(in_python) == config_to_dict(from_flags)  # ...one dict
    assert isinstance(config_to_dict(in_python)["lr"], float)
    assert isinstance(in_python.lr, float) and isinstance(in_python.weight_decay, float)
    assert config_hash(in_python) == config_hash(from_flags)
    assert RunDir.for_config(in_python) == RunDir.for_config(from_flags)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("amp", "maybe", "'amp' expects a boolean"),
        ("epochs", 2.5, "'epochs' expects an integer"),  # not truncated to 2
        ("epochs", True, "'epochs' expects an integer"),  # bool is an int subclass
        ("lr", True, "'lr' expects a number"),
    ],
)
def test_plain_data_of_the_wrong_type_is_refused_naming_the_key(key, value, match):
    with pytest.raises(TypeError, match=match):
        config_from_dict(ClassifyConfig, {key: value})


def test_plain_data_is_coerced_as_flags_and_yaml_give_it():
    cfg = config_from_dict(
        ClassifyConfig,
        {"amp": "off", "schedule": "step", "milestones": "0.3,0.6,", "batch-size": "16"},
    )
    assert cfg.amp is False and cfg.milestones == (0.3, 0.6) and cfg.batch_size == 16


def test_help_shows_open_and_closed_ends_of_a_range():
    import argparse

    from stablerank.config import add_config_arguments

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ClassifyConfig)
    text = " ".join(parser.format_help().split())
    assert "range (0.0, 1.0]" in text  # rank_ratio: c in (0, 1]


def test_a_relative_data_dir_is_stored_absolute(tmp_path, monkeypatch):
    # config.json is read again from other folders (analyze, resume, a sweep's workers).
    monkeypatch.chdir(tmp_path)
    assert ClassifyConfig(data_dir="data/c10").data_dir == str(tmp_path / "data" / "c10")
    assert ClassifyConfig().data_dir is None
