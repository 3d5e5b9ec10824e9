"""The saliency stage: batched inference of saliency maps into HDF5 shards.

Images are sorted by key and cut into shards of at most ``shard_size`` maps of one size (a new
shard starts where the size changes). A shard is the stage's unit of work: it is computed in one
go, written under a temporary name and renamed, and cached by the stage machinery, so a killed
run resumes at the first unfinished shard.

Shard layout (``saliency-00000.h5``): dataset ``saliency`` (N, H, W) uint8, one chunk per map;
dataset ``id`` (N,) strings; attributes ``format``, ``method``, ``weights_sha256``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raw2rgb.pipeline.stage import (
    Context,
    Item,
    ItemError,
    Stage,
    StageResult,
    atomic_path,
    file_sha256,
    one_line,
    run_stage,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
SHARD_FORMAT = 1
METHODS = ("auto", "salgan", "spectral-residual")
DEFAULT_SHARD_SIZE = 1024
# gzip level 1 on one map per chunk: smooth maps shrink ~5× and a 448² map costs ~0.3 ms to write.
COMPRESSION = {"compression": "gzip", "compression_opts": 1}


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class Method:
    """The saliency method a run uses, resolved from ``auto`` and the weights found."""

    name: str  # "salgan" | "spectral-residual"
    weights: str | None = None
    weights_sha256: str = ""


def resolve_method(method: str, weights: str | os.PathLike | None = None) -> Method:
    """Pick the method: ``auto`` is SalGAN when weights are found, else spectral residual.

    Raises:
        WeightsError: ``method='salgan'`` and no weights are found (the message says where to
            put them).
    """
    from raw2rgb.salgan.weights import WeightsError, default_path, find_weights

    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "spectral-residual":
        return Method("spectral-residual")
    try:
        path = find_weights(weights)
    except WeightsError:
        if method == "salgan" or weights:
            raise
        log.warning("no SalGAN weights found (--weights, $RAW2RGB_SALGAN_WEIGHTS, %s): using the "
                    "weight-free spectral residual method; README 'SalGAN weights' says how to get "
                    "them", default_path())
        return Method("spectral-residual")
    return Method("salgan", str(path), file_sha256(path))


def _image_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 - the shard's decode reports it
        return None


def plan_shards(images: list[tuple[str, str]], shard_size: int = DEFAULT_SHARD_SIZE) -> list[Item]:
    """Cut (id, path) pairs, sorted by id, into shard items of one image size each."""
    items: list[Item] = []
    ids: list[str] = []
    paths: list[str] = []
    size = None

    def flush() -> None:
        if ids:
            items.append(Item(f"saliency-{len(items):05d}", tuple(paths), tuple(ids)))
            ids.clear()
            paths.clear()

    for key, path in sorted(images):
        s = _image_size(path)
        if ids and ((s is not None and s != size) or len(ids) >= shard_size):
            flush()
        if s is not None and not ids:
            size = s
        ids.append(key)
        paths.append(path)
    flush()
    return items


# -- decoding -------------------------------------------------------------------------------------

def read_rgb(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grey is repeated, alpha dropped)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


class _Images:
    """torch Dataset of one shard's images: (index, CHW uint8 tensor or None, reason)."""

    def __init__(self, paths: tuple[str, ...], method: str):
        self.paths = paths
        self.method = method

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        import torch

        try:
            rgb = read_rgb(self.paths[i])
        except Exception as e:  # noqa: BLE001 - any decoder error is this image's problem
            return i, None, one_line(f"{self.paths[i]}: unreadable image ({e})")
        if self.method == "spectral-residual":  # computed here, in the loader's workers
            from raw2rgb.salgan.classical import spectral_residual

            return i, torch.from_numpy(spectral_residual(rgb)), ""
        return i, torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), ""


def _collate(batch):
    return batch


_MODELS: dict[tuple[str, str], Any] = {}


def _salgan(weights: str, device: str):
    from raw2rgb.salgan.weights import load_salgan

    key = (weights, device)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_salgan(weights, device)
    return _MODELS[key]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def label_shard(item: Item, ctx: Context) -> tuple[list[str], dict]:
    """Stage work: compute the maps of one shard and write ``KEY.h5``."""
    import torch
    from torch.utils.data import DataLoader

    from raw2rgb.salgan.model import predict

    method = ctx.params["method"]
    device = resolve_device(ctx.options.get("device", "auto"))
    workers = int(ctx.options.get("workers", 0))
    loader = DataLoader(_Images(item.inputs, method), batch_size=int(ctx.options.get("batch_size", 8)),
                        num_workers=workers, collate_fn=_collate, pin_memory=device.startswith("cuda"),
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    model = _salgan(ctx.options["weights"], device) if method == "salgan" else None
    maps: dict[int, np.ndarray] = {}
    failed: dict[str, str] = {}
    shape = None
    for batch in loader:
        good = []
        for i, data, reason in batch:
            if data is None:
                failed[item.payload[i]] = reason
                continue
            hw = tuple(data.shape[-2:])
            shape = shape or hw
            if hw != shape:
                failed[item.payload[i]] = f"{item.inputs[i]}: size {hw} differs from the shard's {shape}"
                continue
            good.append((i, data))
        if not good:
            continue
        if model is None:
            for i, m in good:
                maps[i] = m.numpy()
        else:
            out = predict(model, torch.stack([d for _, d in good])).cpu().numpy()
            for (i, _), m in zip(good, out):
                maps[i] = m
    if not maps:
        raise ItemError(f"{item.key}: no readable image ({'; '.join(list(failed.values())[:2])})")
    order = sorted(maps)
    name = f"{item.key}.h5"
    write_shard(ctx.out_dir / name, [item.payload[i] for i in order], np.stack([maps[i] for i in order]),
                method=method, weights_sha256=ctx.params.get("weights_sha256", ""))
    return [name], {"count": len(order), "failed": failed}


def write_shard(path: Path, ids: list[str], maps: np.ndarray, method: str, weights_sha256: str) -> None:
    """Write one saliency shard atomically (and byte-reproducibly: no timestamps)."""
    import h5py

    n, h, w = maps.shape
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        f.create_dataset("saliency", data=maps, chunks=(1, h, w), track_times=False, **COMPRESSION)
        f.create_dataset("id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype(),
                         track_times=False)
        f.attrs["format"] = SHARD_FORMAT
        f.attrs["method"] = method
        f.attrs["weights_sha256"] = weights_sha256


@dataclass
class SaliencyShard:
    ids: list[str]
    maps: np.ndarray  # (N, H, W) uint8
    method: str
    weights_sha256: str


def read_shard(path: os.PathLike | str) -> SaliencyShard:
    """Read a whole saliency shard."""
    import h5py

    with h5py.File(path, "r") as f:
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["id"][()]]
        return SaliencyShard(ids, f["saliency"][()], str(f.attrs["method"]),
                             str(f.attrs["weights_sha256"]))


SALIENCY = Stage("saliency", 1, label_shard)


def label(images: list[tuple[str, str]], out_dir: os.PathLike | str, method: Method,
          shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 8, device: str = "auto",
          workers: int | None = None, force: bool = False, progress=None) -> StageResult:
    """Run the saliency stage over (id, image path) pairs into ``out_dir``."""
    items = plan_shards(images, shard_size)
    params = {"method": method.name, "weights_sha256": method.weights_sha256, "shard_size": shard_size}
    options = {"weights": method.weights, "batch_size": batch_size, "device": device,
               "workers": min(4, os.cpu_count() or 1) if workers is None else workers}
    return run_stage(SALIENCY, items, out_dir, params, progress=progress, options=options, force=force)
