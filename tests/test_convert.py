"""`raw2rgb convert`: both methods, caching, per-file failures, bad options, the camera warning, what the
outputs carry (EXIF, ICC) and highlights rolled off to white where the RAW clipped."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from PIL import ExifTags, Image, ImageCms

from raw2rgb.cli import main
from raw2rgb.model import checkpoint
from raw2rgb.model.checkpoint import load as load_checkpoint
from raw2rgb.model.train import Runtime, TrainConfig, train
from raw2rgb.pipeline import develop, synth
from raw2rgb.pipeline import profile as colour_profile
from tests.model.conftest import make_shards, tiny_config


def _cli(*args):
    return CliRunner().invoke(main, ["-q", *map(str, args)])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("convert")
    root = make_shards(tmp / "shards", {"train": 4, "val": 2})
    cfg = tiny_config()
    train(root, tmp / "run", cfg, Runtime(workers=0))
    return tmp / "run"


@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("raws")
    synth.sample_dngs(d, size=(128, 192))
    (d / "broken.dng").write_bytes(b"II*\x00 this is not a raw file")
    return d


def test_isp_converts_every_file_and_reports_the_broken_one(raws, tmp_path):
    r = _cli("convert", raws, "-o", tmp_path / "out")
    assert r.exit_code == 1  # one file failed
    assert "broken.dng" in r.output and "Traceback" not in r.output
    outs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert outs == ["astronaut_rggb.png", "chelsea_bggr.png", "coffee_grbg.png", "rocket_gbrg.png"]
    im = np.array(Image.open(tmp_path / "out" / "astronaut_rggb.png"))
    assert im.shape == (128, 192, 3) and im.dtype == np.uint8  # sensor resolution
    again = _cli("convert", raws / "astronaut_rggb.dng", "-o", tmp_path / "out")
    assert again.exit_code == 0 and "0 done, 1 cached" in again.output


def test_model_converts_at_its_output_scale_and_caches(raws, run_dir, tmp_path):
    args = ("convert", raws / "chelsea_bggr.dng", raws / "coffee_grbg.dng", "-o", tmp_path / "m",
            "--checkpoint", run_dir, "--tile", "32", "--overlap", "8", "--format", "tiff16")
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    import tifffile

    img = tifffile.imread(tmp_path / "m" / "chelsea_bggr.tif")
    assert img.dtype == np.uint16 and img.shape == (63, 95, 3)  # packed resolution after the BGGR crop
    assert "0 done, 2 cached" in _cli(*args).output
    changed = _cli(*args[:-6], "--tile", "48", "--overlap", "8", "--format", "tiff16")
    assert "2 done" in changed.output  # another tiling changes pixels: converted again


def test_camera_other_than_the_training_camera_is_warned(raws, run_dir, tmp_path):
    ckpt = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    ckpt["cameras"] = ["Canon EOS 5D Mark IV"]
    ckpt["sha256"]["meta"] = checkpoint.content_hash({k: ckpt[k] for k in checkpoint.META})  # edited, not corrupted
    torch.save(ckpt, tmp_path / "c.pt")
    r = CliRunner().invoke(main, ["convert", str(raws / "rocket_gbrg.dng"), "-o", str(tmp_path / "w"),
                                  "--checkpoint", str(tmp_path / "c.pt"), "--tile", "32", "--overlap", "8"])
    assert r.exit_code == 0, r.output
    assert "taken with raw2rgb Virtual GBRG, the model was trained on Canon EOS 5D Mark IV" in r.output


def test_bad_options_and_checkpoints_are_one_line(raws, run_dir, tmp_path):
    cases = [
        (("--checkpoint", run_dir, "--tile", "60"), "--tile 60: a multiple of 8"),
        (("--checkpoint", run_dir, "--overlap", "12"), "--overlap 12: a non-negative multiple of 8"),
        (("--method", "model"), "needs --checkpoint"),
        (("--checkpoint", raws / "broken.dng"), "broken.dng: not a readable checkpoint"),
    ]
    for extra, msg in cases:
        r = _cli("convert", raws / "chelsea_bggr.dng", "-o", tmp_path / "x", *extra)
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
    (tmp_path / "file").write_text("")
    r = _cli("convert", raws / "chelsea_bggr.dng", "-o", tmp_path / "file")
    assert r.exit_code != 0 and "file" in r.output and "Traceback" not in r.output


def test_checkpoint_of_another_version_is_refused(raws, run_dir, tmp_path):
    ckpt = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    ckpt["format"] = 2
    torch.save(ckpt, tmp_path / "v2.pt")
    r = _cli("convert", raws / "chelsea_bggr.dng", "-o", tmp_path / "x", "--checkpoint", tmp_path / "v2.pt")
    assert r.exit_code == 1 and "checkpoint format 2" in r.output


def test_save_checkpoint_failure_is_an_error(run_dir, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "latest.pt").mkdir()  # a folder where the file should go: the rename fails
    from raw2rgb.model.discriminator import Discriminator
    from raw2rgb.model.generator import Generator
    from raw2rgb.model.presets import PRESETS

    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "ro" / "latest.pt", {"G": Generator(PRESETS["tiny"].generator),
                                                        "D": Discriminator()},
                        TrainConfig().to_json(), {})


# -- what the outputs carry ---------------------------------------------------------------------------------

SHOT = {"DateTimeOriginal": "2018:07:11 01:18:47", "ExposureTime": (1, 640), "FNumber": (63, 10), "ISO": 3200,
        "FocalLength": (129, 1), "LensModel": "E 55-210mm F4.5-6.3 OSS"}
# sRGB's colorants adapted to D50, the ICC connection space: the sRGB profile's rXYZ, gXYZ, bXYZ
SRGB_COLORANTS = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7139))


def _shot(path: Path, orientation: int) -> Path:
    camera = synth.Camera(make="SONY", model="ILCE-7RM3")
    return synth.write_dng(path, synth.capture(synth.scene("astronaut", (48, 80)), camera), camera,
                           exif={**SHOT, "Orientation": orientation})


def _read_back(path: Path) -> tuple[np.ndarray, dict, dict, bytes]:
    """Pixels, IFD0, the Exif IFD (IFD0 again for a TIFF, which holds them there) and the ICC profile."""
    if path.suffix == ".tif":
        with tifffile.TiffFile(path) as tif:
            tags = {t.code: t.value for t in tif.pages[0].tags.values()}
            return tif.pages[0].asarray(), tags, tags, tags[34675]
    with Image.open(path) as im:
        exif = im.getexif()
        return np.asarray(im), dict(exif), dict(exif.get_ifd(ExifTags.IFD.Exif)), im.info["icc_profile"]


def _ratio(value) -> Fraction:
    return Fraction(*value) if isinstance(value, tuple) else Fraction(value.numerator, value.denominator)


@pytest.mark.parametrize("fmt,ext", [("jpg", ".jpg"), ("tiff16", ".tif"), ("png", ".png")])
def test_outputs_carry_the_raws_exif_an_srgb_profile_and_upright_pixels(tmp_path, fmt, ext):
    level = _shot(tmp_path / "level.dng", 1)
    turned = _shot(tmp_path / "turned.dng", 6)  # the same frame, the camera held 90° clockwise
    r = _cli("convert", level, turned, "-o", tmp_path / "out", "--format", fmt)
    assert r.exit_code == 0, r.output
    upright, _, _, _ = _read_back(tmp_path / "out" / f"level{ext}")
    pixels, ifd0, exif, icc = _read_back(tmp_path / "out" / f"turned{ext}")
    if fmt == "jpg":  # the same pixels, each block compressed on its own
        assert pixels.shape == (80, 48, 3) and np.abs(pixels - np.rot90(upright, -1).astype(float)).mean() < 1.5
    else:
        np.testing.assert_array_equal(pixels, np.rot90(upright, -1))
    assert (ifd0[271], ifd0[272], ifd0[274], ifd0[305].split()[0]) == ("SONY", "ILCE-7RM3", 1, "raw2rgb")
    assert exif[36867] == "2018:07:11 01:18:47" and exif[34855] == 3200 and exif[42036] == "E 55-210mm F4.5-6.3 OSS"
    assert (_ratio(exif[33434]), _ratio(exif[33437]), _ratio(exif[37386])) == (Fraction(1, 640), Fraction(63, 10), 129)
    if fmt != "tiff16":
        assert (exif[40961], exif[40962], exif[40963]) == (1, 48, 80)  # sRGB, the upright width and height
    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile
    assert "sRGB" in profile.profile_description and profile.xcolor_space.strip() == "RGB"
    colorants = (profile.red_primary[0], profile.green_primary[0], profile.blue_primary[0])
    np.testing.assert_allclose(colorants, SRGB_COLORANTS, atol=2e-4)


def test_a_raw_without_exif_still_gets_the_profile_and_orientation_1(raws, tmp_path):
    r = _cli("convert", raws / "coffee_grbg.dng", "-o", tmp_path / "out", "--format", "jpg")
    assert r.exit_code == 0, r.output
    _, ifd0, exif, icc = _read_back(tmp_path / "out" / "coffee_grbg.jpg")
    assert ifd0[274] == 1 and ifd0[272] == "Virtual GRBG" and 36867 not in exif and 33434 not in exif
    assert "sRGB" in ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.profile_description


@pytest.mark.parametrize("fmt,ext", [("jpg", ".jpg"), ("tiff16", ".tif"), ("png", ".png")])
def test_non_ascii_text_is_kept_as_question_marks_and_an_unreadable_file_has_no_exif(tmp_path, fmt, ext):
    from raw2rgb.convert import write_image
    from raw2rgb.pipeline import metadata

    write_image(tmp_path / f"x{ext}", np.zeros((6, 8, 3), np.float32), fmt,
                exif=metadata.Exif(lens_model="Ø 50mm ƒ/1.8", exposure_time=Fraction(1, 8000)))
    back = metadata.read_exif(tmp_path / f"x{ext}")  # EXIF's ASCII is 7-bit; tifffile refuses the rest
    assert (back.lens_model, back.exposure_time, back.orientation) == ("? 50mm ?/1.8", Fraction(1, 8000), 1)
    (tmp_path / "broken.dng").write_bytes(b"II*\x00 this is not a raw file")
    assert metadata.read_exif(tmp_path / "broken.dng") == metadata.Exif()

# -- highlights rolled off where the RAW clipped -------------------------------------------------------------

def _clipped_frame(path: Path) -> tuple[Path, np.ndarray]:
    """A frame whose every sample in rows 16–31, columns 24–47 is at the white level; its clip mask (sensor grid)."""
    camera = synth.Camera()
    mosaic = synth.capture(synth.scene("chelsea", (64, 96)), camera)
    mosaic[16:32, 24:48] = camera.white
    clipped = np.zeros((64, 96), bool)
    clipped[16:32, 24:48] = True
    return synth.write_dng(path, mosaic, camera), clipped


@pytest.mark.parametrize("method", ["profile", "model"])
def test_profile_and_model_highlights_go_white_where_the_raw_clipped_and_nowhere_else(method, run_dir, tmp_path,
                                                                                      monkeypatch):
    path, clipped = _clipped_frame(tmp_path / "clipped.dng")
    if method == "profile":  # a profile that paints everything magenta: false colour at the clipped block too
        magenta = ((1.0, 0.0, 1.0),) + ((0.0, 0.0, 0.0),) * 19
        source = colour_profile.save(colour_profile.Profile(coefficients=magenta), tmp_path / "magenta.json")
        args = ("--profile", source)
    else:
        args = ("--checkpoint", run_dir, "--tile", "32", "--overlap", "8")
    assert _cli("convert", path, "-o", tmp_path / "on", *args).exit_code == 0
    monkeypatch.setattr(develop, "roll_off_highlights", lambda rgb, weight: rgb)
    assert _cli("convert", path, "-o", tmp_path / "off", *args).exit_code == 0
    on, off = (np.asarray(Image.open(tmp_path / d / "clipped.png")) for d in ("on", "off"))
    k = 64 // on.shape[0]  # 1: sensor resolution (the profile), 2: one pixel per cell (the model of run_dir)
    core = clipped[::k, ::k]
    # beyond one cell (2 sensor pixels) of a clipped sample
    far = ~np.lib.stride_tricks.sliding_window_view(np.pad(core, 2 // k), (4 // k + 1,) * 2).any(axis=(2, 3))
    assert np.all(on[core] == 255)  # exactly white
    np.testing.assert_array_equal(on[far], off[far])  # elsewhere untouched, bit for bit
    if method == "profile":
        assert np.all(off[core] == (255, 0, 255)) and np.all(on[far] == (255, 0, 255))
