"""Weight-free saliency: the spectral residual method (Hou & Zhang, CVPR 2007).

For users without the SalGAN weights. The log-amplitude spectrum of a small grey image, minus its
local average, is the "spectral residual"; transformed back with the original phase and squared,
it highlights what stands out from the image's statistics. Output follows SalGAN's convention:
maps (H, W) uint8 at the image size.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.transform import resize

WORK_WIDTH = 64  # the paper computes the residual on a 64-pixel-wide image
SMOOTH_SIGMA = 2.5  # Gaussian on the 64-px map (the paper's sigma 8 is for its larger display)


def spectral_residual(rgb: np.ndarray) -> np.ndarray:
    """Saliency map (H, W) uint8 of an RGB image (H, W, 3) uint8 or float in 0–255."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    small_h = max(8, round(h * WORK_WIDTH / w))
    small = resize(grey, (small_h, WORK_WIDTH), anti_aliasing=True, preserve_range=True)
    spectrum = np.fft.fft2(small)
    log_amp = np.log(np.abs(spectrum) + 1e-8)
    residual = log_amp - ndimage.uniform_filter(log_amp, size=3, mode="nearest")
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = ndimage.gaussian_filter(sal, SMOOTH_SIGMA)
    sal = resize(sal, (h, w), order=1, preserve_range=True)
    lo, hi = sal.min(), sal.max()
    sal = (sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)
    return np.rint(sal * 255).astype(np.uint8)
