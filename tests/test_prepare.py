"""`raw2rgb prepare`: layouts, alignment against a known homography, rejection, splits, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage.transform import ProjectiveTransform, warp

from raw2rgb import prepare as prep
from raw2rgb.cli import main
from raw2rgb.pipeline import bayer, pairs, rawio, synth  # noqa: F401
from raw2rgb.pipeline.shards import read_saliency_shard as read_shard


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)


def second_camera(scene: np.ndarray, h_true: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Another camera's JPEG of the same scene: its own colour rendition, seen through h_true
    (scene/sensor coordinates -> this image's coordinates)."""
    x = scene.astype(np.float32) / 255
    x = np.clip((x ** 1.15) * np.array([1.08, 1.0, 0.9]), 0, 1)
    out = warp(x, ProjectiveTransform(np.linalg.inv(h_true)), output_shape=shape, order=1)
    return (out * 255 + 0.5).astype(np.uint8)


def _h_true(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    th = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(th), -scale * np.sin(th), tx],
                     [scale * np.sin(th), scale * np.cos(th), ty], [2e-5, -1e-5, 1]])


@pytest.fixture(scope="module")
def two_camera_source(tmp_path_factory):
    """pairs layout: raw/NAME.dng (virtual camera) + rgb/NAME.jpg (a second camera, known H)."""
    src = tmp_path_factory.mktemp("pairs-src")
    truths = {}
    rng = np.random.default_rng(0)
    for name, pattern, h in [("astronaut", "GBRG", _h_true(2.0, 1.05, 40, 20)),
                             ("chelsea", "BGGR", _h_true(-1.5, 0.98, 25, 30))]:
        scene = synth.scene(name, (512, 768))
        cam = synth.Camera(pattern=pattern, noise=0.003)
        synth.write_dng(src / "raw" / f"{name}.dng", synth.capture(scene, cam, rng), cam)
        (src / "rgb").mkdir(exist_ok=True)
        Image.fromarray(second_camera(scene, h, (620, 900))).save(src / "rgb" / f"{name}.jpg", quality=95)
        truths[name] = (h, pattern)
    # a pair whose images show different scenes
    cam = synth.Camera()
    synth.write_dng(src / "raw" / "mismatch.dng", synth.capture(synth.scene("rocket", (512, 768)), cam), cam)
    Image.fromarray(synth.scene("coffee", (512, 768))).save(src / "rgb" / "mismatch.jpg", quality=95)
    (src / "raw" / "lonely.dng").write_bytes((src / "raw" / "mismatch.dng").read_bytes())
    return src, truths


@pytest.fixture(scope="module")
def two_camera_dataset(two_camera_source, tmp_path_factory):
    src, truths = two_camera_source
    out = tmp_path_factory.mktemp("pairs-ds")
    result = _cli("prepare", src, "-o", out, "--patch-size", "64", "--until", "patches", "--min-score", "0.3")
    return out, truths, result


def test_recovered_homography_maps_corners_within_half_a_pixel(two_camera_dataset):
    out, truths, _ = two_camera_dataset
    records = {r["key"]: r for r in json.loads((out / "patches" / "manifest.json").read_text())["items"]}
    for name, (h_true, pattern) in truths.items():
        matrix = np.array(records[name]["info"]["alignment"]["matrix"])
        dy, dx = bayer.unify_offset(pattern)
        # packed (x, y) -> sensor: 2x + 0.5 + crop (a packed pixel's centre among its 2×2 cell)
        packed_to_sensor = np.array([[2, 0, 0.5 + dx], [0, 2, 0.5 + dy], [0, 0, 1.0]])
        truth = h_true @ packed_to_sensor
        h, w = 256 - dy, 384 - dx
        corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T

        got, want = matrix @ corners, truth @ corners
        rms = np.sqrt((((got[:2] / got[2]) - (want[:2] / want[2])) ** 2).sum(axis=0).mean())
        assert rms < 0.5, f"{name}: corner RMS {rms:.3f} px"


def test_aligned_patches_match_the_scene(two_camera_dataset):
    out, _, _ = two_camera_dataset
    rec = next(r for r in json.loads((out / "patches" / "manifest.json").read_text())["items"]
               if r["key"] == "astronaut")
    assert rec["info"]["kept"] >= 12
    scores = [p["score"] for p in rec["info"]["patches"] if "reason" not in p]
    assert np.median(scores) > 0.8  # preview luma and aligned target agree
    rgb = np.array(Image.open(out / "patches" / "rgb" / "astronaut" / "y00064_x00064.png"))
    raw = rawio.read_packed_png(out / "patches" / "raw" / "astronaut" / "y00064_x00064.png")
    assert rgb.shape == (128, 128, 3) and raw.shape == (4, 64, 64) and raw.dtype == np.uint16


def test_mismatched_pair_and_unpaired_file_are_reported(two_camera_dataset):
    out, _, result = two_camera_dataset
    assert result.exit_code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aligned"] == 2 and len(summary["align_failed"]) == 1
    assert "mismatch.dng" in summary["align_failed"][0] and "not the same scene?" in summary["align_failed"][0]
    assert any("lonely.dng: no RGB image" in u for u in summary["unpaired"])
    assert "Traceback" not in result.output
    assert not (out / "patches" / "raw" / "mismatch").exists()


def _zrr_source(root: Path, n_train: int = 6, n_test: int = 2) -> dict[str, np.ndarray]:
    mosaics = {}
    for part, n in (("train", n_train), ("test", n_test)):
        (root / part / "huawei_raw").mkdir(parents=True)
        (root / part / "canon").mkdir(parents=True)
        for i in range(n):
            scene = synth.scene(synth.SCENES[i % 4], (448, 448))
            mosaic = (bayer.mosaic(scene.astype(np.uint16), "RGGB") * 4 + 20).clip(0, 1023)
            if i == 0:  # ZRR saves a crop 8-bit when its max is <= 255
                mosaic = (mosaic // 4).astype(np.uint8)
            else:
                mosaic = mosaic.astype(np.uint16)
            Image.fromarray(mosaic).save(root / part / "huawei_raw" / f"{i}.png")
            Image.fromarray(scene).save(root / part / "canon" / f"{i}.jpg", quality=95)
            mosaics[f"{part}/{i}"] = mosaic
    return mosaics


def test_zrr_folder_values_channel_order_and_fixed_test_split(tmp_path):
    mosaics = _zrr_source(tmp_path / "zrr")
    out = tmp_path / "ds"
    result = _cli("prepare", tmp_path / "zrr", "-o", out, "--until", "patches", "--min-score", "-1")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "prepare.json").read_text())["layout"] == "zrr"
    for key in ("train/0", "train/3", "test/1"):
        m = mosaics[key].astype(np.float64)
        raw = rawio.read_packed_png(out / "patches" / "raw" / key / "y00000_x00000.png")
        want_r = np.rint(np.clip((m[0::2, 0::2] - 63) / (1020 - 63), 0, 1) * 65535)
        want_g2 = np.rint(np.clip((m[1::2, 0::2] - 63) / (1020 - 63), 0, 1) * 65535)
        np.testing.assert_allclose(raw[0], want_r, atol=1)
        np.testing.assert_allclose(raw[3], want_g2, atol=1)
        part, index = key.split("/")
        canon = np.array(Image.open(tmp_path / "zrr" / part / "canon" / f"{index}.jpg"))
        rgb = np.array(Image.open(out / "patches" / "rgb" / key / "y00000_x00000.png"))
        np.testing.assert_array_equal(rgb, canon)  # patches keep the target at sensor resolution
    splits = json.loads((out / "splits.json").read_text())["scenes"]
    assert splits["test/0"] == splits["test/1"] == "test"
    assert all(splits[f"train/{i}"] in ("train", "val") for i in range(6))


def test_aim2019_folder_channel_order(tmp_path):
    src = tmp_path / "aim"
    (src / "TrainingPhoneRaw").mkdir(parents=True)
    (src / "TrainingCanonRGB").mkdir(parents=True)
    planes = np.random.default_rng(4).integers(0, 256, (224, 224, 4)).astype(np.uint8)  # R G B G
    Image.fromarray(planes, "RGBA").save(src / "TrainingPhoneRaw" / "7.png")
    Image.fromarray(synth.scene("coffee", (448, 448))).save(src / "TrainingCanonRGB" / "7.jpg")
    out = tmp_path / "ds"
    assert _cli("prepare", src, "-o", out, "--until", "patches", "--min-score", "-1").exit_code == 0
    raw = rawio.read_packed_png(out / "patches" / "raw" / "training" / "7" / "y00000_x00000.png")
    np.testing.assert_array_equal(raw, np.moveaxis(planes, 2, 0).astype(np.uint16) * 257)


def test_split_is_by_scene_deterministic_and_near_the_ratios():
    scenes = [f"s{i:04d}" for i in range(2000)]
    a = {s: prep.split_of(s, 0, (0.8, 0.1, 0.1)) for s in scenes}
    assert a == {s: prep.split_of(s, 0, (0.8, 0.1, 0.1)) for s in scenes}
    b = {s: prep.split_of(s, 1, (0.8, 0.1, 0.1)) for s in scenes}
    assert a != b
    counts = {k: list(a.values()).count(k) / len(scenes) for k in ("train", "val", "test")}
    assert abs(counts["train"] - 0.8) < 0.04 and abs(counts["val"] - 0.1) < 0.03
    # adding scenes never moves the others
    assert all(prep.split_of(s, 0, (0.8, 0.1, 0.1)) == a[s] for s in scenes[:100])
    assert prep.split_of("x", 0, (1, 0, 0), fixed="test") == "test"


def test_no_scene_leaks_across_splits(tmp_path):
    _zrr_source(tmp_path / "zrr", n_train=12, n_test=0)
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
    _zrr_source(tmp_path / "zrr", n_train=3, n_test=0)
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


def test_pairs_csv_refuses_paths_outside_the_source(tmp_path, two_camera_source):
    src, _ = two_camera_source
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("raw,rgb\nraw/astronaut.dng,rgb/astronaut.jpg\n../../etc/passwd,rgb/chelsea.jpg\n")
    found, problems = pairs.find_pairs(src, "pairs", csv_path)
    assert [p.scene for p in found] == ["astronaut"]
    assert len(problems) == 1 and "outside" in problems[0]


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    _zrr_source(tmp_path / "zrr", n_train=2, n_test=1)
    result = _cli("prepare", tmp_path / "zrr", "-o", tmp_path / "ds", "--dry-run")
    plan = json.loads(result.output)
    assert plan["pairs"] == 3 and plan["config"]["layout"] == "zrr" and plan["stages"][-1] == "shards"
    assert not (tmp_path / "ds").exists()


def test_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _cli("prepare", tmp_path / "empty", "-o", tmp_path / "ds")
    assert result.exit_code == 1 and "no known layout" in result.output and "Traceback" not in result.output


def test_patch_rejection_reasons():
    rng = np.random.default_rng(0)
    h, w, p = 32, 64, 16
    norm = rng.uniform(0.2, 0.6, (4, h, w)).astype(np.float32)
    norm[:, :p, p : 2 * p] = 1.0  # clipped
    norm[:, :p, 2 * p : 3 * p] = 0.01  # dark
    packed = (norm * 65535).astype(np.uint16)
    preview = pairs.preview_luma(norm)
    target = np.repeat(np.repeat(np.repeat(preview[..., None], 3, 2), 2, 0), 2, 1)
    cover = np.ones((2 * h, 2 * w), np.float32)
    cover[: 2 * p, 6 * p :] = 0.5  # the last patch of the first row is half outside the target
    target[2 * p :, : 2 * p] = rng.uniform(0, 1, (2 * (h - p), 2 * p, 3))  # unrelated content
    params = pairs.PatchParams(size=p, stride=p, min_score=0.5, max_clipped=0.5, min_mean=0.05)
    got = {(q.y, q.x): q.reason or "kept" for q in pairs.cut_patches(packed, norm, preview, target, cover, params)}
    assert got[(0, 0)] == "kept" and got[(0, p)] == "clipped" and got[(0, 2 * p)] == "too dark"
    assert got[(0, 3 * p)] == "outside the target" and got[(p, 0)].startswith("score")
    assert got[(p, p)] == "kept"


def test_a_locally_moved_region_drops_exactly_its_patches(tmp_path):
    """A subject that moved between the two exposures: one patch-sized block of the second camera's
    image shows the scene 5 target pixels to the right. That patch's local residual exceeds
    --max-shift and it is dropped with that reason; its neighbours are kept."""
    src = tmp_path / "src"
    scene = synth.scene("astronaut", (512, 768))
    cam = synth.Camera(pattern="RGGB", noise=0.002)
    synth.write_dng(src / "raw" / "moved.dng", synth.capture(scene, cam, np.random.default_rng(1)), cam)
    h = _h_true(0.0, 1.0, 0, 0)
    h[2, :2] = 0
    target = second_camera(scene, h, (512, 768))
    y0, x0, size = 128, 256, 128  # sensor pixels: packed patch (64, 128) of size 64
    target[y0 : y0 + size, x0 + 5 : x0 + size] = target[y0 : y0 + size, x0 : x0 + size - 5]
    (src / "rgb").mkdir()
    Image.fromarray(target).save(src / "rgb" / "moved.jpg", quality=95)
    result = _cli("prepare", src, "-o", tmp_path / "ds", "--patch-size", "64", "--until", "patches",
                  "--min-score", "-1", "--max-shift", "1.5")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ds" / "patches" / "manifest.json").read_text())["items"][0]
    reasons = {p["id"]: p.get("reason", "") for p in record["info"]["patches"]}
    dropped = {k for k, v in reasons.items() if v.startswith("local shift")}
    assert dropped == {"y00064_x00128"}, {k: v for k, v in reasons.items() if v}
    assert "--max-shift 1.5" in reasons["y00064_x00128"]
    residual = record["info"]["alignment"]["residual_px"]
    assert residual["median"] < 0.5 and residual["windows"] > 50


@pytest.mark.parametrize("name,make", [("sky", synth.sky_over_strip), ("wall", synth.wall_with_object)])
def test_mostly_smooth_scenes_align_over_the_whole_frame(tmp_path, name, make):
    """Features see only the strip or the object (an affine fit from them is 0.5–3 px off at the far
    edges); the directional refinement uses the faint texture everywhere, weighted by what it says
    above the noise, and lands within 0.3 px RMS over a 12×12 grid covering the frame (measured:
    sky 0.16, wall 0.03)."""
    src = tmp_path / "src"
    scene = make()
    cam = synth.Camera(pattern="RGGB", noise=0.003)
    synth.write_dng(src / "raw" / f"{name}.dng", synth.capture(scene, cam, np.random.default_rng(0)), cam)
    h_true = _h_true(2.0, 1.05, 40, 20)
    (src / "rgb").mkdir()
    Image.fromarray(second_camera(scene, h_true, (620, 900))).save(src / "rgb" / f"{name}.jpg", quality=95)
    result = _cli("prepare", src, "-o", tmp_path / "ds", "--patch-size", "64", "--until", "patches",
                  "--min-score", "-1", "--min-inliers", "12")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ds" / "patches" / "manifest.json").read_text())["items"][0]
    matrix = np.array(record["info"]["alignment"]["matrix"])
    truth = h_true @ np.array([[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1.0]])
    ys, xs = np.mgrid[0:256:256 / 12, 0:384:384 / 12]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    got, want = matrix @ pts, truth @ pts
    err = np.sqrt((((got[:2] / got[2]) - (want[:2] / want[2])) ** 2).sum(axis=0))
    assert np.sqrt((err**2).mean()) < 0.3, f"{name}: RMS {np.sqrt((err ** 2).mean()):.3f} px, worst {err.max():.3f}"
    assert record["info"]["alignment"]["residual_px"]["windows"] > 100
