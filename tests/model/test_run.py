"""The RUN folder: identity, refusals, and --force removing only what a run writes."""

from __future__ import annotations

import pytest

from raw2rgb.model import run

IDENTITY = {"format": 1, "config": {"preset": "tiny", "lr_g": 1e-4}, "dataset": "/d", "dataset_key": "k"}


def test_a_new_run_is_recorded_and_the_same_one_is_accepted(tmp_path):
    run.open_run(tmp_path / "r", IDENTITY, force=False)
    assert run.read_identity(tmp_path / "r") == IDENTITY
    run.open_run(tmp_path / "r", IDENTITY, force=False)  # resume: no error


def test_another_config_or_dataset_is_refused_naming_the_difference(tmp_path):
    run.open_run(tmp_path / "r", IDENTITY, force=False)
    (tmp_path / "r" / run.CHECKPOINTS).mkdir()
    (tmp_path / "r" / run.CHECKPOINTS / run.LATEST).write_bytes(b"steps")  # a run with steps to lose
    with pytest.raises(run.RunError, match=r"another config \(differs in lr_g\).*--force"):
        run.open_run(tmp_path / "r", {**IDENTITY, "config": {"preset": "tiny", "lr_g": 2e-4}}, force=False)
    with pytest.raises(run.RunError, match="other shards"):
        run.open_run(tmp_path / "r", {**IDENTITY, "dataset_key": "k2"}, force=False)


def test_force_removes_only_what_a_run_writes(tmp_path):
    r = tmp_path / "r"
    run.open_run(r, IDENTITY, force=False)
    for name in (run.STATS, run.LOG):
        (r / name).write_text("x")
    for name in (run.CHECKPOINTS, run.SAMPLES, run.TENSORBOARD):
        (r / name).mkdir()
        (r / name / "f").write_text("x")
    (r / "notes.txt").write_text("mine")
    (r / "eval").mkdir()
    (r / "eval" / "summary.json").write_text("{}")
    run.open_run(r, {**IDENTITY, "dataset_key": "k2"}, force=True)
    assert sorted(p.name for p in r.iterdir()) == [run.CONFIG, "eval", "notes.txt"]
    assert run.read_identity(r)["dataset_key"] == "k2"


def test_a_folder_that_holds_no_run_is_never_cleared(tmp_path):
    """`train --force` into a folder of photos must not delete them (samples/ included)."""
    p = tmp_path / "p"
    (p / "samples").mkdir(parents=True)
    (p / "samples" / "photo").write_text("x")
    for force in (False, True):
        with pytest.raises(run.RunError, match="not empty and holds no run"):
            run.open_run(p, IDENTITY, force=force)
    assert (p / "samples" / "photo").read_text() == "x"


def test_checkpoint_file_of_a_run_prefers_final(tmp_path):
    r = tmp_path / "r"
    (r / run.CHECKPOINTS).mkdir(parents=True)
    (r / run.CHECKPOINTS / run.LATEST).write_bytes(b"l")
    assert run.checkpoint_file(r).name == run.LATEST
    (r / run.CHECKPOINTS / run.FINAL).write_bytes(b"f")
    assert run.checkpoint_file(r).name == run.FINAL
    with pytest.raises(run.RunError, match="not a raw2rgb run folder"):
        run.checkpoint_file(tmp_path)
