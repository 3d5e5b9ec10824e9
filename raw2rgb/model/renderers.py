"""The renderers of ``render.RENDER_METHODS``: :class:`ClassicalRenderer` (``isp``, and ``profile``
with a fitted colour profile after it) and :class:`ModelRenderer` (``model``: a trained generator).
Each is opened from the file its method's ``render.RenderInput`` names (or none), renders a whole
RAW frame (``frame``, for ``convert``) and a batch of model-range patches (``batch``, for
``evaluate`` and ``report``) the same way, under its own white-balance rule, and refuses data it
cannot render (``check``).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch

from raw2rgb.errors import InputError
from raw2rgb.model.infer import TileConfig, load_generator, run_tiled
from raw2rgb.model.prior import model_white_balance
from raw2rgb.pipeline import bayer, develop, rawio, whitebalance
from raw2rgb.pipeline import profile as colour_profile
from raw2rgb.pipeline.whitebalance import SampleColour, WhiteBalance


def depth(fmt: str) -> tuple[int, np.dtype]:
    """The top level and sample type a format stores: 16-bit TIFF, else 8 bits."""
    return (65535, np.dtype(np.uint16)) if fmt == "tiff16" else (255, np.dtype(np.uint8))


def quantise(rgb: torch.Tensor, fmt: str) -> np.ndarray:
    """(3, H, W) float in [0, 1], on any device → (H, W, 3) samples of the format's depth. Rounded where
    the tensor is (on a GPU: 1/4 or 1/2 of the float frame's bytes cross to the host, and no
    numpy pass over a float frame follows); the same values as :func:`write_image`'s own rounding."""
    top, dtype = depth(fmt)
    q = rgb.clamp(0, 1).mul_(top).round_().to(torch.uint8 if top == 255 else torch.int32)
    return q.permute(1, 2, 0).cpu().numpy().astype(dtype, copy=False)


def isp_batch(raw: torch.Tensor, scale: int, colour: torch.Tensor,
              profile: colour_profile.Profile | None = None) -> torch.Tensor:
    """The classical pipeline (then ``profile``, when given) on a batch of model-range raw
    (B, 4, h, w) → (B, 3, s·h, s·w) in [-1, 1], each with its colour (B, 12): white-balance gains,
    then the camera → sRGB matrix (``ShardDataset``'s ``colour``)."""
    out = []
    for r, c in zip(raw.float().cpu().numpy(), colour.float().cpu().numpy()):
        rgb = develop.develop(((r + 1) * 0.5).clip(0, 1), c[:3], c[3:].reshape(3, 3), scale=scale,
                              gamut=profile.gamut if profile is not None else "clip")
        if profile is not None:
            rgb = colour_profile.apply(profile, rgb)
        out.append(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)) * 2 - 1)
    return torch.stack(out).to(raw.device)


def frame_colour(frame: rawio.RawFrame, packed: np.ndarray, wb: WhiteBalance, info: dict[str, Any]) -> np.ndarray:
    """A whole frame's colour (12,) under a white-balance rule (``whitebalance.colour_vector``); what
    was missing from the file and what stood in for it goes to ``info["note"]``. The ``dataset`` rule
    of a profile or model fitted only on files with metadata has no gains: the frame's grey world
    stands in."""
    if frame.wb_gains is None and wb.rule == "dataset" and wb.gains is None:
        wb = WhiteBalance(whitebalance.LEGACY_RULE)
    colour = SampleColour.of_frame(packed, frame.wb_gains, frame.cam_to_rgb, estimate=frame.wb_gains is None)
    missing = [n for n, v in (("white balance", frame.wb_gains), ("colour matrix", frame.cam_to_rgb)) if v is None]
    if missing:
        used = ([f"white balance by rule {wb.describe()}"] if frame.wb_gains is None else []) + \
            (["camera RGB"] if frame.cam_to_rgb is None else [])
        info["note"] = f"no {' or '.join(missing)} in the file: {' and '.join(used)}"
    return whitebalance.colour_vector(colour, wb)


def _profile(path: str) -> colour_profile.Profile:
    """A profile file, read once per process while it is unchanged."""
    return _read_profile(path, os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_profile(path: str, mtime_ns: int) -> colour_profile.Profile:
    return colour_profile.load(path)


class ClassicalRenderer:
    """The classical pipeline, then the colour profile at ``profile_path`` when one is given."""

    scale = None  # any: the pipeline renders at the scale asked

    def __init__(self, profile_path: str | None = None, profile: colour_profile.Profile | None = None) -> None:
        self.path = profile_path
        self.profile = _profile(profile_path) if profile_path else profile
        self.white_balance = self.profile.white_balance if self.profile else None

    def check(self, scale: int | None = None, cameras: list[str] | None = None) -> None:
        """Refuse data of an output scale or camera other than the profile's (any without one).

        Raises:
            ProfileError: naming the profile and the mismatch.
        """
        if self.profile is not None:
            colour_profile.check_compatible(self.profile, self.path, scale=scale, cameras=cameras)

    def batch(self, b: dict[str, Any], scale: int) -> torch.Tensor:
        return isp_batch(b["raw"], scale, b["colour"], self.profile)

    def frame(self, frame: rawio.RawFrame, packed: np.ndarray, info: dict[str, Any], **_: Any) -> np.ndarray:
        """A whole frame at sensor resolution, (H, W, 3) float in [0, 1], oriented; without a white
        balance in the file: the profile's rule, else a whole frame's grey world. A profile's
        highlights roll off to white where the RAW clipped (``develop.roll_off_highlights``)."""
        self.check(cameras=[info["camera"]])
        colour = frame_colour(frame, packed, self.white_balance or WhiteBalance(whitebalance.LEGACY_RULE), info)
        rgb = develop.develop(packed, colour[:3], colour[3:].reshape(3, 3), scale=2,
                              gamut=self.profile.gamut if self.profile is not None else "clip")
        if self.profile is not None:
            rgb = develop.roll_off_highlights(colour_profile.apply(self.profile, rgb), develop.clip_weight(packed, 2))
        return np.ascontiguousarray(develop.orient(rgb, frame.orientation))


class ModelRenderer:
    """A trained generator (its moving average when it has one) from a checkpoint or RUN folder."""

    def __init__(self, checkpoint: str | None, device: torch.device | None = None) -> None:
        self.device = torch.device(device or "cpu")
        self.g, self.meta = load_generator(checkpoint, self.device)
        self.scale = self.g.cfg.scale
        self.white_balance = model_white_balance(self.g)

    def check(self, scale: int | None = None, cameras: list[str] | None = None) -> None:
        """Refuse data of another output scale (a camera it was not trained on is a warning, by ``convert``).

        Raises:
            InputError: naming the checkpoint and both scales.
        """
        if scale is not None and scale != self.scale:
            raise InputError(f"{self.meta['path']}: a model of output scale {self.scale}, the data is at {scale}")

    def batch(self, b: dict[str, Any], scale: int | None = None) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                             enabled=self.device.type == "cuda"):
            return self.g.rgb(b["raw"], b.get("colour"), b.get("thumb")).float()

    def frame(self, frame: rawio.RawFrame, packed: np.ndarray, info: dict[str, Any], tiles: TileConfig,
              fmt: str) -> np.ndarray:
        """A whole frame over overlapping tiles, quantised to ``fmt``'s depth, its highlights rolled
        off to white where the RAW clipped (``develop.roll_off_highlights``), oriented. A model trained on
        binned frames (targets smaller than the sensor) converts the frame binned alike: its output is
        the size it learned, the camera JPEG's, not a blown-up sensor frame."""
        if self.g.cfg.binning > 1:
            packed = bayer.bin_packed(packed, self.g.cfg.binning)
            info["binning"] = self.g.cfg.binning
        colour = frame_colour(frame, packed, self.white_balance, info)
        rgb = quantise(run_tiled(self.g, packed, tiles, self.device, colour=colour), fmt)
        rgb = develop.roll_off_highlights(rgb, develop.clip_weight(packed, self.scale))
        return develop.orient(rgb, frame.orientation)
