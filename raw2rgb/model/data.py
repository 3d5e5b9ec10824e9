"""ShardDataset: training samples from HDF5 shards, as tensors in the model's ranges; and what a
training run asks of a shards folder (:func:`check_dataset`), its train and val sets
(:func:`training_sets`) and how it loads their batches (:func:`loader`).

Random access across the shards of one split. Each DataLoader worker opens its own h5py handles
lazily; no open handle is pickled (``__getstate__`` drops them), as in NVlabs/edm's dataset.
Samples are deterministic functions of (index, epoch, seed), augmentation included, so any
number of workers, and any number of training processes (each takes its share of every global
batch: ``distributed.epoch_batches``), see the same data.

Returned tensors (docs/architecture.md: conventions): ``raw`` (4, h, w) in [-1, 1]; ``rgb`` (3, s·h, s·w) in [-1, 1];
``saliency`` (1, s·h, s·w) in [0, 1]; ``colour`` (12,) float32, the white balance and colour
matrix of the sample's RAW file, stored in the shards (``whitebalance.colour_vector``: where the file
had no white balance, the gains of the dataset's white-balance rule; identity where it had no
matrix); ``thumb`` (4, 32, 32) in [-1, 1], the sample's whole frame area-downsampled and moved with the
sample (what the generator's global colour branch sees); ``id`` the sample's name. With ``compact=True``
the samples stay as stored (uint16 raw and thumb, uint8 target and saliency: 0.6 MB instead of 1.6 MB at 224²) and
:func:`to_model` converts a batch on the device — the way to feed a GPU, since moving a batch
between worker processes costs more than reading it (benchmarks/loader.py).
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from raw2rgb.errors import one_line
from raw2rgb.model.guards import ignore_stop_signals
from raw2rgb.model.recipe import TrainConfig, TrainError
from raw2rgb.model.run import colour_words
from raw2rgb.pipeline import augment, bayer, shards, whitebalance
from raw2rgb.pipeline.shards import ShardError, ShardIndex, read_colours, read_ids, read_index, shards_root, validate
from raw2rgb.pipeline.shards import white_balance as white_balance_of
from raw2rgb.pipeline.whitebalance import LEGACY_RULE, WhiteBalance

log = logging.getLogger(__name__)


class ShardDataset(Dataset):
    """One split of a shards folder (``index.json`` beside the shards).

    Args:
        root: the shards folder.
        split: ``train``, ``val`` or ``test``.
        augment: random Bayer-safe geometry on the fly: at scale 2 with a ``crop`` the whole dihedral
            group, else the phase-preserving part (identity, transpose), whose results are exact at
            scale 1 and keep the size (``pipeline/augment.py`` says why). Offline copies
            (``--copies``) cover the rest.
        crop: random crop to this size (packed pixels), on the 2-pixel grid of the mosaic.
        seed: base of the per-sample random streams; ``set_epoch`` varies them per epoch.
        compact: return the stored integer tensors; convert batches with :func:`to_model`.
        white_balance: the rule for samples whose RAW file had no white balance (a rule name, or a
            profile's or model's :class:`WhiteBalance` with its gains) [default: ``whitebalance.DEFAULT_RULE``,
            its dataset gains fitted on this folder's train split].
    """

    def __init__(self, root: os.PathLike | str, split: str = "train", augment: bool = False,
                 crop: int | None = None, seed: int = 0, compact: bool = False,
                 white_balance: WhiteBalance | str | None = None):
        self.root = Path(root)
        index = read_index(self.root)  # format checked, every shard inside the folder
        if split not in index.splits:
            raise ShardError(f"{self.root}: no split {split!r} (has {', '.join(sorted(index.splits))})")
        self.scale = index.scale
        self._wb_asked = white_balance or whitebalance.DEFAULT_RULE
        whitebalance.check_rule(getattr(self._wb_asked, "rule", self._wb_asked))
        self._wb: WhiteBalance | None = None
        self.shards = [s.file for s in index.splits[split].shards]
        self.starts = list(np.cumsum([0] + [s.count for s in index.splits[split].shards]))
        self.augment, self.crop, self.seed, self.epoch, self.compact = augment, crop, seed, 0, compact
        self._files: dict[str, Any] = {}
        self._stale: dict[str, Any] = {}  # handles a forked child inherited: never used, never closed
        self._pid = os.getpid()
        self._hw: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def white_balance(self) -> WhiteBalance:
        """The white-balance rule of samples without metadata, with its gains (the ``dataset`` rule's
        fitted on this folder's train split, unless given), resolved when first needed."""
        if self._wb is None:
            self._wb = white_balance_of(self.root, self._wb_asked)
        return self._wb

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"], state["_stale"] = {}, {}  # each worker opens its own handles
        return state

    def close(self) -> None:
        """Close this process's open shards (they reopen on the next read)."""
        if self._pid == os.getpid():
            for entry in self._files.values():
                entry[-1].close()
        self._files = {}

    def _file(self, name: str) -> tuple:
        """(raw, rgb, saliency datasets, ids) of a shard, opened once per process. Looking a
        dataset up by name costs more than reading a sample (measured: 1,007 against 6,494
        samples/s), so the dataset objects are kept."""
        if self._pid != os.getpid():
            # A forked process (a DataLoader worker) inherits the parent's handles without pickling;
            # HDF5 handles must not be shared across fork (wrong samples, "bad object header"), so the
            # child sets them aside unclosed (closing would touch the parent's file) and opens its own.
            self._stale = self._files
            self._files, self._pid = {}, os.getpid()
        entry = self._files.get(name)
        if entry is None:
            f = h5py.File(self.root / name, "r")
            ids = read_ids(f)
            colours, _ = read_colours(f)
            entry = self._files[name] = (f["raw"], f["rgb"], f["saliency"], f["thumb"], ids, colours, f)
        return entry

    def _read(self, index: int) -> tuple[str, str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self.starts, index) - 1
        name, j = self.shards[k], index - int(self.starts[k])
        try:
            raw, rgb, sal, thumb, ids, colours, _ = self._file(name)
            sample = name, ids[j], raw[j], rgb[j], sal[j], thumb[j]
        except Exception as e:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError…
            raise ShardError(f"{self.root / name}: sample {j} unreadable ({one_line(str(e))})") from None
        # a file with an as-shot white balance needs no rule: its gains are its own
        wb = self.white_balance if colours[j].as_shot is None else WhiteBalance(LEGACY_RULE)
        return (*sample[:2], whitebalance.colour_vector(colours[j], wb), *sample[2:])

    def transform(self, index: int) -> augment.Transform | None:
        """The geometry sample ``index`` gets in the current epoch (None: as stored), a function of
        (seed, epoch, index) only."""
        if not (self.augment or self.crop):
            return None
        rng = np.random.default_rng([self.seed, self.epoch, index])
        shape = self._shape()
        if self.augment:
            # a phase-moving move costs one pixel (a re-crop): only with a crop that leaves room for it,
            # so that every sample keeps one size
            return augment.random_transform(rng, shape, self.crop, phase_moving=self.scale == 2 and bool(self.crop))
        return augment.Transform(crop=augment.random_transform(rng, shape, self.crop, phase_moving=False).crop)

    def _shape(self) -> tuple[int, int]:
        """(h, w) of the stored packed samples (one size per shards folder)."""
        if self._hw is None:
            self._hw = tuple(int(v) for v in self._file(self.shards[0])[0].shape[2:])
        return self._hw

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, sid, colour, raw, rgb, sal, thumb = self._read(index)
        t = self.transform(index)
        if t is not None:
            raw, rgb, sal = self._move(raw, rgb, sal, t)
            thumb = bayer.move_thumbnail(thumb, t.flip_h, t.flip_v, t.transpose)  # the crop leaves the frame whole
        sample = {"raw": torch.from_numpy(raw), "rgb": torch.from_numpy(rgb), "saliency": torch.from_numpy(sal),
                  "thumb": torch.from_numpy(thumb), "colour": torch.from_numpy(colour), "id": sid}
        return sample if self.compact else to_model(sample)

    def _move(self, raw, rgb, sal, t: augment.Transform):
        """Apply t to a stored sample. At scale 2 the stored target is at sensor resolution and
        augment.apply does it all; at scale 1 only phase-preserving moves happen here, which move
        the packed grid by whole pixels, so the target moves by whole pixels too."""
        if self.scale == 2:
            r, g, s = augment.apply(raw, np.moveaxis(rgb, 0, 2), sal[0], t, 2)
            return r, np.moveaxis(g, 2, 0), s[None]
        if t.transpose:  # RGGB stays RGGB; G1 and G2 swap rows, so swap the planes too
            raw = raw[[0, 3, 2, 1]].swapaxes(1, 2)
            rgb, sal = rgb.swapaxes(1, 2), sal.swapaxes(1, 2)
        if t.crop:
            y, x, c = t.crop
            raw, rgb, sal = raw[:, y : y + c, x : x + c], rgb[:, y : y + c, x : x + c], sal[:, y : y + c, x : x + c]
        return np.ascontiguousarray(raw), np.ascontiguousarray(rgb), np.ascontiguousarray(sal)


# key: (stored dtype, top value, model value of 0); the top value maps to 1
STORED = {"raw": (torch.uint16, 65535.0, -1.0), "rgb": (torch.uint8, 255.0, -1.0),
          "saliency": (torch.uint8, 255.0, 0.0), "thumb": (torch.uint16, 65535.0, -1.0)}
OPTIONAL = ("thumb",)  # batches made by hand may leave it out: the generator then takes it from the raw


def to_model(batch: dict[str, Any], device: torch.device | str | None = None,
             non_blocking: bool = False) -> dict[str, Any]:
    """Stored integer tensors → the model's float ranges, on ``device``: raw uint16 → [-1, 1],
    rgb uint8 → [-1, 1], saliency uint8 → [0, 1], thumb uint16 → [-1, 1] (0 → -1 or 0, the top value → 1).

    Raises:
        TypeError: a tensor of another dtype — a float batch has been converted already (a
            ShardDataset without ``compact``) or is not what shards store, and passing it on would
            skip or repeat the 2x − 1 mapping without a sign.
    """
    out = {k: v.to(device, non_blocking=non_blocking) if device is not None and torch.is_tensor(v) else v
           for k, v in batch.items() if k not in STORED}  # the colour (float) goes as it is
    for key, (dtype, top, lo) in STORED.items():
        if key in OPTIONAL and key not in batch:
            continue
        x = batch[key]
        if x.dtype != dtype:
            raise TypeError(f"to_model: {key} must be {dtype} as the shards store it (ShardDataset(compact=True)), "
                            f"got {x.dtype}")
        if device is not None:
            x = x.to(device, non_blocking=non_blocking)
        out[key] = x.to(torch.float32) * ((1.0 - lo) / top) + lo
    return out


def describe(path: os.PathLike | str, batch_size: int = 8) -> list[str]:
    """Lines saying what a shards folder (or a prepare DATASET) holds: per split, the count and
    the shapes and value ranges of a loaded batch."""
    root = shards_root(path)
    index = read_index(root)
    validate(root, index)
    lines = [f"{root}: scale {index.scale}, crop {index.crop}, copies {index.copies}, "
             f"saliency {index.saliency_method or '?'}",
             f"  colour: {colour_words(shards.colour_source(root, index))}"]
    if index.binning and index.binning > 1:
        lines.append(f"  binning: {index.binning} (the RAW frames binned to the targets' resolution; a model trained "
                     "here converts frames binned alike)")
    if index.split:
        lines.append(f"  split {index.split}")
    for split, entry in sorted(index.splits.items()):
        batch = next(iter(DataLoader(ShardDataset(root, split), batch_size=batch_size)))
        ranges = ", ".join(f"{k} {tuple(batch[k].shape)} [{batch[k].min():.2f}, {batch[k].max():.2f}]"
                           for k in ("raw", "rgb", "saliency"))
        lines.append(f"  {split}: {entry.count} samples in {len(entry.shards)} shards; {ranges}")
    return lines


# -- a training run's data ----------------------------------------------------------------------------

def check_dataset(root: Path, cfg: TrainConfig, world: int = 1) -> ShardIndex:
    """The index of a shards folder, once it is whole and fits the config: a train split with a
    batch's worth of samples over ``world`` processes, the generator's binning and output scale,
    and a crop the generator takes.

    Raises:
        TrainError: the first mismatch, with what to change.
    """
    index = read_index(root)  # the shards checked against the format (read_index)
    if index.count("train") == 0:
        raise TrainError(f"{root}: the train split is empty (no training samples); check prepare's --split")
    if index.count("train") < cfg.batch_size * world:  # the epoch would make no batch (the last partial one is dropped)
        raise TrainError(f"{root}: {index.count('train')} training samples make no batch of {cfg.batch_size} × "
                         f"{world} process(es); lower --batch-size")
    if (index.binning or 1) != cfg.generator.binning:
        raise TrainError(f"{root}: the shards' frames are binned by {index.binning or 1}, the config's generator "
                         f"by {cfg.generator.binning}; leave generator.binning to the shards (train sets it from them)")
    if index.scale != cfg.generator.scale:
        raise TrainError(f"{root}: shards are at output scale {index.scale}, the config's generator at "
                         f"{cfg.generator.scale}; rebuild the shards with --scale {cfg.generator.scale} or change "
                         "the config")
    size = index.crop
    crop = cfg.crop or size
    if crop and (crop % 8 or (size and crop > size)):
        raise TrainError(f"{root}: patches of {crop} packed pixels; the generator needs a multiple of 8 no larger "
                         f"than the shards' {size} (use --crop)")
    return index


def training_sets(root: Path, index: ShardIndex, cfg: TrainConfig, wb: WhiteBalance | str, main: bool = True
                  ) -> tuple[ShardDataset, ShardDataset | None]:
    """The train split as the config augments and crops it, and the val split as stored (None
    without one: the run then validates nothing, which the main process (``main``) warns of)."""
    train_set = ShardDataset(root, "train", augment=cfg.augment, crop=cfg.crop, seed=cfg.seed, compact=True,
                             white_balance=wb)
    val_set = ShardDataset(root, "val", compact=True, white_balance=wb) if index.count("val") else None
    if val_set is None and main:
        log.warning("%s: no val split; no validation (prepare with --split giving val a share)", root)
    return train_set, val_set


def loader(dataset: ShardDataset, batches: list[list[int]], device: torch.device, workers: int | None = None
           ) -> DataLoader:
    """A loader of the given batches of indices; ``workers`` processes (None: 2 on CUDA, where they
    keep the GPU fed; none on a CPU, whose cores the step needs), pinned memory on CUDA, and workers
    that leave stop signals to the training process."""
    workers = workers if workers is not None else (2 if device.type == "cuda" else 0)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                      worker_init_fn=ignore_stop_signals)
