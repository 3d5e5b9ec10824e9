"""`raw2rgb convert`: both methods, caching, per-file failures, bad options, the camera warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from raw2rgb.cli import main
from raw2rgb.model import checkpoint
from raw2rgb.model.checkpoint import load as load_checkpoint
from raw2rgb.model.train import Runtime, TrainConfig, train
from raw2rgb.pipeline import synth
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
