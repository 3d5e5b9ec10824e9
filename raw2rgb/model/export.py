"""`raw2rgb export`: the inference generator (G1, spectral norm folded) as ONNX or a torch.export
program, with dynamic batch, height and width (multiples of 8).

Input ``raw`` (B, 4, h, w) in [-1, 1], packed R, G1, B, G2 in RGGB phase; output ``rgb``
(B, 3, s·h, s·w) in [-1, 1]. Each image is normalised by its own statistics (InstanceNorm), as in
training; full frames are converted in tiles by ``raw2rgb convert``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from raw2rgb.files import atomic_path
from raw2rgb.model.infer import load_generator

log = logging.getLogger(__name__)
OPSET = 18


class InferenceGenerator(nn.Module):
    """G1 alone: what an exported model runs."""

    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.g = g

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.g.rgb(raw)


def _example() -> torch.Tensor:
    return torch.rand(2, 4, 64, 96) * 2 - 1  # batch 2: an example of 1 would fix the batch size


def _dynamic_shapes():
    b = Dim("batch", min=1, max=1024)
    h, w = Dim("h8", min=2, max=8192), Dim("w8", min=2, max=8192)
    return {"raw": {0: b, 2: 8 * h, 3: 8 * w}}


def export_onnx(checkpoint: os.PathLike | str, out: os.PathLike | str) -> Path:
    """Write an ONNX model of the checkpoint's inference generator (atomically)."""
    g, _ = load_generator(checkpoint)
    model = InferenceGenerator(g).eval()
    out = Path(out)
    with atomic_path(out) as tmp:
        onnx_program = torch.onnx.export(model, (_example(),), dynamo=True, input_names=["raw"],
                                         output_names=["rgb"], dynamic_shapes=_dynamic_shapes(), opset_version=OPSET,
                                         verbose=False)
        onnx_program.save(str(tmp.with_suffix(".onnx")))
        os.replace(tmp.with_suffix(".onnx"), tmp)
    return out


def export_pt2(checkpoint: os.PathLike | str, out: os.PathLike | str) -> Path:
    """Write a ``torch.export`` program (``.pt2``) of the inference generator (atomically)."""
    g, _ = load_generator(checkpoint)
    program = torch.export.export(InferenceGenerator(g).eval(), (_example(),), dynamic_shapes=_dynamic_shapes())
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.export.save(program, str(tmp.with_suffix(".pt2")))  # the archive writer wants the suffix
        os.replace(tmp.with_suffix(".pt2"), tmp)
    return out
