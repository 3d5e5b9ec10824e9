"""`raw2rgb export`: the inference generator (G1, spectral norm folded) as ONNX or a torch.export
program, with dynamic batch, height and width (multiples of 8).

Input ``raw`` (B, 4, h, w) in [-1, 1], packed R, G1, B, G2 in RGGB phase, and for a generator with
a colour prior ``colour`` (B, 12): white-balance gains R, G, B and the camera → sRGB matrix row by
row (``develop.frame_colour``), and for a generator with a global colour branch ``thumb`` (B, 4, 32, 32)
in [-1, 1], the whole frame's packed planes area-downsampled (``bayer.thumbnail``: adaptive average
pooling; give every tile of a frame the frame's thumbnail); output ``rgb`` (B, 3, s·h, s·w) in
[-1, 1] (clamp it: with a prior it is not bounded). A generator with InstanceNorm (the ``paper``
preset) normalises each image by its own statistics, as in training; the recommended presets have
no normalisation. Full frames are converted in tiles by ``raw2rgb convert``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from raw2rgb.files import atomic_path
from raw2rgb.model.infer import load_generator
from raw2rgb.model.prior import frame_thumbnail

log = logging.getLogger(__name__)
OPSET = 18


class InferenceGenerator(nn.Module):
    """G1 alone: what an exported model runs (``raw``, ``colour`` for a generator with a prior, ``thumb``
    for one with a colour branch)."""

    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.g = g

    def forward(self, raw: torch.Tensor, colour: torch.Tensor | None = None,
                thumb: torch.Tensor | None = None) -> torch.Tensor:
        return self.g.rgb(raw, colour, thumb)


def _inputs(g: nn.Module) -> tuple[torch.Tensor, ...]:
    """Example inputs, batch 2 (an example of 1 would fix the batch size)."""
    raw = torch.rand(2, 4, 64, 96) * 2 - 1
    if g.prior is None:
        return (raw,)
    colour = torch.tensor([[2.0, 1.0, 1.6, 1, 0, 0, 0, 1, 0, 0, 0, 1]] * 2)
    if g.colour_branch is None:
        return raw, colour
    return raw, colour, frame_thumbnail(raw)


def _dynamic_shapes(g: nn.Module):
    b = Dim("batch", min=1, max=1024)
    h, w = Dim("h8", min=2, max=8192), Dim("w8", min=2, max=8192)
    shapes = {"raw": {0: b, 2: 8 * h, 3: 8 * w}}
    if g.prior is not None:
        shapes["colour"] = {0: b}
    if g.colour_branch is not None:
        shapes["thumb"] = {0: b}  # its size is fixed (bayer.THUMB_SIZE)
    return shapes


@contextlib.contextmanager
def _quiet():
    """The ONNX exporter and the packages it calls (onnxscript, onnx-ir's optimiser passes) print and
    log hundreds of lines of progress, under logger names that change between versions; a user needs
    the file, or its error. Every logger's records up to WARNING are dropped while the exporter runs
    (its errors still raise), and what it prints is kept for -v when it fails."""
    noise = io.StringIO()
    was = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except Exception:
        logging.disable(was)
        log.debug("exporter output:\n%s", noise.getvalue())
        raise
    finally:
        logging.disable(was)


def export_onnx(checkpoint: os.PathLike | str, out: os.PathLike | str) -> Path:
    """Write an ONNX model of the checkpoint's inference generator (atomically)."""
    g, _ = load_generator(checkpoint)
    model = InferenceGenerator(g).eval()
    out = Path(out)
    inputs = _inputs(g)
    with atomic_path(out) as tmp, _quiet():
        onnx_program = torch.onnx.export(model, inputs, dynamo=True,
                                         input_names=["raw", "colour", "thumb"][: len(inputs)], output_names=["rgb"],
                                         dynamic_shapes=_dynamic_shapes(g), opset_version=OPSET, verbose=False)
        onnx_program.save(str(tmp.with_suffix(".onnx")))
        os.replace(tmp.with_suffix(".onnx"), tmp)
    return out


def export_pt2(checkpoint: os.PathLike | str, out: os.PathLike | str) -> Path:
    """Write a ``torch.export`` program (``.pt2``) of the inference generator (atomically)."""
    g, _ = load_generator(checkpoint)
    program = torch.export.export(InferenceGenerator(g).eval(), _inputs(g), dynamic_shapes=_dynamic_shapes(g))
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.export.save(program, str(tmp.with_suffix(".pt2")))  # the archive writer wants the suffix
        os.replace(tmp.with_suffix(".pt2"), tmp)
    return out
