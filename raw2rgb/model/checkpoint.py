"""The checkpoint format: what a training run saves, and what training and inference read back.

A checkpoint is one dict (DESIGN §6, STYLE 7): ``format``, ``kind``, ``config`` (the run's
TrainConfig as JSON), ``progress``, ``rng`` (CPU RNG states), ``cameras`` (those the model was
trained on), ``world`` (processes that wrote it) and ``precision``, plus the state dicts ``G``,
``D``, ``opt_G``, ``opt_D``, ``sched_G``, ``sched_D``, ``scaler`` and, when the run keeps a moving
average of G's weights, ``G_ema`` (what inference uses). It is written atomically and
read with ``weights_only=True`` (no pickled code runs). Inference reads only ``G`` and the
generator's config: the file is memory-mapped, so the discriminator and the optimiser states (most
of the file) are never read.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raw2rgb.errors import UserError, environment_message
from raw2rgb.files import atomic_path

FORMAT = 1
KIND = "raw2rgb-train"


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
         cameras: list[str] | None = None, world: int = 1, precision: str = "fp32") -> None:
    """Write a checkpoint atomically. ``states`` maps names (G, D, opt_G, …) to objects with a
    ``state_dict()``.

    Raises:
        CheckpointError: the file could not be written (disk full, no permission); the previous
            checkpoint at ``path``, if any, is intact.
    """
    blob = {"format": FORMAT, "kind": KIND, "config": config, "progress": progress, "rng": rng_state(),
            "cameras": list(cameras or []), "world": int(world), "precision": precision,
            **{k: v.state_dict() for k, v in states.items()}}
    try:
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
    except (OSError, RuntimeError) as e:
        why = environment_message(e) or _disk_full(Path(path), e)
        if why is None:
            raise
        raise CheckpointError(f"{path}: cannot save the checkpoint ({why}); the previous one is kept") from None


def _disk_full(path: Path, e: BaseException) -> str | None:
    """torch's zip writer reports a full disk as "[enforce fail at inline_container.cc] … file write
    failed", without the OS error: tell it by the free space left."""
    if "write" not in str(e).lower():
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    return "no space left on device" if free < 64 << 20 else None


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
        CheckpointError: unreadable, not a raw2rgb checkpoint, or of another format version.
    """
    return _read(Path(path), mmap=False)


def load_generator_state(path: os.PathLike | str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """What inference needs of a checkpoint: the generator's config (JSON), its state dict and
    the metadata (``cameras``, ``progress``, ``path``). The file is memory-mapped and only the
    generator's tensors are read.

    Raises:
        CheckpointError: as :func:`load`, or no generator config in it.
    """
    path = Path(path)
    blob = _read(path, mmap=True)
    try:
        g_config = dict(blob["config"]["generator"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: no generator config in the checkpoint") from None
    weights = blob.get("G_ema") or blob["G"]  # the moving average, when the run kept one
    state = {k: v.clone() for k, v in weights.items()}  # own memory: the mapping closes with blob
    meta = {"cameras": list(blob.get("cameras") or []), "progress": blob.get("progress"), "path": str(path),
            "config": blob.get("config")}
    return g_config, state, meta
