"""White-balance estimators and rules: known illuminants recovered, each estimator on the scene it
is built for (with a negative control), and the one function that decides a sample's gains."""

from __future__ import annotations

import numpy as np
import pytest

from raw2rgb.errors import ConfigError
from raw2rgb.pipeline import whitebalance as wb
from raw2rgb.pipeline.whitebalance import SampleColour, WhiteBalance

LIGHT = np.array([0.9, 0.6, 0.3])  # camera RGB of the illuminant: a warm light (much red, little blue)
WANT = LIGHT[1] / LIGHT  # the gains that make it grey (G = 1)


def lit(scene: np.ndarray, light=LIGHT) -> np.ndarray:
    """A scene's reflectances (h, w, 3) in [0, 1] under ``light`` as packed planes (4, h, w) R, G1, B, G2."""
    cam = scene * np.asarray(light)
    return np.stack([cam[..., 0], cam[..., 1], cam[..., 2], cam[..., 1]]).astype(np.float32)


def texture(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """An achromatic random texture (h, w) in [0.1, 0.9]."""
    return np.random.default_rng(seed).uniform(0.1, 0.9, (h, w))


@pytest.mark.parametrize("name", wb.ESTIMATORS)
def test_every_estimator_recovers_the_light_of_an_achromatic_scene(name):
    grey = np.repeat(texture()[..., None], 3, axis=2)
    np.testing.assert_allclose(wb.ESTIMATOR_FUNCTIONS[name](lit(grey)), WANT, rtol=1e-5)


def test_grey_world_recovers_the_light_of_a_colourful_scene_whose_mean_is_grey():
    rng = np.random.default_rng(1)
    scene = rng.uniform(0.05, 0.95, (64, 80, 3))
    scene *= scene.mean() / scene.mean(axis=(0, 1))  # every channel the same mean
    np.testing.assert_allclose(wb.grey_world(lit(scene)), WANT, rtol=1e-5)


def test_grey_edge_ignores_a_coloured_flat_background_that_fools_grey_world():
    """Edges of an achromatic texture over a green wall: the wall adds no gradient."""
    h, w = 64, 80
    wall = np.array([0.15, 0.5, 0.2])
    scene = np.clip(wall + 0.3 * (texture(h, w)[..., None] - 0.5), 0, 1)
    planes = lit(scene)
    np.testing.assert_allclose(wb.grey_edge(planes), WANT, rtol=1e-3)
    assert np.abs(wb.grey_world(planes) / WANT - 1).max() > 0.3  # negative control


def test_the_bright_estimator_finds_a_white_patch_among_dark_colours():
    rng = np.random.default_rng(2)
    scene = rng.uniform(0.02, 0.4, (64, 80, 3)) * np.array([1.0, 0.4, 0.2])  # dim, reddish things
    scene[10:20, 10:30] = 0.95  # a white card
    planes = lit(scene)
    np.testing.assert_allclose(wb.bright(planes), WANT, rtol=1e-5)
    assert np.abs(wb.grey_world(planes) / WANT - 1).max() > 0.3  # negative control


def test_clipped_cells_are_left_out_and_a_dark_frame_gets_unit_gains():
    grey = np.repeat(texture()[..., None], 3, axis=2)
    planes = lit(grey)
    planes[:, :8] = 1.0  # a blown-out sky: its colour is the clip's, not the light's
    np.testing.assert_allclose(wb.grey_world(planes), WANT, rtol=1e-5)
    np.testing.assert_array_equal(wb.grey_world(np.zeros((4, 8, 8), np.float32)), [1, 1, 1])


def test_frame_estimates_are_in_estimator_order_and_shape_errors_print_the_shape():
    planes = lit(np.repeat(texture()[..., None], 3, axis=2), light=[0.5, 0.5, 0.25])
    est = wb.frame_estimates(planes)
    assert est.shape == (len(wb.ESTIMATORS), 3) and est.dtype == np.float32
    np.testing.assert_allclose(est, [[1, 1, 2]] * 3, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        wb.grey_world(np.zeros((3, 8, 8)))


def test_one_function_decides_a_samples_gains():
    frame = np.array([[1.5, 1, 2.0], [1.6, 1, 2.1], [1.7, 1, 2.2]], np.float32)
    unknown = SampleColour(frame=frame)
    known = SampleColour(as_shot=np.array([2.0, 1, 1.5], np.float32), frame=frame)
    dataset = WhiteBalance("dataset", (1.9, 1.0, 1.4))
    for rule, want in [("frame-grey-world", frame[0]), ("frame-grey-edge", frame[1]), ("frame-bright", frame[2])]:
        np.testing.assert_array_equal(wb.sample_gains(unknown, WhiteBalance(rule)), want)
        np.testing.assert_array_equal(wb.sample_gains(known, WhiteBalance(rule)), known.as_shot)  # as shot wins
    np.testing.assert_allclose(wb.sample_gains(unknown, dataset), dataset.gains)
    vector = wb.colour_vector(unknown, dataset)
    assert vector.shape == (12,) and vector[3:].tolist() == np.eye(3).ravel().tolist()  # no matrix: camera RGB
    with pytest.raises(ValueError, match="no gains"):
        wb.sample_gains(unknown, WhiteBalance("dataset"))
    with pytest.raises(ConfigError, match="frame-grey-world"):
        wb.sample_gains(unknown, WhiteBalance("per-patch"))
    assert wb.DEFAULT_RULE in wb.RULES


def test_dataset_gains_are_the_grey_world_of_the_sums():
    sums = np.array([0.3, 0.6, 0.4]) * 1000
    assert wb.grey_world_gains(sums, 1000) == pytest.approx((2.0, 1.0, 1.5))
    assert wb.grey_world_gains(sums, 0) is None
