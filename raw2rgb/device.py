"""Torch devices and loaded models, one place for saliency, train, convert and evaluate.

``resolve_device`` turns the ``--device`` option into a ``torch.device`` (``auto``: CUDA when
present), refusing CUDA where there is none with a sentence rather than a CUDA traceback later.
``cached`` keeps one loaded model per key in a process (a DataLoader worker or a stage's item
function loads a network once, not per item).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from raw2rgb.errors import UserError


class DeviceError(UserError):
    """A device that cannot be used here; the message says which and why."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` checked."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available here (no GPU, or a CPU-only torch build); "
                              "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


_MODELS: dict[Any, Any] = {}


def cached(key: Any, load: Callable[[], Any]) -> Any:
    """``load()`` once per process for ``key``; a new key drops the previous model (one lives at a time)."""
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load()
    return _MODELS[key]
