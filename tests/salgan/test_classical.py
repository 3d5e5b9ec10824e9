"""Spectral residual saliency."""

from __future__ import annotations

import numpy as np
import pytest

from raw2rgb.salgan.classical import spectral_residual


@pytest.mark.parametrize("size", [8, 16])
def test_bright_square_on_flat_background_ranks_above_its_surroundings(size):
    img = np.full((120, 160, 3), 90, np.uint8)
    img[50 : 50 + size, 70 : 70 + size] = 240
    s = spectral_residual(img).astype(float)
    inside = s[50 : 50 + size, 70 : 70 + size].mean()
    outside = np.ones_like(s, bool)
    outside[40 : 60 + size, 60 : 80 + size] = False
    assert s.shape == (120, 160)
    assert inside > 100 and inside > 10 * s[outside].mean()
    peak = np.unravel_index(s.argmax(), s.shape)
    assert 50 <= peak[0] < 50 + size and 70 <= peak[1] < 70 + size


def test_range_and_flat_image():
    s = spectral_residual(np.random.default_rng(0).integers(0, 256, (64, 80, 3)).astype(np.uint8))
    assert s.dtype == np.uint8 and s.min() == 0 and s.max() == 255
    assert spectral_residual(np.full((40, 40, 3), 7, np.uint8)).shape == (40, 40)
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        spectral_residual(np.zeros((5, 5)))
