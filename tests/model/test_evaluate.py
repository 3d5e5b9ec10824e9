"""`raw2rgb evaluate`: the model, the classical pipeline and the fitted profile under one protocol."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from raw2rgb.cli import main
from raw2rgb.model.train import Runtime, train
from tests.model.conftest import make_shards, tiny_config


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    root = make_shards(tmp / "shards", {"train": 4, "val": 3, "test": 2})
    cfg = tiny_config()
    train(root, tmp / "run", cfg, Runtime(workers=0))
    return root, tmp / "run"


def test_evaluate_writes_per_image_csv_and_summary(trained, tmp_path):
    root, run = trained
    r = _cli("evaluate", root, "--checkpoint", run, "--split", "val", "-o", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert {"psnr", "ssim", "psnr_cc", "images", "protocol"} <= set(summary) and summary["images"] == 3
    assert summary["protocol"]["size"] == [32, 32] and "per image" in summary["protocol"]["psnr"]
    rows = list(csv.DictReader((tmp_path / "ev" / "per_image.csv").open()))
    assert [row["id"] for row in rows] == ["val0", "val1", "val2"]
    assert np.mean([float(row["psnr"]) for row in rows]) == pytest.approx(summary["psnr"], abs=1e-3)
    assert summary["psnr_cc"] >= summary["psnr"]  # an affine fit can only bring the output closer
    isp = json.loads(_cli("evaluate", root, "--method", "isp", "--split", "test").output)
    assert isp["images"] == 2 and isp["method"] == "isp" and isp["psnr"] > 10


def test_evaluate_refuses_missing_splits_and_checkpoints(trained, tmp_path):
    root, _ = trained
    empty = make_shards(tmp_path / "s", {"train": 2, "val": 0})
    r = _cli("evaluate", empty, "--method", "isp")
    assert r.exit_code == 1 and "val split is empty" in r.output
    r = _cli("evaluate", root, "--method", "model")
    assert r.exit_code == 1 and "--checkpoint" in r.output


def test_the_fitted_profile_is_fitted_and_scored_under_the_same_protocol(trained, tmp_path):
    """profile fit on the train split, then evaluate --profile: the classical pipeline, the profile
    and the model on one protocol. On the split it was fitted on, the profile brings the classical
    rendering (grey world and camera RGB here: these shards have no sidecars) closer."""
    root, run = trained
    r = _cli("profile", "fit", root, "-o", tmp_path / "p.json")
    assert r.exit_code == 0 and "poly3 profile, scale 1" in r.output, r.output
    scores = {}
    for method, extra in (("isp", ()), ("profile", ("--profile", tmp_path / "p.json")),
                          ("model", ("--checkpoint", run))):
        out = _cli("evaluate", root, *extra, "--method", method, "--split", "train").output
        scores[method] = json.loads(out)
        assert scores[method]["method"] == method and scores[method]["images"] == 4
    assert scores["profile"]["psnr"] > scores["isp"]["psnr"] + 1
    assert scores["profile"]["protocol"] == scores["model"]["protocol"] == scores["isp"]["protocol"]
    two = make_shards(tmp_path / "s2", {"train": 2, "val": 2}, scale=2)
    r = _cli("evaluate", two, "--profile", tmp_path / "p.json")
    assert r.exit_code == 1 and "p.json: fitted at output scale 1, used here at scale 2" in r.output
