"""Rendering methods: how ``convert``, ``evaluate`` and ``report`` make a picture from RAW data —
``model`` (a trained generator), ``isp`` (the classical pipeline) or ``profile`` (the classical
pipeline, then a fitted colour profile). Each is one :class:`RenderMethod` in
:data:`RENDER_METHODS`; its renderer renders a whole frame (``convert``) and a batch of
model-range patches (``evaluate``, ``report``). No torch at import: the CLI reads the registry for
``--method``'s choices and help, and a renderer loads what it needs when it is opened.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raw2rgb.errors import InputError
from raw2rgb.registry import Registry


@dataclass(frozen=True)
class RenderMethod:
    """One way to render. ``needs``: what it renders with (``"checkpoint"``, ``"profile"`` or None),
    the option that gives it; ``open(source, device)`` makes its renderer from that file (a path, or
    None) on a ``torch.device`` (or None where the method runs on the CPU). A renderer has
    ``white_balance`` (the rule its colours follow; None: the default rule), ``scale`` (its output
    scale; None: any) and ``batch(b, scale)`` ((B, 4, h, w) model-range raw of a batch with its
    ``colour`` → (B, 3, s·h, s·w) in [-1, 1]); ``convert`` also calls ``frame``."""

    help: str
    open: Callable[[str | None, Any], Any]
    needs: str | None = None


RENDER_METHODS: Registry[RenderMethod] = Registry("method")


def default_method(checkpoint: Any, profile: Any) -> str:
    """The method when none is named: ``model`` with a checkpoint, ``profile`` with a profile, else ``isp``."""
    return "model" if checkpoint else "profile" if profile else "isp"


def source(method: str, checkpoint: os.PathLike | str | None, profile: os.PathLike | str | None,
           command: str) -> str | None:
    """The file ``method`` renders with, from the options given.

    Raises:
        InputError: an unknown method, or one without what it needs (the message says which option).
    """
    entry = RENDER_METHODS[method] if method in RENDER_METHODS else None
    if entry is None:
        raise InputError(f"unknown method {method!r} ({', '.join(RENDER_METHODS)})")
    given = {"checkpoint": checkpoint, "profile": profile}.get(entry.needs or "")
    if entry.needs and given is None:
        how = {"checkpoint": "--checkpoint CKPT (a checkpoint file or a RUN folder)",
               "profile": "--profile FILE (raw2rgb profile fit DATASET -o FILE)"}.get(entry.needs, f"--{entry.needs}")
        raise InputError(f"{command} --method {method} needs {how}")
    return None if given is None else str(given)


def _classical(profile_path: str | None, device: Any = None):
    from raw2rgb.model.renderers import ClassicalRenderer
    return ClassicalRenderer(profile_path)


def _model(checkpoint: str | None, device: Any = None):
    from raw2rgb.model.renderers import ModelRenderer
    return ModelRenderer(checkpoint, device)


RENDER_METHODS.add("model", RenderMethod("a trained generator (needs --checkpoint)", _model, needs="checkpoint"))
RENDER_METHODS.add("isp", RenderMethod("the classical pipeline", _classical))
RENDER_METHODS.add("profile", RenderMethod("the classical pipeline, then a fitted colour profile (needs --profile)",
                                           _classical, needs="profile"))
