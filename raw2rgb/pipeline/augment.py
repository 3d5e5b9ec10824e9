"""Bayer-preserving geometric augmentation of (raw, target, saliency) samples.

The paper's code flipped the packed (4, h, w) array, which moves every sample to another place in
its cell without changing its channel: after a horizontal flip the "R" plane holds samples whose
neighbours are arranged as around a green. Here the mosaic itself is flipped or transposed (the
dihedral group of the square), which changes the CFA phase, and is cropped back to RGGB phase
(``bayer.unify_pattern``), so every sample keeps its colour role. The target and saliency, held
at sensor resolution, go through the same flip and the same crop, so they move with the scene
exactly; the output scale is applied last (scale 1: 2×2 area mean).

Crops on the 2-pixel grid of the mosaic (whole packed pixels) keep the phase. At scale 1 a flip's
one-pixel re-crop is half a target pixel, so a transform that moves the phase can only be applied
where the target is at sensor resolution (the shards stage); the phase-preserving subset —
identity, transpose, crops — is exact at either scale (``ShardDataset``'s on-the-fly mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raw2rgb.pipeline import bayer, develop

# The eight elements of the dihedral group as (transpose, flip_h, flip_v).
DIHEDRAL = tuple((t, h, v) for t in (False, True) for h in (False, True) for v in (False, True))
# Those that keep RGGB phase without a crop.
PHASE_PRESERVING = ((False, False, False), (True, False, False))


@dataclass(frozen=True)
class Transform:
    """A dihedral element (transpose first, then flips) and a crop of ``size`` packed pixels at
    (y, x) packed pixels from the top-left of the re-unified mosaic (None: no crop)."""

    transpose: bool = False
    flip_h: bool = False
    flip_v: bool = False
    crop: tuple[int, int, int] | None = None  # (y, x, size)

    @property
    def moves_phase(self) -> bool:
        return (self.transpose, self.flip_h, self.flip_v) not in PHASE_PRESERVING


def random_transform(rng: np.random.Generator, shape: tuple[int, int], size: int | None,
                     phase_moving: bool = True) -> Transform:
    """A random dihedral element (only phase-preserving ones when ``phase_moving`` is False) and a
    random crop of ``size`` packed pixels that fits any outcome (one pixel is lost to a re-crop)."""
    group = DIHEDRAL if phase_moving else PHASE_PRESERVING
    t, h, v = group[int(rng.integers(len(group)))]
    crop = None
    if size is not None:
        lost = 1 if (t, h, v) not in PHASE_PRESERVING else 0
        hh, ww = (shape[1], shape[0]) if t else shape
        room_y, room_x = hh - lost - size, ww - lost - size
        if min(room_y, room_x) < 0:
            raise ValueError(f"crop {size} does not fit a patch of {shape} (packed) after a re-crop")
        crop = (int(rng.integers(room_y + 1)), int(rng.integers(room_x + 1)), size)
    return Transform(t, h, v, crop)


def _move(img: np.ndarray, t: Transform) -> np.ndarray:
    """The same flip/transpose as ``bayer.transform_mosaic``, for an image (H, W[, C])."""
    if t.transpose:
        img = img.swapaxes(0, 1)
    if t.flip_h:
        img = img[:, ::-1]
    if t.flip_v:
        img = img[::-1]
    return img


def apply(raw: np.ndarray, rgb: np.ndarray, saliency: np.ndarray, t: Transform, scale: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transform one sample.

    Args:
        raw: packed (4, h, w), any dtype.
        rgb: target at sensor resolution (2h, 2w, 3).
        saliency: map at sensor resolution (2h, 2w).
        t: the transform.
        scale: output scale: 2 keeps the target at sensor resolution, 1 area-downsamples it.

    Returns:
        raw (4, h', w'), rgb (s·h', s·w', 3) and saliency (s·h', s·w') — uint8 for scale 2,
        float32 in 0–255 for scale 1 (a 2×2 mean; the caller rounds or normalises).
    """
    _, h, w = raw.shape
    if rgb.shape[:2] != (2 * h, 2 * w) or saliency.shape[:2] != (2 * h, 2 * w):
        raise ValueError(f"target {rgb.shape[:2]} and saliency {saliency.shape[:2]} must be twice the "
                         f"packed size {(h, w)}")
    mosaic, pattern = bayer.transform_mosaic(bayer.unpack(raw), "RGGB", t.flip_h, t.flip_v, t.transpose)
    dy, dx = bayer.unify_offset(pattern)
    mosaic = bayer.unify_pattern(mosaic, pattern)
    hh, ww = mosaic.shape
    rgb = _move(rgb, t)[dy : dy + hh, dx : dx + ww]
    saliency = _move(saliency, t)[dy : dy + hh, dx : dx + ww]
    if t.crop is not None:
        y, x, size = t.crop
        if y + size > hh // 2 or x + size > ww // 2:
            raise ValueError(f"crop {t.crop} outside a {hh // 2}×{ww // 2} patch")
        mosaic = mosaic[2 * y : 2 * (y + size), 2 * x : 2 * (x + size)]
        rgb = rgb[2 * y : 2 * (y + size), 2 * x : 2 * (x + size)]
        saliency = saliency[2 * y : 2 * (y + size), 2 * x : 2 * (x + size)]
    packed = bayer.pack(mosaic)
    if scale == 1:
        down = develop.area_downsample
        return packed, down(rgb.astype(np.float32)), down(saliency.astype(np.float32))
    return packed, np.ascontiguousarray(rgb), np.ascontiguousarray(saliency)


def paper_flip(raw: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published code's horizontal flip, for comparison: packed planes and target flipped
    as images, channels unchanged. Breaks the Bayer geometry (tests show it)."""
    return raw[:, :, ::-1], rgb[:, ::-1]
