"""The shards stage: training shards from patches and saliency, copies, index, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from raw2rgb.files import json_bytes
from raw2rgb.pipeline import rawio, shards
from raw2rgb.pipeline.develop import area_downsample
from tests.conftest import build_shards, kill_midway


def test_shard_round_trip_and_index(labelled, tmp_path):
    index = build_shards(labelled, tmp_path / "s1")
    splits = json.loads((labelled / "splits.json").read_text())["scenes"]
    want = {k: 4 * sum(1 for s in splits.values() if s == k) for k in ("train", "val")}  # 2×2 patches a scene
    assert {k: v["count"] for k, v in index["splits"].items()} == {k: v for k, v in want.items() if v}
    name = index["splits"]["train"]["shards"][0]["file"]
    data = shards.read_shard(tmp_path / "s1" / name)
    assert data["raw"].shape[1:] == (4, 112, 112) and data["raw"].dtype == np.uint16
    assert data["rgb"].shape[1:] == (3, 112, 112) and data["saliency"].shape[1:] == (1, 112, 112)
    assert data["attrs"]["scale"] == 1 and data["attrs"]["saliency_method"] == "spectral-residual"
    typed = shards.read_index(tmp_path / "s1")  # the typed index is the file, byte for byte
    assert json_bytes(typed.to_json()) == (tmp_path / "s1" / shards.INDEX).read_bytes()
    assert typed.scale == 1 and typed.count("train") == want["train"] and typed.count("test") == 0
    assert typed.splits["train"].shards[0] == shards.ShardFile(name, typed.splits["train"].shards[0].count)
    sid = data["id"][0]
    raw = rawio.read_packed_png(labelled / "patches" / "raw" / f"{sid}.png")
    np.testing.assert_array_equal(data["raw"][0], raw)
    rgb = np.array(Image.open(labelled / "patches" / "rgb" / f"{sid}.png"))
    want_rgb = np.clip(np.rint(area_downsample(rgb.astype(np.float32))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(data["rgb"][0], np.moveaxis(want_rgb, 2, 0))
    # rewriting the same shards writes nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "s1").glob("*.h5")}
    build_shards(labelled, tmp_path / "s1")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s1").glob("*.h5")} == before


def test_copies_are_deterministic_and_scale_2_keeps_sensor_resolution(labelled, tmp_path):
    a = build_shards(labelled, tmp_path / "a", "--copies", "3", "--scale", "2", "--seed", "5")
    b = build_shards(labelled, tmp_path / "b", "--copies", "3", "--scale", "2", "--seed", "5")
    assert a == b and a["crop"] == 104
    f = a["splits"]["train"]["shards"][0]["file"]
    da, db = shards.read_shard(tmp_path / "a" / f), shards.read_shard(tmp_path / "b" / f)
    np.testing.assert_array_equal(da["raw"], db["raw"])
    assert da["rgb"].shape[1:] == (3, 208, 208) and da["raw"].shape[1:] == (4, 104, 104)
    assert da["id"][:3] == [f"{da['id'][0][:-2]}#{k}" for k in range(3)]


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


@pytest.mark.parametrize("index, why", [
    ({"format": shards.SHARD_FORMAT, "scale": 1, "splits": {"train": {"count": 1}}},
     r"malformed shard index \(no 'shards'\)"),
    ({"format": shards.SHARD_FORMAT, "scale": "one", "splits": {}}, "malformed shard index"),
    ({"format": 99, "scale": 1, "splits": {}}, "shard format 99, this raw2rgb reads format"),
    ({"format": shards.SHARD_FORMAT, "scale": 1,
      "splits": {"train": {"count": 1, "shards": [{"file": "../x.h5", "count": 1}]}}}, "lies outside the folder"),
])
def test_a_bad_index_is_refused_with_what_is_wrong(tmp_path, index, why):
    (tmp_path / shards.INDEX).write_text(json.dumps(index))
    with pytest.raises(shards.ShardError, match=why):
        shards.read_index(tmp_path)
