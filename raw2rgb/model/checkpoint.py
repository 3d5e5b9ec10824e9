"""The checkpoint format: what a training run saves, and what training and inference read back.

A checkpoint is one dict: ``format``, ``kind``, ``config`` (the run's
TrainConfig as JSON), ``progress``, ``rng`` (CPU RNG states), ``cameras`` (those the model was
trained on), ``world`` (processes that wrote it), ``precision`` and ``run`` (the key and colour source
of the dataset it was trained on: a resume refuses another run's file), plus the state dicts ``G``,
``D``, ``opt_G``, ``opt_D``, ``sched_G``, ``sched_D``, ``scaler`` and, when the run keeps a moving
average of G's weights, ``G_ema`` (what inference uses). It is written atomically and
read with ``weights_only=True`` (no pickled code runs). ``sha256`` holds a content hash of each state
dict and of the rest (``meta``), taken at save time and checked before anything is used: a file
corrupted on disk is refused, not converted to garbage (a file from before the hashes loads with a
warning). Inference reads one set of generator weights (``G_ema`` when the run kept one, else ``G``)
and the generator's config: the file is memory-mapped, so the other weights, the discriminator and
the optimiser states (most of the file) are never read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raw2rgb.errors import UserError, machine_reason
from raw2rgb.files import atomic_path

log = logging.getLogger(__name__)

FORMAT = 1
KIND = "raw2rgb-train"
# what the ``meta`` hash covers; a file of before ``run`` (the dataset it was trained on) hashes without it
META = ("config", "progress", "rng", "cameras", "world", "precision", "run")


class CheckpointError(UserError):
    """A checkpoint that cannot be read or used; the message names the file and why."""


# -- random state ---------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """The CPU random states (torch, numpy, Python). Nothing in training draws from a CUDA RNG
    (sampling, augmentation and init all use seeded CPU generators), so none is saved: a run
    resumes on any number of GPUs."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(np_state[1].tolist()),
            "numpy_pos": int(np_state[2]), "python": json.dumps(random.getstate()[1])}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(json.loads(state["numpy"]), dtype=np.uint32), state["numpy_pos"]))
    random.setstate((3, tuple(json.loads(state["python"])), None))


# -- writing --------------------------------------------------------------------------------------

def save(path: os.PathLike | str, states: dict[str, Any], config: dict[str, Any], progress: dict[str, Any],
         cameras: list[str] | None = None, world: int = 1, precision: str = "fp32",
         run: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically. ``states`` maps names (G, D, opt_G, …) to objects with a
    ``state_dict()``; ``run`` is what else makes the run the checkpoint belongs to (its dataset's key
    and colour source), so that a resume can tell another run's checkpoint.

    Raises:
        CheckpointError: the file could not be written (disk full, no permission); the previous
            checkpoint at ``path``, if any, is intact.
    """
    blob = {"format": FORMAT, "kind": KIND, "config": config, "progress": progress, "rng": rng_state(),
            "cameras": list(cameras or []), "world": int(world), "precision": precision, "run": run,
            **{k: v.state_dict() for k, v in states.items()}}
    blob["sha256"] = {**{k: content_hash(blob[k]) for k in states}, "meta": content_hash({k: blob[k] for k in META})}
    try:
        with atomic_path(path) as tmp:  # a failed write leaves the previous file as it was
            torch.save(blob, tmp)
    except (OSError, RuntimeError, MemoryError) as e:
        # torch tells a full disk in its own words ("unexpected pos", "file write failed"): errors.py
        # knows them all
        why = machine_reason(e)
        if why is None:
            raise
        kept = "the previous one is kept" if Path(path).is_file() else "none had been written yet"
        raise CheckpointError(f"{path}: cannot save the checkpoint ({why}); {kept}") from None


# -- content hashes ---------------------------------------------------------------------------------

def content_hash(obj: Any) -> str:
    """sha256 of a state dict (or any nest of dicts, lists and tensors): every tensor's dtype, shape
    and values in logical order, every other value's repr, keys in sorted order. The same for a
    tensor on any device or in any memory layout, so a hash taken before saving checks the file."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for x in obj:
            _feed(h, x)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def _verify(path: Path, blob: dict[str, Any], names: tuple[str, ...]) -> None:
    """Check the parts ``names`` of a checkpoint (and its metadata) against the hashes saved in it.

    Raises:
        CheckpointError: a part whose content differs from what was saved (the file is corrupted).
    """
    hashes = blob.get("sha256")
    if not isinstance(hashes, dict):
        _warn_unchecked(str(path))
        return
    for name in (*names, "meta"):
        part = {k: blob.get(k) for k in META if k in blob or k != "run"} if name == "meta" else blob.get(name)
        if name not in hashes or content_hash(part) != hashes[name]:
            what = "its metadata" if name == "meta" else name
            raise CheckpointError(f"{path}: corrupted ({what} does not match the content hash saved with it); use "
                                  "another copy of this checkpoint, or an earlier one")


@functools.cache
def _warn_unchecked(path: str) -> None:
    log.warning("%s: no content hashes (written by an older raw2rgb); used without an integrity check", path)


# -- reading --------------------------------------------------------------------------------------

def _read(path: Path, mmap: bool) -> dict[str, Any]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # noqa: BLE001 - pickle, zip and OS errors all mean "not this file"
        if mmap and "mmap" in str(e):  # a legacy (non-zip) torch file: read it whole
            return _read(path, False)
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("kind") != KIND or "G" not in blob:
        raise CheckpointError(f"{path}: not a raw2rgb checkpoint")
    if blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {blob.get('format')}, this raw2rgb reads {FORMAT}; use "
                              "the raw2rgb version that wrote it, or retrain")
    return blob


def load(path: os.PathLike | str) -> dict[str, Any]:
    """A whole checkpoint (to resume training), on the CPU.

    Raises:
        CheckpointError: unreadable, not a raw2rgb checkpoint, of another format version, or
            corrupted (a part that does not match its content hash).
    """
    path = Path(path)
    blob = _read(path, mmap=False)
    _verify(path, blob, tuple(k for k in blob if k not in (*META, "format", "kind", "sha256")))
    return blob


def load_generator_state(path: os.PathLike | str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """What inference needs of a checkpoint: the generator's config (JSON), its state dict and
    the metadata (``cameras``, ``progress``, ``path``). The file is memory-mapped and only the
    generator's tensors are read.

    Raises:
        CheckpointError: as :func:`load` (only the generator's weights and the metadata are checked
            against their hashes), or no generator config in it.
    """
    path = Path(path)
    blob = _read(path, mmap=True)
    _verify(path, blob, ("G_ema",) if blob.get("G_ema") else ("G",))
    try:
        g_config = dict(blob["config"]["generator"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: no generator config in the checkpoint") from None
    weights = blob.get("G_ema") or blob["G"]  # the moving average, when the run kept one
    state = {k: v.clone() for k, v in weights.items()}  # own memory: the mapping closes with blob
    meta = {"cameras": list(blob.get("cameras") or []), "progress": blob.get("progress"), "path": str(path),
            "config": blob.get("config")}
    return g_config, state, meta
