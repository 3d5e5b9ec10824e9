"""Image metrics on torch tensors, computed where the data is: PSNR as in the paper, SSIM, and
colour-corrected PSNR.

Inputs are batches (B, 3, H, W) in [-1, 1] (the model's range) or already on the 0–255 scale
(:func:`to_255`). Every metric returns one value per image; callers average over images (the
paper's protocol: per-image PSNR, then the mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5  # Wang et al. 2004; scikit-image's gaussian_weights=True
SSIM_RADIUS = 5  # int(3.5 · σ + 0.5): scipy's gaussian_filter with truncate 3.5
K1, K2 = 0.01, 0.03
PROTOCOL = {"scale": "0-255, images quantised to 8 bits", "psnr": "10·log10(255²·W·H / Σ(I−K)²) per image, "
            "averaged over images (all channels)", "ssim": "Gaussian window σ 1.5 (11×11), per channel, "
            "valid region, mean; equals skimage structural_similarity(gaussian_weights=True, "
            "use_sample_covariance=False, data_range=255)", "psnr_cc": "PSNR after an affine colour fit "
            "(3×4, least squares) of the output to the target, per image"}


def to_255(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → 0–255, quantised as a saved 8-bit image would be, float32."""
    return torch.round((x.float().clamp(-1, 1) + 1.0) * 127.5)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of 0–255 images (B, C, H, W): ``10·log10(255² / MSE)`` (∞ for equal images)."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian(device: torch.device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (g / g.sum()).float()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image SSIM of (B, C, H, W) images: Gaussian window, statistics of the population
    (not the sample), each channel separately, averaged over the valid region and channels.

    Variances and the covariance are taken of each channel minus its mean over the image and the
    local means added back: E[x²] − μ² on the 0–255 scale cancels catastrophically in reduced
    precision (TF32 convolutions on a GPU), differences from the mean do not."""
    a, b = a.float(), b.float()
    c = a.shape[1]
    g = _gaussian(a.device)
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    ma, mb = a.mean(dim=(2, 3), keepdim=True), b.mean(dim=(2, 3), keepdim=True)
    a0, b0 = a - ma, b - mb
    da, db = blur(a0), blur(b0)
    var_a = blur(a0 * a0) - da**2
    var_b = blur(b0 * b0) - db**2
    cov = blur(a0 * b0) - da * db
    mu_a, mu_b = da + ma, db + mb
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def color_correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The output after an affine colour fit to the target, per image: the 3×4 matrix M that
    minimises |M·[o; 1] − t|², applied and clipped to 0–255. Common in the ZRR literature, where
    the target camera's colours are not the phone's.

    Solved through the 4×4 normal equations with a pseudo-inverse (float64): grey, constant or
    clipped outputs make them singular, and CUDA's ``lstsq`` (``gels``) assumes full rank."""
    o = output.double().flatten(2)  # (B, 3, N)
    t = target.double().flatten(2)
    x = torch.cat([o, torch.ones_like(o[:, :1])], 1)  # (B, 4, N)
    xtx = x @ x.transpose(1, 2)  # (B, 4, 4)
    m = torch.linalg.pinv(xtx, hermitian=True) @ (x @ t.transpose(1, 2))  # (B, 4, 3)
    fitted = (m.transpose(1, 2) @ x).reshape(output.shape)
    return fitted.clamp(0, 255).float()


def psnr_cc(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return psnr(color_correct(output, target), target)


def mean_finite(values: list[float]) -> float:
    """Mean over images, with identical images (∞ dB) left out."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("inf")
