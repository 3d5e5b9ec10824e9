"""The virtual camera's scenes: the colour chart holds the gamut the demo's training needs."""

from __future__ import annotations

import colorsys

import numpy as np

from raw2rgb import prepare as prep
from raw2rgb.pipeline import synth


def _patch_centres(img: np.ndarray, rows: int = 9, cols: int = 24) -> np.ndarray:
    h, w = img.shape[:2]
    ys = ((np.arange(rows) + 0.5) * h / rows).astype(int)
    xs = ((np.arange(cols) + 0.5) * w / cols).astype(int)
    return np.stack([[img[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3).mean(0) for x in xs] for y in ys]) / 255


def test_colour_chart_spans_every_hue_at_three_saturations_and_values():
    assert synth.CHART_SATURATIONS == (0.85, 0.6, 0.35) and synth.CHART_VALUES == (0.9, 0.65, 0.4)
    chart = synth.scene("chart", (512, 768))
    assert chart.shape == (512, 768, 3) and chart.dtype == np.uint8
    hsv = np.array([[colorsys.rgb_to_hsv(*c) for c in row] for row in _patch_centres(chart)])
    hue_deg = hsv[..., 0] * 360
    steps = (np.diff(hue_deg[:, :-1], axis=1) + 360) % 360  # between neighbouring columns
    np.testing.assert_allclose(steps, 15, atol=1.5)
    saturation = np.tile([0.85, 0.6, 0.35], 3)[:, None]  # rows: saturations within values
    value = np.repeat([0.9, 0.65, 0.4], 3)[:, None]
    np.testing.assert_allclose(hsv[..., 1], np.broadcast_to(saturation, (9, 24)), atol=0.03)
    np.testing.assert_allclose(hsv[..., 2], np.broadcast_to(value, (9, 24)), atol=0.03)
    # a known answer: row 0 (S 0.85, V 0.9), column 3 (45°) is a saturated orange-yellow
    np.testing.assert_allclose(_patch_centres(chart)[0, 3], [0.9, 0.7088, 0.135], atol=0.03)
    # the dark frame between patches gives alignment its corners
    assert chart[:, 0].mean() < 0.2 * 255 and chart[0].mean() < 0.2 * 255


def test_demo_split_holds_out_chelsea_and_trains_on_the_chart():
    # the Makefile's HELDOUT (chelsea) must be in val, and the chart in train, at `make demo`'s seed 0
    splits = prep.assign_splits({s: None for s in synth.ALL_SCENES}, 0, (0.7, 0.3, 0))
    assert splits["chelsea"] == "val" and splits["chart"] == "train"
    assert list(splits.values()).count("val") == 3
