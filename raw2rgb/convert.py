"""`raw2rgb convert`: RAW files → full-resolution RGB images, as a cached item stage (one item per file).

    photo.dng ──read_raw → normalise → unify → pack ──┬─ model: generator over tiles (model/infer.py)
                                                       └─ isp: the classical pipeline (pipeline/develop.py)
              ──orientation──▶ OUT/photo.png

A rerun converts only new or changed files (the checkpoint's sha256 and every option that
changes pixels are the stage's params); a file that cannot be read fails alone with its reason.
Lives outside ``pipeline/`` because it chains numpy and torch stages, like ``prepare.py``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raw2rgb.config import JsonConfig
from raw2rgb.pipeline import develop, rawio
from raw2rgb.pipeline.stage import (
    Context,
    Item,
    ItemError,
    Stage,
    StageResult,
    atomic_path,
    collect_files,
    file_sha256,
    run_stage,
)

log = logging.getLogger(__name__)

FORMATS = {"png": ".png", "jpg": ".jpg", "tiff16": ".tif"}
METHODS = ("model", "isp")


@dataclass(frozen=True)
class ConvertConfig(JsonConfig):
    """Everything that decides the output pixels (the stage's params), plus where to run."""

    method: str = "isp"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    tile: int = 512
    overlap: int = 64
    stats_pixels: int = 1 << 20
    format: str = "png"
    quality: int = 95
    zrr_levels: tuple[float, float] = rawio.ZRR_LEVELS[rawio.ZRR_DEFAULT_LEVELS]


def write_image(path: Path, rgb: np.ndarray, fmt: str, quality: int = 95) -> None:
    """Write (H, W, 3) float in [0, 1] atomically as 8-bit PNG, JPEG or 16-bit TIFF."""
    if fmt == "tiff16":
        import tifffile

        data = np.rint(np.clip(rgb, 0, 1) * 65535).astype(np.uint16)
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, data, photometric="rgb", metadata=None)
        return
    from PIL import Image

    img = Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    with atomic_path(path) as tmp:
        if fmt == "jpg":
            img.save(tmp, format="JPEG", quality=quality, subsampling=0)
        else:
            img.save(tmp, format="PNG", compress_level=3)


def _model(ctx: Context):
    """The inference generator, loaded once per process."""
    from raw2rgb.device import cached
    from raw2rgb.model.infer import load_generator

    device = ctx.options["device"]
    return cached(("generator", ctx.params["checkpoint_sha256"], str(device)),
                  lambda: load_generator(ctx.options["checkpoint"], device))


def _camera(frame: rawio.RawFrame) -> str:
    return " ".join(p for p in (frame.make, frame.model) if p) or "unknown camera"


def convert_item(item: Item, ctx: Context) -> tuple[list[str], dict]:
    """Stage work: one RAW file → ``KEY.<ext>``."""
    cfg = ConvertConfig.from_json(dict(ctx.params))
    src = item.inputs[0]
    try:
        frame = rawio.read_raw(src, zrr_levels=cfg.zrr_levels)
        packed = frame.packed(np.float32)
    except rawio.RawReadError as e:
        raise ItemError(str(e)) from None
    except ValueError as e:
        raise ItemError(f"{src}: {e}") from None
    info: dict[str, Any] = {"camera": _camera(frame), "pattern": frame.pattern}
    if cfg.method == "isp":
        rgb = develop.develop(packed, frame.wb_gains, frame.cam_to_rgb, scale=2, orientation=frame.orientation)
        if frame.wb_gains is None or frame.cam_to_rgb is None:
            info["note"] = "no " + " or ".join(n for n, v in (("white balance", frame.wb_gains),
                                                               ("colour matrix", frame.cam_to_rgb)) if v is None) + \
                " in the file: grey world / camera RGB used"
    else:
        from raw2rgb.model.infer import TileConfig, run_tiled

        g, meta = _model(ctx)
        device = ctx.options["device"]
        tiles = TileConfig(tile=cfg.tile, overlap=cfg.overlap, stats_pixels=cfg.stats_pixels,
                           batch=4 if device.type == "cuda" else 1)
        out = run_tiled(g, packed, tiles, device)
        rgb = develop.orient(out.permute(1, 2, 0).cpu().numpy(), frame.orientation)
        cameras = meta.get("cameras") or []
        if cameras and info["camera"] not in cameras:
            info["warning"] = (f"{src}: taken with {info['camera']}, the model was trained on {', '.join(cameras)}; "
                               "colours may be off (see docs/troubleshooting.md)")
            log.warning("%s", info["warning"])
    name = f"{item.key}{FORMATS[cfg.format]}"
    write_image(ctx.out_dir / name, np.ascontiguousarray(rgb), cfg.format, cfg.quality)
    info["shape"] = list(rgb.shape)
    return [name], info


CONVERT = Stage("convert", 1, convert_item)


def resolve(method: str | None, checkpoint: os.PathLike | str | None, **options: Any) -> ConvertConfig:
    """The config for ``--method``/``--checkpoint``: ``model`` when a checkpoint is given, else ``isp``.

    Raises:
        ConvertError: a model without a checkpoint, or a checkpoint that is not one.
    """
    from raw2rgb.model.infer import ConvertError, TileConfig, checkpoint_path

    method = method or ("model" if checkpoint else "isp")
    if method not in METHODS:
        raise ConvertError(f"unknown method {method!r} (model, isp)")
    if options.get("format", "png") not in FORMATS:
        raise ConvertError(f"unknown format {options['format']!r} ({', '.join(FORMATS)})")
    if method == "isp":
        return ConvertConfig(method="isp", **{k: v for k, v in options.items() if k in ("format", "quality",
                                                                                       "zrr_levels")})
    if checkpoint is None:
        raise ConvertError("--method model needs --checkpoint CKPT (a checkpoint file or a RUN folder)")
    TileConfig(tile=options.get("tile", 512), overlap=options.get("overlap", 64)).check()
    path = checkpoint_path(checkpoint)
    from raw2rgb.model.infer import load_generator

    load_generator(path)  # refuse a bad checkpoint before any file is read
    return ConvertConfig(method="model", checkpoint=str(path), checkpoint_sha256=file_sha256(path), **options)


def collect_inputs(args) -> list[Item]:
    return [Item(key, (path,)) for key, path in collect_files(args, rawio.is_raw_path)]


def convert(items: list[Item], out_dir: os.PathLike | str, cfg: ConvertConfig, device: str = "auto",
            jobs: int = 1, force: bool = False, progress=None) -> StageResult:
    """Run the convert stage over ``items`` into ``out_dir``."""
    from raw2rgb.device import resolve_device
    from raw2rgb.model.infer import ConvertError

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"{out_dir}: the output folder is a file")
    params = cfg.to_json()
    params.pop("checkpoint")  # the path may move; the sha256 is what matters
    dev = resolve_device(device) if cfg.method == "model" else None
    if dev is not None and dev.type == "cuda":
        jobs = 1  # one process owns the GPU
    options = {"device": dev, "checkpoint": cfg.checkpoint}
    return run_stage(CONVERT, items, out_dir, params, jobs=jobs, force=force, progress=progress, options=options)
