"""The unpack stage: RAW files → packed 4-channel PNGs (R, G1, B, G2) with a JSON sidecar each."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from raw2rgb.pipeline import bayer, rawio
from raw2rgb.pipeline.stage import Item, ItemError, Stage, StageResult, run_stage, write_bytes, write_json

SIDECAR_FORMAT = 1


class InputError(Exception):
    """The command line names inputs that cannot be turned into a work list."""


def collect_inputs(args: Iterable[str]) -> list[Item]:
    """Turn files, folders and glob patterns into unpack items.

    A folder contributes every file below it with a RAW or PNG suffix, keyed by its path relative
    to the folder (so ``a/x.dng`` and ``b/x.dng`` stay apart); a file is keyed by its stem. A path
    that does not exist becomes an item that fails with "no such file", so the rest still run.

    Raises:
        InputError: two inputs map to the same output name, or nothing was named.
    """
    items: dict[str, Item] = {}

    def add(key: str, path: Path) -> None:
        key = key.replace(os.sep, "/")
        if key in items and items[key].inputs[0] != str(path):
            raise InputError(f"{items[key].inputs[0]} and {path} would both write {key}.png; "
                             "unpack them into different folders")
        items[key] = Item(key, (str(path),))

    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and rawio.is_raw_path(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            for p in found:
                add(str(p.relative_to(path).with_suffix("")), p.resolve())
        elif path.is_file():
            add(path.stem, path.resolve())
        elif glob.has_magic(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                add(path.stem or arg, path)  # fails with "no such file"
            for m in files:
                add(m.stem, m.resolve())
        else:
            add(path.stem or arg, path)
    if not items:
        raise InputError("no input files")
    return list(items.values())


def unpack_item(item: Item, out_dir: Path, params: Mapping[str, Any],
                hashes: Mapping[str, str]) -> tuple[list[str], dict]:
    """Stage work: read one RAW, write ``KEY.png`` (packed, normalised) and ``KEY.json``."""
    src = item.inputs[0]
    try:
        frame = rawio.read_raw(src, zrr_levels=tuple(params["zrr_levels"]))
    except rawio.RawReadError as e:
        raise ItemError(str(e)) from None
    bits = int(params["bit_depth"])
    dtype = np.uint16 if bits == 16 else np.uint8
    try:
        packed = frame.packed(dtype)
    except ValueError as e:
        raise ItemError(f"{src}: {e}") from None
    png, sidecar = f"{item.key}.png", f"{item.key}.json"
    write_bytes(out_dir / png, rawio.encode_packed_png(packed, level=int(params["png_level"])))
    meta = {
        "format": SIDECAR_FORMAT,
        "source": src,
        "sha256": hashes[src],
        "frame": frame.metadata(),
        "unify_crop": list(bayer.unify_offset(frame.pattern)),
        "channels": list(bayer.CHANNELS),
        "shape": [int(s) for s in packed.shape],
        "bit_depth": bits,
        "normalisation": f"clip((x - black[c]) / (white - black[c]), 0, 1) * {2 ** bits - 1}",
    }
    write_json(out_dir / sidecar, meta)
    return [png, sidecar], {"pattern": frame.pattern, "shape": meta["shape"]}


UNPACK = Stage("unpack", 1, unpack_item)


def unpack(items: list[Item], out_dir: os.PathLike | str, bit_depth: int = 16,
           zrr_levels: tuple[float, float] = rawio.ZRR_LEVELS[rawio.ZRR_DEFAULT_LEVELS],
           jobs: int = 1, force: bool = False, progress=None) -> StageResult:
    """Run the unpack stage over ``items`` into ``out_dir``."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, got {bit_depth}")
    params = {"bit_depth": bit_depth, "zrr_levels": list(zrr_levels), "png_level": rawio.PNG_LEVEL}
    return run_stage(UNPACK, items, out_dir, params, jobs=jobs, force=force, progress=progress)
