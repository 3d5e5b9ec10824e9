"""`raw2rgb prepare`: layouts, alignment against a known homography, rejection, splits, caching."""

from __future__ import annotations

import json

from click.testing import CliRunner

from raw2rgb import prepare as prep
from raw2rgb.cli import main
from raw2rgb.pipeline import bayer, pairs, rawio, synth  # noqa: F401
from raw2rgb.pipeline.shards import read_saliency_shard as read_shard
from tests.conftest import zrr_source


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)


def test_splits_are_by_scene_deterministic_and_as_near_the_ratios_as_whole_scenes_allow():
    nine = {f"s{i}": None for i in range(9)}
    a = prep.assign_splits(nine, 0, (0.67, 0.33, 0))
    assert sorted(a.values()).count("train") == 6 and sorted(a.values()).count("val") == 3  # not 4 / 5
    assert a == prep.assign_splits(nine, 0, (0.67, 0.33, 0))
    assert any(prep.assign_splits(nine, s, (0.67, 0.33, 0)) != a for s in range(1, 4))  # the seed decides
    many = {f"s{i:04d}": None for i in range(2000)}
    big = prep.assign_splits(many, 0, (0.8, 0.1, 0.1))
    assert [list(big.values()).count(k) for k in ("train", "val", "test")] == [1600, 200, 200]
    assert prep.assign_splits({"x": "test", "y": None}, 0, (1, 0, 0)) == {"x": "test", "y": "train"}


def test_adding_scenes_keeps_the_splits_of_the_others():
    first = {f"s{i}": None for i in range(10)}
    a = prep.assign_splits(first, 3, (0.7, 0.3, 0))
    more = {**first, **{f"t{i}": None for i in range(10)}}
    b = prep.assign_splits(more, 3, (0.7, 0.3, 0), previous=a)
    assert all(b[s] == a[s] for s in first)
    assert [list(b.values()).count(k) for k in ("train", "val")] == [14, 6]


def test_no_scene_leaks_across_splits(tmp_path):
    zrr_source(tmp_path / "zrr", n_train=12, n_test=0)
    out = tmp_path / "ds"
    assert _cli("prepare", tmp_path / "zrr", "-o", out, "--until", "patches", "--patch-size", "112",
                "--split", "0.5,0.5,0", "--min-score", "-1").exit_code == 0
    splits = json.loads((out / "splits.json").read_text())["scenes"]
    by_split: dict[str, set[str]] = {}
    for p in (out / "patches" / "rgb").rglob("*.png"):
        scene = str(p.parent.relative_to(out / "patches" / "rgb"))
        by_split.setdefault(splits[scene], set()).add(scene)
    assert set(by_split) == {"train", "val"}
    assert not by_split["train"] & by_split["val"]
    assert sum(len(v) for v in by_split.values()) == 12


def test_changing_one_stage_reruns_it_and_the_ones_after(tmp_path):
    zrr_source(tmp_path / "zrr", n_train=3, n_test=0)
    out = tmp_path / "ds"
    base = ["prepare", tmp_path / "zrr", "-o", out, "--saliency-method", "spectral-residual", "--min-score", "-1"]
    first = _cli(*base)
    assert first.exit_code == 0, first.output
    assert "unpack: 3 done" in first.output and "patches: 3 done" in first.output
    again = _cli(*base)
    assert "unpack: 0 done, 3 cached" in again.output and "patches: 0 done, 3 cached" in again.output
    assert "saliency: 0 done, 1 cached" in again.output
    smaller = _cli(*base, "--patch-size", "112")
    assert "unpack: 0 done, 3 cached" in smaller.output and "patches: 3 done, 0 cached" in smaller.output
    assert "saliency: 1 done, 0 cached" in smaller.output
    ids = {i for p in (out / "saliency").glob("*.h5") for i in read_shard(p).ids}
    assert len(ids) == 3 * 4 and "train/0/y00112_x00112" in ids  # old 224 patches are gone
    forced = _cli(*base, "--patch-size", "112", "--force", "saliency")
    assert "patches: 0 done, 3 cached" in forced.output and "saliency: 1 done" in forced.output


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    zrr_source(tmp_path / "zrr", n_train=2, n_test=1)
    result = _cli("prepare", tmp_path / "zrr", "-o", tmp_path / "ds", "--dry-run")
    plan = json.loads(result.output)
    assert plan["pairs"] == 3 and plan["config"]["layout"] == "zrr" and plan["stages"][-1] == "shards"
    assert not (tmp_path / "ds").exists()
