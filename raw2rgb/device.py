"""Torch devices, their precision and loaded models, one place for saliency, train, convert and evaluate.

``resolve_device`` turns the ``--device`` option into a ``torch.device`` (``auto``: CUDA when
present), refusing CUDA where there is none with a sentence rather than a CUDA traceback later;
``resolve_precision`` and ``autocast`` do the same for ``--precision``, and ``device_policy`` sets
a training process's GPU and CUDA kernel flags. ``cached`` keeps one loaded model per key in a
process (a DataLoader worker or a stage's item function loads a network once, not per item).
torch is imported inside the functions: the commands' ``--help`` and the data stages import this
module without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raw2rgb.config import checked
from raw2rgb.errors import UserError

if TYPE_CHECKING:
    import torch


class DeviceError(UserError):
    """A device that cannot be used here; the message says which and why."""



DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."


def device_field(default: str = "auto") -> Any:
    """A config's ``device`` field: what every device option accepts (:func:`resolve_device`), declared once."""
    return checked(default, metavar="DEV", help=DEVICE_HELP)

def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` checked."""
    import torch

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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on CUDA (its tensor cores), ``fp32`` on a CPU; ``fp16`` only on CUDA."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("--precision fp16 needs CUDA")
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward passes' mixed precision (``bf16``, ``fp16``); off for ``fp32``."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                          enabled=precision != "fp32")


def device_policy(device: torch.device, local_rank: int | None = None) -> torch.device:
    """This process's device (its own GPU under DDP: ``local_rank``) and the CUDA kernel policy."""
    import torch

    if device.type == "cuda":
        if local_rank is not None:
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 parts (losses, norms) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    return device


_MODELS: dict[Any, Any] = {}


def cached(key: Any, load: Callable[[], Any]) -> Any:
    """``load()`` once per process for ``key``; a new key drops the previous model (one lives at a time)."""
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load()
    return _MODELS[key]
