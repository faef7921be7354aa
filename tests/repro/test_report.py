"""The report: built from the saved JSON of a fixture reproduction (synthetic numbers written
with the trainers' file names and keys), with every claim, table and figure; and one real
end-to-end reproduction at toy size (digits, MLP, a 4-step GAN) through the real trainers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stablerank.repro import pipeline
from stablerank.repro.claims import REPRODUCED
from stablerank.repro.report import FIGURES_DIR, claims_summary, write_report

TABLE_HEADERS = (
    "| norm | n | test acc | train acc | gap (acc) | gap (loss) |",
    "| norm | n | el_train_max |",
    "| norm | n | log10_neyshabur | log10_bartlett |",
    "| norm | n | random-label train acc (last epoch) |",
    "| d_norm | n | FID | KID | IS | neural div. | D eL max | D eL median |",
    "| setting | SRN | vs | metric |",
    "| run | kind | norm | seed | status | wall time (s) | error |",
)


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory, small_config_at, fake_runners_cls):
    """One reproduction with fake runners (16 runs) and its report text."""
    folder = tmp_path_factory.mktemp("fixture")
    cfg = small_config_at(folder)
    fake = fake_runners_cls()
    path = pipeline.run(cfg, runners=fake.runners())
    return Path(cfg.out_dir), path.read_text()


def test_report_has_every_claim_table_and_figure(fixture_run):
    out_dir, text = fixture_run
    for number in range(1, 6):
        assert f"### Claim {number}: " in text
    for header in TABLE_HEADERS:
        assert header in text, header
    figures = {p.name for p in (out_dir / FIGURES_DIR).glob("*.png")}
    assert {
        "el_digits_mlp.png",
        "layers_digits_mlp.png",
        "fid_digits_cnn.png",
        "d_el_digits_cnn.png",
    } <= figures
    assert any(name.startswith("shatter_digits_mlp") for name in figures)
    for name in figures:
        assert f"]({FIGURES_DIR}/{name})" in text  # linked from the markdown
    assert "samples/step_0000004.png" in text  # the GAN sample grids
    assert "setting differs" in text  # digits is not the paper's setting
    assert "mean over seeds" in text and "±" in text
    # The synthetic numbers favour SRN far beyond the seed noise: every claim is reproduced.
    assert text.count("### Claim") == text.count(f": {REPRODUCED.upper()}\n") == 5


def test_report_rebuilds_from_json_alone_and_lists_failures(fixture_run, tmp_path):
    out_dir, first = fixture_run
    copy = tmp_path / "copy"
    shutil.copytree(out_dir, copy)
    # Delete everything a report could retrain or re-measure from: checkpoints and figures.
    for ckpt in copy.rglob("*.pt"):
        ckpt.unlink()
    shutil.rmtree(copy / FIGURES_DIR)
    # Mark one run failed, and pretend the GAN runs were CIFAR-10 with Inception features.
    failed = next(copy.glob("runs/shatter_*/status.json"))
    failed.write_text(json.dumps({"status": "failed", "error": "RuntimeError in train: boom"}))
    for spec_path in copy.glob("runs/gan_*/spec.json"):
        spec = json.loads(spec_path.read_text())
        spec["config"]["dataset"] = "cifar10"
        spec_path.write_text(json.dumps(spec))
        metrics_path = spec_path.parent / "metrics.json"
        metrics = json.loads(metrics_path.read_text())
        metrics["protocol"]["feature_net"] = "inception-v3"
        metrics_path.write_text(json.dumps(metrics))
    report = write_report(copy)
    text = report.path.read_text()
    assert report.n_runs == 16 and report.n_done == 15 and report.n_failed == 1
    assert "1 failed" in text and "RuntimeError in train: boom" in text
    assert "IS 8.53, FID 19.83" in text and "IS 8.22, FID 21.7" in text
    assert {p.name for p in report.figures} == {p.name for p in (copy / FIGURES_DIR).iterdir()}
    summary = claims_summary(report)
    assert "1 FAILED" in summary and "claim 5" in summary
    # Unchanged classification sections: identical to the first build (JSON only, no state).
    section = "## Classification, clean labels"
    assert text.split(section)[1].split("## Shattering")[0] == (
        first.split(section)[1].split("## Shattering")[0].replace(str(out_dir), str(copy))
    )


@pytest.mark.slow
def test_real_trainers_end_to_end_at_toy_size(small_config):
    """Real classify/analyze/GAN/ND/eL code on digits (seconds): the report's tables fill in."""
    cfg = small_config(
        norms=("none", "srn"),
        seeds=(0,),
        shatter_seeds=(0,),
        gan_seeds=(0,),
        epochs=1,
        shatter_epochs=2,
    )
    path = pipeline.run(cfg)
    text = path.read_text()
    assert "6 runs planned, 6 finished, 0 failed" in text
    for number in range(1, 6):
        assert f"### Claim {number}: CANNOT TELL" in text  # one seed: no spread, by the rule
    clean = text.split("## Classification")[1].split("## Shattering")[0]
    assert "| none | 1 | 0." in clean and "| srn0.3 | 1 | 0." in clean
    gan = text.split("## GAN")[1].split("## Provenance")[0]
    assert "| sn | 1 |" in gan and "neural div." in gan
