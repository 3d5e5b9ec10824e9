"""All CFA geometry: pattern names, normalisation, phase unification, pack/unpack, Bayer-safe moves.

This is the only module that slices Bayer planes. A pattern is named by its 2×2 cell read row by
row from the top-left pixel (``RGGB``, ``BGGR``, ``GRBG``, ``GBRG``). Packed arrays are
``(4, H/2, W/2)`` in the order R, G1, B, G2, where G1 is the green on the red row and G2 the
green on the blue row (docs/architecture.md: conventions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
CHANNELS = ("R", "G1", "B", "G2")


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` upper-cased, or raise ValueError if it is not one of :data:`PATTERNS`."""
    p = pattern.upper()
    if p not in PATTERNS:
        raise ValueError(f"unknown CFA pattern {pattern!r}: expected one of {', '.join(PATTERNS)}")
    return p


def channel_offsets(pattern: str) -> dict[str, tuple[int, int]]:
    """Position (row, col) inside the 2×2 cell of each packed channel R, G1, B, G2.

    G1 is the green that shares a row with red, G2 the one that shares a row with blue.
    """
    p = check_pattern(pattern)
    cell = {(i // 2, i % 2): c for i, c in enumerate(p)}
    pos = {c: rc for rc, c in cell.items() if c != "G"}
    r_row = pos["R"][0]
    greens = [rc for rc, c in cell.items() if c == "G"]
    g1 = next(rc for rc in greens if rc[0] == r_row)
    g2 = next(rc for rc in greens if rc[0] != r_row)
    return {"R": pos["R"], "G1": g1, "B": pos["B"], "G2": g2}


def pattern_from_colors(cell: np.ndarray, color_desc: str = "RGBG") -> str:
    """Name the pattern of a 2×2 cell of colour indices into ``color_desc`` (rawpy's convention).

    rawpy gives ``raw_pattern`` / ``raw_colors`` as indices into ``color_desc`` (``b'RGBG'``),
    where index 1 and 3 are both green; the name only needs the letters.
    """
    cell = np.asarray(cell)
    if cell.shape != (2, 2):
        raise ValueError(f"a Bayer cell is 2×2, got shape {cell.shape}")
    letters = "".join(color_desc[int(i)] for i in cell.ravel())
    return check_pattern(letters)


def unify_offset(pattern: str) -> tuple[int, int]:
    """Rows and columns to drop at the top-left so that the mosaic starts on R (RGGB phase)."""
    return channel_offsets(pattern)["R"]


def unify_pattern(mosaic: np.ndarray, pattern: str) -> np.ndarray:
    """Crop a Bayer mosaic to RGGB phase and to even height and width.

    Bayer pattern unification by cropping (Liu et al., CVPRW 2019): a flip or a one-pixel crop
    only moves the phase of the mosaic, so every input is cropped by at most one row and one
    column at the top-left, then by at most one at the bottom-right to make both sizes even.

    Args:
        mosaic: (H, W) array, any dtype.
        pattern: the CFA pattern of ``mosaic``.

    Returns:
        A view of ``mosaic`` of shape (H', W'), H' and W' even, whose pattern is RGGB.
    """
    if mosaic.ndim != 2:
        raise ValueError(f"a mosaic is (H, W), got shape {mosaic.shape}")
    dy, dx = unify_offset(pattern)
    h = (mosaic.shape[0] - dy) // 2 * 2
    w = (mosaic.shape[1] - dx) // 2 * 2
    if h <= 0 or w <= 0:
        raise ValueError(f"mosaic of shape {mosaic.shape} is too small to hold one Bayer cell")
    return mosaic[dy : dy + h, dx : dx + w]


def pack(mosaic: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """Pack a Bayer mosaic into planes (4, H/2, W/2) in the order R, G1, B, G2.

    The mosaic is first unified to RGGB phase (see :func:`unify_pattern`), so any pattern and any
    size is accepted; pass ``pattern='RGGB'`` with even sizes for an exact inverse of
    :func:`unpack`.
    """
    return np.stack(planes(mosaic, pattern))


def unpack(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack`: planes (4, h, w) R, G1, B, G2 → RGGB mosaic (2h, 2w)."""
    if packed.ndim != 3 or packed.shape[0] != 4:
        raise ValueError(f"packed raw is (4, h, w), got shape {packed.shape}")
    _, h, w = packed.shape
    m = np.empty((2 * h, 2 * w), dtype=packed.dtype)
    m[0::2, 0::2] = packed[0]
    m[0::2, 1::2] = packed[1]
    m[1::2, 1::2] = packed[2]
    m[1::2, 0::2] = packed[3]
    return m


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an (H, W, 3) image through a colour filter array: (H, W), one colour per pixel.

    Used by the virtual camera and the augmentation tests; greens take the G channel.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"an RGB image is (H, W, 3), got shape {rgb.shape}")
    p = check_pattern(pattern)
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    index = {"R": 0, "G": 1, "B": 2}
    for i, c in enumerate(p):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[c]]
    return out


def cell_values(pattern: str, per_channel: Sequence[float]) -> np.ndarray:
    """A 2×2 cell holding, at each CFA position, the value of its channel in R, G1, B, G2 order."""
    if len(per_channel) != 4:
        raise ValueError(f"need 4 values (R, G1, B, G2), got {len(per_channel)}")
    cell = np.zeros((2, 2), dtype=np.float64)
    for name, (dy, dx) in channel_offsets(pattern).items():
        cell[dy, dx] = per_channel[CHANNELS.index(name)]
    return cell


def planes(mosaic: np.ndarray, pattern: str = "RGGB") -> list[np.ndarray]:
    """Views (no copy) of the four planes R, G1, B, G2 of a mosaic, unified to RGGB phase."""
    m = unify_pattern(mosaic, pattern)
    return [m[0::2, 0::2], m[0::2, 1::2], m[1::2, 1::2], m[1::2, 0::2]]


def normalisation_formula(bits: int) -> str:
    """What :func:`normalize_packed` computes, as recorded in sidecars and shards."""
    return f"clip((x - black[c]) / (white - black[c]), 0, 1) * {2 ** bits - 1}"


def normalize_packed(
    packed: np.ndarray | list[np.ndarray], black: Sequence[float], white: float, out_dtype: type = np.uint16,
    channels_last: bool = False,
) -> np.ndarray:
    """Black/white-level normalisation of packed planes, quantised to ``out_dtype``.

    Computes ``clip((x - black[c]) / (white - black[c]), 0, 1)`` per channel c (R, G1, B, G2),
    scaled to the full range of ``out_dtype`` (65535 for uint16, 255 for uint8) and rounded;
    ``out_dtype=np.float32`` returns the [0, 1] values.

    Args:
        packed: (4, h, w) array, or the four planes as views (see :func:`planes`).
        channels_last: return (h, w, 4) — the layout a PNG encoder takes — instead of (4, h, w).
    """
    if len(packed) != 4 or any(np.ndim(p) != 2 for p in packed):
        raise ValueError(f"packed raw is (4, h, w), got shape {np.shape(packed)}")
    if len(black) != 4:
        raise ValueError(f"need 4 black levels (R, G1, B, G2), got {len(black)}")
    scale = 1.0 if out_dtype == np.float32 else float(np.iinfo(out_dtype).max)
    h, w = packed[0].shape
    out = np.empty((h, w, 4) if channels_last else (4, h, w), dtype=out_dtype)
    plane = np.empty((h, w), dtype=np.float32)
    for c in range(4):
        span = float(white) - float(black[c])
        if span <= 0:
            raise ValueError(f"white level {white} is not above black level {black[c]}")
        np.subtract(packed[c], np.float32(black[c]), out=plane, dtype=np.float32)
        plane *= np.float32(scale / span)
        np.clip(plane, 0.0, scale, out=plane)
        if out_dtype != np.float32:
            np.rint(plane, out=plane)
        if channels_last:
            out[..., c] = plane
        else:
            out[c] = plane
    return out


# -- Bayer-safe geometry --------------------------------------------------------------------------
# A flip or transpose of an RGGB mosaic gives a mosaic of another phase (a horizontal flip of RGGB
# reads GRBG from the new top-left pixel); cropping it back to RGGB keeps every sample in its
# colour role. Flipping the packed planes instead (as the paper's code did) swaps the positions
# of samples inside each cell without changing their channel, which breaks the geometry.

def transform_mosaic(m: np.ndarray, pattern: str = "RGGB", flip_h: bool = False,
                     flip_v: bool = False, transpose: bool = False) -> tuple[np.ndarray, str]:
    """Flip/transpose a mosaic as an image; return the moved mosaic (a view) and its new pattern.

    Transpose is applied first, then the flips, so the 8 combinations are the dihedral group of
    the square. Every sample keeps its colour; only the phase of the cell seen from the new
    top-left pixel changes. Follow with :func:`unify_pattern` to get back to RGGB.
    """
    p = check_pattern(pattern)
    h, w = m.shape

    def letter(y: int, x: int) -> str:  # colour of the source pixel (y, x)
        return p[(y % 2) * 2 + (x % 2)]

    def source(y: int, x: int) -> tuple[int, int]:  # output pixel (y, x) -> source pixel
        hh, ww = (w, h) if transpose else (h, w)
        if flip_v:
            y = hh - 1 - y
        if flip_h:
            x = ww - 1 - x
        return (x, y) if transpose else (y, x)

    out = m.T if transpose else m
    if flip_h:
        out = out[:, ::-1]
    if flip_v:
        out = out[::-1, :]
    new = "".join(letter(*source(y, x)) for y in (0, 1) for x in (0, 1))
    return out, new


# -- frame thumbnails ------------------------------------------------------------------------------
# -- binning: a mosaic at the resolution of a smaller target ----------------------------------------

def bin_packed(packed: np.ndarray, factor: int) -> np.ndarray:
    """Bin packed planes (4, h, w) by ``factor``: each output site is the mean of a factor × factor
    block of same-colour sites, so the planes stay a Bayer mosaic's (R, G1, B, G2) at 1/factor the
    resolution. Rows and columns past the last whole block are dropped. Integer input is rounded
    to the nearest integer in its own dtype; float input stays float.

    Raises:
        ValueError: not packed planes, a factor below 1, or planes smaller than one block.
    """
    if packed.ndim != 3 or packed.shape[0] != 4:
        raise ValueError(f"bin_packed takes packed planes (4, h, w), got {packed.shape}")
    if int(factor) != factor or factor < 1:
        raise ValueError(f"binning factor must be a whole number ≥ 1, got {factor}")
    factor = int(factor)
    if factor == 1:
        return packed
    _, h, w = packed.shape
    bh, bw = h // factor, w // factor
    if bh == 0 or bw == 0:
        raise ValueError(f"planes of {h}×{w} are smaller than one {factor}×{factor} block")
    blocks = packed[:, : bh * factor, : bw * factor].reshape(4, bh, factor, bw, factor)
    mean = blocks.mean(axis=(2, 4), dtype=np.float64)
    if np.issubdtype(packed.dtype, np.integer):
        return np.rint(mean).astype(packed.dtype)
    return mean.astype(packed.dtype)


def binning_factor(sensor_hw: tuple[int, int], target_hw: tuple[int, int], scale: int = 2) -> int:
    """The smallest whole factor that bins a frame of ``sensor_hw`` sensor pixels (packed planes of
    half that) so that packed × ``scale`` is no larger than ``target_hw`` in either direction: a
    target is never enlarged onto the sensor grid. 1 for a target as large as the sensor.

    The frame's orientation is the target's: a portrait JPEG of a landscape sensor is compared
    transposed.
    """
    (sh, sw), (th, tw) = sensor_hw, target_hw
    if (sh > sw) != (th > tw) and sh != sw and th != tw:
        th, tw = tw, th
    if th < 1 or tw < 1:
        raise ValueError(f"target of {target_hw} pixels")
    ph, pw = sh // 2, sw // 2
    factor = 1
    while (ph // factor) * scale > th or (pw // factor) * scale > tw:
        factor += 1
    return factor


# The generator's global colour branch (model/prior.py) sees each sample's whole frame, small: the
# light of a scene is a property of the frame, not of a 64-pixel patch of it.

THUMB_SIZE = 32  # packed pixels a side


def area_bins(n: int, size: int) -> np.ndarray:
    """(size, n) averaging weights: output i is the mean of inputs floor(i·n/size) to ceil((i+1)·n/size)
    − 1 — ``torch.nn.functional.adaptive_avg_pool2d``'s bins, so a thumbnail made here equals the one
    the model takes of a frame by itself (also when n < size: bins then repeat inputs)."""
    w = np.zeros((size, n))
    for i in range(size):
        a, b = (i * n) // size, -((-(i + 1) * n) // size)
        w[i, a:b] = 1.0 / (b - a)
    return w


def thumbnail(packed: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """Packed planes (4, h, w), any dtype → (4, size, size) area means, float64 in the input's units."""
    if packed.ndim != 3 or packed.shape[0] != 4:
        raise ValueError(f"thumbnail takes packed planes (4, h, w), got {packed.shape}")
    _, h, w = packed.shape
    return np.einsum("yh,chw,xw->cyx", area_bins(h, size), packed.astype(np.float64), area_bins(w, size))


def move_thumbnail(thumb: np.ndarray, flip_h: bool = False, flip_v: bool = False,
                   transpose: bool = False) -> np.ndarray:
    """A packed thumbnail (4, t, t) under the move :func:`transform_mosaic` and :func:`unify_pattern`
    give its frame: each plane moved as an image (the one-pixel re-crop is below a thumbnail's
    resolution); a transpose takes G1 to the blue row, so the greens swap."""
    out = thumb[[0, 3, 2, 1]].swapaxes(1, 2) if transpose else thumb
    if flip_h:
        out = out[:, :, ::-1]
    if flip_v:
        out = out[:, ::-1, :]
    return np.ascontiguousarray(out)
