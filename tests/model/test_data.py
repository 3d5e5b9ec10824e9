"""Training shards and ShardDataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from raw2rgb.cli import main
from raw2rgb.model.data import ShardDataset
from raw2rgb.pipeline import augment, bayer, rawio, shards, synth
from raw2rgb.pipeline.develop import area_downsample
from tests.conftest import kill_midway


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A mini ZRR source prepared up to saliency (spectral residual), 112-px patches."""
    root = tmp_path_factory.mktemp("zrr")
    for d in ("huawei_raw", "canon"):
        (root / "src" / "train" / d).mkdir(parents=True)
    for i in range(6):
        scene = synth.scene(synth.SCENES[i % 4], (448, 448))
        mosaic = (bayer.mosaic(scene.astype(np.uint16), "RGGB") * 4 + 63).clip(0, 1023).astype(np.uint16)
        Image.fromarray(mosaic).save(root / "src" / "train" / "huawei_raw" / f"{i}.png")
        Image.fromarray(scene).save(root / "src" / "train" / "canon" / f"{i}.jpg", quality=95)
    result = _cli("prepare", root / "src", "-o", root / "ds", "--until", "saliency", "--patch-size", "112",
                  "--saliency-method", "spectral-residual", "--min-score", "-1", "--split", "0.5,0.5,0")
    assert result.exit_code == 0, result.output
    return root / "ds"


def _augment(ds: Path, out: Path, *extra):
    result = _cli("shards", ds / "patches", ds / "saliency", "-o", out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "index.json").read_text())


def test_shard_round_trip_and_index(labelled, tmp_path):
    index = _augment(labelled, tmp_path / "s1")
    splits = json.loads((labelled / "splits.json").read_text())["scenes"]
    want = {k: 4 * sum(1 for s in splits.values() if s == k) for k in ("train", "val")}  # 2×2 patches a scene
    assert {k: v["count"] for k, v in index["splits"].items()} == {k: v for k, v in want.items() if v}
    name = index["splits"]["train"]["shards"][0]["file"]
    data = shards.read_shard(tmp_path / "s1" / name)
    assert data["raw"].shape[1:] == (4, 112, 112) and data["raw"].dtype == np.uint16
    assert data["rgb"].shape[1:] == (3, 112, 112) and data["saliency"].shape[1:] == (1, 112, 112)
    assert data["attrs"]["scale"] == 1 and data["attrs"]["saliency_method"] == "spectral-residual"
    sid = data["id"][0]
    raw = rawio.read_packed_png(labelled / "patches" / "raw" / f"{sid}.png")
    np.testing.assert_array_equal(data["raw"][0], raw)
    rgb = np.array(Image.open(labelled / "patches" / "rgb" / f"{sid}.png"))
    want_rgb = np.clip(np.rint(area_downsample(rgb.astype(np.float32))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(data["rgb"][0], np.moveaxis(want_rgb, 2, 0))
    # rewriting the same shards writes nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "s1").glob("*.h5")}
    _augment(labelled, tmp_path / "s1")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s1").glob("*.h5")} == before


def test_copies_are_deterministic_and_scale_2_keeps_sensor_resolution(labelled, tmp_path):
    a = _augment(labelled, tmp_path / "a", "--copies", "3", "--scale", "2", "--seed", "5")
    b = _augment(labelled, tmp_path / "b", "--copies", "3", "--scale", "2", "--seed", "5")
    assert a == b and a["crop"] == 104
    f = a["splits"]["train"]["shards"][0]["file"]
    da, db = shards.read_shard(tmp_path / "a" / f), shards.read_shard(tmp_path / "b" / f)
    np.testing.assert_array_equal(da["raw"], db["raw"])
    assert da["rgb"].shape[1:] == (3, 208, 208) and da["raw"].shape[1:] == (4, 104, 104)
    assert da["id"][:3] == [f"{da['id'][0][:-2]}#{k}" for k in range(3)]


@pytest.fixture(scope="module")
def shard_root(labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    _augment(labelled, out, "--shard-size", "5")
    return out


def test_values_ranges_and_shapes(shard_root):
    ds = ShardDataset(shard_root, "train")
    s = ds[0]
    assert s["raw"].shape == (4, 112, 112) and s["rgb"].shape == (3, 112, 112) and s["saliency"].shape == (1, 112, 112)
    assert -1 <= s["raw"].min() and s["raw"].max() <= 1 and 0 <= s["saliency"].min() and s["saliency"].max() <= 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_stored_extremes_map_to_the_model_ranges(tmp_path):
    """uint16 0 → −1 and 65535 → 1; rgb 0 → −1 and 255 → 1; saliency 0 → 0 and 255 → 1 — through
    ShardDataset's float samples and through compact samples and to_model alike."""
    from raw2rgb.model.data import to_model
    from raw2rgb.files import write_json

    raw = np.zeros((1, 4, 8, 8), np.uint16)
    raw[..., 4:] = 65535
    rgb = np.zeros((1, 3, 8, 8), np.uint8)
    rgb[..., 4:] = 255
    sal = rgb[:, :1].copy()
    shards.write_shard(tmp_path / "train-00000.h5", ["x"], raw, rgb, sal, {"format": 1, "scale": 1})
    write_json(tmp_path / "index.json", {"format": 1, "scale": 1, "splits": {"train": {
        "count": 1, "shards": [{"file": "train-00000.h5", "count": 1}]}}})
    floats = ShardDataset(tmp_path, "train")[0]
    compact = to_model(next(iter(DataLoader(ShardDataset(tmp_path, "train", compact=True), batch_size=1))))
    for s in (floats, {k: v[0] for k, v in compact.items() if k != "id"}):
        for key, low in (("raw", -1.0), ("rgb", -1.0), ("saliency", 0.0)):
            assert s[key].dtype == torch.float32
            assert s[key][..., :4].unique().tolist() == [low] and s[key][..., 4:].unique().tolist() == [1.0], key


def test_workers_yield_the_same_samples_as_none(shard_root):
    ds = ShardDataset(shard_root, "train", augment=True, crop=96, seed=3)
    kw = dict(batch_size=4, shuffle=False)
    single = list(DataLoader(ds, num_workers=0, **kw))
    multi = list(DataLoader(ds, num_workers=2, **kw))
    assert len(single) == len(multi) > 1
    for a, b in zip(single, multi):
        assert a["id"] == b["id"]
        for k in ("raw", "rgb", "saliency"):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert single[0]["raw"].shape == (4, 4, 96, 96)


def test_scale_1_transpose_matches_the_mosaic_transform():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (32, 48, 3)).astype(np.uint8)
    raw = bayer.pack(bayer.mosaic(scene.astype(np.uint16), "RGGB"))
    t = augment.Transform(transpose=True, crop=(1, 2, 8))
    want_raw, want_rgb, want_sal = augment.apply(raw, scene, scene[..., 0], t, 1)
    ds = ShardDataset.__new__(ShardDataset)
    ds.scale = 1
    rgb1 = np.moveaxis(area_downsample(scene.astype(np.float32)), 2, 0)
    got_raw, got_rgb, got_sal = ds._move(raw, rgb1, area_downsample(scene[..., :1].astype(np.float32))[None, ..., 0], t)
    np.testing.assert_array_equal(got_raw, want_raw)
    np.testing.assert_array_equal(got_rgb, np.moveaxis(want_rgb, 2, 0))
    np.testing.assert_array_equal(got_sal[0], want_sal)


def test_distributed_sampler_covers_the_split(shard_root):
    ds = ShardDataset(shard_root, "train")
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        seen += list(sampler)
    assert set(seen) == set(range(len(ds)))


def test_corrupt_shard_names_the_shard_and_sample(shard_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shard_root, copy)
    name = json.loads((copy / "index.json").read_text())["splits"]["train"]["shards"][1]["file"]
    path = copy / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    ds = ShardDataset(copy, "train")
    first_of_second = json.loads((copy / "index.json").read_text())["splits"]["train"]["shards"][0]["count"]
    with pytest.raises(Exception) as info:
        ds[first_of_second + 1]
    assert str(path) in str(info.value) and "sample 1" in str(info.value)
    assert ds[0]["raw"].shape[0] == 4  # the intact shard still reads


@pytest.mark.timeout(240)
def test_killed_augment_stage_resumes(labelled, tmp_path):
    cmd = [sys.executable, "-m", "raw2rgb", "-q", "shards", str(labelled / "patches"), str(labelled / "saliency"),
           "--shard-size", "1", "--copies", "4", "-o"]
    killed = tmp_path / "killed"
    assert 3 <= kill_midway(cmd + [str(killed)], killed, "*.h5", 3) < 24, "killed mid-way"  # 6 scenes × 4 patches
    # Journalled shards are done; one renamed into place just before the kill may not be yet.
    journalled = [json.loads(p.read_text()) for p in (killed / ".journal").glob("*.json")]
    finished = {out: (killed / out).stat().st_mtime_ns for r in journalled for out in r["outputs"]}
    assert len(finished) >= 2
    rerun = subprocess.run(cmd + [str(killed)], capture_output=True, text=True, check=True)
    assert f"{len(finished)} cached" in rerun.stderr
    assert all((killed / n).stat().st_mtime_ns == t for n, t in finished.items())
    clean = tmp_path / "clean"
    subprocess.run(cmd + [str(clean)], capture_output=True, check=True)
    tree = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert tree(killed) == tree(clean)


def test_compact_samples_and_to_model_equal_the_float_samples(shard_root):
    from raw2rgb.model.data import to_model

    compact = ShardDataset(shard_root, "train", augment=True, crop=96, compact=True)
    floats = ShardDataset(shard_root, "train", augment=True, crop=96)
    batch = next(iter(DataLoader(compact, batch_size=4)))
    assert batch["raw"].dtype == torch.uint16 and batch["rgb"].dtype == torch.uint8
    converted = to_model(batch, "cpu")
    want = next(iter(DataLoader(floats, batch_size=4)))
    for k in ("raw", "rgb", "saliency"):
        torch.testing.assert_close(converted[k], want[k], rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="raw must be torch.uint16 .*got torch.float32"):
        to_model(want)  # an already converted batch is refused, not mapped twice or passed through


def test_inspect_command(shard_root, tmp_path):
    result = _cli("inspect", shard_root, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    count = json.loads((shard_root / "index.json").read_text())["splits"]["train"]["count"]
    assert f"train: {count} samples" in result.output and "raw (2, 4, 112, 112)" in result.output
    (tmp_path / "empty").mkdir()
    bad = _cli("inspect", tmp_path / "empty")
    assert bad.exit_code == 1 and "index.json" in bad.output and "Traceback" not in bad.output
