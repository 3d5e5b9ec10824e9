"""read_raw on every input kind, the refusals, and the packed PNG round trip."""

from __future__ import annotations

import os

import numpy as np
import png  # pypng: an independent, pure-Python PNG decoder
import pytest

from raw2rgb.pipeline import bayer, rawio, synth
from tests.conftest import BLACK, FLAT, WHITE, flat_mosaic


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_dng_reads_exact_mosaic_pattern_and_channel_blacks(make_dng, pattern):
    mosaic = np.random.default_rng(1).integers(700, WHITE, (64, 96), dtype=np.uint16)
    frame = rawio.read_raw(make_dng(f"x_{pattern}.dng", pattern, mosaic))
    assert frame.pattern == pattern
    np.testing.assert_array_equal(frame.mosaic, mosaic)
    assert frame.black_level == tuple(float(b) for b in BLACK)
    assert frame.white_level == WHITE
    assert frame.wb_gains == pytest.approx((2.0, 1.0, 1.6))
    assert frame.make == "raw2rgb" and frame.model == "Virtual Camera"
    assert frame.color_source == "dng:ColorMatrix1"
    # cam_to_rgb keeps white white: rows sum to 1.
    np.testing.assert_allclose(np.sum(frame.cam_to_rgb, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("pattern", bayer.PATTERNS)
def test_after_unification_top_left_sample_is_red(make_dng, pattern):
    frame = rawio.read_raw(make_dng(f"flat_{pattern}.dng", pattern, flat_mosaic(pattern)))
    packed = frame.packed(np.float32)
    span = [WHITE - b for b in BLACK]
    expected = [FLAT["R"] / span[0], FLAT["G"] / span[1], FLAT["B"] / span[2], FLAT["G"] / span[3]]
    # Every sample of every channel, the (0, 0) one included, has its colour's value.
    for c in range(4):
        np.testing.assert_allclose(packed[c], expected[c], rtol=1e-6)
    u = bayer.unify_pattern(frame.mosaic, frame.pattern)
    assert int(u[0, 0]) == FLAT["R"] + BLACK[0]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_zrr_mosaic_png_either_dtype(tmp_path, dtype):
    top = 255 if dtype == np.uint8 else 1023
    mosaic = np.random.default_rng(2).integers(0, top + 1, (32, 48)).astype(dtype)
    path = tmp_path / "0.png"
    png.from_array(mosaic.tolist(), "L", info={"bitdepth": 8 * mosaic.itemsize}).save(str(path))
    frame = rawio.read_raw(path)
    assert frame.source_format == "zrr-png" and frame.pattern == "RGGB"
    np.testing.assert_array_equal(frame.mosaic, mosaic.astype(np.uint16))
    assert frame.black_level == (63.0,) * 4 and frame.white_level == 1020.0
    got = frame.packed(np.float32)
    want = np.clip((mosaic[0::2, 0::2].astype(np.float64) - 63) / (1020 - 63), 0, 1)
    np.testing.assert_allclose(got[0], want, atol=1e-6)
    pynet = rawio.read_raw(path, zrr_levels=rawio.ZRR_LEVELS["pynet"]).packed(np.float32)
    np.testing.assert_allclose(pynet[2], np.clip(mosaic[1::2, 1::2] / 1020.0, 0, 1), atol=1e-6)


def test_aim2019_packed_png_channel_order(tmp_path):
    planes = np.random.default_rng(3).integers(0, 256, (4, 16, 24)).astype(np.uint8)  # R G B G
    path = tmp_path / "1.png"
    rows = np.moveaxis(planes, 0, 2).reshape(16, -1)
    png.from_array(rows.tolist(), "RGBA", info={"bitdepth": 8}).save(str(path))
    frame = rawio.read_raw(path)
    assert frame.source_format == "aim2019-png" and frame.white_level == 255
    np.testing.assert_array_equal(frame.mosaic[0::2, 0::2], planes[0])  # R top-left
    np.testing.assert_array_equal(frame.mosaic[1::2, 1::2], planes[2])  # B
    np.testing.assert_array_equal(frame.packed(np.uint8), planes)


def _xtrans_dng(tmp_path):
    cells = (1, 1, 0, 1, 1, 2, 1, 1, 2, 1, 1, 0, 2, 0, 1, 0, 2, 1,
             1, 1, 2, 1, 1, 0, 1, 1, 0, 1, 1, 2, 0, 2, 1, 2, 0, 1)
    return synth.write_dng(tmp_path / "xtrans.dng", np.full((96, 96), 1000, np.uint16),
                           synth.Camera(), cfa=(6, 6, cells))


def test_xtrans_linear_and_corrupt_files_are_refused_clearly(tmp_path):
    xtrans = _xtrans_dng(tmp_path)
    linear = synth.write_dng(tmp_path / "linear.dng", np.full((64, 96, 3), 1000, np.uint16),
                             synth.Camera(), linear=True)
    corrupt = tmp_path / "corrupt.dng"
    corrupt.write_bytes(b"II*\x00" + os.urandom(4000))
    cases = {xtrans: "X-Trans", linear: "not a Bayer mosaic", corrupt: "LibRaw cannot read it",
             tmp_path / "missing.nef": "no such file"}
    for path, reason in cases.items():
        with pytest.raises(rawio.RawReadError) as info:
            rawio.read_raw(path)
        assert str(path) in str(info.value) and reason in str(info.value)
        assert "\n" not in str(info.value)


def test_png_with_wrong_channel_count_is_refused(tmp_path):
    path = tmp_path / "rgb.png"
    png.from_array([[0, 0, 0] * 4] * 4, "RGB", info={"bitdepth": 8}).save(str(path))
    with pytest.raises(rawio.RawReadError, match="3 channels"):
        rawio.read_raw(path)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_packed_png_round_trip_checked_by_independent_decoder(tmp_path, dtype):
    top = np.iinfo(dtype).max
    planes = np.random.default_rng(4).integers(0, top + 1, (4, 20, 30)).astype(dtype)
    planes[:, 0, 0] = [top, 0, 1, top - 1]  # extremes: a high-byte-only reader would fail
    path = tmp_path / "p.png"
    path.write_bytes(rawio.encode_packed_png(planes))
    np.testing.assert_array_equal(rawio.read_packed_png(path), planes)
    width, height, rows, info = png.Reader(filename=str(path)).read_flat()
    assert info["bitdepth"] == 8 * planes.itemsize and info["planes"] == 4 and info["alpha"]
    decoded = np.array(rows, dtype=np.int64).reshape(height, width, 4)
    np.testing.assert_array_equal(np.moveaxis(decoded, 2, 0), planes)


def test_truncated_dng_reason_includes_what_libraw_printed(tmp_path, capfd):
    path = synth.write_dng(tmp_path / "t.dng", np.full((256, 384), 1000, np.uint16), synth.Camera())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(rawio.RawReadError) as info:
        rawio.read_raw(path)
    # our words, then what LibRaw printed (its wording is LibRaw's and may change between versions)
    text = str(info.value)
    assert text.startswith(f"{path}: LibRaw cannot decode it (") and "\n" not in text
    printed = text.split(" [LibRaw: ", 1)[1].rstrip("]")
    assert printed and printed not in capfd.readouterr().err  # folded into the reason, not on the terminal


class _AsSonyReportsIt:
    """A rawpy file as LibRaw reports a Sony ARW: ``color_matrix`` all zeros, the camera's XYZ → camera
    table in ``rgb_xyz_matrix`` (4 × 3, last row zero)."""

    def __init__(self, raw, xyz_to_cam):
        self._raw, self._xyz = raw, xyz_to_cam

    def __getattr__(self, name):
        if name == "color_matrix":
            return np.zeros((3, 4), np.float32)
        if name == "rgb_xyz_matrix":
            return np.vstack([self._xyz, np.zeros(3)]).astype(np.float32)
        return getattr(self._raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._raw.__exit__(*exc)


@pytest.mark.parametrize("empty", [False, True])
def test_a_raw_with_an_empty_color_matrix_uses_libraw_xyz_table(make_dng, monkeypatch, empty):
    """LibRaw leaves ``color_matrix`` empty for some formats (a Sony ARW) and builds its own rendering
    from ``rgb_xyz_matrix``; so does raw2rgb, reproducing the camera → sRGB matrix LibRaw renders with
    (its ``color_matrix`` where it fills one). A file with neither has no matrix."""
    import rawpy

    path = make_dng("a.dng")
    with rawpy.imread(str(path)) as raw:
        libraw_rgb_cam = np.array(raw.color_matrix)[:3, :3]
    xyz = np.zeros((3, 3)) if empty else np.array(synth.Camera().xyz_to_cam)
    imread = rawpy.imread
    monkeypatch.setattr(rawpy, "imread", lambda p: _AsSonyReportsIt(imread(p), xyz))
    monkeypatch.setattr(rawio, "_tiff_tags", lambda p: {})  # not a DNG: LibRaw's tables alone
    frame = rawio.read_raw(path)
    if empty:
        assert frame.cam_to_rgb is None and frame.color_source is None
    else:
        assert frame.color_source == "libraw:rgb_xyz_matrix"
        np.testing.assert_allclose(np.array(frame.cam_to_rgb), libraw_rgb_cam, atol=1e-5)
