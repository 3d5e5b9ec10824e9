"""Classical rendering: sRGB curves, luma, white balance, colour matrices, demosaicing, orientation, and
the classical pipeline of ``raw2rgb convert --method isp``.

Everything here is numpy on arrays in [0, 1]. Packed data is (4, h, w) R, G1, B, G2 in RGGB phase
(docs/architecture.md: conventions); a mosaic is (H, W) in RGGB phase (``bayer.unify_pattern`` makes it so).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from raw2rgb.pipeline import bayer

# sRGB (D65) -> XYZ, to turn a DNG ColorMatrix (XYZ -> camera) into camera -> sRGB.
SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375],
     [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]]
)


LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an (H, W, 3) image; uint8 input is scaled to [0, 1]."""
    x = rgb.astype(np.float32)
    if rgb.dtype == np.uint8:
        x /= 255.0
    return x @ LUMA_601


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """Inverse sRGB transfer function on values in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB transfer function on values in [0, 1] (clipped first); keeps float32 as float32."""
    x = np.clip(np.asarray(x), 0.0, 1.0)
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(x.dtype)


_LUT_BITS = 16
_SRGB_LUT: np.ndarray | None = None


def linear_to_srgb_fast(x: np.ndarray) -> np.ndarray:
    """:func:`linear_to_srgb` of float32 [0, 1] data through a 65,536-entry table (5× faster on a
    12-MP frame; the table's step is below half an 8-bit level everywhere)."""
    global _SRGB_LUT
    if _SRGB_LUT is None:
        _SRGB_LUT = linear_to_srgb(np.linspace(0, 1, 1 << _LUT_BITS, dtype=np.float64)).astype(np.float32)
    idx = np.clip(x, 0.0, 1.0) * np.float32((1 << _LUT_BITS) - 1)
    idx += np.float32(0.5)
    return _SRGB_LUT[idx.astype(np.uint16)]


def cam_to_srgb(xyz_to_cam: np.ndarray) -> np.ndarray:
    """Camera RGB → linear sRGB from a DNG-style XYZ → camera matrix (dcraw's construction).

    ``cam_from_srgb = xyz_to_cam @ srgb_to_xyz``, rows normalised so that sRGB white maps to
    camera (1, 1, 1) after white balance, then inverted.
    """
    cam_from_srgb = np.asarray(xyz_to_cam, dtype=np.float64) @ SRGB_TO_XYZ
    cam_from_srgb = cam_from_srgb / cam_from_srgb.sum(axis=1, keepdims=True)
    return np.linalg.inv(cam_from_srgb)


def grey_world_packed(packed: np.ndarray) -> np.ndarray:
    """White-balance gains (R, G, B) with G = 1 that make the mean of packed planes (4, h, w) R, G1,
    B, G2 grey: the same gains whatever the rendering's scale (bilinear demosaicing keeps each
    plane's mean, up to the border)."""
    p = np.asarray(packed, np.float64)
    r, g, b = p[0].mean(), (p[1].mean() + p[3].mean()) * 0.5, p[2].mean()
    return (g / (np.array([r, g, b]) + 1e-6)).astype(np.float32)


def frame_colour(packed: np.ndarray, wb_gains=None, cam_to_rgb=None) -> np.ndarray:
    """The colour a classical rendering of a frame uses, as 12 numbers (float32): white-balance
    gains R, G, B (as shot; grey world of the planes when unknown), then the camera → sRGB matrix
    row by row (identity when unknown). What a model with a colour prior takes beside the raw."""
    gains = grey_world_packed(packed) if wb_gains is None else np.asarray(wb_gains, np.float32)
    matrix = np.eye(3) if cam_to_rgb is None else np.asarray(cam_to_rgb)
    return np.concatenate([gains, np.ravel(matrix)]).astype(np.float32)


def white_balance(rgb: np.ndarray, gains) -> np.ndarray:
    """Multiply camera RGB (…, 3) by gains and clip to [0, 1] (highlights clip, as dcraw does)."""
    out = rgb * np.asarray(gains, dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def apply_matrix(rgb: np.ndarray, matrix, clip: bool = True) -> np.ndarray:
    """(…, 3) @ matrixᵀ, clipped to [0, 1] (``clip``), else only above 1: the colours the matrix puts
    out of sRGB's gamut stay negative."""
    out = rgb @ np.asarray(matrix, dtype=np.float32).T
    return np.clip(out, 0.0 if clip else None, 1.0, out=out)


def srgb_signed(x: np.ndarray) -> np.ndarray:
    """The sRGB curve on |x| (at most 1) with x's sign: an out-of-gamut colour keeps its negative
    channels through the encoding (what a colour profile takes: ``GAMUTS``)."""
    return (np.sign(x) * linear_to_srgb_fast(np.abs(x))).astype(np.float32)


# What the classical pipeline gives: "clip", an sRGB image in [0, 1] (the isp rendering); "extended", the
# same before its gamut clip, in [-1, 1] — the input of a colour profile and of the model's prior. The
# matrix puts saturated colours (a stage's blue LEDs) out of gamut; clipped, they all look alike, and a
# cubic profile of the clipped rendering lost 1.6 dB to a cubic of the raw planes on the real Sony
# frame (docs/camera-look.md); of the extended one it gains 0.3 dB over it.
GAMUTS = ("clip", "extended")


def area_downsample(img: np.ndarray) -> np.ndarray:
    """2×2 mean (area interpolation by a factor of 2) of an (H, W[, C]) array with even H, W."""
    h, w = img.shape[:2]
    return img.reshape(h // 2, 2, w // 2, 2, *img.shape[2:]).mean(axis=(1, 3), dtype=np.float32)


def demosaic_bilinear(mosaic: np.ndarray) -> np.ndarray:
    """Bilinear demosaicing of an RGGB mosaic (H, W) in [0, 1] → (H, W, 3) float32."""
    return demosaic_planes(bayer.pack(np.asarray(mosaic, dtype=np.float32)))


def demosaic_planes(packed: np.ndarray) -> np.ndarray:
    """Bilinear demosaicing from packed planes (4, h, w) R, G1, B, G2 → (2h, 2w, 3) float32.

    Each missing sample is the mean of its nearest same-colour neighbours (2 or 4); at the
    frame's border the mosaic is mirrored, which for the planes means repeating their edge."""
    r, g1, b, g2 = (np.pad(np.asarray(p, np.float32), 1, mode="edge") for p in packed)
    h, w = packed.shape[1:]
    c = (slice(1, h + 1), slice(1, w + 1))  # the plane itself inside its padding

    def at(p: np.ndarray, dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx]

    out = np.empty((2 * h, 2 * w, 3), np.float32)
    q = np.float32(0.25)
    # sites: R (2i, 2j), G1 (2i, 2j+1), G2 (2i+1, 2j), B (2i+1, 2j+1)
    out[0::2, 0::2, 0] = r[c]
    out[0::2, 1::2, 0] = (r[c] + at(r, 0, 1)) * 0.5
    out[1::2, 0::2, 0] = (r[c] + at(r, 1, 0)) * 0.5
    out[1::2, 1::2, 0] = (r[c] + at(r, 0, 1) + at(r, 1, 0) + at(r, 1, 1)) * q
    out[0::2, 1::2, 1] = g1[c]
    out[1::2, 0::2, 1] = g2[c]
    out[0::2, 0::2, 1] = (at(g2, -1, 0) + g2[c] + at(g1, 0, -1) + g1[c]) * q
    out[1::2, 1::2, 1] = (g1[c] + at(g1, 1, 0) + g2[c] + at(g2, 0, 1)) * q
    out[1::2, 1::2, 2] = b[c]
    out[1::2, 0::2, 2] = (at(b, 0, -1) + b[c]) * 0.5
    out[0::2, 1::2, 2] = (at(b, -1, 0) + b[c]) * 0.5
    out[0::2, 0::2, 2] = (at(b, -1, -1) + at(b, -1, 0) + at(b, 0, -1) + b[c]) * q
    return out


def orient(img: np.ndarray, flip: int) -> np.ndarray:
    """Apply LibRaw's orientation code (0 none, 3 180°, 5 90° CCW, 6 90° CW) to (H, W[, C])."""
    if flip == 3:
        return img[::-1, ::-1]
    if flip == 5:
        return np.rot90(img, 1)
    if flip == 6:
        return np.rot90(img, -1)
    return img


def camera_rgb(packed: np.ndarray, scale: int = 1) -> np.ndarray:
    """Camera RGB (H, W, 3) float32 of normalised packed planes (4, h, w) in [0, 1]: at scale 1
    one pixel per cell (greens averaged), at scale 2 demosaiced to sensor resolution."""
    if scale == 1:
        p = packed.astype(np.float32)
        return np.stack([p[0], (p[1] + p[3]) * 0.5, p[2]], axis=-1)
    if scale == 2:
        return demosaic_planes(packed)
    raise ValueError(f"scale must be 1 or 2, got {scale}")


def develop(packed: np.ndarray, wb_gains=None, cam_to_rgb=None, scale: int = 1, orientation: int = 0,
            gamut: str = "clip") -> np.ndarray:
    """The classical pipeline: normalised packed planes (4, h, w) in [0, 1] → sRGB (H, W, 3) float32 in
    [0, 1], H = scale·h; with ``gamut="extended"``, before the gamut clip: in [-1, 1] (``GAMUTS``).

    White balance (as shot; grey world when unknown), demosaicing, camera → sRGB matrix (identity
    when unknown), sRGB gamma, orientation. Black and white level are applied by the normalisation
    that made ``packed`` (``RawFrame.packed``)."""
    if gamut not in GAMUTS:
        raise ValueError(f"gamut is one of {GAMUTS}, got {gamut!r}")
    cam = camera_rgb(packed, scale)
    gains = grey_world_packed(packed) if wb_gains is None else wb_gains
    rgb = white_balance(cam, gains)
    if cam_to_rgb is not None:
        rgb = apply_matrix(rgb, cam_to_rgb, clip=gamut == "clip")
    encoded = linear_to_srgb_fast(rgb) if gamut == "clip" else srgb_signed(rgb)
    return np.ascontiguousarray(orient(encoded, orientation))


def develop_preview(packed: np.ndarray, wb_gains=None, cam_to_rgb=None) -> np.ndarray:
    """A quick sRGB rendering (h, w, 3) in [0, 1] of normalised packed planes, one pixel per cell:
    good enough to look at or to find features; not a finished photograph."""
    return develop(packed, wb_gains, cam_to_rgb, scale=1)



# -- highlights ---------------------------------------------------------------------------------------

HIGHLIGHT_BAND = (0.9, 1.0)  # of the white level: the RAW samples over which a rendering rolls off to white


def clip_weight(packed: np.ndarray, scale: int, band: tuple[float, float] = HIGHLIGHT_BAND) -> np.ndarray:
    """How near each output pixel is to a clipped RAW sample: (scale·h, scale·w) float32 in [0, 1].

    Each pixel takes the brightest sample within one cell of it (2 sensor pixels): at scale 2 the
    mosaic's samples, at scale 1 each cell's brightest channel. Bilinear demosaicing spreads a
    sample one pixel further, and on a real frame a cubic profile's false colours reached one
    pixel beyond that (docs/convert.md). The sample is mapped through a smoothstep over ``band``
    (of the white level): 0 up to ``band[0]``, 1 from ``band[1]`` on, monotone, flat at both ends.

    Args:
        packed: (4, h, w) normalised packed planes R, G1, B, G2 (1 is the white level).
        scale: the rendering's output scale, 1 or 2.
        band: (low, high), 0 < low < high.

    Raises:
        ValueError: ``packed`` not (4, h, w), a scale other than 1 or 2, or a bad band.
    """
    if packed.ndim != 3 or packed.shape[0] != 4:
        raise ValueError(f"packed planes must be (4, h, w), got {packed.shape}")
    if scale not in (1, 2):
        raise ValueError(f"scale must be 1 or 2, got {scale}")
    low, high = band
    if not 0 < low < high:
        raise ValueError(f"the band must be 0 < low < high, got {band}")
    samples = bayer.unpack(packed) if scale == 2 else np.max(packed, axis=0)
    t = np.clip((np.asarray(samples, np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    if not t.any():  # most frames: no sample in the band
        return t
    return ndimage.maximum_filter(t * t * (3 - 2 * t), size=2 * scale + 1, mode="nearest")


def roll_off_highlights(rgb: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend a rendering toward white where its RAW clipped: ``(1 - w)·rgb + w·white`` per pixel.

    Why: where a RAW sample reaches the white level the ratio of the channels, which is the
    pixel's colour, is lost, and the classical pipeline's clipping leaves such pixels at the edge
    of its gamut. A colour profile's cubic or lookup table, or a trained model, meets them outside
    anything it was fitted on and pushes them into false colour: on a real Sony concert frame a
    fitted cubic drew yellow, olive and black rims around glints that the camera's own JPEG shows
    white with a lavender halo, and a fitted lookup table takes (1, 1, 1) to dark purple. The one
    colour that a lost ratio cannot make false is neutral, and a clipped highlight is the brightest
    thing in the frame: so this takes it to white, where :func:`clip_weight` says (what that costs
    against a camera's smaller JPEG: docs/convert.md).

    Args:
        rgb: (H, W, 3) rendering on the RAW's grid (before orientation), float in [0, 1] (white 1)
            or uint8/uint16 samples (white the type's top).
        weight: (H, W) :func:`clip_weight` at the rendering's scale.

    Returns:
        A new array of ``rgb``'s shape and type: pixels of weight 0 unchanged bit for bit, of
        weight 1 exactly white; in between every channel rises, and the saturation falls, with
        the weight.

    Raises:
        ValueError: shapes that do not fit together (both printed).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != weight.shape:
        raise ValueError(f"a rendering (H, W, 3) and its weight (H, W), got {rgb.shape} and {weight.shape}")
    out = rgb.copy()
    at = np.nonzero(weight)  # clipped pixels are few: blend only those
    if at[0].size == 0:
        return out
    w = weight[at].astype(np.float64)[:, None]
    white = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else 1.0
    mixed = (1 - w) * out[at] + w * white  # in float64: rounding to the type keeps the order
    out[at] = np.rint(mixed) if np.issubdtype(rgb.dtype, np.integer) else mixed
    return out
