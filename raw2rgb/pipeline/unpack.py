"""The unpack stage: RAW files → packed 4-channel PNGs (R, G1, B, G2) with a JSON sidecar each."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from raw2rgb.config import JsonConfig, checked
from raw2rgb.files import collect_files, write_bytes, write_json
from raw2rgb.pipeline import bayer, rawio
from raw2rgb.pipeline.stage import Context, Item, ItemError, Stage, StageResult, default_jobs, own_outputs, run_stage

SIDECAR_FORMAT = 1


def collect_inputs(args: Iterable[str], out_dir: os.PathLike | str | None = None) -> list[Item]:
    """Unpack items for files, folders (RAW files and RAW-holding PNGs below them) and glob patterns;
    never the command's own outputs (``out_dir`` inside an input folder, or the same folder)."""
    return [Item(key, (path,)) for key, path in collect_files(args, rawio.is_raw_path, **own_outputs(args, out_dir))]


def unpack_item(item: Item, ctx: Context) -> tuple[list[str], dict]:
    """Stage work: read one RAW, write ``KEY.png`` (packed, normalised) and ``KEY.json``."""
    src, params, out_dir = item.inputs[0], ctx.params, ctx.out_dir
    try:
        frame = rawio.read_raw(src, zrr_levels=tuple(params["zrr_levels"]))
    except rawio.RawReadError as e:
        raise ItemError(str(e)) from None
    bits = int(params["bit_depth"])
    dtype = np.uint16 if bits == 16 else np.uint8
    try:
        packed = frame.packed(dtype, channels_last=True)  # (h, w, 4): no transpose before the PNG
    except ValueError as e:
        raise ItemError(f"{src}: {e}") from None
    png, sidecar = f"{item.key}.png", f"{item.key}.json"
    write_bytes(out_dir / png, rawio.encode_packed_png(packed, channels_last=True))
    meta = {
        "format": SIDECAR_FORMAT,
        "source": src,
        "sha256": ctx.hashes[src],
        "frame": frame.metadata(),
        "unify_crop": list(bayer.unify_offset(frame.pattern)),
        "channels": list(bayer.CHANNELS),
        "shape": [4, int(packed.shape[0]), int(packed.shape[1])],
        "bit_depth": bits,
        "normalisation": bayer.normalisation_formula(bits),
    }
    write_json(out_dir / sidecar, meta)
    return [png, sidecar], {"pattern": frame.pattern, "shape": meta["shape"]}


def unpack_names(item: Item, params) -> list[str]:
    """The files an item writes, known before it runs (the stage refuses to replace one it did not write)."""
    return [f"{item.key}.png", f"{item.key}.json"]


UNPACK = Stage("unpack", 2, unpack_item, keeps_others=True, names=unpack_names)  # 2: faster PNG settings


def unpack(items: list[Item], out_dir: os.PathLike | str, bit_depth: int = 16,
           zrr_levels: tuple[float, float] = rawio.ZRR_LEVELS[rawio.ZRR_DEFAULT_LEVELS],
           jobs: int = 1, force: bool = False, progress=None, overwrite: bool = False) -> StageResult:
    """Run the unpack stage over ``items`` into ``out_dir``; a file there that no unpack wrote is
    replaced only with ``overwrite`` (otherwise its item fails, naming it)."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    params = {"bit_depth": bit_depth, "zrr_levels": list(zrr_levels)}
    return run_stage(UNPACK, items, out_dir, params, jobs=jobs, force=force, progress=progress, overwrite=overwrite)


@dataclass(frozen=True)
class UnpackConfig(JsonConfig):
    """How ``raw2rgb unpack`` writes (its options)."""

    bit_depth: int = checked(16, choices=(16, 8), help="16: lossless; 8: the AIM-2019 form.")
    zrr_levels: str = rawio.zrr_levels_field()


def unpack_files(inputs: Iterable[str], out_dir: os.PathLike | str, cfg: UnpackConfig = UnpackConfig(),
                 jobs: int | None = None, force: bool = False, progress=None, overwrite: bool = False) -> StageResult:
    """``raw2rgb unpack``: the RAW files among ``inputs`` (files, folders, glob patterns), unpacked into
    ``out_dir`` (:func:`collect_inputs`, :func:`unpack`) by ``jobs`` processes (None: min(4, cores))."""
    return unpack(collect_inputs(inputs, out_dir), out_dir, cfg.bit_depth, rawio.ZRR_LEVELS[cfg.zrr_levels],
                  jobs=jobs or default_jobs(), force=force, progress=progress, overwrite=overwrite)


def camera_name(frame: dict) -> str:
    """``make model`` of a sidecar's frame metadata ('' when it names none)."""
    return " ".join(p for p in (frame.get("make"), frame.get("model")) if p)
