"""Pictures of the model's tensors: RAW previews, sample grids, contact-sheet layout, 8-bit PNGs.

Images come in as the model's tensors (docs/architecture.md: conventions) and leave as 8-bit arrays or PNG files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raw2rgb.files import atomic_path
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


def saliency_tile(saliency: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(1, h, w) map in [0, 1] → (H, W, 3) uint8 at ``size`` (nearest)."""
    return to_uint8(F.interpolate(saliency[None].float(), size=size)[0], signed=False)


def assemble(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Tiles (H, W, 3) uint8 of one size laid out in rows, white gaps between."""
    def join(parts: list[np.ndarray], axis: int) -> np.ndarray:
        pad = [(0, 0)] * 3
        pad[axis] = (0, gap)
        joined = np.concatenate([np.pad(t, pad, constant_values=255) for t in parts], axis=axis)
        return joined[:-gap] if axis == 0 else joined[:, :-gap]

    return join([join(r, 1) for r in rows], 0)


def enlarge(img: np.ndarray, min_side: int = 160, tile: int | None = None) -> np.ndarray:
    """Nearest-neighbour enlargement of a sheet of small tiles so that a tile is at least
    ``min_side`` pixels (pixels stay pixels)."""
    k = max(1, min_side // (tile or img.shape[0]))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def grid_rows(raw: torch.Tensor, rgb: torch.Tensor, target: torch.Tensor, saliency: torch.Tensor,
              gap: int = 4) -> np.ndarray:
    """One row per image: raw preview | output | target | saliency, white gaps between."""
    size = tuple(rgb.shape[-2:])
    return assemble([[raw_preview(raw[i], size), to_uint8(rgb[i]), to_uint8(target[i]),
                      saliency_tile(saliency[i], size)] for i in range(raw.shape[0])], gap)


def save_png(img: np.ndarray, path: os.PathLike | str) -> Path:
    """Write an (H, W, 3) uint8 image as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path
