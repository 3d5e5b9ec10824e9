"""Finding pairs in every layout, cutting and scoring patches, reporting what cannot be paired."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from raw2rgb.cli import main
from raw2rgb.pipeline import bayer, pairs, rawio, synth  # noqa: F401
from tests.conftest import zrr_source


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=False)




def test_zrr_folder_values_channel_order_and_fixed_test_split(tmp_path):
    mosaics = zrr_source(tmp_path / "zrr")
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


def test_pairs_csv_refuses_paths_outside_the_source(tmp_path, two_camera_source):
    src, _ = two_camera_source
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("raw,rgb\nraw/astronaut.dng,rgb/astronaut.jpg\n../../etc/passwd,rgb/chelsea.jpg\n")
    found, problems = pairs.find_pairs(src, "pairs", csv_path)
    assert [p.scene for p in found] == ["astronaut"]
    assert len(problems) == 1 and "outside" in problems[0]


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


def test_mismatched_pair_and_unpaired_file_are_reported(two_camera_dataset):
    out, _, result = two_camera_dataset
    assert result.exit_code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aligned"] == 2 and len(summary["align_failed"]) == 1
    assert "mismatch.dng" in summary["align_failed"][0] and "not the same scene?" in summary["align_failed"][0]
    assert any("lonely.dng: no RGB image" in u for u in summary["unpaired"])
    assert "Traceback" not in result.output
    assert not (out / "patches" / "raw" / "mismatch").exists()


