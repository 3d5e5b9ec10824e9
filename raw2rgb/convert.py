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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from raw2rgb.config import JsonConfig, checked
from raw2rgb.device import resolve_device, resolve_precision
from raw2rgb.errors import InputError
from raw2rgb.files import atomic_path, file_sha256
from raw2rgb.pipeline import metadata, rawio
from raw2rgb.pipeline import profile as colour_profile
from raw2rgb.pipeline.stage import Context, Deferred, Item, ItemError, Stage, StageResult, default_jobs, run_stage
from raw2rgb.pipeline.unpack import collect_inputs
from raw2rgb.render import RENDER_METHODS, inputs, pick

log = logging.getLogger(__name__)

FORMATS = {"png": ".png", "jpg": ".jpg", "tiff16": ".tif"}
TILE = 512  # the default tile, packed pixels: memory bounded, few tiles per frame


@dataclass(frozen=True)
class ConvertConfig(JsonConfig):
    """Everything that decides the output pixels (the stage's params), plus where to run."""

    # resolved from convert's --method and the input given (``auto`` is no method: :func:`resolve`)
    method: str = checked("isp", rule=(lambda m: m in list(RENDER_METHODS), "a registered rendering method"),
                          option=False)
    source: str | None = checked(None, option=False)  # the file the method renders with (render.RenderInput)
    source_sha256: str | None = checked(None, option=False)
    tile: int = checked(TILE, min=16, metavar="N", help="Tile size, packed pixels.")
    overlap: int | None = checked(None, min=0, metavar="N", help="Tile overlap, packed pixels (a multiple of 8) "
                                  "[default: what the model needs for tiles to match one pass, measured once per "
                                  "model].")
    stats_pixels: int = checked(1 << 20, min=1, option=False)  # pixels of a frame's normalisation statistics
    # the model's arithmetic: bf16 autocast on CUDA (other pixels, so part of the key); resolved from the device
    precision: str = checked("fp32", choices=("fp32", "bf16"), option=False)
    format: str = checked("png", choices=FORMATS, help="png and jpg: 8-bit sRGB; tiff16: 16-bit sRGB.")
    quality: int = checked(95, min=1, max=100, metavar="Q", help="JPEG quality.")
    zrr_levels: str = rawio.zrr_levels_field()


def write_image(path: Path, rgb: np.ndarray, fmt: str, quality: int = 95,
                exif: metadata.Exif | None = None) -> None:
    """Write (H, W, 3) atomically as 8-bit PNG, JPEG or 16-bit TIFF: float in [0, 1], or samples
    already quantised to the format's depth (:func:`quantise`). Every file carries the sRGB ICC
    profile and EXIF: the RAW's fields in ``exif`` (date, exposure, lens), Orientation 1 (the
    pixels are upright), raw2rgb as the software."""
    from raw2rgb.model.renderers import depth

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
        frame = rawio.read_raw(src, zrr_levels=rawio.ZRR_LEVELS[cfg.zrr_levels])
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
    from raw2rgb.model.infer import TileConfig

    renderer = RENDER_METHODS[cfg.method].open(ctx.options["source"], ctx.options["device"])
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


def resolve(method: str | None = None, checkpoint: os.PathLike | str | None = None, **options: Any) -> ConvertConfig:
    """The config for ``--method`` (None: ``auto``, the first method whose input is given, else
    ``isp``) and the inputs given, by name (``checkpoint``, ``profile=``: ``render.inputs()``); the
    other ``options`` are ConvertConfig's fields.

    Raises:
        InputError: a method without what it needs, or a bad option.
        RunError, CheckpointError, ProfileError: a checkpoint or profile that is not one.
    """
    given = {"checkpoint": checkpoint, **{i.name: options.pop(i.name) for i in inputs() if i.name in options}}
    method, source = pick(method, given, "convert")
    if options.get("format", "png") not in FORMATS:
        raise InputError(f"unknown format {options['format']!r} ({', '.join(FORMATS)})")
    found = {"source": source, "source_sha256": file_sha256(source) if source else None}
    if not RENDER_METHODS[method].device:  # read now (cheap on the CPU): a bad file is refused before any frame
        renderer = RENDER_METHODS[method].open(source, None)
        if hasattr(renderer, "check"):
            renderer.check(scale=2)  # the classical frame is at full sensor resolution
        return ConvertConfig(method=method, **found,
                             **{k: v for k, v in options.items() if k in ("format", "quality", "zrr_levels")})
    from raw2rgb.model.infer import TileConfig

    TileConfig(tile=options.get("tile", TILE), overlap=0).check()  # a network's tiles: planned in convert()
    if (options.get("overlap") or 0) % 8:
        raise InputError(f"--overlap {options['overlap']}: a non-negative multiple of 8")
    return ConvertConfig(method=method, **found, **options)


def convert(items: list[Item], out_dir: os.PathLike | str, cfg: ConvertConfig, device: str = "auto",
            jobs: int = 1, force: bool = False, progress=None, overwrite: bool = False) -> StageResult:
    """Run the convert stage over ``items`` into ``out_dir``. With a model, the checkpoint is read
    here, before any file (a bad one is refused at once), and the stage's items reuse it. A file in
    ``out_dir`` that an earlier convert did not write (the camera's own JPEG beside its RAW) is
    replaced only with ``overwrite``; otherwise its item fails, naming it, and the others run."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: the output folder is a file")
    dev = resolve_device(device) if RENDER_METHODS[cfg.method].device else None
    if dev is not None:
        from raw2rgb.model.infer import load_generator, needed_overlap, plan_overlap

        g, _ = load_generator(cfg.source, dev)
        need, errors = needed_overlap(g, cfg.source_sha256 or "", dev)
        tile, overlap = plan_overlap(cfg.tile, cfg.overlap, need, errors)
        cfg = dataclasses.replace(cfg, tile=tile, overlap=overlap, precision=resolve_precision("auto", dev))
        jobs = 1  # one process runs the model (and owns the GPU)
    params = cfg.to_json()
    params.pop("source")  # the path may move; the sha256 is what matters
    options = {"device": dev, "source": cfg.source}
    return run_stage(CONVERT, items, out_dir, params, jobs=jobs, force=force, progress=progress, options=options,
                     overwrite=overwrite)


def convert_files(inputs: Iterable[str], out_dir: os.PathLike | str, method: str | None = None, *,
                  device: str = "auto", jobs: int | None = None, force: bool = False, progress=None,
                  overwrite: bool = False, **options: Any) -> tuple[ConvertConfig, StageResult]:
    """``raw2rgb convert``: the RAW files among ``inputs`` (files, folders, glob patterns) converted into
    ``out_dir`` by ``method`` (None: ``auto``) with what it renders with (``checkpoint=``,
    ``profile=``: :func:`render.inputs`) and ConvertConfig's other fields as ``options``
    (:func:`resolve`, :func:`convert`), by ``jobs`` processes (None: min(4, cores); one runs a model).
    Returns the config used and the stage's result."""
    cfg = resolve(method, **options)
    return cfg, convert(collect_inputs(inputs, out_dir), out_dir, cfg, device=device, jobs=jobs or default_jobs(),
                        force=force,
                        progress=progress, overwrite=overwrite)
