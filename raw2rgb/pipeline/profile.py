"""Colour profiles: the classical rendering → a target camera's rendering, fitted by least squares.

A profile maps the classical pipeline's sRGB (as-shot white balance, the file's colour matrix,
sRGB curve; ``develop.py``) to what the target camera makes of the same scene: its colour
rendition and tone. It is fitted in seconds on a dataset's train split, with no GPU
(``profile_fit.py``, which reads the shards: this module, which inference imports, does not), and
saved as a small JSON file. Two models, chosen by measurement (docs/benchmarks.md, quality):

- ``poly3``: a cubic polynomial in (r, g, b) per output channel (20 terms), the classic
  colour-correction fit;
- ``lut``: a 3-D lookup table (``lut_size``³ nodes, trilinear), fitted with a smoothness penalty
  on second differences so that nodes no pixel reaches follow their neighbours.

This is a baseline (``evaluate --method profile``), a feature (``convert --method profile``:
another camera's look in seconds) and the learned model's colour prior (``model/generator.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from raw2rgb.config import FieldError, JsonConfig, checked
from raw2rgb.errors import ConfigError, UserError
from raw2rgb.files import write_json
from raw2rgb.pipeline import whitebalance
from raw2rgb.pipeline.develop import GAMUTS, develop
from raw2rgb.pipeline.whitebalance import SampleColour, WhiteBalance

# 2: the white-balance rule (and the dataset rule's gains) it was fitted with; 3: its input is the classical
# rendering before the gamut clip (develop.GAMUTS), where 2's was the clipped one
FORMAT = 3
KIND = "raw2rgb-profile"
MODELS = ("poly3", "lut")
DEFAULT_MODEL = "poly3"
DEFAULT_LUT_SIZE = 9
MAX_LUT_SIZE = 33  # profile fit --lut-size's top: 33³ nodes, the size of the common .cube LUTs
# Coefficients and LUT nodes within ±1e6: float32 (apply, the model's prior) sums 20 such terms without overflow,
# while no fit comes near it (measured: 20 on the test scenes, 1.8e3 on pixels all within ±0.01 of grey); a
# hand-edited 1e308 became inf in float32 and NaN in the metrics (a LinAlgError in psnr_cc)
COEFFICIENT_LIMIT = 1e6
SOURCE = ("classical pipeline: as-shot white balance (the white_balance rule where the file has none), the file's "
          "colour matrix (camera RGB where absent), sRGB")


class ProfileError(UserError):
    """A profile file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Profile(JsonConfig):
    """A fitted colour profile (what the JSON file holds, beside its format and kind)."""

    model: str = checked(DEFAULT_MODEL, choices=MODELS)
    # poly3: 20 rows; lut: lut_size³ nodes
    coefficients: tuple[tuple[float, float, float], ...] = checked((), min=-COEFFICIENT_LIMIT, max=COEFFICIENT_LIMIT)
    lut_size: int = checked(0, min=0, max=MAX_LUT_SIZE)  # lut: nodes per axis (2 or more); poly3: 0
    scale: int = checked(2, choices=(1, 2))  # the output scale of the renderings fitted on (1: one pixel per cell)
    cameras: tuple[str, ...] = ()  # the RAW cameras of the fit ("make model"); empty: unknown
    white_balance: WhiteBalance = field(default_factory=WhiteBalance)  # for files without one (whitebalance.py)
    source: str = SOURCE
    fitted_on: dict[str, Any] = field(default_factory=dict)  # dataset, split, pixels, fit PSNR
    # its input: the classical rendering before its gamut clip (every profile fitted now), or clipped (a
    # profile of format 2, fitted so: it renders as it was fitted)
    gamut: str = checked("extended", choices=GAMUTS)

    def __hash__(self) -> int:  # fitted_on is a dict; profiles are compared by value
        return hash((self.model, self.coefficients, self.lut_size, self.scale))

    def _check_together(self) -> None:
        """The coefficients the model takes: 20 rows for ``poly3`` (``lut_size`` 0), ``lut_size``³ for ``lut``."""
        if self.model == "lut" and self.lut_size < 2:
            raise FieldError("Profile", ("lut_size",), f"{self.lut_size} is out of range (a lut has 2 or more nodes "
                                                       "per axis)")
        if self.model == "poly3" and self.lut_size != 0:
            raise FieldError("Profile", ("lut_size",), f"{self.lut_size} for a poly3 profile, which has no LUT (0)")
        rows = 20 if self.model == "poly3" else self.lut_size**3
        if len(self.coefficients) != rows or any(len(row) != 3 for row in self.coefficients):
            shape = (len(self.coefficients), *sorted({len(row) for row in self.coefficients}))
            kind = f"{self.model} profile" + (f" of lut_size {self.lut_size}" if self.lut_size else "")
            raise FieldError("Profile", ("coefficients",), f"shape {shape}, a {kind} has ({rows}, 3)")


# -- the models -------------------------------------------------------------------------------------

def poly3_terms(r, g, b) -> list:
    """The 20 terms of a cubic in (r, g, b): 1, linear, quadratic, cubic. Works on numpy arrays and
    torch tensors alike (the model's colour prior uses the same list)."""
    one = r * 0 + 1
    return [one, r, g, b, r * r, g * g, b * b, r * g, g * b, r * b, r * r * r, g * g * g, b * b * b,
            r * r * g, r * r * b, g * g * r, g * g * b, b * b * r, b * b * g, r * g * b]


def lut_corners(r, g, b, n: int) -> list[tuple]:
    """Trilinear interpolation in an n³ LUT, on numpy arrays and torch tensors alike (as
    ``poly3_terms``; the model's colour prior uses it too): for channels in [0, 1], the 8 nodes around
    each pixel as (flat node index, still a float; weight)."""
    pos = [c.clip(0, 1) * (n - 1) for c in (r, g, b)]
    low = [(p - p % 1).clip(0, n - 2) for p in pos]  # floor; the top node closes the last cell
    t = [p - q for p, q in zip(pos, low)]
    corners = []
    for dr in (0, 1):
        for dg in (0, 1):
            for db in (0, 1):
                weight = (t[0] if dr else 1 - t[0]) * (t[1] if dg else 1 - t[1]) * (t[2] if db else 1 - t[2])
                corners.append((((low[0] + dr) * n + (low[1] + dg)) * n + (low[2] + db), weight))
    return corners


def _lut_weights(rgb: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel (N, 3): the 8 node indices and weights of ``lut_corners``, (N, 8) each."""
    corners = lut_corners(*rgb.T, n)
    return np.stack([i for i, _ in corners], 1).astype(np.int64), np.stack([w for _, w in corners], 1)


def _second_differences(n: int) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    k = 0
    grid = np.arange(n**3).reshape(n, n, n)
    for axis in range(3):
        g = np.moveaxis(grid, axis, -1)
        a, b, c = g[..., :-2].ravel(), g[..., 1:-1].ravel(), g[..., 2:].ravel()
        m = len(a)
        rows += [np.arange(k, k + m)] * 3
        cols += [a, b, c]
        vals += [np.ones(m), -2 * np.ones(m), np.ones(m)]
        k += m
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(k, n**3))


def fit(source: np.ndarray, target: np.ndarray, model: str = DEFAULT_MODEL, lut_size: int = DEFAULT_LUT_SIZE,
        smoothness: float = 1e-2) -> tuple[tuple[tuple[float, float, float], ...], int]:
    """Least-squares coefficients of a profile taking ``source`` pixels (N, 3) (the classical rendering
    before its gamut clip, in [-1, 1]) to ``target`` pixels (N, 3) in [0, 1]; returns (coefficients,
    lut_size)."""
    source = np.asarray(source, np.float64).reshape(-1, 3)
    target = np.asarray(target, np.float64).reshape(-1, 3)
    if model == "poly3":
        # plain least squares: a ridge towards the identity cost 2 dB on the demo's held-out scenes
        a = np.stack(poly3_terms(*source.T), 1)
        coef = np.linalg.lstsq(a, target, rcond=None)[0]
        return tuple(tuple(float(v) for v in row) for row in coef), 0
    if model == "lut":
        n = lut_size
        idx, wts = _lut_weights(source, n)
        rows = np.repeat(np.arange(len(source)), 8)
        a = sp.csr_matrix((wts.ravel(), (rows, idx.ravel())), shape=(len(source), n**3))
        lap = _second_differences(n)
        # the penalty is scaled to the data: the same smoothness whatever the number of pixels
        m = (a.T @ a + smoothness * len(source) / n**3 * (lap.T @ lap)).tocsc()
        solve = spla.factorized(m)
        nodes = np.stack([solve(a.T @ target[:, c]) for c in range(3)], 1)
        return tuple(tuple(float(v) for v in row) for row in nodes), n
    raise ConfigError(f"unknown profile model {model!r} ({', '.join(MODELS)})")


def apply(profile: Profile, rgb: np.ndarray) -> np.ndarray:
    """A profile on the classical rendering (…, 3) before its gamut clip (in [-1, 1]; ``render_sample``)
    → (…, 3) float32 in [0, 1]. A LUT's cube spans [0, 1]: it takes its input clipped to it."""
    shape = rgb.shape
    x = np.asarray(rgb, np.float32).reshape(-1, 3)
    coef = np.asarray(profile.coefficients, np.float32)
    if profile.model == "poly3":
        out = np.stack(poly3_terms(*x.T), 1) @ coef
    else:
        idx, wts = _lut_weights(x, profile.lut_size)
        out = (coef[idx] * wts[..., None].astype(np.float32)).sum(1)
    return np.clip(out, 0, 1).reshape(shape).astype(np.float32)


# -- the rendering a profile takes --------------------------------------------------------------------

def render_sample(raw: np.ndarray, colour: SampleColour, wb: WhiteBalance, scale: int, gamut: str = "extended"
                  ) -> np.ndarray:
    """The classical rendering a profile is fitted on and applied to: packed planes (4, h, w) in
    [0, 1] with the sample's colour and the white-balance rule → sRGB (s·h, s·w, 3) float32, before
    the gamut clip (in [-1, 1]: ``develop.GAMUTS``)."""
    vector = whitebalance.colour_vector(colour, wb)
    return develop(raw, vector[:3], vector[3:].reshape(3, 3), scale=scale, gamut=gamut)


# -- the file -----------------------------------------------------------------------------------------

def save(profile: Profile, path: os.PathLike | str) -> Path:
    write_json(path, {"format": FORMAT, "kind": KIND, **profile.to_json()})
    return Path(path)


def load(path: os.PathLike | str) -> Profile:
    """A profile file, checked: complete and usable, or refused.

    Complete: every field of :class:`Profile` and of its ``white_balance`` (``rule``, ``gains``, null
    for none) is in the file. None is filled with a default, since a default renders silently with
    another rule or scale than the fit's (a frame-bright profile read without its ``white_balance``
    scored 10 dB below itself under the ``dataset`` rule); every file of format 2 that raw2rgb wrote
    holds them all, so no older file loses a field it had. Usable: the checks of :class:`Profile` and
    :class:`WhiteBalance` (a known model and rule, scale 1 or 2, coefficients of the model's shape
    within ±``COEFFICIENT_LIMIT``, gains within ``GAIN_MIN``…``GAIN_MAX`` with G = 1).

    Raises:
        ProfileError: missing, not JSON, not a raw2rgb profile, another format, incomplete or
            malformed; one line naming the file and the field.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile") from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise ProfileError(f"{path}: not a readable profile ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.pop("kind", None) != KIND:
        raise ProfileError(f"{path}: not a raw2rgb colour profile")
    version = data.pop("format", None)
    if version == 2 and "gamut" not in data:  # fitted on the clipped rendering: applied to it, as it was fitted
        data["gamut"] = "clip"
    elif version != FORMAT:
        raise ProfileError(f"{path}: profile format is not {FORMAT}; refit it with this raw2rgb")
    missing = [f.name for f in dataclasses.fields(Profile) if f.name not in data]
    if isinstance(data.get("white_balance"), dict):
        missing += [f"white_balance.{f.name}" for f in dataclasses.fields(WhiteBalance)
                    if f.name not in data["white_balance"]]
    if missing:
        raise ProfileError(f"{path}: malformed profile ({', '.join(f'Profile.{m}' for m in missing)}: missing; a "
                           "profile holds every field, refit it with raw2rgb profile fit)")
    try:
        profile = Profile.from_json(data)
    except ConfigError as e:
        raise ProfileError(f"{path}: malformed profile ({e})") from None
    return profile


def check_compatible(profile: Profile, path: os.PathLike | str, scale: int | None = None,
                     cameras: Sequence[str] | None = None) -> None:
    """Refuse a profile fitted at another output scale, or on other cameras than ``cameras``.

    Raises:
        ProfileError: naming the file and the mismatch.
    """
    if scale is not None and profile.scale != scale:
        raise ProfileError(f"{path}: fitted at output scale {profile.scale}, used here at scale {scale}; refit it "
                           f"on a dataset prepared with --scale {scale}")
    if cameras and profile.cameras:
        other = sorted(set(cameras) - set(profile.cameras))
        if other:
            raise ProfileError(f"{path}: fitted on {', '.join(profile.cameras)}, not on {', '.join(other)}; fit a "
                               "profile for that camera (raw2rgb profile fit)")
