"""Rendering methods: how ``convert``, ``evaluate`` and ``report`` make a picture from RAW data —
``model`` (a trained generator), ``isp`` (the classical pipeline) or ``profile`` (the classical
pipeline, then a fitted colour profile). Each is one :class:`RenderMethod` in
:data:`RENDER_METHODS`; its renderer renders a whole frame (``convert``) and a batch of
model-range patches (``evaluate``, ``report``). No torch at import: the CLI reads the registry for
``--method``'s choices and help, and a renderer loads what it needs when it is opened.

What a method renders with is its own declaration, a :class:`RenderInput` (a checkpoint, a
profile): the CLI makes one option per distinct input (:func:`inputs`, ``--checkpoint``,
``--profile``), the library functions take it as a keyword of that name, and the message for a
method asked for without it is the input's. A new kind of input is one ``RenderInput`` here, on the
method that needs it. ``auto`` (the default) is the first method whose input is given, else the
first that needs none.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raw2rgb.config import JsonConfig, checked
from raw2rgb.dataset import SPLITS
from raw2rgb.device import device_field
from raw2rgb.errors import InputError
from raw2rgb.registry import AUTO, Auto, Registry


@dataclass(frozen=True)
class RenderInput:
    """A file a rendering method renders with, given as ``--NAME`` to convert and evaluate (and as
    the keyword ``NAME`` to ``convert.resolve`` and ``evaluate.evaluate``): ``metavar`` and ``help``
    make the option, ``how`` says where one comes from (in the message for a method run without
    it), ``folder`` that a folder is accepted too, and ``locate(given)`` gives the file itself (a
    RUN folder's checkpoint), refusing what is not one."""

    name: str
    metavar: str
    help: str
    how: str
    folder: bool = False
    locate: Callable[[str], Path] = Path

    @property
    def option(self) -> str:
        return f"--{self.name.replace('_', '-')}"


@dataclass(frozen=True)
class RenderMethod:
    """One way to render. ``needs``: what it renders with (None: nothing); ``open(source, device)``
    makes its renderer from that file (a path, or None) on a ``torch.device`` (or None where the
    method runs on the CPU); ``device``: it runs a network, on a device (convert loads it once, in
    the main process, and plans its tiles); ``title``: its name in a report's table.

    A renderer has ``white_balance`` (the rule its colours follow; None: the default rule),
    ``scale`` (its output scale; None: any), ``batch(b, scale)`` ((B, 4, h, w) model-range raw of a
    batch with its ``colour`` → (B, 3, s·h, s·w) in [-1, 1]) and optionally ``check(scale=…,
    cameras=…)`` (refuses data it cannot render); ``convert`` also calls ``frame``."""

    help: str
    open: Callable[[str | None, Any], Any]
    needs: RenderInput | None = None
    device: bool = False
    title: str = ""


def _auto(given: Mapping[str, Any] | None = None) -> str:
    """The first method whose input is in ``given`` (not None), else the first that needs none."""
    given = given or {}
    methods = RENDER_METHODS.items()
    for name, m in methods:
        if m.needs is not None and given.get(m.needs.name) is not None:
            return name
    return next(name for name, m in methods if m.needs is None)


def _auto_help() -> str:
    methods = RENDER_METHODS.items()
    by_input = [f"{name} with {m.needs.option}" for name, m in methods if m.needs is not None]
    plain = next((name for name, m in methods if m.needs is None), None)
    return ", ".join(by_input) + (f", else {plain}" if plain else "")


RENDER_METHODS: Registry[RenderMethod] = Registry("method", default=AUTO, auto=Auto(_auto_help, _auto))


def inputs() -> list[RenderInput]:
    """The distinct inputs of the registered methods, in registration order: one option each."""
    out: dict[str, RenderInput] = {}
    for _, m in RENDER_METHODS.items():
        if m.needs is not None:
            out.setdefault(m.needs.name, m.needs)
    return list(out.values())


def pick(method: str | None, given: Mapping[str, os.PathLike | str | None] | None, command: str
         ) -> tuple[str, str | None]:
    """The method (``auto`` or None: :data:`RENDER_METHODS`' rule) and the file it renders with,
    from the inputs given (by :class:`RenderInput` name; an input the method does not use is
    ignored).

    Raises:
        UnknownEntry: an unknown method.
        InputError: a method without what it needs (the message says which option, and how to get it).
        RunError: a checkpoint that is neither a file nor a RUN folder.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    method = RENDER_METHODS.resolve(method or AUTO, given)
    needs = RENDER_METHODS[method].needs
    if needs is None:
        return method, None
    if needs.name not in given:
        raise InputError(f"{command} --method {method} needs {needs.option} {needs.metavar} ({needs.how})")
    return method, str(needs.locate(str(given[needs.name])))


def _checkpoint_file(given: str) -> Path:
    from raw2rgb.model.run import checkpoint_file

    return checkpoint_file(given)


CHECKPOINT = RenderInput("checkpoint", "CKPT|RUN", "A trained checkpoint, or a RUN folder (its final checkpoint).",
                         "a checkpoint file or a RUN folder", folder=True, locate=_checkpoint_file)
PROFILE = RenderInput("profile", "JSON", "A colour profile (raw2rgb profile fit; a RUN's profile.json).",
                      "raw2rgb profile fit DATASET -o FILE", locate=lambda given: Path(given).resolve())


def _classical(profile_path: str | None, device: Any = None):
    from raw2rgb.model.renderers import ClassicalRenderer
    return ClassicalRenderer(profile_path)


def _model(checkpoint: str | None, device: Any = None):
    from raw2rgb.model.renderers import ModelRenderer
    return ModelRenderer(checkpoint, device)


RENDER_METHODS.add("model", RenderMethod("a trained generator (needs --checkpoint)", _model, needs=CHECKPOINT,
                                         device=True, title="model"))
RENDER_METHODS.add("isp", RenderMethod("the classical pipeline", _classical, title="classical pipeline"))
RENDER_METHODS.add("profile", RenderMethod("the classical pipeline, then a fitted colour profile (needs --profile)",
                                           _classical, needs=PROFILE, title="fitted profile"))


@dataclass(frozen=True)
class ScoreConfig(JsonConfig):
    """How ``raw2rgb evaluate`` scores a rendering method on a split of a prepared dataset (its
    options, beside ``--method`` and the method's input)."""

    split: str = checked("val", choices=SPLITS, help="Split to evaluate.")
    batch_size: int = checked(8, min=1, metavar="N", help="Images per batch.")
    device: str = device_field()
