"""Two-camera sources with a known homography, shared by the pairs and alignment tests."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage.transform import ProjectiveTransform, warp

from raw2rgb.cli import main
from raw2rgb.pipeline import bayer, pairs, rawio, synth  # noqa: F401


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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def two_camera_dataset(two_camera_source, tmp_path_factory):
    src, truths = two_camera_source
    out = tmp_path_factory.mktemp("pairs-ds")
    result = _cli("prepare", src, "-o", out, "--patch-size", "64", "--until", "patches", "--min-score", "0.3")
    return out, truths, result
