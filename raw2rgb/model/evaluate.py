"""Scoring: :func:`score`, shared by training's validation and `raw2rgb evaluate`, and the evaluate
command's methods — a trained model, the classical pipeline, and the classical pipeline followed
by a fitted colour profile — under one protocol.

Metrics are computed where the data is (the GPU when present). The classical pipeline renders
each patch with its RAW file's as-shot white balance and colour matrix, stored in the shards (a
``shards/`` folder copied alone scores as the dataset does); where the file had no white balance,
with the gains of a white-balance rule (``pipeline/whitebalance.py``): the profile's, the model's,
or the default; camera RGB where it had no matrix.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from raw2rgb.device import resolve_device
from raw2rgb.files import write_bytes, write_json
from raw2rgb.model import metrics
from raw2rgb.model.data import ShardDataset, to_model
from raw2rgb.pipeline.shards import ShardError, read_index, shards_root
from raw2rgb.render import RENDER_METHODS, ScoreConfig, pick
from raw2rgb.render import inputs as render_inputs

log = logging.getLogger(__name__)

COLUMNS = ("id", "psnr", "ssim", "psnr_cc")


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


# -- the one scoring loop -------------------------------------------------------------------------

@torch.no_grad()
def score(predict: Callable[[dict[str, Any]], torch.Tensor], batches: Iterable[dict[str, Any]],
          device: torch.device, psnr_cc: bool = True) -> list[dict[str, Any]]:
    """Per-image metrics of ``predict`` over stored (compact) batches: PSNR as in the paper, SSIM and
    (``psnr_cc``) colour-corrected PSNR, all on 8-bit values (the paper's protocol).

    ``predict(batch)`` gets a batch in the model's ranges on ``device`` and returns RGB (B, 3, H, W)
    in [-1, 1]."""
    rows: list[dict[str, Any]] = []
    for batch in batches:
        b = to_model(batch, device, non_blocking=True)
        out, ref = metrics.to_255(predict(b)), metrics.to_255(b["rgb"])
        values = {"psnr": metrics.psnr(out, ref), "ssim": metrics.ssim(out, ref)}
        if psnr_cc:
            values["psnr_cc"] = metrics.psnr_cc(out, ref)
        lists = {k: v.tolist() for k, v in values.items()}
        rows += [{"id": sid, **{k: lists[k][i] for k in lists}} for i, sid in enumerate(batch["id"])]
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over images (identical images, ∞ dB, left out of PSNR means)."""
    out: dict[str, Any] = {"images": len(rows)}
    for key in ("psnr", "psnr_cc"):
        if rows and key in rows[0]:
            out[key] = metrics.mean_finite([r[key] for r in rows])
    if rows:
        out["ssim"] = float(np.mean([r["ssim"] for r in rows]))
    return out


# -- the command ------------------------------------------------------------------------------------

def evaluate(dataset: os.PathLike | str, split: str = ScoreConfig.split, checkpoint: os.PathLike | str | None = None,
             method: str = "auto", device: str = ScoreConfig.device, batch_size: int = ScoreConfig.batch_size,
             workers: int = 0,
             **inputs: os.PathLike | str | None) -> Evaluation:
    """Evaluate a rendering method on a split: a checkpoint (``model``), the classical pipeline
    (``isp``), the classical pipeline followed by a fitted colour profile (``profile=PATH``), or
    any method of ``render.RENDER_METHODS``, given what it renders with by its input's name
    (``render.inputs()``). ``auto``: the first method whose input is given, else ``isp``.

    Raises:
        ShardError: no such split or an unreadable shards folder.
        InputError: a method without what it needs, or a renderer of another output scale.
        CheckpointError, ProfileError: a bad checkpoint or profile file.
    """
    inputs = {"checkpoint": checkpoint, **inputs}
    method, given = pick(method, inputs, "evaluate")
    root = shards_root(dataset)
    index = read_index(root)
    if index.count(split) == 0:
        raise ShardError(f"{root}: the {split} split is empty")
    dev = resolve_device(device)
    scale = index.scale
    renderer = RENDER_METHODS[method].open(given, dev)
    if hasattr(renderer, "check"):
        renderer.check(scale=scale)
    wb = renderer.white_balance  # None: the default rule (whitebalance.DEFAULT_RULE)

    def predict(b: dict[str, Any]) -> torch.Tensor:
        return renderer.batch(b, scale)

    ds = ShardDataset(root, split, compact=True, white_balance=wb)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=dev.type == "cuda")
    rows = score(predict, loader, dev)
    h, w = ds[0]["rgb"].shape[-2:]
    summary = {**summarise(rows), "split": split, "method": method,
               **{i.name: str(inputs[i.name]) if inputs.get(i.name) else None for i in render_inputs()},
               "dataset": str(root), "white_balance": ds.white_balance.to_json(),
               "protocol": {**metrics.PROTOCOL, "size": [int(h), int(w)], "dtype": "uint8", "crop": "none",
                            "averaging": "mean over images"}}
    return Evaluation(rows, summary)


def write(evaluation: Evaluation, out_dir: os.PathLike | str) -> tuple[Path, Path]:
    """``per_image.csv`` and ``summary.json`` in ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in evaluation.rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_bytes(out_dir / "per_image.csv", buf.getvalue().encode())
    write_json(out_dir / "summary.json", evaluation.summary)
    return out_dir / "per_image.csv", out_dir / "summary.json"
