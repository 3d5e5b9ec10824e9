"""The classical pipeline: colours right for every CFA, agreement with LibRaw, orientation, curves."""

from __future__ import annotations

import numpy as np
import pytest

from raw2rgb.pipeline import bayer, develop, rawio, synth

PRIMARIES = {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}


def _patches_scene() -> np.ndarray:
    """Three vertical bands: red, green, blue (sRGB)."""
    img = np.zeros((64, 96, 3), np.uint8)
    for i, rgb in enumerate(PRIMARIES.values()):
        img[:, 32 * i : 32 * (i + 1)] = rgb
    return img


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_red_green_blue_patches_come_out_red_green_blue(tmp_path, pattern):
    cam = synth.Camera(pattern=pattern, black=(500, 510, 520, 530))
    path = synth.write_dng(tmp_path / f"{pattern}.dng", synth.capture(_patches_scene(), cam), cam)
    frame = rawio.read_raw(path)
    rgb = develop.develop(frame.packed(np.float32), frame.wb_gains, frame.cam_to_rgb, scale=2)
    for i, name in enumerate(PRIMARIES):
        centre = rgb[16:48, 32 * i + 8 : 32 * i + 24].reshape(-1, 3).mean(axis=0)
        assert int(np.argmax(centre)) == i, (pattern, name, centre)
        assert centre[i] > 0.6 and np.delete(centre, i).max() < 0.25, (pattern, name, centre)


def test_generator_input_is_the_same_whatever_the_cfa(tmp_path):
    """The same scene recorded through each CFA packs to the same R, G1, B, G2 planes (the
    unification crop moves the frame by one sensor pixel at most)."""
    scene = synth.scene("chelsea", (130, 194))
    packs = {}
    for pattern in bayer.PATTERNS:
        cam = synth.Camera(pattern=pattern, black=(500, 510, 520, 530))
        dy, dx = bayer.unify_offset(pattern)
        # record a scene shifted so that, after the unification crop, the same sensor sites remain
        shifted = np.pad(scene, ((dy, 0), (dx, 0), (0, 0)), mode="edge")[: 130 + dy, : 194 + dx]
        frame = rawio.read_raw(synth.write_dng(tmp_path / f"{pattern}.dng", synth.capture(shifted, cam), cam))
        packs[pattern] = frame.packed(np.uint16)[:, :64, :96]
    for pattern in bayer.PATTERNS[1:]:
        np.testing.assert_array_equal(packs[pattern], packs["RGGB"])


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_agrees_with_rawpy_postprocess(tmp_path, pattern):
    """Same white balance (as shot), colour (the file's matrix, sRGB), curve and bilinear
    demosaicing: 53 dB measured; the issue asks for 30."""
    import rawpy

    from raw2rgb.model.metrics import psnr
    from tests.conftest import torch_image

    cam = synth.Camera(pattern=pattern, black=(500, 510, 520, 530))
    path = synth.write_dng(tmp_path / "c.dng", synth.capture(synth.scene("coffee", (128, 192)), cam), cam)
    frame = rawio.read_raw(path)
    ours = develop.develop(frame.packed(np.float32), frame.wb_gains, frame.cam_to_rgb, scale=2)
    with rawpy.imread(str(path)) as raw:
        ref = raw.postprocess(use_camera_wb=True, no_auto_bright=True, gamma=(2.4, 12.92), output_bps=8, user_flip=0,
                              demosaic_algorithm=rawpy.DemosaicAlgorithm.LINEAR, output_color=rawpy.ColorSpace.sRGB)
    dy, dx = bayer.unify_offset(pattern)
    ref = ref[dy : dy + ours.shape[0], dx : dx + ours.shape[1]]
    value = float(psnr(torch_image(np.rint(ours * 255)), torch_image(ref)))
    assert value >= 40, value


def test_orientation_codes():
    img = np.arange(6).reshape(2, 3)
    assert develop.orient(img, 0).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert develop.orient(img, 3).tolist() == [[5, 4, 3], [2, 1, 0]]
    assert develop.orient(img, 6).tolist() == [[3, 0], [4, 1], [5, 2]]  # 90° clockwise
    assert develop.orient(img, 5).tolist() == [[2, 5], [1, 4], [0, 3]]  # 90° counter-clockwise


def test_srgb_curves_round_trip_and_known_values():
    x = np.linspace(0, 1, 101)
    np.testing.assert_allclose(develop.srgb_to_linear(develop.linear_to_srgb(x)), x, atol=1e-12)
    assert develop.linear_to_srgb(np.array([0.0031308]))[0] == pytest.approx(0.04045, abs=1e-5)
    assert develop.linear_to_srgb(np.array([0.18]))[0] == pytest.approx(0.4614, abs=1e-4)


def test_bilinear_demosaic_is_exact_on_flat_colour():
    m = bayer.mosaic(np.broadcast_to(np.array([0.2, 0.5, 0.7]), (16, 16, 3)).copy(), "RGGB")
    out = develop.demosaic_bilinear(m)
    np.testing.assert_allclose(out, np.broadcast_to([0.2, 0.5, 0.7], out.shape), atol=1e-6)
