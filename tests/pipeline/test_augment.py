"""Bayer-preserving augmentation: augmenting the capture equals capturing the transformed scene."""

from __future__ import annotations

import numpy as np
import pytest

from raw2rgb.pipeline import augment, bayer, develop


def _scene(h: int = 40, w: int = 56) -> np.ndarray:
    """A scene with known, asymmetric geometry: a distinct value at every pixel and colour."""
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (h, w, 3)).astype(np.uint8)


def _capture(scene: np.ndarray, scale: int):
    """Mosaic (RGGB) packed, target and saliency rendered at the output scale."""
    raw = bayer.pack(bayer.mosaic(scene.astype(np.uint16), "RGGB"))
    sal = scene[..., 0]
    if scale == 1:
        return raw, develop.area_downsample(scene.astype(np.float32)), develop.area_downsample(sal.astype(np.float32))
    return raw, scene, sal


def _transformed_scene(scene: np.ndarray, t: augment.Transform) -> np.ndarray:
    """The scene moved by t, then cropped to where the unified RGGB mosaic of it starts."""
    img = augment._move(scene, t)
    # A scene pixel's colour in the moved mosaic is decided by the original RGGB layout; find the
    # first row/column where the moved mosaic reads RGGB.
    labels = bayer.mosaic(np.broadcast_to(np.array([0, 1, 2]), scene.shape).copy(), "RGGB")
    moved, pattern = bayer.transform_mosaic(labels, "RGGB", t.flip_h, t.flip_v, t.transpose)
    dy, dx = bayer.unify_offset(pattern)
    hh, ww = bayer.unify_pattern(moved, pattern).shape
    img = img[dy : dy + hh, dx : dx + ww]
    if t.crop:
        y, x, s = t.crop
        img = img[2 * y : 2 * (y + s), 2 * x : 2 * (x + s)]
    return img


@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("element", augment.DIHEDRAL)
@pytest.mark.parametrize("crop", [None, (2, 3, 10)])
def test_augmenting_the_capture_equals_capturing_the_transformed_scene(scale, element, crop):
    scene = _scene()
    t = augment.Transform(*element, crop=crop)
    raw, _, _ = _capture(scene, 2)
    got_raw, got_rgb, got_sal = augment.apply(raw, scene, scene[..., 0], t, scale)
    want_raw, want_rgb, want_sal = _capture(_transformed_scene(scene, t), scale)
    np.testing.assert_array_equal(got_raw, want_raw)
    np.testing.assert_array_equal(got_rgb, want_rgb)
    np.testing.assert_array_equal(got_sal, want_sal)
    if crop:
        assert got_raw.shape == (4, 10, 10) and got_rgb.shape[:2] == (10 * scale, 10 * scale)


def test_the_papers_flip_swaps_red_and_green_positions_inside_each_cell():
    """On a scene whose value is its sensor column, every sample says where it was taken. After the
    paper's flip of the packed planes, the flipped image's column of a sample is W-1-value: its "R"
    samples sit at the right of their cell (column 2j+1) and its "G1" samples at the left (2j) —
    the two swapped — while a Bayer-safe flip keeps R at the left of G1, as in every RGGB cell."""
    h, w = 8, 12
    columns = np.broadcast_to(np.arange(w, dtype=np.uint16), (h, w))
    raw = bayer.pack(np.ascontiguousarray(columns))
    flipped, _ = augment.paper_flip(raw, np.zeros((h // 2, w // 2, 3)))
    j = np.arange(w // 2)
    assert ((w - 1 - flipped[0].astype(int)) == 2 * j + 1).all()  # R one sensor pixel right of its place
    assert ((w - 1 - flipped[1].astype(int)) == 2 * j).all()  # G1 one to the left
    safe, _, _ = augment.apply(raw, np.zeros((h, w, 3)), np.zeros((h, w)), augment.Transform(flip_h=True), 2)
    x_r, x_g1 = w - 1 - safe[0].astype(int), w - 1 - safe[1].astype(int)
    assert (x_g1 - x_r == 1).all() and (x_r % 2 == x_r[0, 0] % 2).all()

def test_random_transforms_fit_and_are_reproducible():
    rng = np.random.default_rng(0)
    ts = [augment.random_transform(rng, (40, 56), 32) for _ in range(50)]
    assert len({(t.transpose, t.flip_h, t.flip_v) for t in ts}) == 8
    rng2 = np.random.default_rng(0)
    assert ts == [augment.random_transform(rng2, (40, 56), 32) for _ in range(50)]
    raw = np.zeros((4, 40, 56), np.uint16)
    for t in ts:
        r, g, s = augment.apply(raw, np.zeros((80, 112, 3), np.uint8), np.zeros((80, 112), np.uint8), t, 2)
        assert r.shape == (4, 32, 32) and g.shape == (64, 64, 3)
    only = {(t.transpose, t.flip_h, t.flip_v) for t in
            (augment.random_transform(rng, (40, 56), 32, phase_moving=False) for _ in range(30))}
    assert only == set(augment.PHASE_PRESERVING)
    with pytest.raises(ValueError, match="does not fit"):
        augment.random_transform(rng, (40, 56), 40)
