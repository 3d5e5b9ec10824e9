"""`raw2rgb evaluate`: PSNR (the paper's), SSIM and colour-corrected PSNR of a model, or of the
classical pipeline, on a split of a shards folder; a per-image CSV and ``summary.json``.

Metrics are computed where the data is (the GPU when present). The classical pipeline renders
each patch with its RAW file's as-shot white balance and colour matrix, read from the unpack
sidecars of a prepare DATASET (sample ids start with the scene's name); for a bare shards
folder, or a file that had none, with grey-world white balance and camera RGB.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raw2rgb.model import metrics

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


Colour = tuple  # (wb_gains, cam_to_rgb), either may be None


def scene_colours(shards: Path) -> dict[str, Colour]:
    """scene → (as-shot white balance, camera → sRGB matrix) from a prepare DATASET's unpack sidecars."""
    import json

    unpack = shards.parent / "unpack"
    out: dict[str, Colour] = {}
    if shards.name == "shards" and unpack.is_dir():
        for path in unpack.glob("*.json"):
            try:
                frame = json.loads(path.read_text()).get("frame", {})
            except (OSError, ValueError):
                continue
            out[path.stem] = (frame.get("wb_gains"), frame.get("cam_to_rgb"))
    return out


def isp_batch(raw: torch.Tensor, scale: int, colours: list[Colour] | None = None) -> torch.Tensor:
    """The classical pipeline on a batch of model-range raw (B, 4, h, w) → (B, 3, s·h, s·w) in [-1, 1],
    each with its (white balance, matrix) when given."""
    from raw2rgb.pipeline.develop import develop

    out = []
    for k, r in enumerate(raw.float().cpu().numpy()):
        wb, matrix = colours[k] if colours else (None, None)
        rgb = develop(((r + 1) * 0.5).clip(0, 1), wb, matrix, scale=scale)
        out.append(torch.from_numpy(rgb.transpose(2, 0, 1).copy()) * 2 - 1)
    return torch.stack(out).to(raw.device)


@torch.no_grad()
def evaluate(dataset: os.PathLike | str, split: str = "val", checkpoint: os.PathLike | str | None = None,
             method: str = "model", device: str = "auto", batch_size: int = 8, workers: int = 0) -> Evaluation:
    """Evaluate a checkpoint (``method="model"``) or the classical pipeline (``"isp"``) on a split.

    Raises:
        ShardError: no such split or an unreadable shards folder.
        ConvertError: a bad checkpoint.
    """
    from torch.utils.data import DataLoader

    from raw2rgb.device import resolve_device
    from raw2rgb.model.data import ShardDataset, to_model
    from raw2rgb.model.infer import ConvertError, load_generator
    from raw2rgb.pipeline.shards import ShardError, read_index, shards_root, split_count

    root = shards_root(dataset)
    index = read_index(root)
    if split_count(index, split) == 0:
        raise ShardError(f"{root}: the {split} split is empty")
    dev = resolve_device(device)
    scale = int(index["scale"])
    g = None
    if method == "model":
        if checkpoint is None:
            raise ConvertError("evaluate needs --checkpoint CKPT or --method isp")
        g, meta = load_generator(checkpoint, dev)
        if g.cfg.scale != scale:
            raise ConvertError(f"{meta['path']}: a model of output scale {g.cfg.scale}, the shards are at {scale}")
    colours = scene_colours(root) if method == "isp" else {}
    ds = ShardDataset(root, split, compact=True)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=dev.type == "cuda")
    rows: list[dict[str, Any]] = []
    for batch in loader:
        b = to_model(batch, dev, non_blocking=True)
        if g is not None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                out = g.rgb(b["raw"]).float()
        else:
            out = isp_batch(b["raw"], scale, [colours.get(i.split("/")[0], (None, None)) for i in batch["id"]])
        out, ref = metrics.to_255(out), metrics.to_255(b["rgb"])
        values = zip(batch["id"], metrics.psnr(out, ref).tolist(), metrics.ssim(out, ref).tolist(),
                     metrics.psnr_cc(out, ref).tolist())
        rows += [{"id": i, "psnr": p, "ssim": s, "psnr_cc": c} for i, p, s, c in values]
    h, w = ds[0]["rgb"].shape[-2:]
    summary = {"psnr": metrics.mean_finite([r["psnr"] for r in rows]),
               "ssim": float(np.mean([r["ssim"] for r in rows])),
               "psnr_cc": metrics.mean_finite([r["psnr_cc"] for r in rows]), "images": len(rows),
               "split": split, "method": method, "checkpoint": str(checkpoint) if checkpoint else None,
               "dataset": str(root),
               "protocol": {**metrics.PROTOCOL, "size": [int(h), int(w)], "dtype": "uint8", "crop": "none",
                            "averaging": "mean over images"}}
    return Evaluation(rows, summary)


def write(evaluation: Evaluation, out_dir: os.PathLike | str) -> tuple[Path, Path]:
    """``per_image.csv`` and ``summary.json`` in ``out_dir`` (atomically)."""
    from raw2rgb.pipeline.stage import write_bytes, write_json

    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "psnr", "ssim", "psnr_cc"], lineterminator="\n")
    w.writeheader()
    for r in evaluation.rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    write_bytes(out_dir / "per_image.csv", buf.getvalue().encode())
    write_json(out_dir / "summary.json", evaluation.summary)
    return out_dir / "per_image.csv", out_dir / "summary.json"
