"""MetricLog: the CSV always mirrors the JSONL (every column, every row), rows are appended
without rewriting the file unless a new column appears, and a resume truncates both; only a cut
last line is dropped when the JSONL is read back."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch

from stablerank.train.records import MetricLog


def _csv_rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _expected_rows(records):
    columns = []
    for r in records:
        columns += [k for k in r if k not in columns]
    return [{c: ("" if c not in r else str(r[c])) for c in columns} for r in records]


def test_csv_mirrors_jsonl_and_rewrites_only_for_new_columns(tmp_path, monkeypatch):
    log = MetricLog(tmp_path, tensorboard=False, key="step")
    rewrites = []
    real_write = MetricLog._write_csv
    monkeypatch.setattr(
        MetricLog,
        "_write_csv",
        lambda self, recs: (rewrites.append(len(recs)), real_write(self, recs)),
    )
    records = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}, {"step": 3, "loss": 0.125},
               {"step": 4, "fid": 7.5}, {"step": 5, "loss": 0.1}]  # fmt: skip
    for r in records:
        log.append(r)
    assert rewrites == [1, 4]  # the first record, then the one that brought the 'fid' column
    assert [json.loads(line) for line in log.jsonl.read_text().splitlines()] == records
    assert _csv_rows(log.csv) == _expected_rows(records)


def test_resume_truncates_and_a_new_log_object_keeps_appending(tmp_path):
    first = MetricLog(tmp_path, tensorboard=False, key="epoch")
    for e in range(1, 5):
        first.append({"epoch": e, "acc": e / 10})
    # A crash after epoch 4 was logged but the checkpoint holds epoch 2: the resumed run truncates.
    resumed = MetricLog(tmp_path, tensorboard=False, key="epoch")
    resumed.truncate_after(2)
    resumed.append({"epoch": 3, "acc": 0.33})
    resumed.append({"epoch": 4, "acc": 0.44})
    expected = [{"epoch": 1, "acc": 0.1}, {"epoch": 2, "acc": 0.2}, {"epoch": 3, "acc": 0.33},
                {"epoch": 4, "acc": 0.44}]  # fmt: skip
    assert resumed.records() == expected
    assert _csv_rows(resumed.csv) == _expected_rows(expected)


def test_resume_hides_the_repeated_steps_in_tensorboard(tmp_path):
    """TensorBoard's event files are append-only: a resumed log reopens its writer with
    ``purge_step``, so TensorBoard shows each step once, with the resumed run's value."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricLog(tmp_path, key="epoch")
    for e in range(1, 4):
        first.append({"epoch": e, "acc": float(e)})
    first.close()
    resumed = MetricLog(tmp_path, key="epoch")
    resumed.truncate_after(1)
    resumed.append({"epoch": 2, "acc": 20.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("acc")] == [(1, 1.0), (2, 20.0)]


def test_only_a_cut_last_line_is_dropped_a_bad_line_before_it_is_an_error(tmp_path):
    from stablerank.train.records import read_jsonl

    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "ac\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl line 2 is not JSON"):
        read_jsonl(path)  # silently dropping it would lose epoch 3 too


def test_list_and_dict_values_are_json_in_the_csv(tmp_path):
    log = MetricLog(tmp_path, tensorboard=False, key="step")
    log.append({"step": 1, "sigma": [1.5, 2.0], "acc": {"train": 0.5}})
    (row,) = _csv_rows(log.csv)
    assert json.loads(row["sigma"]) == [1.5, 2.0] and json.loads(row["acc"]) == {"train": 0.5}


def test_tensorboard_gets_the_numbers_at_the_records_step_and_not_the_step_itself(tmp_path):
    calls = []
    writer = type("Writer", (), {"add_scalar": lambda self, *a: calls.append(a),
                                 "flush": lambda self: None})  # fmt: skip
    log = MetricLog(tmp_path, tensorboard=False, key="step")
    log._writer = writer()
    log.append({"step": 7, "loss": 0.5, "diverged": False, "note": "x", "n": 3})
    assert calls == [("loss", 0.5, 7), ("n", 3, 7)]


def test_non_finite_values_are_written_as_strict_json_null(tmp_path):
    """Python's json writes a bare NaN, which is not JSON (jq and JSON.parse refuse it)."""
    log = MetricLog(tmp_path, tensorboard=False, key="step")
    log.append({"step": 1, "loss": float("nan"), "g": torch.tensor(float("inf")),
                "v": torch.tensor([1.0, float("-inf")]),
                "nested": {"w": [torch.tensor(2.0), float("nan")]}})  # fmt: skip
    log.append({"step": 2, "loss": float("nan")})

    def read():
        def refuse(token):
            raise AssertionError(f"{token} is not strict JSON")

        return [
            json.loads(line, parse_constant=refuse) for line in log.jsonl.read_text().splitlines()
        ]

    first = {"step": 1, "loss": None, "g": None, "v": [1.0, None], "nested": {"w": [2.0, None]}}
    assert read() == [first, {"step": 2, "loss": None}]
    # The CSV row appended (step 2) reads as the JSONL's, as a rewritten one does: an empty cell.
    appended = _csv_rows(log.csv)
    assert appended[1] == {"step": "2", "loss": "", "g": "", "v": "", "nested": ""}
    log.append({"step": 3, "new_column": 1.0})  # rewrites the CSV from the JSONL
    assert _csv_rows(log.csv)[:2] == [{**row, "new_column": ""} for row in appended]
    log.truncate_after(1)  # a resume rewrites the file: strict there too
    assert read() == [first]


def test_the_commit_says_when_tracked_files_were_edited(tmp_path):
    """A result made by edited code must not pass for the commit's: ``+dirty`` then."""
    from stablerank.train.records import DIRTY, git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)  # fmt: skip

    git("init", "-q")
    package, other = tmp_path / "pkg", tmp_path / "elsewhere"
    for folder in (package / "sub", other):
        folder.mkdir(parents=True)
        (folder / "code.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    git("add", ".")
    git("commit", "-qm", "c")
    head = git_commit(package)
    assert head is not None and len(head) == 40
    (package / "notes.txt").write_text("untracked files do not count\n")
    (other / "code.py").write_text("x = 2  # outside the package: does not count\n")
    assert git_commit(package) == head
    (package / "sub" / "code.py").write_text("x = 2\n")  # any depth below the package
    assert git_commit(package) == head + DIRTY
    # A copy git does not track (installed into an ignored folder) has no commit of its own.
    (tmp_path / "ignored" / "pkg").mkdir(parents=True)
    assert git_commit(tmp_path / "ignored" / "pkg") is None
    assert git_commit(tmp_path.parent / "not-a-folder") is None


def test_the_commit_watches_the_whole_package_by_default(monkeypatch):
    """Not only ``train/``, where the function lives: an edit to ``srn.py`` counts too."""
    import stablerank
    from stablerank.train import records

    folders = set()

    def fake_run(args, cwd, **kw):
        folders.add(Path(cwd))
        return subprocess.CompletedProcess(args, 0, stdout="x\n", stderr="")

    monkeypatch.setattr(records.subprocess, "run", fake_run)
    records.git_commit()
    assert folders == {Path(stablerank.__file__).resolve().parent}
