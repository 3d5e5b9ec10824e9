"""Fitting a colour profile on a prepared dataset: an even sample of a split's patches, rendered by the
classical pipeline with their stored colour, against their targets (``raw2rgb profile fit``, the model's
colour prior).

A module of its own because it reads shards: the profile (``profile.py``) is what inference loads and
applies, and inference imports no training-data code (tests/test_imports.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from raw2rgb.config import JsonConfig, checked
from raw2rgb.dataset import SPLITS
from raw2rgb.pipeline import whitebalance
from raw2rgb.pipeline.profile import (
    DEFAULT_LUT_SIZE,
    DEFAULT_MODEL,
    MAX_LUT_SIZE,
    MODELS,
    Profile,
    apply,
    fit,
    render_sample,
)
from raw2rgb.pipeline.shards import ShardError, ShardIndex, read_colours, read_index, shards_root, white_balance
from raw2rgb.pipeline.whitebalance import SampleColour

MAX_PIXELS = 2_000_000  # pixels a fit uses at most (an even sample beyond)
MAX_SAMPLES = 2048  # patches a fit reads at most (an even sample beyond): seconds on any dataset


def _pairs_of_split(root: Path, index: ShardIndex, split: str,
                    render: Callable[[np.ndarray, SampleColour], np.ndarray], max_pixels: int,
                    max_samples: int = MAX_SAMPLES) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rendered pixels, target pixels, cameras) of an even sample of a split: at most ``max_samples``
    samples, at most ``max_pixels`` pixels in all; each sample rendered with its stored colour."""
    if not index.count(split):
        raise ShardError(f"{root}: the {split} split is empty; a profile is fitted on it")
    shards = index.splits[split].shards
    count = sum(s.count for s in shards)
    wanted = set(np.linspace(0, count - 1, min(count, max_samples)).round().astype(int).tolist())
    xs, ys, ids = [], [], []
    start = 0
    for s in shards:
        local = sorted(k - start for k in wanted if start <= k < start + s.count)
        start += s.count
        if not local:
            continue
        with h5py.File(root / s.file, "r") as f:
            colours, cameras = read_colours(f)
            per_sample = int(np.prod(f["rgb"].shape[2:]))
            step = max(1, int(np.ceil(len(wanted) * per_sample / max_pixels)))
            for j in local:
                raw = f["raw"][j].astype(np.float32) / 65535.0
                rgb = f["rgb"][j].transpose(1, 2, 0).reshape(-1, 3).astype(np.float32) / 255.0
                src = render(raw, colours[j]).reshape(-1, 3)
                xs.append(src[j % step :: step])
                ys.append(rgb[j % step :: step])
                ids.append(cameras[j])
    return np.concatenate(xs), np.concatenate(ys), ids


@dataclass(frozen=True)
class FitConfig(JsonConfig):
    """How ``raw2rgb profile fit`` fits a profile on a prepared dataset (its options)."""

    split: str = checked("train", choices=SPLITS, help="Split to fit on.")
    model: str = checked(DEFAULT_MODEL, choices=MODELS, help="poly3: a cubic polynomial per channel (20 terms); lut: "
                         "a 3-D lookup table (docs/benchmarks.md compares them).")
    lut_size: int = checked(DEFAULT_LUT_SIZE, min=2, max=MAX_LUT_SIZE, metavar="N", help="lut: nodes per axis.")
    white_balance: str = checked(whitebalance.DEFAULT_RULE, choices=whitebalance.RULES,
                                 help="For RAW files without a white balance (ZRR mosaics): dataset (one grey world "
                                      "over the train split) or frame-* (an estimate over each whole frame); recorded "
                                      "in the profile, which convert and evaluate follow (docs/training.md).")


def fit_on(dataset: os.PathLike | str, cfg: FitConfig = FitConfig()) -> Profile:
    """:func:`fit_dataset` with a :class:`FitConfig` (``raw2rgb profile fit``)."""
    return fit_dataset(dataset, cfg.split, cfg.model, cfg.lut_size, white_balance_rule=cfg.white_balance)


def fit_dataset(dataset: os.PathLike | str, split: str = "train", model: str = DEFAULT_MODEL,
                lut_size: int = DEFAULT_LUT_SIZE, max_pixels: int = MAX_PIXELS,
                white_balance_rule: str = whitebalance.DEFAULT_RULE) -> Profile:
    """Fit a profile on a split of a prepare DATASET (or shards folder): each patch rendered by the
    classical pipeline with its RAW file's colours (stored in the shards; where a file had no white
    balance, the gains ``white_balance_rule`` gives), against its target.

    Raises:
        ShardError: no such split or an unreadable shards folder.
        ConfigError: an unknown white-balance rule.
    """
    root = shards_root(dataset)
    index = read_index(root)
    scale = index.scale
    wb = white_balance(root, white_balance_rule, index)
    src, dst, cameras = _pairs_of_split(root, index, split, lambda raw, c: render_sample(raw, c, wb, scale), max_pixels)
    coef, n = fit(src, dst, model, lut_size)
    profile = Profile(model=model, coefficients=coef, lut_size=n, scale=scale,
                      cameras=tuple(sorted(set(cameras) - {""})), white_balance=wb)
    fitted = apply(profile, src)
    mse = float(np.mean((np.rint(fitted * 255) - np.rint(dst * 255)) ** 2))
    return dataclasses.replace(profile, fitted_on={
        "dataset": str(root), "split": split, "pixels": int(len(src)), "samples": len(cameras),
        "fit_psnr": round(float(10 * np.log10(255**2 / max(mse, 1e-12))), 3)})
