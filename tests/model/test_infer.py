"""Tiled full-resolution inference: tiled equals whole-frame, no seams, tile geometry, loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raw2rgb.errors import UserError
from raw2rgb.model.generator import Generator, fold_spectral_norm, init_weights
from raw2rgb.model.infer import (
    TileConfig,
    load_generator,
    owned_spans,
    plan_tiles,
    run_tiled,
    run_whole,
    tile_starts,
)
from raw2rgb.pipeline import bayer, synth


@pytest.fixture(scope="module")
def paper_g():
    g = Generator()  # the paper configuration, random N(0, 0.02) weights
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    return fold_spectral_norm(g.eval())


@pytest.fixture(scope="module")
def frame():
    cam = synth.Camera()
    mosaic = synth.capture(synth.scene("astronaut", (384, 512)), cam)
    return bayer.normalize_packed(bayer.planes(mosaic), cam.black, cam.white, np.float32)  # (4, 192, 256)


@pytest.fixture(scope="module")
def whole(paper_g, frame):
    return run_whole(paper_g, frame)


def test_tiled_equals_whole_frame_with_frame_wide_normalisation(paper_g, frame, whole):
    """6 overlapping tiles of 160² (overlap 64) over a 192×256 frame. The statistics pass takes each
    normalisation layer's statistics jointly over the parts of the tiles that partition the frame,
    so only the tiles' missing context differs from the whole-frame pass: 0.41/255 measured."""
    tiled = run_tiled(paper_g, frame, TileConfig(tile=160, overlap=64))
    assert tiled.shape == whole.shape == (3, 192, 256)
    mad = float((tiled - whole).abs().mean()) * 255
    assert mad < 0.6, mad


def test_per_tile_normalisation_fails_the_same_test(paper_g, frame, whole):
    """The negative control: each tile normalised by its own statistics (the paper's seams)."""
    tiled = run_tiled(paper_g, frame, TileConfig(tile=160, overlap=64, frame_norm=False))
    mad = float((tiled - whole).abs().mean()) * 255
    assert mad > 2.0, mad  # 7.97/255 measured


def _border_ratio(out: torch.Tensor, tile: int, overlap: int) -> float:
    """Mean |gradient| across every tile border line (tile edges and the cuts between owned
    parts) over the mean across the other lines of the same phase of the network's 8-pixel grid."""
    _, h, w = out.shape
    plan = plan_tiles(h, w, tile, tile, overlap)
    cols = {t.x for t in plan if t.x} | {t.x + tile for t in plan if t.x + tile < w} | {t.x + t.owned[2] for t in plan}
    rows = {t.y for t in plan if t.y} | {t.y + tile for t in plan if t.y + tile < h} | {t.y + t.owned[0] for t in plan}
    cols, rows = sorted(cols - {0}), sorted(rows - {0})
    dx = (out[:, :, 1:] - out[:, :, :-1]).abs().mean(dim=(0, 1))
    dy = (out[:, 1:, :] - out[:, :-1, :]).abs().mean(dim=(0, 2))
    border = torch.cat([dx[[c - 1 for c in cols]], dy[[r - 1 for r in rows]]]).mean()
    same_phase = torch.cat([dx[7::8], dy[7::8]]).mean()
    return float(border / same_phase)


def test_no_seams(paper_g):
    """On a statistically uniform input, gradients across tile borders are within 5% of those
    elsewhere; hard-stitched tiles (no overlap, as the paper's code) are not."""
    x = np.random.default_rng(0).random((4, 256, 384), dtype=np.float32)
    ours = _border_ratio(run_tiled(paper_g, x, TileConfig(tile=128, overlap=32)), 128, 32)
    stitched = _border_ratio(run_tiled(paper_g, x, TileConfig(tile=128, overlap=0, frame_norm=False)), 128, 0)
    assert ours <= 1.05, ours  # 0.994 measured
    assert stitched > 1.2, stitched  # 1.38 measured


@pytest.mark.parametrize("size,tile,overlap", [(256, 128, 32), (200, 64, 16), (96, 128, 32), (1000, 512, 64)])
def test_tiles_cover_and_owned_parts_partition(size, tile, overlap):
    size8 = size + (-size % 8)
    t = min(tile, size8)
    starts = tile_starts(size8, t, overlap)
    assert starts[0] == 0 and starts[-1] + t == size8 and all(s % 8 == 0 for s in starts)
    assert all(b - a <= t - overlap for a, b in zip(starts, starts[1:]))
    covered = np.zeros(size8, int)
    for s, (a, b) in zip(starts, owned_spans(starts, t, size8)):
        assert 0 <= a < b <= t and (s + a) % 8 == 0
        covered[s + a : s + b] += 1
    assert (covered == 1).all()


def test_frames_not_multiple_of_eight_are_the_padded_frame_cropped(paper_g):
    """A 100×130 frame is reflection-padded to 104×136, converted and cropped: the result is the
    whole-frame pass over the padded frame, cropped (exact statistics; tiles differ only by context)."""
    x = np.random.default_rng(1).random((4, 100, 130), dtype=np.float32)
    padded = torch.nn.functional.pad(torch.from_numpy(x)[None], (0, 6, 0, 4), mode="reflect")[0]
    want = run_whole(paper_g, padded)[:, :100, :130]
    out = run_tiled(paper_g, x, TileConfig(tile=136, overlap=0))  # one tile: nothing but the padding differs
    assert out.shape == (3, 100, 130)
    assert float((out - want).abs().max()) * 255 < 0.01


def test_sampled_statistics_estimate_the_frames(paper_g, frame, whole):
    """Beyond the statistics budget, quarter-area windows spread over the frame estimate its
    statistics: close to the whole-frame pass, much closer than per-tile normalisation (7.97/255)."""
    tiles = TileConfig(tile=96, overlap=32, stats_pixels=8 * 64 * 64)
    mad = float((run_tiled(paper_g, frame, tiles) - whole).abs().mean()) * 255
    per_tile = dataclasses.replace(tiles, frame_norm=False)
    control = float((run_tiled(paper_g, frame, per_tile) - whole).abs().mean()) * 255
    assert mad < 0.4 * control, (mad, control)  # 5.3 against 19.8 measured


def test_tile_options_are_checked():
    for tiles, msg in ((TileConfig(tile=64, overlap=32), "more than twice"), (TileConfig(tile=60), "multiple of 8"),
                       (TileConfig(overlap=12), "multiple of 8")):
        with pytest.raises(UserError, match=msg):
            tiles.check()


def test_load_generator_refuses_what_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="x.pt: not a readable checkpoint"):
        load_generator(tmp_path / "x.pt")
    torch.save({"format": 99, "kind": "raw2rgb-train", "G": {}}, tmp_path / "future.pt")
    with pytest.raises(UserError, match="format 99"):
        load_generator(tmp_path / "future.pt")
    with pytest.raises(UserError, match="not a raw2rgb run folder"):
        load_generator(tmp_path)
