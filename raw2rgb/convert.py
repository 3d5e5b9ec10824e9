"""`raw2rgb convert`: RAW files → full-resolution RGB images, as a cached item stage (one item per file).

    photo.dng ──read_raw → normalise → unify → pack ── the method's renderer (render.py) ──▶ OUT/photo.png
      model: generator over tiles (model/infer.py); isp: the classical pipeline (pipeline/develop.py);
      profile: the classical pipeline, then a fitted colour profile (pipeline/profile.py)

A rerun converts only new or changed files (the checkpoint's or profile's sha256 and every
option that changes pixels are the stage's params); a file that cannot be read fails alone with
its reason. The checkpoint is read once per process (``infer.load_generator``).
Lives outside ``pipeline/`` because it chains numpy and torch stages, like ``prepare.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from raw2rgb.config import JsonConfig, checked
from raw2rgb.device import resolve_device
from raw2rgb.errors import InputError
from raw2rgb.files import atomic_path, file_sha256
from raw2rgb.model import run
from raw2rgb.model.infer import TileConfig, load_generator, needed_overlap, plan_overlap
from raw2rgb.model.renderers import depth
from raw2rgb.pipeline import metadata, rawio
from raw2rgb.pipeline import profile as colour_profile
from raw2rgb.pipeline.stage import Context, Deferred, Item, ItemError, Stage, StageResult, run_stage
from raw2rgb.render import RENDER_METHODS, default_method, source

log = logging.getLogger(__name__)

FORMATS = {"png": ".png", "jpg": ".jpg", "tiff16": ".tif"}
TILE = 512  # the default tile, packed pixels: memory bounded, few tiles per frame


@dataclass(frozen=True)
class ConvertConfig(JsonConfig):
    """Everything that decides the output pixels (the stage's params), plus where to run."""

    method: str = checked("isp", choices=RENDER_METHODS)
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    profile: str | None = None
    profile_sha256: str | None = None
    tile: int = checked(TILE, min=16)
    overlap: int | None = checked(None, min=0)  # None: what the model needs (infer.needed_overlap)
    stats_pixels: int = checked(1 << 20, min=1)
    precision: str = checked("fp32", choices=("fp32", "bf16"))  # the model's arithmetic: bf16 autocast on CUDA
    # (other pixels, so part of the key)
    format: str = checked("png", choices=FORMATS)
    quality: int = checked(95, min=1, max=100)
    zrr_levels: tuple[float, float] = rawio.ZRR_LEVELS[rawio.ZRR_DEFAULT_LEVELS]


def write_image(path: Path, rgb: np.ndarray, fmt: str, quality: int = 95,
                exif: metadata.Exif | None = None) -> None:
    """Write (H, W, 3) atomically as 8-bit PNG, JPEG or 16-bit TIFF: float in [0, 1], or samples
    already quantised to the format's depth (:func:`quantise`). Every file carries the sRGB ICC
    profile and EXIF: the RAW's fields in ``exif`` (date, exposure, lens), Orientation 1 (the
    pixels are upright), raw2rgb as the software."""
    top, dtype = depth(fmt)
    if rgb.dtype != dtype:
        rgb = np.rint(np.clip(rgb, 0, 1) * top).astype(dtype)
    exif = exif or metadata.Exif()
    if fmt == "tiff16":
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, rgb, photometric="rgb", metadata=None, software=metadata.SOFTWARE,
                             iccprofile=metadata.srgb_icc(), extratags=metadata.tiff_tags(exif))
        return
    img = Image.fromarray(rgb)
    tags = {"exif": metadata.pillow_exif(exif, img.width, img.height), "icc_profile": metadata.srgb_icc()}
    with atomic_path(path) as tmp:
        if fmt == "jpg":
            img.save(tmp, format="JPEG", quality=quality, subsampling=0, **tags)
        else:
            img.save(tmp, format="PNG", compress_level=3, **tags)


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
    exif = metadata.read_exif(src)  # kept in the output: date, exposure, lens
    if not np.any(packed):
        info["warning"] = (f"{src}: no signal (every sample at or below the black level): a metadata-only or blank "
                           "file? the image is black")
        log.warning("%s", info["warning"])
    renderer = RENDER_METHODS[cfg.method].open(ctx.options[RENDER_METHODS[cfg.method].needs or "none"],
                                               ctx.options["device"])
    try:
        rgb = renderer.frame(frame, packed, info, fmt=cfg.format, tiles=TileConfig(
            tile=cfg.tile, overlap=cfg.overlap, stats_pixels=cfg.stats_pixels,
            batch=4 if ctx.options["device"] is not None and ctx.options["device"].type == "cuda" else 1))
    except colour_profile.ProfileError as e:
        raise ItemError(f"{src}: {e}") from None
    if info.get("note"):  # a file without colour metadata: said on the console, not only in the manifest
        log.warning("%s: %s", src, info["note"])
    cameras = getattr(renderer, "meta", {}).get("cameras") or []
    if cameras and info["camera"] not in cameras:
        info["warning"] = (f"{src}: taken with {info['camera']}, the model was trained on {', '.join(cameras)}; "
                           "colours may be off (see docs/troubleshooting.md)")
        log.warning("%s", info["warning"])
    name = f"{item.key}{FORMATS[cfg.format]}"
    info["shape"] = list(rgb.shape)

    def write() -> tuple[list[str], dict]:
        write_image(ctx.out_dir / name, np.ascontiguousarray(rgb), cfg.format, cfg.quality, exif)
        return [name], info

    # the encoding (single-threaded PNG/TIFF, seconds for a large frame) runs on the stage's writer
    # thread while the next file is read and converted; the item is journalled once it is written
    return Deferred(write)


def summary_line(method: str, result, out_dir: os.PathLike | str) -> str:
    """One line for the console: how many images, of what size, and at what resolution a model
    renders (binned as it learned, when its targets were smaller than the sensor)."""
    ok = result.manifest.ok
    sizes = sorted({f"{r.info['shape'][1]}×{r.info['shape'][0]}" for r in ok if r.info.get("shape")})
    line = f"{method}: {len(ok)} images in {out_dir}"
    if sizes:
        line += f" ({', '.join(sizes[:3])}{', …' if len(sizes) > 3 else ''})"
    binning = sorted({r.info["binning"] for r in ok if r.info.get("binning")})
    if binning:
        line += (f"; the RAW binned by {'/'.join(map(str, binning))}, as the model learned it: the resolution of "
                 "the JPEGs it was trained on")
    return line


def convert_names(item: Item, params) -> list[str]:
    """The file an item writes, known before it runs (the stage refuses to replace one it did not write)."""
    return [f"{item.key}{FORMATS[params['format']]}"]


# 2: white-balance rules (whitebalance.py); 3: EXIF and ICC in every output, highlights rolled off (develop.py)
CONVERT = Stage("convert", 3, convert_item, deferred=True, keeps_others=True, names=convert_names)


def resolve(method: str | None, checkpoint: os.PathLike | str | None, profile: os.PathLike | str | None = None,
            **options: Any) -> ConvertConfig:
    """The config for ``--method``/``--checkpoint``/``--profile``: ``model`` when a checkpoint is
    given, ``profile`` when a profile is, else ``isp``.

    Raises:
        InputError: a method without what it needs, or a bad option.
        RunError, CheckpointError, ProfileError: a checkpoint or profile that is not one.
    """
    method = method or default_method(checkpoint, profile)
    given = source(method, checkpoint, profile, "convert")
    if options.get("format", "png") not in FORMATS:
        raise InputError(f"unknown format {options['format']!r} ({', '.join(FORMATS)})")
    pixels = {k: v for k, v in options.items() if k in ("format", "quality", "zrr_levels")}
    needs = RENDER_METHODS[method].needs
    if needs == "profile":
        colour_profile.check_compatible(colour_profile.load(given), given, scale=2)  # convert writes scale 2
        return ConvertConfig(method=method, profile=str(Path(given).resolve()), profile_sha256=file_sha256(given),
                             **pixels)
    if needs != "checkpoint":
        return ConvertConfig(method=method, **pixels)
    TileConfig(tile=options.get("tile", TILE), overlap=0).check()
    if (options.get("overlap") or 0) % 8:
        raise InputError(f"--overlap {options['overlap']}: a non-negative multiple of 8")
    path = run.checkpoint_file(given)
    return ConvertConfig(method=method, checkpoint=str(path), checkpoint_sha256=file_sha256(path), **options)


def convert(items: list[Item], out_dir: os.PathLike | str, cfg: ConvertConfig, device: str = "auto",
            jobs: int = 1, force: bool = False, progress=None, overwrite: bool = False) -> StageResult:
    """Run the convert stage over ``items`` into ``out_dir``. With a model, the checkpoint is read
    here, before any file (a bad one is refused at once), and the stage's items reuse it. A file in
    ``out_dir`` that an earlier convert did not write (the camera's own JPEG beside its RAW) is
    replaced only with ``overwrite``; otherwise its item fails, naming it, and the others run."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: the output folder is a file")
    dev = resolve_device(device) if RENDER_METHODS[cfg.method].needs == "checkpoint" else None
    if dev is not None:
        g, _ = load_generator(cfg.checkpoint, dev)
        need, errors = needed_overlap(g, cfg.checkpoint_sha256 or "", dev)
        tile, overlap = plan_overlap(cfg.tile, cfg.overlap, need, errors)
        cfg = dataclasses.replace(cfg, tile=tile, overlap=overlap, precision="bf16" if dev.type == "cuda" else "fp32")
        jobs = 1  # one process runs the model (and owns the GPU)
    params = cfg.to_json()
    params.pop("checkpoint")  # the paths may move; the sha256 is what matters
    params.pop("profile")
    options = {"device": dev, "checkpoint": cfg.checkpoint, "profile": cfg.profile, "none": None}
    return run_stage(CONVERT, items, out_dir, params, jobs=jobs, force=force, progress=progress, options=options,
                     overwrite=overwrite)
