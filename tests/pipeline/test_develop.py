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


# -- highlight roll-off -----------------------------------------------------------------------------------

def _packed_with(value: float, at: tuple[int, int, int] = (2, 5, 6), shape=(4, 12, 14), floor: float = 0.3):
    """Packed planes at ``floor`` with one sample (channel, y, x) at ``value``."""
    p = np.full(shape, floor, np.float32)
    p[at] = value
    return p


@pytest.mark.parametrize("scale", [1, 2])
def test_clip_weight_is_zero_below_the_band_and_one_within_a_cell_of_a_clipped_sample(scale):
    assert not develop.clip_weight(_packed_with(0.9), scale).any()  # the band's bottom: nothing
    w = develop.clip_weight(_packed_with(1.0), scale)
    assert w.shape == (12 * scale, 14 * scale) and w.dtype == np.float32
    # the clipped B sample of cell (5, 6) sits at sensor pixel (11, 13), or at output pixel (5, 6) at scale 1
    y, x = (11, 13) if scale == 2 else (5, 6)
    r = scale  # one cell: 2 sensor pixels at scale 2, one pixel at scale 1
    expected = np.zeros_like(w)
    expected[y - r : y + r + 1, x - r : x + r + 1] = 1
    np.testing.assert_array_equal(w, expected)


def test_clip_weight_is_a_monotone_smoothstep_over_the_band():
    values = np.linspace(0.85, 1.05, 41)
    weights = np.array([develop.clip_weight(_packed_with(v), 2)[11, 13] for v in values])
    assert np.all(np.diff(weights) >= 0) and weights[0] == 0 and weights[-1] == 1
    assert develop.clip_weight(_packed_with(0.95), 2)[11, 13] == pytest.approx(0.5, abs=1e-6)  # the band's middle
    # 3t² - 2t³ at t = 1/4
    assert develop.clip_weight(_packed_with(0.925), 2)[11, 13] == pytest.approx(0.15625, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_roll_off_leaves_unclipped_pixels_bit_for_bit_and_makes_clipped_ones_exactly_white(dtype):
    rng = np.random.default_rng(0)
    white = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    rgb = (rng.random((24, 28, 3)) * white).astype(dtype)
    w = develop.clip_weight(_packed_with(1.0), 2)
    out = develop.roll_off_highlights(rgb, w)
    assert out.dtype == rgb.dtype and out is not rgb
    np.testing.assert_array_equal(out[w == 0], rgb[w == 0])
    assert np.all(out[w == 1] == white)
    assert np.array_equal(develop.roll_off_highlights(rgb, np.zeros((24, 28), np.float32)), rgb)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.uint16])
def test_roll_off_raises_every_channel_and_lowers_saturation_with_the_weight(dtype):
    white = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    colours = (np.array([[0.9, 0.2, 0.7], [0.0, 0.0, 1.0], [0.3, 0.8, 0.1]]) * white).astype(dtype)  # false colours
    weights = np.linspace(0, 1, 101, dtype=np.float32)
    rgb = np.broadcast_to(colours[:, None], (3, 101, 3)).copy()
    out = develop.roll_off_highlights(rgb, np.broadcast_to(weights, (3, 101)).copy()).astype(np.float64)
    assert np.all(np.diff(out, axis=1) >= 0)
    saturation = (out.max(-1) - out.min(-1)) / out.max(-1)
    assert np.all(np.diff(saturation, axis=1) <= 1e-12) and np.all(saturation[:, -1] == 0)


def test_highlight_shape_errors_print_the_shapes():
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        develop.clip_weight(np.zeros((3, 8, 8), np.float32), 2)
    with pytest.raises(ValueError, match="scale must be 1 or 2, got 3"):
        develop.clip_weight(np.zeros((4, 8, 8), np.float32), 3)
    with pytest.raises(ValueError, match=r"\(16, 16, 3\) and \(8, 8\)"):
        develop.roll_off_highlights(np.zeros((16, 16, 3), np.float32), np.zeros((8, 8), np.float32))
