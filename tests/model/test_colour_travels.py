"""Colour travels with the shards (issue 24, issue 25 cause 1): a ``shards/`` folder copied alone fits
the same profile, scores the same and trains the same weights as the prepared dataset; old shards are
refused in one line; a run refuses to resume on data whose colour comes from elsewhere."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from raw2rgb.errors import UserError
from raw2rgb.model import evaluate as ev
from raw2rgb.model import run as run_mod
from raw2rgb.model.checkpoint import load as load_checkpoint
from raw2rgb.model.data import ShardDataset
from raw2rgb.model.train import Runtime, train
from raw2rgb.pipeline import profile, profile_fit, shards, synth
from raw2rgb.pipeline.shards import ShardError
from tests.conftest import cli
from tests.model.conftest import tiny_config


@pytest.fixture(scope="module")
def dataset_and_copy(tmp_path_factory):
    """A RAW+JPEG dataset of the virtual camera (as-shot white balance and matrix in every DNG), and
    its ``shards/`` copied alone to another folder."""
    tmp = tmp_path_factory.mktemp("colour")
    synth.paired_dngs(tmp / "src", size=(320, 480), scenes=("astronaut", "coffee", "chelsea", "chart"))
    r = cli("prepare", tmp / "src", "-o", tmp / "ds", "--patch-size", "64", "--saliency-method", "spectral-residual",
            "--split", "0.75,0.25,0", "--min-score", "0.3", "--min-inliers", "12", "--scale", "1")
    assert r.exit_code == 0, r.output
    index = json.loads((tmp / "ds" / "shards" / "index.json").read_text())
    counts = {k: v["count"] for k, v in index["splits"].items()}
    assert counts.get("train", 0) >= 4 and counts.get("val", 0) >= 1, counts
    shutil.copytree(tmp / "ds" / "shards", tmp / "elsewhere" / "shards")
    return tmp / "ds", tmp / "elsewhere" / "shards"


def test_the_shards_hold_each_samples_colour(dataset_and_copy):
    ds, _ = dataset_and_copy
    index = shards.read_index(ds / "shards")
    data = shards.read_shard(ds / "shards" / index.splits["train"].shards[0].file)
    cam = synth.Camera()
    for c in data["colour"]:
        np.testing.assert_allclose(c.as_shot, cam.wb_gains, rtol=1e-4)
        assert c.matrix.shape == (3, 3) and c.frame.shape == (3, 3)
    assert set(data["camera"]) == {"raw2rgb Virtual Camera"}
    assert shards.cameras(ds / "shards") == ["raw2rgb Virtual Camera"]
    source = shards.colour_source(ds / "shards")
    assert source["as_shot"] == source["samples"] > 0 and source["dataset_gains"] is None


def test_profile_fit_and_evaluate_on_the_copy_equal_the_dataset(dataset_and_copy, tmp_path):
    ds, copy = dataset_and_copy
    on_ds, on_copy = profile_fit.fit_dataset(ds), profile_fit.fit_dataset(copy)
    assert on_ds.coefficients == on_copy.coefficients
    assert on_ds.cameras == on_copy.cameras == ("raw2rgb Virtual Camera",)
    profile.save(on_ds, tmp_path / "p.json")
    for method, extra in (("isp", {}), ("profile", {"profile": tmp_path / "p.json"})):
        a = ev.evaluate(ds, "val", method=method, **extra).summary
        b = ev.evaluate(copy, "val", method=method, **extra).summary
        assert a["psnr"] == b["psnr"] and a["ssim"] == b["ssim"], method


def test_training_and_evaluating_on_the_copy_equal_the_dataset(dataset_and_copy, tmp_path):
    """A couple of steps of the recommended (prior) network: the same weights from either folder, and
    the checkpoint scores the same on both."""
    ds, copy = dataset_and_copy
    cfg = tiny_config(stage2_epochs=0, batch_size=2)
    for name, data in (("a", ds), ("b", copy)):
        result = train(data, tmp_path / name, cfg, Runtime(workers=0, max_steps=2, samples=1))
        assert result.step == 2
    ga, gb = (load_checkpoint(run_mod.checkpoint(tmp_path / n))["G"] for n in "ab")
    assert ga.keys() == gb.keys()
    for k in ga:  # the prior's dataset gains are NaN here (every file has its white balance)
        torch.testing.assert_close(ga[k], gb[k], rtol=0, atol=0, equal_nan=True)
    assert json.loads((tmp_path / "a" / run_mod.PROFILE).read_text())["coefficients"] == \
        json.loads((tmp_path / "b" / run_mod.PROFILE).read_text())["coefficients"]
    a = ev.evaluate(ds, "val", tmp_path / "a").summary
    b = ev.evaluate(copy, "val", tmp_path / "a").summary
    assert a["psnr"] == b["psnr"] and a["ssim"] == b["ssim"]


def test_old_format_shards_are_refused_in_one_line_naming_the_fix(dataset_and_copy, tmp_path):
    _, copy = dataset_and_copy
    old = tmp_path / "old"
    shutil.copytree(copy, old)
    index = json.loads((old / "index.json").read_text())
    (old / "index.json").write_text(json.dumps({**index, "format": 1}))
    for use in (lambda: ShardDataset(old, "train"), lambda: profile_fit.fit_dataset(old)):
        with pytest.raises(ShardError) as info:
            use()
        assert "\n" not in str(info.value) and "raw2rgb prepare SRC -o DATASET --force shards" in str(info.value)
    r = cli("profile", "fit", old, "-o", tmp_path / "p.json")
    assert r.exit_code != 0 and "format 1 carry no colour" in r.output and "Traceback" not in r.output


def test_a_run_refuses_to_resume_on_data_whose_colour_comes_from_elsewhere(dataset_and_copy, tmp_path):
    ds, copy = dataset_and_copy
    cfg = tiny_config(stage2_epochs=0, batch_size=2)
    train(ds, tmp_path / "run", cfg, Runtime(workers=0, max_steps=1, samples=1))
    identity = run_mod.read_identity(tmp_path / "run")
    assert identity["colour"]["stored"] == f"shards (format {shards.SHARD_FORMAT})"
    # the same shards whose samples lost their white balance: same dataset key, another colour source
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    for path in other.glob("*.h5"):
        with h5py.File(path, "r+") as f:
            f["wb_as_shot"][...] = np.nan
    with pytest.raises(UserError) as info:
        train(other, tmp_path / "run", cfg, Runtime(workers=0, max_steps=2, samples=1))
    assert "trained on colour from" in str(info.value) and "--force" in str(info.value)
    assert "\n" not in str(info.value)
    # a run of before the colour was recorded (colour from the unpack sidecars)
    del identity["colour"]
    (tmp_path / "run" / run_mod.CONFIG).write_text(json.dumps(identity))
    with pytest.raises(UserError, match="unpack sidecars"):
        train(ds, tmp_path / "run", cfg, Runtime(workers=0, max_steps=2, samples=1))


def test_the_copy_carries_each_samples_frame_thumbnail(dataset_and_copy):
    """Each sample's thumbnail is its whole unpacked frame's (not the patch's own), read the same from
    the copy, as the model range of the shards' uint16."""
    from raw2rgb.model.data import to_model
    from raw2rgb.pipeline import bayer, rawio

    ds, copy = dataset_and_copy
    on_ds, on_copy = ShardDataset(ds / "shards", "train", compact=True), ShardDataset(copy, "train", compact=True)
    for i in range(len(on_ds)):
        a, b = on_ds[i], on_copy[i]
        assert torch.equal(a["thumb"], b["thumb"]) and a["thumb"].shape == (4, bayer.THUMB_SIZE, bayer.THUMB_SIZE)
        scene = shards.scene_of(a["id"])
        frame = rawio.read_packed_png(ds / "unpack" / f"{scene}.png").astype(np.float32) / 65535.0
        want = shards.frame_thumbnail(frame * 65535.0)
        np.testing.assert_array_equal(a["thumb"].numpy(), want)
        assert np.abs(shards.frame_thumbnail(a["raw"].numpy()).astype(float) - want).mean() > 100  # not the patch's
        converted = to_model(a)["thumb"]
        torch.testing.assert_close(converted, a["thumb"].float() / 65535.0 * 2 - 1)
