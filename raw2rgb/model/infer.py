"""Full-resolution inference: a trained generator over overlapping tiles, with frame-wide normalisation.

Why tiles agree (docs/architecture.md: data flow): InstanceNorm normalises by the statistics of what it sees, so a tile
run on its own is normalised by its own statistics and comes out brighter or darker, warmer or
cooler than its neighbours — the paper's seams. Here a statistics pass first runs a set of tiles
that partition the frame (all of them, or an even sample when the frame is larger than the
budget) as one batch whose normalisation statistics are taken jointly, layer after layer, as one
whole-frame pass would take them; every normalisation layer keeps its statistics, and the tiles
then run with them fixed. Memory stays bounded by the tile size and the statistics budget.
Tiles overlap and are blended with weights that fall off towards each tile's border. A generator
with a global colour branch takes its colour from a thumbnail of the frame: the whole frame's,
computed once and given to every tile, so every tile gets the same colour.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raw2rgb.config import JsonConfig
from raw2rgb.device import cached
from raw2rgb.errors import ConfigError, InputError, one_line
from raw2rgb.files import cache_dir, write_json
from raw2rgb.model import checkpoint, run
from raw2rgb.model.generator import Generator, GeneratorConfig, fold_spectral_norm, norms, set_norm_mode
from raw2rgb.model.prior import frame_thumbnail
from raw2rgb.pipeline import bayer
from raw2rgb.pipeline.develop import frame_colour, srgb_to_linear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileConfig(JsonConfig):
    """Tiling of a frame, in packed pixels (multiples of 8). ``convert`` sets the overlap to what the
    loaded model needs (:func:`plan_overlap`)."""

    tile: int = 512
    overlap: int = 64
    batch: int = 1  # tiles per forward pass (more on a GPU: memory grows with it)
    stats_pixels: int = 1 << 20  # packed pixels the statistics pass may see at once (a sample beyond)
    frame_norm: bool = True  # False: each tile by its own statistics (the paper's seams; for comparison)

    def check(self) -> None:
        if self.tile % 8 or self.tile < 16:
            raise InputError(f"--tile {self.tile}: a multiple of 8, at least 16")
        if self.overlap < 0 or self.overlap % 8:
            raise InputError(f"--overlap {self.overlap}: a non-negative multiple of 8")
        if self.overlap * 2 >= self.tile:
            raise InputError(f"--tile {self.tile} must be more than twice --overlap {self.overlap}")


# -- loading a trained generator --------------------------------------------------------------------

def _build(path: Path, device: torch.device) -> tuple[Generator, dict[str, Any]]:
    g_config, state, meta = checkpoint.load_generator_state(path)
    try:
        g = Generator(GeneratorConfig.from_json(g_config))
        g.load_state_dict(state)
    except (ConfigError, KeyError, RuntimeError, TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path}: incompatible generator weights ({one_line(str(e))[:200]})") from None
    fold_spectral_norm(g)
    return g.to(device).eval(), meta


def load_generator(path: os.PathLike | str, device: torch.device | str = "cpu") -> tuple[Generator, dict[str, Any]]:
    """The inference generator of a checkpoint (or RUN folder), once per process: rebuilt from the
    stored config, spectral norm folded into plain weights, eval mode, on ``device``; and the
    checkpoint's metadata (``config``, ``cameras``, ``progress``, ``path``). Only the generator's
    weights are read (``checkpoint.load_generator_state``); the training loop is never imported.

    Raises:
        RunError, CheckpointError: not a checkpoint or RUN folder, or incompatible weights.
    """
    ckpt = run.checkpoint_file(path)
    st = ckpt.stat()
    device = torch.device(device)
    return cached(("generator", str(ckpt.resolve()), st.st_size, st.st_mtime_ns, str(device)),
                  lambda: _build(ckpt, device))


# -- tiling ----------------------------------------------------------------------------------------

def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts (multiples of 8) of tiles of ``tile`` covering [0, size) with at least ``overlap``
    shared between neighbours, the last flush with the end. ``size`` and ``tile`` are multiples of 8."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    while True:
        starts = [round(i * (size - tile) / (n - 1) / 8) * 8 for i in range(n)]
        if all(b - a <= tile - overlap for a, b in zip(starts, starts[1:])):
            return starts
        n += 1


def owned_spans(starts: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """The part of each tile (relative to its start) that it owns: neighbours split their overlap
    at its middle, on the 8-pixel grid, so the owned parts partition [0, size)."""
    cuts = [0] + [((a + tile + b) // 2) // 8 * 8 for a, b in zip(starts, starts[1:])] + [size]
    return [(cuts[i] - s, cuts[i + 1] - s) for i, s in enumerate(starts)]


def blend_window(size: int, overlap: int, start_edge: bool, end_edge: bool) -> torch.Tensor:
    """1-D weights of a tile: at each side that meets another tile, 0 over the outer quarter of the
    overlap (the pixels whose context the tile lacks most), a raised-cosine ramp over its middle
    half, 1 inside. Neighbours' weights sum to 1 across the overlap."""
    w = torch.ones(size, dtype=torch.float64)
    q = overlap // 4
    ramp_len = overlap - 2 * q
    if overlap > 0:
        t = (torch.arange(ramp_len, dtype=torch.float64) + 0.5) / ramp_len
        side = torch.cat([torch.zeros(q, dtype=torch.float64), 0.5 - 0.5 * torch.cos(torch.pi * t),
                          torch.ones(q, dtype=torch.float64)])
        if not start_edge:
            w[:overlap] = side
        if not end_edge:
            w[size - overlap :] = side.flip(0)
    return w.float()


@dataclass(frozen=True)
class _Tile:
    y: int
    x: int
    owned: tuple[int, int, int, int]  # y0, y1, x0, x1 relative to the tile
    edges: tuple[bool, bool, bool, bool]  # top, bottom, left, right at the frame's border


def plan_tiles(h: int, w: int, th: int, tw: int, overlap: int) -> list[_Tile]:
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    oy, ox = owned_spans(ys, th, h), owned_spans(xs, tw, w)
    return [_Tile(y, x, (*oy[i], *ox[j]), (y == 0, y + th == h, x == 0, x + tw == w))
            for i, y in enumerate(ys) for j, x in enumerate(xs)]


def _masks(tiles: list[_Tile], th: int, tw: int, device: torch.device) -> torch.Tensor:
    m = torch.zeros(len(tiles), 1, th, tw, device=device)
    for k, t in enumerate(tiles):
        y0, y1, x0, x1 = t.owned
        m[k, :, y0:y1, x0:x1] = 1
    return m


STATS_WINDOWS = 16  # at least this many windows in a sampled statistics pass, spread over the whole frame


def _spread(size: int, window: int, n: int) -> list[int]:
    """``n`` starts of ``window``-wide spans over ``size`` (both multiples of 8), multiples of 8, the first
    at 0 and the last ending at the edge, evenly spaced and not overlapping (rounding down keeps
    starts at least ``window`` apart)."""
    n = max(1, min(n, size // window))
    return sorted({int(v) // 8 * 8 for v in np.linspace(0, size - window, n)})


def stats_plan(plan: list[_Tile], hh: int, ww: int, th: int, tw: int, budget: int) -> tuple[list[_Tile], int, int]:
    """The tiles of the statistics pass and their size: every tile of ``plan`` when they fit the
    budget; else square windows small enough that at least :data:`STATS_WINDOWS` fit the budget
    (64² at the least, half a tile at the most), on a grid shaped like the frame whose first and
    last rows and columns touch its edges — many small windows spread over the whole frame
    estimate its statistics better than a few large ones, and none of its parts is left out."""
    if len(plan) * th * tw <= budget:
        return plan, th, tw
    side = int(math.isqrt(max(1, budget // STATS_WINDOWS))) // 8 * 8
    side = min(max(64, side), max(64, min(th, tw) // 2 // 8 * 8), hh // 8 * 8, ww // 8 * 8)
    k = max(1, budget // (side * side))
    ny = max(1, min(hh // side, round(math.sqrt(k * hh / ww))))
    nx = max(1, min(ww // side, k // ny))
    ys, xs = _spread(hh, side, ny), _spread(ww, side, nx)
    return [_Tile(y, x, (0, side, 0, side), (False,) * 4) for y in ys for x in xs], side, side


# -- how much overlap a model needs -------------------------------------------------------------------

OVERLAPS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
TOLERANCE = 1.0  # /255: tiles agree with one pass over the frame within this, on average
PROBE = 256  # packed pixels: the side of the probe frame
PROBE_VERSION = 2  # of the probe frame, in each cached measurement; 2: skimage's photograph, not the virtual camera
PROBE_GAINS = (2.0, 1.0, 1.6)  # R, G, B: a daylight sensor's white balance (red and blue record weaker than green)


def _probe_frame() -> tuple[np.ndarray, np.ndarray]:
    """A natural scene as a sensor records it, packed (4, PROBE, PROBE) float32 in [0, 1], and its
    colour (``frame_colour``): skimage's astronaut photograph (bundled, 512²) in linear light, red
    and blue weakened by :data:`PROBE_GAINS`, through an RGGB mosaic, with faint read noise. What
    the overlap is measured on must hold detail and colour edges everywhere, as a photograph does,
    so that the part of a tile that lacks context shows; it need not be of any camera."""
    import skimage.data  # here: only a model's first conversion measures its overlap

    srgb = skimage.data.astronaut()[: 2 * PROBE, : 2 * PROBE, :3].astype(np.float64) / 255
    light = srgb_to_linear(srgb) / np.asarray(PROBE_GAINS)
    noise = np.random.default_rng(0).normal(0, 0.002, light.shape[:2])
    packed = bayer.pack(np.clip(bayer.mosaic(light, "RGGB") + noise, 0, 1)).astype(np.float32)
    return packed, frame_colour(packed, PROBE_GAINS)


def measure_overlaps(g: Generator, device: torch.device | str = "cpu") -> dict[int, float]:
    """For each overlap, the mean difference (/255) between the smallest tiles it allows and one pass
    over a probe frame, until one is within :data:`TOLERANCE` (larger tiles have fewer borders and
    do no worse)."""
    packed, colour = _probe_frame()
    whole = run_tiled(g, packed, TileConfig(tile=PROBE, overlap=0), device, colour=colour)
    errors: dict[int, float] = {}
    for overlap in OVERLAPS:
        tile = max(64, 2 * overlap + 16)
        if tile >= PROBE:
            break
        tiled = run_tiled(g, packed, TileConfig(tile=tile, overlap=overlap), device, colour=colour)
        errors[overlap] = float((tiled - whole).abs().mean()) * 255
        if errors[overlap] <= TOLERANCE:
            break
    return errors


def needed_overlap(g: Generator, key: str, device: torch.device | str = "cpu") -> tuple[int, dict[int, float]]:
    """The overlap ``g`` needs for tiles to match one pass within :data:`TOLERANCE`, measured once per
    model (``key``: the checkpoint's sha256) and kept in the user's cache folder; and the
    measured differences by overlap."""
    path = cache_dir() / "overlaps.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if not entry or entry.get("probe") != PROBE_VERSION:  # measured on another probe: measured again
        t0 = time.perf_counter()
        errors = measure_overlaps(g, device)
        need = next((o for o, e in errors.items() if e <= TOLERANCE), max(errors, default=OVERLAPS[-1]))
        entry = {"probe": PROBE_VERSION, "overlap": need, "errors": {str(o): round(e, 3) for o, e in errors.items()}}
        log.info("tile overlap this model needs: %d packed pixels (measured in %.1f s)", need, time.perf_counter() - t0)
        with contextlib.suppress(OSError):  # a read-only home only costs the measurement next time
            write_json(path, {**known, key: entry})
    return int(entry["overlap"]), {int(o): float(e) for o, e in entry["errors"].items()}


def plan_overlap(tile: int, overlap: int | None, need: int, errors: dict[int, float]) -> tuple[int, int]:
    """(tile, overlap) for a user's ``--tile`` and ``--overlap`` (None: what the model needs). A tile
    too small for the overlap grows to the smallest that allows it (with a note); a smaller overlap
    than the model needs is kept, with a warning saying what it costs."""
    if overlap is None:
        overlap = need
    elif overlap < need:
        known = [e for o, e in sorted(errors.items()) if o <= overlap]
        cost = f" (measured: {known[-1]:.1f}/255 on average at {max(o for o in errors if o <= overlap)})" if known \
            else ""
        log.warning("--overlap %d is less than the %d this model needs for tiles to match one pass within %.0f/255%s: "
                    "seams may show", overlap, need, TOLERANCE, cost)
    if tile <= 2 * overlap:
        grown = 2 * overlap + 8
        log.info("--tile %d cannot hold an overlap of %d on both sides; using tiles of %d", tile, overlap, grown)
        tile = grown
    return tile, overlap


def _model_inputs(packed: np.ndarray | torch.Tensor, colour: np.ndarray | torch.Tensor | None,
                  device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A packed frame in [0, 1] as the model takes it: (1, 4, h, w) in [-1, 1], and its colour (1, 12)."""
    x = torch.as_tensor(packed, dtype=torch.float32).to(device)[None] * 2 - 1
    col = None if colour is None else torch.as_tensor(colour, dtype=torch.float32).to(device).reshape(1, 12)
    return x, col


@torch.no_grad()
def run_tiled(g: Generator, packed: np.ndarray | torch.Tensor, tiles: TileConfig = TileConfig(),
              device: torch.device | str = "cpu", amp: bool | None = None,
              colour: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Convert one frame: packed (4, h, w) in [0, 1] (and, for a generator with a colour prior, the
    frame's colour (12,), ``develop.frame_colour``) → RGB (3, s·h, s·w) in [0, 1] (float32, on
    ``device``). Frames whose sides are not multiples of 8 are reflection-padded, then cropped.

    With ``tiles.frame_norm`` and normalisation layers in the network, the statistics pass runs the
    tiles (all, or a sample beyond the budget) as one batch in ``collect`` mode over the parts they
    own; when that was every tile, its outputs are the result (one pass in all), else every tile
    then runs with the statistics fixed. A network without normalisation layers runs its tiles."""
    tiles.check()
    device = torch.device(device)
    amp = device.type == "cuda" if amp is None else amp
    x, col = _model_inputs(packed, colour, device)
    _, _, h, w = x.shape
    # multiples of 8, and at least 16: the network's deepest layers (1/8) reflect-pad by one pixel
    ph, pw = max(16, h + -h % 8) - h, max(16, w + -w % 8) - w
    if ph or pw:  # reflection needs a side longer than the pad; a frame of a few pixels repeats its edge
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    s, (hh, ww) = g.cfg.scale, x.shape[-2:]
    th, tw = min(tiles.tile, hh), min(tiles.tile, ww)
    plan = plan_tiles(hh, ww, th, tw, tiles.overlap)
    out = _Blend(x.device, s, hh, ww, th, tw, tiles.overlap)
    def crop(ts: list[_Tile], h_: int = th, w_: int = tw) -> torch.Tensor:
        return torch.cat([x[:, :, t.y : t.y + h_, t.x : t.x + w_] for t in ts])

    def colours(n: int) -> torch.Tensor | None:
        return None if col is None else col.expand(n, 12)

    # the whole frame's thumbnail (before any padding), as the shards store it; None: no branch
    thumb = frame_thumbnail(x[..., :h, :w]) if g.colour_branch is not None else None

    def thumbs(n: int) -> torch.Tensor | None:
        return None if thumb is None else thumb.expand(n, -1, -1, -1)

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        try:
            todo = plan
            if tiles.frame_norm and norms(g):
                sample, sh, sw = stats_plan(plan, hh, ww, th, tw, tiles.stats_pixels)
                # sampled windows partition what they cover: no mask (no full-size temporaries)
                set_norm_mode(g, "collect", _masks(sample, sh, sw, x.device) if sample is plan else None)
                if sample is plan:  # the statistics pass runs every tile: its outputs are the result
                    out.add(sample, g.rgb(crop(sample), colours(len(sample)), thumbs(len(sample))))
                    todo = []
                else:
                    g.run_normalisations(crop(sample, sh, sw), colours(len(sample)), thumbs(len(sample)))
                set_norm_mode(g, "fixed")
            for i in range(0, len(todo), tiles.batch):
                chunk = todo[i : i + tiles.batch]
                out.add(chunk, g.rgb(crop(chunk), colours(len(chunk)), thumbs(len(chunk))))
        finally:
            set_norm_mode(g, "instance")
    return out.result()[:, : s * h, : s * w].clamp_(0, 1)


class _Blend:
    """Weighted accumulation of tile outputs (in [-1, 1]) into a frame in [0, 1]. The blend windows
    are made once per kind of tile (which sides meet a neighbour), on the frame's device: no
    host → device copy per tile."""

    def __init__(self, device, s: int, hh: int, ww: int, th: int, tw: int, overlap: int) -> None:
        self.s, self.th, self.tw, self.overlap, self.device = s, th, tw, overlap, device
        self.acc = torch.zeros(3, s * hh, s * ww, device=device)
        self.wsum = torch.zeros(1, s * hh, s * ww, device=device)
        self.windows: dict[tuple[bool, bool, bool, bool], torch.Tensor] = {}

    def _window(self, edges: tuple[bool, bool, bool, bool]) -> torch.Tensor:
        if edges not in self.windows:
            top, bottom, left, right = edges
            s = self.s
            wy = blend_window(s * self.th, s * self.overlap, top, bottom)
            wx = blend_window(s * self.tw, s * self.overlap, left, right)
            self.windows[edges] = (wy[:, None] * wx[None, :]).to(self.device)
        return self.windows[edges]

    def add(self, tiles: list[_Tile], outputs: torch.Tensor) -> None:
        s, th, tw = self.s, self.th, self.tw
        for t, o in zip(tiles, outputs.float()):
            wgt = self._window(t.edges)
            self.acc[:, s * t.y : s * (t.y + th), s * t.x : s * (t.x + tw)] += (o + 1) * 0.5 * wgt
            self.wsum[:, s * t.y : s * (t.y + th), s * t.x : s * (t.x + tw)] += wgt

    def result(self) -> torch.Tensor:
        return self.acc / self.wsum


@torch.no_grad()
def run_whole(g: Generator, packed: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
              colour: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """The reference: the whole frame in one pass (memory grows with the frame). Same ranges as
    :func:`run_tiled`; sides must be multiples of 8 (the colour branch takes the frame's own thumbnail)."""
    x, col = _model_inputs(packed, colour, device)
    return ((g.rgb(x, col)[0].float() + 1) * 0.5).clamp_(0, 1)
