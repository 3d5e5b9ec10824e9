"""White balance where a RAW file records none: estimators on whole frames, and the one rule that
decides each sample's gains.

A file with an as-shot white balance keeps it, and its colour matrix. A file without one (a ZRR
mosaic PNG, any headerless mosaic) gets its gains from a *rule*, never from the patch alone: a
64-px patch of a green tree made grey by its own grey world gives every patch a different colour
error, which no profile or network can undo. The rules:

- ``dataset``: one white balance for the whole dataset — grey world over the train split's
  samples without metadata — the profile absorbing the rest (one camera, steady light);
- ``frame-grey-world``, ``frame-grey-edge``, ``frame-bright``: a per-frame estimate from the
  whole frame (``prepare`` sees whole frames and stores every estimator's gains with each patch).

Gains are (R, G, B) with G = 1, on normalised packed planes (4, h, w) R, G1, B, G2 in [0, 1]:
multiplying camera RGB by them makes the estimated illuminant grey.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from raw2rgb.config import JsonConfig, checked
from raw2rgb.errors import ConfigError

ESTIMATORS = ("grey_world", "grey_edge", "bright")
RULES = ("dataset", "frame-grey-world", "frame-grey-edge", "frame-bright")
DEFAULT_RULE = "dataset"  # the one place the default lives: the profile, the prior, evaluate and convert follow it
LEGACY_RULE = "frame-grey-world"  # what a checkpoint of before the rules used on whole frames
CLIPPED = 0.98  # a cell with any plane this high is left out of every estimate: clipping hides its colour
BRIGHT_FRACTION = 0.02  # frame-bright: the brightest 2 % of unclipped cells
EDGE_SIGMA = 1.0  # frame-grey-edge: Gaussian smoothing (packed pixels) before the gradients
# A rule's gains within four stops of green: wider than any illuminant a camera balances for, narrow enough
# that a hand-edited 0, a negative or a 1e9 is refused instead of rendering a black, inverted or white frame
GAIN_MIN, GAIN_MAX = 1 / 16, 16.0


def _planes(packed: np.ndarray) -> np.ndarray:
    """(3, h, w) float64 R, G (the mean of G1 and G2), B of packed planes (4, h, w)."""
    p = np.asarray(packed, np.float64)
    if p.ndim != 3 or p.shape[0] != 4:
        raise ValueError(f"packed planes are (4, h, w), got shape {p.shape}")
    return np.stack([p[0], (p[1] + p[3]) * 0.5, p[2]])


def _unclipped(packed: np.ndarray) -> np.ndarray:
    """(h, w) mask of the cells no plane of which is clipped (all cells when every one is)."""
    keep = np.asarray(packed).max(axis=0) < CLIPPED
    return keep if keep.any() else np.ones_like(keep)


def gains_of_illuminant(rgb) -> np.ndarray:
    """Gains (R, G, B), G = 1, that make camera RGB ``rgb`` (the illuminant's colour) grey;
    (1, 1, 1) when a channel holds no signal."""
    rgb = np.asarray(rgb, np.float64)
    if not np.all(np.isfinite(rgb)) or rgb.min() <= 1e-9:
        return np.ones(3, np.float32)
    return (rgb[1] / rgb).astype(np.float32)


def grey_world(packed: np.ndarray) -> np.ndarray:
    """Gains that make the mean of the frame's unclipped cells grey (Buchsbaum 1980)."""
    return gains_of_illuminant(_planes(packed)[:, _unclipped(packed)].mean(axis=1))


def grey_edge(packed: np.ndarray, sigma: float = EDGE_SIGMA) -> np.ndarray:
    """Gains that make the mean gradient magnitude grey: first-order grey edge (van de Weijer et al.
    2007), on planes smoothed by a Gaussian of ``sigma`` packed pixels."""
    planes, keep = _planes(packed), _unclipped(packed)
    mags = []
    for p in planes:
        s = gaussian_filter(p, sigma, mode="reflect") if sigma > 0 else p
        gy, gx = np.gradient(s)
        mags.append(np.hypot(gx, gy)[keep].mean())
    return gains_of_illuminant(mags)


def bright(packed: np.ndarray, fraction: float = BRIGHT_FRACTION) -> np.ndarray:
    """Gains that make the brightest ``fraction`` of unclipped cells grey (white patch, made robust
    by a percentile)."""
    planes, keep = _planes(packed), _unclipped(packed)
    cells = planes[:, keep]
    total = cells.sum(axis=0)
    top = total >= np.quantile(total, 1.0 - fraction)
    return gains_of_illuminant(cells[:, top].mean(axis=1))


ESTIMATOR_FUNCTIONS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {
    "grey_world": grey_world, "grey_edge": grey_edge, "bright": bright}


def frame_estimates(packed: np.ndarray) -> np.ndarray:
    """Every estimator's gains of a whole frame, (len(ESTIMATORS), 3) float32 in ``ESTIMATORS`` order:
    what the shards store with each of the frame's patches."""
    return np.stack([ESTIMATOR_FUNCTIONS[name](packed) for name in ESTIMATORS]).astype(np.float32)


def check_rule(rule: str) -> str:
    """``rule`` when it is one of :data:`RULES`.

    Raises:
        ConfigError: any other value, naming the rules.
    """
    if rule not in RULES:
        raise ConfigError(f"unknown white-balance rule {rule!r} ({', '.join(RULES)})")
    return rule


@dataclass(frozen=True)
class WhiteBalance(JsonConfig):
    """A white-balance rule and, for ``dataset``, its gains (None: no sample lacked metadata)."""

    rule: str = checked(DEFAULT_RULE, choices=RULES)
    gains: tuple[float, float, float] | None = checked(
        None, min=GAIN_MIN, max=GAIN_MAX, rule=(lambda g: g[1] == 1, "gains (R, G, B) with G = 1"))

    def describe(self) -> str:
        gains = "" if self.gains is None else " (gains " + ", ".join(f"{g:.3f}" for g in self.gains) + ")"
        return f"{self.rule}{gains}"


@dataclass(frozen=True)
class SampleColour:
    """What is known of a sample's colour: its RAW file's as-shot gains (3,) and camera → sRGB
    matrix (3, 3) — None where the file has none — and every estimator's gains of its whole frame
    (len(ESTIMATORS), 3), None where no frame was seen."""

    as_shot: np.ndarray | None = None
    matrix: np.ndarray | None = None
    frame: np.ndarray | None = None

    @classmethod
    def of_frame(cls, packed: np.ndarray, as_shot=None, matrix=None, estimate: bool = True) -> SampleColour:
        """The colour of a whole frame: its metadata and (``estimate``) the estimates of its planes."""
        return cls(None if as_shot is None else np.asarray(as_shot, np.float32),
                   None if matrix is None else np.asarray(matrix, np.float32),
                   frame_estimates(packed) if estimate else None)


def sample_gains(colour: SampleColour, wb: WhiteBalance) -> np.ndarray:
    """The white-balance gains (3,) float32 of a sample: as shot when known, else what the rule says.
    The one function that decides; the profile fit, the model's prior, evaluate and convert call it.

    Raises:
        ValueError: the rule needs what is missing (``dataset`` without gains, a frame rule without
            the frame's estimates).
    """
    if colour.as_shot is not None:
        return np.asarray(colour.as_shot, np.float32)
    check_rule(wb.rule)
    if wb.rule == "dataset":
        if wb.gains is None:
            raise ValueError("the dataset white-balance rule has no gains (no sample without metadata was fitted)")
        return np.asarray(wb.gains, np.float32)
    if colour.frame is None:
        raise ValueError(f"white-balance rule {wb.rule}: no estimate of the sample's frame")
    return np.asarray(colour.frame[ESTIMATORS.index(wb.rule[len("frame-"):].replace("-", "_"))], np.float32)


def colour_vector(colour: SampleColour, wb: WhiteBalance) -> np.ndarray:
    """The 12 numbers (float32) a classical rendering and the model's colour prior take: white-balance
    gains R, G, B (:func:`sample_gains`), then the camera → sRGB matrix row by row (identity when
    unknown)."""
    matrix = np.eye(3) if colour.matrix is None else np.asarray(colour.matrix)
    return np.concatenate([sample_gains(colour, wb), np.ravel(matrix)]).astype(np.float32)


def grey_world_gains(sums, count: float) -> tuple[float, float, float] | None:
    """The ``dataset`` rule's gains from plane sums (R, G, B) over ``count`` cells; None for none."""
    if count <= 0:
        return None
    return tuple(float(g) for g in gains_of_illuminant(np.asarray(sums, np.float64) / count))
