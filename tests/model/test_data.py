"""Training shards and ShardDataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from raw2rgb.cli import main
from raw2rgb.files import write_json
from raw2rgb.model.data import ShardDataset
from raw2rgb.pipeline import augment, bayer, shards
from raw2rgb.pipeline.develop import area_downsample
from raw2rgb.pipeline.shards import ShardError
from tests.conftest import build_shards


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def shard_root(labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    build_shards(labelled, out, "--shard-size", "5")
    return out


def test_samples_are_the_stored_values_in_the_model_ranges(shard_root):
    ds = ShardDataset(shard_root, "train")
    name = json.loads((shard_root / "index.json").read_text())["splits"]["train"]["shards"][0]["file"]
    stored = shards.read_shard(shard_root / name)
    s = ds[1]
    assert s["id"] == stored["id"][1]
    assert s["raw"].shape == (4, 112, 112) and s["rgb"].shape == (3, 112, 112) and s["saliency"].shape == (1, 112, 112)
    want = {"raw": stored["raw"][1] / 65535.0 * 2 - 1, "rgb": stored["rgb"][1] / 255.0 * 2 - 1,
            "saliency": stored["saliency"][1] / 255.0}
    for k, v in want.items():
        torch.testing.assert_close(s[k], torch.from_numpy(v).float(), rtol=0, atol=1e-6)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_an_augmented_sample_is_its_transform_applied_to_the_scene(tmp_path):
    """Scale 1 on the fly: the transposed, cropped sample equals the capture of the transposed,
    cropped scene (G1 and G2 swap rows, so their planes swap too)."""
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(8)]
    raw = np.stack([bayer.pack(bayer.mosaic(sc.astype(np.uint16) * 257, "RGGB")) for sc in scenes])
    rgb = np.stack([np.moveaxis(np.rint(area_downsample(sc.astype(np.float32))), 2, 0) for sc in scenes])
    sal = rgb[:, :1].copy()
    shards.write_shard(tmp_path / "train-00000.h5", [str(i) for i in range(8)], raw, rgb.astype(np.uint8),
                       sal.astype(np.uint8), {"format": shards.SHARD_FORMAT, "scale": 1})
    write_json(tmp_path / "index.json", {"format": shards.SHARD_FORMAT, "scale": 1, "splits": {"train": {
        "count": 8, "shards": [{"file": "train-00000.h5", "count": 8}]}}})
    ds = ShardDataset(tmp_path, "train", augment=True, crop=8, seed=1, compact=True)
    moved = [i for i in range(8) if ds.transform(i).transpose]
    assert moved and len(moved) < 8  # both kinds occur
    for i in range(8):
        t = ds.transform(i)
        want_raw, want_rgb, _ = augment.apply(raw[i], scenes[i], scenes[i][..., 0], t, 1)
        got = ds[i]
        np.testing.assert_array_equal(got["raw"].numpy(), want_raw)
        np.testing.assert_array_equal(got["rgb"].numpy(), np.moveaxis(np.rint(want_rgb), 2, 0).astype(np.uint8))


def test_forked_workers_open_their_own_shards(shard_root):
    """h5py handles must not cross a fork: a child of a process that read a sample (and so holds
    open shards) opens its own instead of reading through the parent's."""
    import multiprocessing as mp

    ds = ShardDataset(shard_root, "train", compact=True)
    first = ds[0]["raw"]
    parent_handle = ds._files[ds.shards[0]][-1]
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        same_handle, equal = pool.apply(_read_in_child, (ds, parent_handle.id.id, first.numpy()))
    assert not same_handle and equal


def _read_in_child(ds, parent_id, first):
    sample = ds[0]["raw"].numpy()
    return ds._files[ds.shards[0]][-1].id.id == parent_id and ds._pid != os.getpid(), bool((sample == first).all())


def test_stored_extremes_map_to_the_model_ranges(tmp_path):
    """uint16 0 → −1 and 65535 → 1; rgb 0 → −1 and 255 → 1; saliency 0 → 0 and 255 → 1 — through
    ShardDataset's float samples and through compact samples and to_model alike."""
    from raw2rgb.files import write_json
    from raw2rgb.model.data import to_model

    raw = np.zeros((1, 4, 8, 8), np.uint16)
    raw[..., 4:] = 65535
    rgb = np.zeros((1, 3, 8, 8), np.uint8)
    rgb[..., 4:] = 255
    sal = rgb[:, :1].copy()
    shards.write_shard(tmp_path / "train-00000.h5", ["x"], raw, rgb, sal, {"format": shards.SHARD_FORMAT, "scale": 1})
    write_json(tmp_path / "index.json", {"format": shards.SHARD_FORMAT, "scale": 1, "splits": {"train": {
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


def test_corrupt_shard_names_the_shard_and_sample(shard_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shard_root, copy)
    name = json.loads((copy / "index.json").read_text())["splits"]["train"]["shards"][1]["file"]
    path = copy / name
    # a frame rule: the dataset rule's gains add up every train shard, the corrupt one included
    ds = ShardDataset(copy, "train", white_balance="frame-grey-world")
    # corrupted after the folder was opened (and checked): the read names the shard and the sample
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    first_of_second = json.loads((copy / "index.json").read_text())["splits"]["train"]["shards"][0]["count"]
    with pytest.raises(ShardError) as info:
        ds[first_of_second + 1]
    assert str(path) in str(info.value) and "sample 1" in str(info.value)
    assert ds[0]["raw"].shape[0] == 4  # the intact shard still reads
    with pytest.raises(ShardError, match=str(path)):
        ShardDataset(copy, "train", white_balance="dataset")[0]
    with pytest.raises(ShardError, match=f"^{path}: unreadable training shard"):  # opened after: refused at once
        ShardDataset(copy, "train", white_balance="frame-grey-world")


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


def test_scale_2_augmentation_without_a_crop_keeps_every_sample_one_size(tmp_path):
    """The whole dihedral group costs a pixel at scale 2; without a crop only moves that keep the
    size are drawn, so batches collate."""
    from tests.model.conftest import make_shards

    root = make_shards(tmp_path / "s2", {"train": 8}, size=16, scale=2)
    ds = ShardDataset(root, "train", augment=True, compact=True)
    assert {tuple(ds[i]["raw"].shape) for i in range(8)} == {(4, 16, 16)}
    assert any(ds.transform(i).transpose for i in range(8))
    cropped = ShardDataset(root, "train", augment=True, crop=8, compact=True)
    assert {tuple(cropped[i]["raw"].shape) for i in range(8)} == {(4, 8, 8)}
    assert any(cropped.transform(i).moves_phase and not cropped.transform(i).transpose for i in range(8))
