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


# -- the ZRR layout ------------------------------------------------------------------------------------

def _zrr_shards(tmp_path, light: str):
    """A ZRR-layout export (one scene three times, each under its light, and chelsea in test/)
    prepared into shards; (records by (split, n), samples as (id, colour))."""
    import json

    from raw2rgb.pipeline import shards
    from tests.conftest import cli

    src, ds = tmp_path / f"src-{light}", tmp_path / f"ds-{light}"
    records = synth.zrr_dataset(src, size=(256, 256), crop=128, scenes=("astronaut",) * 3 + ("chelsea",),
                                light=light, seed=1)
    r = cli("prepare", src, "-o", ds, "--patch-size", "32", "--saliency-method", "spectral-residual",
            "--min-score", "-1")
    assert r.exit_code == 0, r.output
    assert json.loads((src / "synth.json").read_text())["crops"] == records
    root = ds / "shards"
    index = shards.read_index(root)
    samples = [(sid, c) for file in index.files()
               for sid, c in zip(*(lambda d: (d["id"], d["colour"]))(shards.read_shard(root / file)))]
    return {(rec["split"], rec["n"]): rec for rec in records}, samples, index


def test_a_zrr_export_prepares_into_shards_whose_colour_is_unknown(tmp_path):
    import imagecodecs

    records, samples, index = _zrr_shards(tmp_path, "steady")
    # 4 scenes × 4 crops of 128² (64² packed), 4 patches of 32 each; chelsea's crops in test/
    assert len(records) == 16 and sum(r["split"] == "test" for r in records.values()) == 4
    assert sum(v.count for v in index.splits.values()) == 64 and index.count("test") == 16
    mosaic = imagecodecs.png_decode((tmp_path / "src-steady" / "train" / "huawei_raw" / "0.png").read_bytes())
    assert mosaic.ndim == 2 and mosaic.shape == (128, 128) and mosaic.max() <= 1020  # 10-bit, one plane
    assert all(c.as_shot is None and c.matrix is None and c.frame is not None for _, c in samples)


def test_varying_light_gives_per_frame_estimates_that_follow_the_light(tmp_path):
    """The same scene under three lights: its crops' grey-world estimates change by the ratio of the
    lights' gains (the content is the same); under a steady light they do not change."""
    for light in ("steady", "varying"):
        records, samples, _ = _zrr_shards(tmp_path, light)
        est: dict = {}
        for sid, c in samples:
            split, n, patch = sid.split("/")
            rec = records[(split, int(n))]
            if rec["scene"] == "astronaut":
                est.setdefault((rec["y"], rec["x"], patch), []).append((c.frame[0], np.array(rec["wb_gains"])))
        assert len(est) == 16 and all(len(v) == 3 for v in est.values())
        for runs in est.values():
            (e0, t0), *rest = runs
            for e, t in rest:
                np.testing.assert_allclose(e / e0, t / t0, rtol=0.05)  # grey world ∝ the light's gains
        spread = np.std([np.log(e[0] / e0[0]) for (e0, _), *rest in est.values() for e, _ in rest])
        assert (spread > 0.1) if light == "varying" else (spread < 0.02), (light, spread)


def test_synth_zrr_from_the_command_line(tmp_path):
    from tests.conftest import cli

    r = cli("synth", "-o", tmp_path / "z", "--zrr", "--light", "varying", "--size", "128", "192", "--crop", "64")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "z").glob("*/huawei_raw/*.png"))) == len(synth.ALL_SCENES) * 6
    assert len(list((tmp_path / "z").glob("*/canon/*.jpg"))) == len(synth.ALL_SCENES) * 6
    r = cli("synth", "-o", tmp_path / "odd", "--zrr", "--crop", "63")
    assert r.exit_code != 0 and "even" in r.output and not (tmp_path / "odd").exists()
