"""Fitting the colour prior (``model/prior.py``) on a shards folder, before training's first step:
its profile, saved as RUN/profile.json, and its detail filter, fitted by least squares on the
profile's renderings. Kept apart from the prior so that inference (generator → prior) loads no
training data code.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from raw2rgb.model import run
from raw2rgb.model.data import ShardDataset, to_model
from raw2rgb.model.distributed import Dist
from raw2rgb.model.prior import ColourPrior
from raw2rgb.model.recipe import TrainConfig
from raw2rgb.pipeline import profile as colour_profile
from raw2rgb.pipeline import profile_fit
from raw2rgb.pipeline.profile import Profile

log = logging.getLogger(__name__)


def fit_for_run(root: Path, run_dir: Path, cfg: TrainConfig, dist: Dist) -> PriorFit | None:
    """The colour prior's profile, fitted on the train split (deterministic: every rank fits the
    same one), and saved as RUN/profile.json for ``convert --method profile``; then its detail filter
    (``detail_filter``), fitted on the profile's renderings of the same samples. None without a
    prior, and when resuming: the prior's coefficients and filter are buffers of G, restored with the
    checkpoint."""
    g = cfg.generator
    if g.prior != "profile":
        return None
    if run.checkpoint(run_dir).is_file() and (run_dir / run.PROFILE).is_file():
        return None
    t0 = time.perf_counter()
    profile = profile_fit.fit_dataset(root, "train", g.prior_model, white_balance_rule=cfg.white_balance)
    if dist.main:
        colour_profile.save(profile, run_dir / run.PROFILE)
        log.info("colour prior: a %s profile fitted on %d train pixels in %.1f s (train PSNR %.2f dB)", profile.model,
                 profile.fitted_on["pixels"], time.perf_counter() - t0, profile.fitted_on["fit_psnr"])
    if not g.detail_filter:
        return PriorFit(profile)
    t0 = time.perf_counter()
    weight, bias, psnr = fit_detail_on_split(root, profile, g.scale, g.detail_filter, seed=cfg.seed)
    if dist.main:
        log.info("colour prior: a %d×%d detail filter fitted in %.1f s (train PSNR %.2f dB)", g.detail_filter,
                 g.detail_filter, time.perf_counter() - t0, psnr)
    return PriorFit(profile, (weight, bias))


@dataclass(frozen=True)
class PriorFit:
    """What training fits for a colour prior before its first step: the profile, and the detail
    filter's weight and bias where the prior has one."""

    profile: Profile
    detail: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_on(self, prior: ColourPrior) -> None:
        prior.set_profile(self.profile)
        if self.detail is not None:
            prior.set_detail(*self.detail)


DETAIL_PIXELS = 1024  # pixels per image in the detail filter's fit (a seeded draw: 148 unknowns, ample)
DETAIL_RIDGE = 1e-6  # relative to the normal matrix's mean diagonal: only keeps the solve well posed


def fit_detail_on_split(root: os.PathLike | str, profile: Profile, scale: int, k: int, split: str = "train",
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`fit_detail` of a k×k filter after ``profile`` (with its white-balance rule) on a split
    of a shards folder: what training fits before its first step."""
    prior = ColourPrior(scale, profile.model, profile.lut_size, detail=k)
    prior.set_profile(profile)
    samples = ShardDataset(root, split, compact=True, white_balance=profile.white_balance)
    return fit_detail(prior, (to_model(b) for b in DataLoader(samples, batch_size=16)), seed=seed)


@torch.no_grad()
def fit_detail(prior: ColourPrior, batches: Iterable[dict], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The prior's k×k detail filter by least squares: from the profiled rendering (every channel's
    k×k neighbourhood and a constant) to the target, over model-range batches (``raw``, ``colour``,
    ``rgb``), at most :data:`DETAIL_PIXELS` pixels an image. Returns the filter's weight (3, 3, k, k),
    its bias (3,) and the fit's PSNR on those pixels (dB, [0, 1] values)."""
    k = prior.detail
    n = 3 * k * k + 1
    ata, atb = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, 3, dtype=torch.float64)
    yy, count = torch.zeros((), dtype=torch.float64), 0
    gen = torch.Generator().manual_seed(seed)
    for batch in batches:
        x = F.pad(prior.profiled(batch["raw"].float(), batch["colour"].float()), (k // 2,) * 4, mode="replicate")
        b, _, h, w = batch["rgb"].shape
        take = min(DETAIL_PIXELS, h * w)
        pick = torch.randperm(h * w, generator=gen)[:take]  # the same pixels of every image in a batch
        ys, xs = pick // w, pick % w
        # each picked pixel's k×k neighbourhood, in unfold's order (channel, then row, then column)
        cols = torch.stack([x[:, :, ys + dy, xs + dx] for dy in range(k) for dx in range(k)], 2).reshape(b, -1, take)
        a = torch.cat([cols, torch.ones(b, 1, take)], 1).transpose(1, 2).reshape(-1, n).double()
        y = ((batch["rgb"].float()[:, :, ys, xs] + 1) * 0.5).transpose(1, 2).reshape(-1, 3).double()
        ata += a.T @ a
        atb += a.T @ y
        yy += (y * y).sum()
        count += b * take
    ridge = DETAIL_RIDGE * ata.diagonal().mean()
    solution = torch.linalg.solve(ata + ridge * torch.eye(n, dtype=torch.float64), atb)
    sse = float(yy - 2 * (solution * atb).sum() + (solution * (ata @ solution)).sum())
    psnr = 10 * math.log10(count * 3 / max(sse, 1e-12))
    weight = solution[:-1].T.reshape(3, 3, k, k).float()
    return weight, solution[-1].float(), psnr
