"""CFA geometry: names, unification, pack/unpack, normalisation, Bayer-safe moves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from raw2rgb.pipeline import bayer


def test_channel_offsets_known_answers():
    assert bayer.channel_offsets("RGGB") == {"R": (0, 0), "G1": (0, 1), "B": (1, 1), "G2": (1, 0)}
    assert bayer.channel_offsets("BGGR") == {"R": (1, 1), "G1": (1, 0), "B": (0, 0), "G2": (0, 1)}
    assert bayer.channel_offsets("GRBG") == {"R": (0, 1), "G1": (0, 0), "B": (1, 0), "G2": (1, 1)}
    assert bayer.channel_offsets("GBRG") == {"R": (1, 0), "G1": (1, 1), "B": (0, 1), "G2": (0, 0)}


def test_pattern_from_rawpy_colour_indices():
    # rawpy: indices into b'RGBG', 3 = the green on the blue row.
    assert bayer.pattern_from_colors(np.array([[0, 1], [3, 2]])) == "RGGB"
    assert bayer.pattern_from_colors(np.array([[2, 3], [1, 0]])) == "BGGR"
    assert bayer.pattern_from_colors(np.array([[1, 0], [2, 3]])) == "GRBG"
    with pytest.raises(ValueError, match="unknown CFA"):
        bayer.pattern_from_colors(np.array([[0, 0], [1, 2]]))


@pytest.mark.parametrize("bad", ["RGBG", "XXXX", "rggbx"])
def test_unknown_pattern_is_refused(bad):
    with pytest.raises(ValueError, match="unknown CFA pattern"):
        bayer.check_pattern(bad)


@pytest.mark.parametrize("h,w", [(8, 12), (2, 2), (64, 30)])
def test_pack_unpack_round_trip_is_exact(h, w):
    m = np.random.default_rng(0).integers(0, 65536, (h, w), dtype=np.uint16)
    packed = bayer.pack(m)
    assert packed.shape == (4, h // 2, w // 2)
    np.testing.assert_array_equal(bayer.unpack(packed), m)


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
@pytest.mark.parametrize("h,w", [(10, 14), (11, 14), (10, 15), (11, 15)])
def test_unify_puts_red_top_left_for_every_pattern_and_size(pattern, h, w):
    rgb = np.zeros((h, w, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1, 2, 3  # R, G, B
    m = bayer.mosaic(rgb, pattern)
    u = bayer.unify_pattern(m, pattern)
    assert u.shape[0] % 2 == 0 and u.shape[1] % 2 == 0
    assert u.shape[0] >= h - 2 and u.shape[1] >= w - 2
    np.testing.assert_array_equal(u[0:2, 0:2], [[1, 2], [2, 3]])
    packed = bayer.pack(m, pattern)
    assert [int(packed[c, 0, 0]) for c in range(4)] == [1, 2, 3, 2]


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_greens_keep_their_row_roles(pattern):
    # Label each sample with its position so G1 (red row) and G2 (blue row) can be told apart.
    m = np.arange(16 * 16, dtype=np.int64).reshape(16, 16)
    packed = bayer.pack(m, pattern)
    ry, rx = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}[pattern]  # where red sits
    g1_rows = (packed[1] // 16)
    assert np.all(g1_rows % 2 == ry) and np.all(packed[3] // 16 % 2 != ry)  # G1 on red rows, G2 on blue rows
    assert int(packed[0, 0, 0]) == 16 * ry + rx  # the first red sample of the source


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_unification_starts_every_mosaic_on_red(pattern):
    """A mosaic of colour letters in each pattern reads R G / G B from the top-left after unification."""
    letters = np.tile(np.array(list(pattern)).reshape(2, 2), (3, 4))
    cell = bayer.unify_pattern(letters, pattern)[:2, :2]
    assert "".join(cell.ravel()) == "RGGB"
    assert bayer.unify_offset(pattern) == {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}[pattern]


def test_normalize_golden_values():
    packed = np.array([100, 600, 1100, 20000], np.uint16).reshape(4, 1, 1) * np.ones((4, 1, 2), np.uint16)
    black = (100, 100, 100, 100)
    out = bayer.normalize_packed(packed, black, 1100, np.uint16)
    assert out[:, 0, 0].tolist() == [0, 32768, 65535, 65535]  # black, mid (32767.5 rounds up), white, clip
    f = bayer.normalize_packed(packed, black, 1100, np.float32)
    np.testing.assert_allclose(f[:, 0, 0], [0.0, 0.5, 1.0, 1.0])
    low = bayer.normalize_packed(np.zeros((4, 1, 1), np.uint16), (50, 50, 50, 50), 1000, np.uint8)
    assert low.ravel().tolist() == [0, 0, 0, 0]  # below black clips to 0


def test_normalize_uses_each_channels_black():
    packed = np.full((4, 2, 2), 1000, np.uint16)
    out = bayer.normalize_packed(packed, (0, 200, 400, 600), 1000, np.float32)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 1.0, 1.0, 1.0])
    out = bayer.normalize_packed(packed // 2, (0, 200, 400, 600), 1000, np.float32)
    np.testing.assert_allclose(out[:, 0, 0], [0.5, 300 / 800, 100 / 600, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="not above black"):
        bayer.normalize_packed(packed, (0, 0, 0, 1000), 1000)


def test_shape_errors_name_the_shape():
    with pytest.raises(ValueError, match=r"\(3, 4, 4\)"):
        bayer.unpack(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="too small"):
        bayer.unify_pattern(np.zeros((1, 5)), "BGGR")


@pytest.mark.parametrize("flip_h,flip_v,transpose", list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("h,w", [(8, 10), (9, 11)])
def test_transform_mosaic_pattern_matches_moved_colours(flip_h, flip_v, transpose, h, w):
    # A colour-label mosaic moved as an image must read the pattern transform_mosaic reports.
    labels = bayer.mosaic(np.broadcast_to(np.array([0, 1, 2]), (h, w, 3)).copy(), "RGGB")
    moved, pattern = bayer.transform_mosaic(labels, "RGGB", flip_h, flip_v, transpose)
    assert "".join("RGB"[v] for v in moved[:2, :2].ravel()) == pattern
    u = bayer.unify_pattern(moved, pattern)
    np.testing.assert_array_equal(u[:2, :2], [[0, 1], [1, 2]])


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("flip_h", [False, True])
@pytest.mark.parametrize("flip_v", [False, True])
def test_a_moved_thumbnail_is_the_thumbnail_of_the_moved_frame(transpose, flip_h, flip_v):
    from raw2rgb.pipeline import augment, synth

    cam = synth.Camera()
    packed = bayer.normalize_packed(bayer.planes(synth.capture(synth.scene("coffee", (256, 256)), cam)),
                                    cam.black, cam.white, np.float32)
    rgb = np.zeros((256, 256, 3), np.uint8)
    t = augment.Transform(transpose=transpose, flip_h=flip_h, flip_v=flip_v)
    moved = augment.apply(packed, rgb, rgb[..., 0], t, 2)[0]
    got = bayer.move_thumbnail(bayer.thumbnail(packed), flip_h, flip_v, transpose)
    want = bayer.thumbnail(moved)
    assert got.shape == want.shape == (4, bayer.THUMB_SIZE, bayer.THUMB_SIZE)
    assert np.abs(got - want).mean() < 0.01  # the one-pixel re-crop of a phase-moving move, at 1/4 of a bin
    if t != augment.Transform():  # control: the unmoved thumbnail is another picture
        assert np.abs(bayer.thumbnail(packed) - want).mean() > 0.03


def test_thumbnail_bins_are_adaptive_average_pooling():
    import torch

    x = np.random.default_rng(0).random((4, 50, 70))
    want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x)[None], 32)[0].numpy()
    np.testing.assert_allclose(bayer.thumbnail(x), want, rtol=0, atol=1e-12)
    small = bayer.thumbnail(x[:, :8, :8])  # a frame smaller than the thumbnail repeats its pixels
    assert small.shape == (4, 32, 32) and set(np.unique(small)) <= set(np.unique(x[:, :8, :8]))


def test_binning_averages_same_colour_sites_and_keeps_the_cfa():
    rng = np.random.default_rng(0)
    mosaic = rng.integers(0, 4096, size=(12, 18), dtype=np.uint16)
    packed = bayer.pack(mosaic)  # (4, 6, 9)
    binned = bayer.bin_packed(packed, 3)
    assert binned.shape == (4, 2, 3) and binned.dtype == np.uint16
    # R at binned (1, 2) is the mean of the red sites at sensor rows 6, 8, 10 and columns 12, 14, 16
    reds = mosaic[6:12:2, 12:18:2].astype(np.float64)
    assert binned[0, 1, 2] == np.rint(reds.mean())
    # G2 (blue row) at binned (0, 0): sensor rows 1, 3, 5 and columns 0, 2, 4
    assert binned[3, 0, 0] == np.rint(mosaic[1:6:2, 0:6:2].astype(np.float64).mean())
    # a flat mosaic of one value per colour bins to the same values: the CFA stays a CFA
    flat = bayer.unpack(np.stack([np.full((6, 9), v, np.uint16) for v in (100, 200, 300, 400)]))
    assert np.array_equal(bayer.unpack(bayer.bin_packed(bayer.pack(flat), 3)),
                          bayer.unpack(np.stack([np.full((2, 3), v, np.uint16) for v in (100, 200, 300, 400)])))
    assert bayer.bin_packed(packed, 1) is packed
    with pytest.raises(ValueError):
        bayer.bin_packed(packed, 7)


@pytest.mark.parametrize("sensor,target,scale,factor", [
    ((3464, 5184), (3464, 5184), 2, 1),   # a full-size JPEG: no binning
    ((3464, 5184), (1080, 1616), 2, 4),   # the A7R III's preview: 3.2× smaller, so 4
    ((3464, 5184), (1616, 1080), 2, 4),   # the same, portrait
    ((960, 1440), (320, 480), 2, 3),      # exactly a third
    ((968, 1452), (320, 480), 2, 4),      # a little more than a third: never enlarged
    ((3464, 5184), (1732, 2592), 1, 1),   # at scale 1 a half-size JPEG is the packed grid
])
def test_binning_factor_never_enlarges_the_target(sensor, target, scale, factor):
    f = bayer.binning_factor(sensor, target, scale)
    assert f == factor
    th, tw = target if (target[0] > target[1]) == (sensor[0] > sensor[1]) else target[::-1]
    assert (sensor[0] // 2 // f) * scale <= th and (sensor[1] // 2 // f) * scale <= tw
    if f > 1:  # the smallest such factor
        assert (sensor[0] // 2 // (f - 1)) * scale > th or (sensor[1] // 2 // (f - 1)) * scale > tw
