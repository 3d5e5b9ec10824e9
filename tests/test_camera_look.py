"""A camera's look from a photographer's own shoot: RAW+JPEG (or RAW alone, with the JPEG inside it)
through the product's own prepare, train and convert — targets never enlarged, a held-out band
from one frame, conversion at the resolution the model learned."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raw2rgb.model import pace as pace_module
from raw2rgb.pipeline import align, pairs, rawio, synth
from tests.conftest import cli

# The virtual camera's shoot: a 384×576 sensor and its own JPEG a third of that (128×192), as a camera
# writes an S-size JPEG: binned by 3, the packed grid is 64×96 and its targets 128×192.
SIZE, THIRD = (384, 576), 3.0
PATCH = ["--patch-size", "16", "--stride", "16", "--saliency-method", "spectral-residual"]
TINY = ["--preset", "tiny", "--epochs", "2,0", "--batch-size", "2", "--workers", "0"]


def _patches(ds: Path) -> dict:
    return json.loads((ds / "patches" / "manifest.json").read_text())["items"][0]["info"]


@pytest.fixture(scope="module")
def shoot(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("look") / "shoot"
    synth.camera_shoot(d, size=SIZE, jpeg_scale=THIRD)
    return d


@pytest.fixture(scope="module")
def prepared(shoot, tmp_path_factory) -> tuple[Path, object]:
    ds = tmp_path_factory.mktemp("look-ds") / "ds"
    r = cli("prepare", shoot, "-o", ds, *PATCH)
    return ds, r


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> Path:
    ds, _ = prepared
    run = tmp_path_factory.mktemp("look-run") / "run"
    r = cli("train", ds, "-o", run, *TINY)  # no --perceptual-weight 0: the tiny preset has no stage 2
    assert r.exit_code == 0, r.output
    return run


# -- targets are never enlarged -------------------------------------------------------------------------

def test_a_jpeg_a_third_of_the_sensor_bins_the_raw_and_its_targets_are_the_jpeg(shoot, prepared):
    ds, r = prepared
    assert r.exit_code == 0, r.output
    info = _patches(ds)
    assert info["binning"] == 3 and info["packed_size"] == [64, 96] and info["target_size"] == [128, 192]
    jpeg = np.array(Image.open(shoot / "astronaut.jpg").convert("RGB"))
    assert jpeg.shape == (128, 192, 3)
    resampled = align.area_resize(jpeg, (128, 192))  # the grid is the JPEG's own size: resampling keeps it
    assert info["alignment"].get("snapped")  # the camera's own JPEG is the frame: used as it is, not warped
    kept = [p for p in info["patches"] if not p.get("reason")]
    assert kept
    for p in kept:  # every target patch is the area-resampled JPEG, bit for bit
        got = np.array(Image.open(ds / "patches" / "rgb" / "astronaut" / f"{p['id']}.png"))
        y, x = 2 * p["y"], 2 * p["x"]
        assert np.array_equal(got, resampled[y : y + 32, x : x + 32])
    assert "binned by 3" in r.output


def test_a_smaller_jpeg_of_a_non_integer_factor_is_area_resampled_onto_the_binned_grid(tmp_path):
    synth.camera_shoot(tmp_path / "s", size=SIZE, jpeg_scale=3.2)  # 120×180: bins by 4, targets 96×144
    r = cli("prepare", tmp_path / "s", "-o", tmp_path / "ds", *PATCH)
    assert r.exit_code == 0, r.output
    info = _patches(tmp_path / "ds")
    assert info["binning"] == 4 and info["packed_size"] == [48, 72] and info["target_size"] == [96, 144]
    assert 2 * 48 <= 120 and 2 * 72 <= 180  # never larger than the JPEG


def test_a_full_size_jpeg_keeps_todays_path(tmp_path):
    synth.camera_shoot(tmp_path / "s", size=(128, 192), jpeg_scale=1.0)
    r = cli("prepare", tmp_path / "s", "-o", tmp_path / "ds", *PATCH, "--until", "patches")
    assert r.exit_code == 0, r.output
    info = _patches(tmp_path / "ds")
    assert info["binning"] == 1 and info["packed_size"] == [64, 96] and info["target_size"] == [128, 192]


# -- RAW files alone: the JPEG inside each ------------------------------------------------------------------

def test_raw_files_alone_use_their_embedded_jpeg_and_unusable_ones_are_listed(tmp_path, monkeypatch):
    src = tmp_path / "raws"
    synth.camera_shoot(src, size=SIZE, jpeg_scale=THIRD, embedded=True)
    cam = synth.Camera()
    mosaic = synth.capture(synth.scene("coffee", SIZE), cam, np.random.default_rng(1))
    synth.write_dng(src / "plain.dng", mosaic, cam)  # no preview at all
    synth.write_dng(src / "thumb.dng", mosaic, cam, preview=np.full((16, 24, 3), 128, np.uint8))  # an EXIF thumbnail
    synth.write_dng(src / "strip.dng", mosaic, cam, preview=np.full((16, 192, 3), 128, np.uint8))  # not the frame
    monkeypatch.setattr(rawio, "EMBEDDED_MIN_WIDTH", 100)  # the test's small frames: 192 passes, 24 does not
    assert pairs.detect_layout(src) == "raw+embedded"
    found, problems = pairs.find_pairs(src, "raw+embedded")
    assert [(p.scene, p.embedded, Path(p.rgb).name) for p in found] == [("astronaut", True, "astronaut.dng")]
    assert problems == []  # skipped, not failed
    r = cli("prepare", src, "-o", tmp_path / "ds", *PATCH, "--until", "patches")
    assert r.exit_code == 0, r.output
    assert "using the JPEG embedded in it: astronaut.dng (192×128)" in r.output
    skipped = [line for line in r.output.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("warning: skipped 3 RAW files without a usable JPEG")
    assert "plain.dng: holds no embedded JPEG" in skipped[0]
    assert "strip.dng: its embedded JPEG is 192×16, not of the frame's shape (576×384)" in skipped[0]
    assert "thumb.dng: its embedded JPEG is 24 pixels wide, under the 100" in skipped[0]
    info = _patches(tmp_path / "ds")
    assert info["binning"] == 3 and info["target_size"] == [128, 192]
    embedded = np.array(Image.open(io.BytesIO(rawio.embedded_jpeg(src / "astronaut.dng"))).convert("RGB"))
    p = next(p for p in info["patches"] if not p.get("reason"))
    got = np.array(Image.open(tmp_path / "ds" / "patches" / "rgb" / "astronaut" / f"{p['id']}.png"))
    if info["alignment"].get("snapped"):
        assert np.array_equal(got, embedded[2 * p["y"] : 2 * p["y"] + 32, 2 * p["x"] : 2 * p["x"] + 32])


def test_raw_and_jpeg_falls_back_to_the_embedded_jpeg_per_file(tmp_path, monkeypatch):
    src = tmp_path / "mixed"
    synth.camera_shoot(src, size=SIZE, jpeg_scale=THIRD, scenes=("astronaut",))
    synth.camera_shoot(src, size=SIZE, jpeg_scale=THIRD, scenes=("chelsea",), embedded=True)
    monkeypatch.setattr(rawio, "EMBEDDED_MIN_WIDTH", 100)
    assert pairs.detect_layout(src) == "raw+jpeg"
    found, problems = pairs.find_pairs(src, "raw+jpeg")
    assert [(p.scene, p.embedded, Path(p.rgb).suffix) for p in found] == [("astronaut", False, ".jpg"),
                                                                          ("chelsea", True, ".dng")]
    assert problems == []


# -- a held-out band from one frame ------------------------------------------------------------------------

def test_one_frame_holds_out_a_band_for_val_and_test_never_near_a_train_patch(prepared):
    ds, r = prepared
    assert r.exit_code == 0, r.output
    assert "held-out band" in r.output
    splits = json.loads((ds / "splits.json").read_text())
    assert splits["scenes"] == {"astronaut": "band"} and "held-out band" in splits["how"]
    by_split: dict[str, list[tuple[int, int]]] = {}
    for pid, split in splits["patches"].items():
        y, x = (int(v[1:]) for v in pid.rsplit("/", 1)[1].split("_"))
        by_split.setdefault(str(split), []).append((y, x))
    assert by_split["test"] and by_split["val"] and by_split["train"]
    size = 16
    band = min(x for name in ("val", "test") for _, x in by_split[name])
    # the right-hand quarter, on the patch grid: 96 × 0.75 = 72 → the column at 80
    assert band == 80
    assert max(x for _, x in by_split["train"]) + size <= band - size  # a patch's gap to the band
    assert all(y + size / 2 <= 32 for y, _ in by_split["val"]) and all(y + size / 2 > 32 for y, _ in by_split["test"])
    index = json.loads((ds / "shards" / "index.json").read_text())
    assert index["binning"] == 3 and "held-out band" in index["split"]
    counts = {k: v["count"] for k, v in index["splits"].items()}
    assert counts == {k: len(v) for k, v in by_split.items() if k != "None"}
    inspect = cli("inspect", ds)
    assert "binning: 3" in inspect.output and "held-out band" in inspect.output


def test_many_scenes_still_split_by_scene(tmp_path):
    synth.camera_shoot(tmp_path / "s", size=(128, 192), jpeg_scale=1.0,
                       scenes=("astronaut", "chelsea", "coffee", "rocket", "chart"))
    r = cli("prepare", tmp_path / "s", "-o", tmp_path / "ds", *PATCH, "--split", "0.6,0.2,0.2", "--min-inliers", "8")
    assert r.exit_code == 0, r.output
    splits = json.loads((tmp_path / "ds" / "splits.json").read_text())
    assert sorted(splits["scenes"].values()) == ["test", "train", "train", "train", "val"]
    assert "patches" not in splits and splits["how"].startswith("by scene")


# -- train and convert at the resolution learned -------------------------------------------------------------

def test_a_model_of_binned_data_converts_at_the_jpegs_resolution(shoot, prepared, trained, tmp_path):
    ds, _ = prepared
    config = json.loads((trained / "config.json").read_text())
    assert config["config"]["generator"]["binning"] == 3
    r = cli("convert", shoot / "astronaut.dng", "-o", tmp_path / "model", "--checkpoint", trained)
    assert r.exit_code == 0, r.output
    out = Image.open(tmp_path / "model" / "astronaut.png")
    jpeg = Image.open(shoot / "astronaut.jpg")
    assert out.size == (192, 128) and out.size[0] <= jpeg.size[0]  # no wider than the camera's JPEG
    assert "binned by 3, as the model learned it" in r.output
    r = cli("convert", shoot / "astronaut.dng", "-o", tmp_path / "isp", "--method", "isp")
    assert r.exit_code == 0 and Image.open(tmp_path / "isp" / "astronaut.png").size == (576, 384)  # full resolution
    ev = cli("evaluate", ds, "--split", "test", "--checkpoint", trained, "-o", tmp_path / "ev")
    assert ev.exit_code == 0, ev.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["images"] == 2 and summary["psnr"] > 20


def test_training_says_its_pace_in_the_log_and_warns_of_a_long_run(prepared, tmp_path, monkeypatch):
    ds, _ = prepared
    monkeypatch.setattr(pace_module, "PROGRESS_EVERY", 0.0)
    monkeypatch.setattr(pace_module, "ESTIMATE_AFTER", (1, 0.0))
    monkeypatch.setattr(pace_module, "LONG_RUN", 1e-6)  # any run is "long": the advice shows
    r = cli("train", ds, "-o", tmp_path / "run", *TINY)
    assert r.exit_code == 0, r.output
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "estimated: " in log and "steps left" in log
    assert "this run would take about" in log and "fewer --epochs or smaller --crop" in log
    lines = [line for line in log.splitlines() if "samples/s, loss" in line]
    assert lines and all(" left" in line and "step " in line for line in lines)


def test_pace_counts_the_whole_run_and_the_time_left():
    pace = pace_module.Pace(total=100, done=0, device="cpu", preset="standard")
    pace.first, pace.t_first = 10, 0.0
    import time

    pace.t_first = time.perf_counter() - 9.0  # 9 s for steps 10..19: about 1 step/s
    assert pace.rate(19) == pytest.approx(1.0, rel=0.05)
    assert pace_module._duration(3725) == "1 h 02 min" and pace_module._duration(75) == "1 min 15 s"


def test_a_file_without_a_colour_matrix_says_so_on_the_console(tmp_path):
    frame = np.random.default_rng(0).integers(0, 1023, size=(128, 192), dtype=np.uint16)
    Image.fromarray(frame).save(tmp_path / "m.png")  # a ZRR mosaic: no metadata at all
    r = cli("convert", tmp_path / "m.png", "-o", tmp_path / "out", "--method", "isp")
    assert r.exit_code == 0, r.output
    assert "m.png: no white balance or colour matrix in the file" in r.output


def test_a_shoots_defaults_are_64_pixel_patches_overlapping_by_half(shoot, tmp_path):
    r = cli("prepare", shoot, "-o", tmp_path / "ds", "--dry-run")
    assert r.exit_code == 0, r.output
    config = json.loads(r.output)["config"]
    assert config["layout"] == "raw+jpeg" and config["scale"] == 2
    assert config["patch"]["size"] == 64 and config["patch"]["stride"] == 32
    assert json.loads(cli("prepare", shoot, "-o", tmp_path / "ds", "--dry-run", "--patch-size", "96").output)[
        "config"]["patch"]["stride"] == 48
