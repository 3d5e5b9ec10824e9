"""Pictures of a run: sample grids (raw preview | output | target | saliency) and the HTML report.

Images come in as the model's tensors (DESIGN §4) and leave as 8-bit PNGs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raw2rgb.pipeline.develop import develop_preview


def raw_preview(raw: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """(4, h, w) raw in [-1, 1] → (H, W, 3) uint8: greens averaged, grey-world white balance,
    sRGB gamma, nearest-upsampled to ``size`` — what the sensor saw, before any learning."""
    packed = ((raw.detach().float().cpu().numpy() + 1.0) * 0.5).clip(0, 1)
    img = develop_preview(packed)
    if size is not None and img.shape[:2] != tuple(size):
        fy, fx = size[0] // img.shape[0], size[1] // img.shape[1]
        img = np.repeat(np.repeat(img, fy, axis=0), fx, axis=1)
    return np.rint(img * 255).astype(np.uint8)


def to_uint8(x: torch.Tensor, signed: bool = True) -> np.ndarray:
    """(C, H, W) in [-1, 1] (``signed``) or [0, 1] → (H, W, 3) uint8 (one channel repeated)."""
    x = x.detach().float().cpu()
    x = (x + 1.0) * 0.5 if signed else x
    img = np.rint(x.clamp(0, 1).numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def grid_rows(raw: torch.Tensor, rgb: torch.Tensor, target: torch.Tensor, saliency: torch.Tensor,
              gap: int = 4) -> np.ndarray:
    """One row per image: raw preview | output | target | saliency, white gaps between."""
    rows = []
    for i in range(raw.shape[0]):
        size = tuple(rgb.shape[-2:])
        tiles = [raw_preview(raw[i], size), to_uint8(rgb[i]), to_uint8(target[i]),
                 to_uint8(F.interpolate(saliency[i : i + 1].float(), size=size)[0], signed=False)]
        row = np.full((size[0], len(tiles) * (size[1] + gap) - gap, 3), 255, np.uint8)
        for k, t in enumerate(tiles):
            row[:, k * (size[1] + gap) : k * (size[1] + gap) + size[1]] = t
        rows.append(row)
    out = np.full((len(rows) * (rows[0].shape[0] + gap) - gap, rows[0].shape[1], 3), 255, np.uint8)
    for i, r in enumerate(rows):
        out[i * (r.shape[0] + gap) : i * (r.shape[0] + gap) + r.shape[0]] = r
    return out


def save_png(img: np.ndarray, path: os.PathLike | str) -> Path:
    from PIL import Image

    from raw2rgb.pipeline.stage import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


def sample_grid(raw: torch.Tensor, rgb: torch.Tensor, target: torch.Tensor, saliency: torch.Tensor,
                path: os.PathLike | str) -> Path:
    return save_png(grid_rows(raw, rgb, target, saliency), path)
