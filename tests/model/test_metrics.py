"""Metrics against closed forms and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raw2rgb.model import metrics


def test_psnr_of_known_noise_equals_the_closed_form():
    """An image against itself plus ±d on every value: MSE is d², PSNR 10·log10(255²/d²)."""
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(10, 245, (2, 3, 32, 48)).astype(np.float32))
    signs = torch.from_numpy(rng.choice([-1.0, 1.0], img.shape).astype(np.float32))
    for d in (1.0, 5.0):
        got = metrics.psnr(img + d * signs, img)
        assert torch.allclose(got, torch.full((2,), 10 * math.log10(255**2 / d**2)), atol=1e-4)
    assert torch.isinf(metrics.psnr(img, img)).all()


def test_ssim_agrees_with_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 56, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).round()
    ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
                                channel_axis=2)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float()  # noqa: E731
    assert abs(float(metrics.ssim(t(a), t(b))) - ref) < 1e-3
    assert float(metrics.ssim(t(a), t(a))) == pytest.approx(1.0, abs=1e-6)


def test_colour_corrected_psnr_undoes_an_affine_colour_change():
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.uniform(30, 220, (1, 3, 24, 24)).astype(np.float32))
    m = torch.tensor([[0.8, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, 0.1, 0.7]])
    output = torch.einsum("ij,bjhw->bihw", m, target) + 7
    assert float(metrics.psnr(output, target)) < 30
    assert float(metrics.psnr_cc(output, target)) > 60
