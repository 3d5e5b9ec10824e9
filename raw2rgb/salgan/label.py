"""The saliency stage: batched inference of saliency maps into HDF5 shards, by a method of
``salgan/methods.py`` (the registry, ``SALIENCY_METHODS``, and ``resolve_method`` are there).

Images are sorted by key and cut into shards of at most ``shard_size`` maps of one size (a new
shard starts where the size changes). A shard is the stage's unit of work: it is computed in one
go, written under a temporary name and renamed, and cached by the stage machinery, so a killed
run resumes at the first unfinished shard.

Shard layout (``saliency-00000.h5``, written by ``pipeline.shards.write_saliency_shard``): dataset
``saliency`` (N, H, W) uint8, one chunk per map; dataset ``id`` (N,) strings; attributes
``format``, ``method``, ``weights_sha256``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from raw2rgb.device import resolve_device
from raw2rgb.files import collect_files
from raw2rgb.pipeline.pairs import PairError, read_rgb
from raw2rgb.pipeline.shards import SaliencyShard, read_saliency_shard, write_saliency_shard
from raw2rgb.pipeline.stage import (
    Context,
    Deferred,
    Item,
    ItemError,
    Stage,
    StageResult,
    check_stop,
    default_jobs,
    distributed,
    quit_on_stop_signals,
    run_stage,
    stop_noted,
)
from raw2rgb.salgan.methods import SALIENCY_METHODS, Method, SaliencyConfig, resolve_method

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_SHARD_SIZE = SaliencyConfig.shard_size


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _image_size(path: str) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # read_rgb refuses it in one line
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

    # Serial on purpose: PIL's header parsing holds the interpreter, and 8 threads made it 7×
    # slower (1.9 s against 0.27 s for 8,192 JPEGs).
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

class _Images:
    """torch Dataset of one shard's images: (index, HWC uint8 array or None, reason).

    For the spectral residual method the map itself is computed here, in the loader's workers.
    """

    def __init__(self, paths: tuple[str, ...], method: str):
        self.paths = paths
        self.method = method

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        try:
            rgb = read_rgb(self.paths[i])
        except PairError as e:  # names the file and the reason
            return i, None, str(e)
        on_image = SALIENCY_METHODS[self.method].on_image
        return i, (on_image(rgb) if on_image else rgb), ""


def _collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Stack a batch inside the worker, so it crosses to the main process as one tensor.

    Returns the indices stacked, the stacked uint8 tensor (or None) and (index, reason) for
    the images that failed or whose size differs from the batch's first.
    """
    good, failed = [], []
    for i, data, reason in batch:
        if data is None:
            failed.append((i, reason))
        elif good and data.shape != good[0][1].shape:
            failed.append((i, f"size {data.shape[:2]} differs from the shard's {good[0][1].shape[:2]}"))
        else:
            good.append((i, data))
    if not good:
        return [], None, failed
    stacked = torch.from_numpy(np.stack([d for _, d in good]))
    if stacked.ndim == 4:  # images (B, H, W, 3) -> contiguous (B, 3, H, W)
        stacked = stacked.permute(0, 3, 1, 2).contiguous()
    return [i for i, _ in good], stacked, failed


class _Batches:
    """Batch sampler over the images of the shards that will run, in order; a batch never spans
    two shards. One pass feeds every shard, so decoding runs ahead across shard boundaries."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.shards: list[list[int]] = []

    def __iter__(self):
        for indices in self.shards:
            for start in range(0, len(indices), self.batch_size):
                yield indices[start : start + self.batch_size]

    def __len__(self) -> int:
        return sum(-(-len(s) // self.batch_size) for s in self.shards)


class RunLoader:
    """The images of a whole run behind one DataLoader pass.

    ``plan(items)`` fixes the shards that will run; ``batches(item)`` then yields that shard's
    (positions in ``item.inputs``, stacked tensor, failures) from the shared iterator.
    """

    def __init__(self, paths: list[str], method: str, batch_size: int, workers: int, pin: bool):
        self.index = {p: k for k, p in enumerate(paths)}
        self.sampler = _Batches(batch_size)
        # the stage decides on Ctrl-C and SIGTERM, and stops the workers (never a failed shard)
        self.loader = DataLoader(_Images(tuple(paths), method), batch_sampler=self.sampler,
                                 num_workers=workers, collate_fn=_collate, pin_memory=pin,
                                 prefetch_factor=4 if workers else None,
                                 worker_init_fn=functools.partial(quit_on_stop_signals, parent=os.getpid()))
        self._iter = None
        self._pending: list[tuple[str, int]] = []  # (shard key, batches) still to be consumed
        self._on_child: Any = None  # torch's SIGCHLD handler, while ours stands in front of it

    def plan(self, items: list[Item]) -> None:
        t0 = time.perf_counter()
        self.sampler.shards = [[self.index[p] for p in it.inputs] for it in items]
        self._pending = [(it.key, -(-len(it.inputs) // self.sampler.batch_size)) for it in items]
        self._iter = iter(self.loader) if items else None
        self._guard_children()
        log.debug("saliency: loader started in %.3f s", time.perf_counter() - t0)

    def _guard_children(self) -> None:
        """torch raises from its SIGCHLD handler, wherever the stage is (a finaliser, a finally), when a
        worker ends by a signal: a worker that the stop signal itself ended (a SIGTERM sent to the whole
        group as the worker started, before it could set its handlers) is no error, the stop is."""
        if self._iter is None or not hasattr(signal, "SIGCHLD") or \
                threading.current_thread() is not threading.main_thread():
            return
        torch_handler = signal.getsignal(signal.SIGCHLD)
        if not callable(torch_handler):
            return

        def on_child(signum: int, frame: Any) -> None:
            if not stop_noted():
                torch_handler(signum, frame)

        self._on_child = torch_handler
        signal.signal(signal.SIGCHLD, on_child)

    def close(self, stopped: bool = False) -> None:
        """Stop the workers now (not when Python frees the iterator, at exit perhaps), a worker's end
        taken for no error meanwhile; then put torch's SIGCHLD handler back. ``stopped``: the stage
        obeyed a stop signal, and the workers (which ignore Ctrl-C) are ended at once, not after the
        image in hand."""
        it, self._iter = self._iter, None
        try:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                if self._on_child is not None:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for worker in getattr(it, "_workers", []) if stopped else []:
                    worker.terminate()  # SIGTERM from their parent: they exit at once, with status 0
                shutdown()
        finally:
            if self._on_child is not None:
                signal.signal(signal.SIGCHLD, self._on_child)
                self._on_child = None

    def batches(self, item: Item):
        if not self._pending or self._pending[0][0] != item.key:
            raise RuntimeError(f"{item.key} was not planned next")
        _, count = self._pending.pop(0)
        position = {self.index[p]: k for k, p in enumerate(item.inputs)}
        for _ in range(count):
            indices, data, bad = next(self._iter)
            yield ([position[i] for i in indices], data, [(position[i], r) for i, r in bad])


def label_shard(item: Item, ctx: Context) -> Deferred:
    """Stage work: compute the maps of one shard; its ``KEY.h5`` is written by the returned finisher."""
    method = ctx.params["method"]
    device = str(resolve_device(ctx.options.get("device", "auto")))
    run_loader = ctx.options.get("loader")
    if run_loader is None:  # called on its own: a loader for this shard alone
        run_loader = RunLoader(list(item.inputs), method, int(ctx.options.get("batch_size", 8)),
                               int(ctx.options.get("workers", 0)), device.startswith("cuda"))
        run_loader.plan([item])
    predictor = SALIENCY_METHODS[method].predictor
    model = predictor(ctx.options["weights"], device) if predictor else None
    t_start = time.perf_counter()
    maps, failed = _shard_maps(item, run_loader.batches(item), model)
    if not maps:
        raise ItemError(f"{item.key}: no readable image ({'; '.join(list(failed.values())[:2])})")
    order = sorted(maps)
    ids = [item.payload[i] for i in order]
    host, copied = _to_host(torch.stack([maps[i] for i in order]))
    name = f"{item.key}.h5"
    log.debug("%s: %d maps in %.3f s", item.key, len(order), time.perf_counter() - t_start)

    def finish() -> tuple[list[str], dict]:
        if copied is not None:
            copied.synchronize()
        write_saliency_shard(ctx.out_dir / name, ids, host.numpy(), method=method,
                             weights_sha256=ctx.params.get("weights_sha256", ""))
        return [name], {"count": len(order), "failed": failed}

    return Deferred(finish)


def _shard_maps(item: Item, batches, model) -> tuple[dict[int, Any], dict[str, str]]:
    """The maps of a shard's images by index (left on the device: no sync per batch, so the GPU
    works while the next batch loads), and the reasons of the images that failed."""
    maps: dict[int, Any] = {}
    failed: dict[str, str] = {}
    shape = None
    t_wait = t_infer = 0.0
    while True:
        check_stop()  # a stop signal noted where it could not be raised: no further batch
        t0 = time.perf_counter()
        try:
            indices, data, bad = next(batches)
        except StopIteration:
            break
        t_wait += time.perf_counter() - t0
        for i, reason in bad:
            failed[item.payload[i]] = reason if reason.startswith(item.inputs[i]) else f"{item.inputs[i]}: {reason}"
        if data is None:
            continue
        shape = shape or tuple(data.shape[-2:])
        if tuple(data.shape[-2:]) != shape:
            for i in indices:
                failed[item.payload[i]] = f"{item.inputs[i]}: size {tuple(data.shape[-2:])} differs from {shape}"
            continue
        t0 = time.perf_counter()
        out = data if model is None else model(data)
        maps.update(zip(indices, out))
        t_infer += time.perf_counter() - t0
    log.debug("%s: waiting for images %.3f s, inference %.3f s", item.key, t_wait, t_infer)
    return maps, failed


def _to_host(stacked: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Start copying ``stacked`` to pinned host memory without waiting (CUDA); the event to wait on."""
    if not stacked.is_cuda:
        return stacked, None
    host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
    host.copy_(stacked, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied


SALIENCY = Stage("saliency", 1, label_shard, deferred=True)


def label_files(inputs: Iterable[str], out_dir: os.PathLike | str, cfg: SaliencyConfig = SaliencyConfig(),
                force: bool = False, progress=None) -> StageResult:
    """``raw2rgb saliency``: the images among ``inputs`` (files, folders, glob patterns) labelled into
    ``out_dir`` as ``cfg`` says (``auto`` resolved: :func:`resolve_method`)."""
    images = collect_files(inputs, is_image_path)
    method = resolve_method(cfg.method, cfg.weights)
    log.info("saliency: %d images, method %s", len(images), method.name)
    return label(images, out_dir, method, shard_size=cfg.shard_size, batch_size=cfg.batch_size, device=cfg.device,
                 workers=cfg.workers, force=force, progress=progress)


def label(images: list[tuple[str, str]], out_dir: os.PathLike | str, method: Method,
          shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 8, device: str = "auto",
          workers: int | None = None, force: bool = False, progress=None) -> StageResult:
    """Run the saliency stage over (id, image path) pairs into ``out_dir``."""
    t0 = time.perf_counter()
    items = plan_shards(images, shard_size)
    log.debug("saliency: %d images in %d shards, planned in %.3f s", len(images), len(items),
              time.perf_counter() - t0)
    params = {"method": method.name, "weights_sha256": method.weights_sha256, "shard_size": shard_size}
    workers = default_jobs() if workers is None else workers
    options = {"weights": method.weights, "batch_size": batch_size, "device": device, "workers": workers}
    if distributed():  # each Dask worker decodes its own shards (in its own process) and picks its device
        return run_stage(SALIENCY, items, out_dir, params, progress=progress, options={**options, "workers": 0},
                         force=force)
    device = options["device"] = str(resolve_device(device))
    loader = RunLoader([p for _, p in sorted(images)], method.name, batch_size, workers, device.startswith("cuda"))
    try:
        result = run_stage(SALIENCY, items, out_dir, params, progress=progress,
                           options={**options, "loader": loader}, force=force, on_plan=loader.plan)
    except BaseException as e:
        loader.close(stopped=isinstance(e, KeyboardInterrupt))
        raise
    loader.close()
    return result


__all__ = ["SaliencyShard", "label", "label_files", "plan_shards", "read_rgb", "read_saliency_shard"]
