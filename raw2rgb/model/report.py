"""Pictures of a run: sample grids (raw preview | output | target | saliency) and the HTML report.

Images come in as the model's tensors (DESIGN §4) and leave as 8-bit PNGs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raw2rgb.pipeline.develop import develop_preview


def raw_preview(raw: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """(4, h, w) raw in [-1, 1] → (H, W, 3) uint8: greens averaged, grey-world white balance,
    sRGB gamma, nearest-upsampled to ``size`` — what the sensor saw, before any learning."""
    packed = ((raw.detach().float().cpu().numpy() + 1.0) * 0.5).clip(0, 1)
    img = develop_preview(packed)
    if size is not None and img.shape[:2] != tuple(size):
        fy, fx = size[0] // img.shape[0], size[1] // img.shape[1]
        img = np.repeat(np.repeat(img, fy, axis=0), fx, axis=1)
    return np.rint(img * 255).astype(np.uint8)


def to_uint8(x: torch.Tensor, signed: bool = True) -> np.ndarray:
    """(C, H, W) in [-1, 1] (``signed``) or [0, 1] → (H, W, 3) uint8 (one channel repeated)."""
    x = x.detach().float().cpu()
    x = (x + 1.0) * 0.5 if signed else x
    img = np.rint(x.clamp(0, 1).numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def assemble(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Tiles (H, W, 3) uint8 of one size laid out in rows, white gaps between."""
    def join(parts: list[np.ndarray], axis: int) -> np.ndarray:
        pad = [(0, 0)] * 3
        pad[axis] = (0, gap)
        joined = np.concatenate([np.pad(t, pad, constant_values=255) for t in parts], axis=axis)
        return joined[:-gap] if axis == 0 else joined[:, :-gap]

    return join([join(r, 1) for r in rows], 0)


def grid_rows(raw: torch.Tensor, rgb: torch.Tensor, target: torch.Tensor, saliency: torch.Tensor,
              gap: int = 4) -> np.ndarray:
    """One row per image: raw preview | output | target | saliency, white gaps between."""
    size = tuple(rgb.shape[-2:])
    return assemble([[raw_preview(raw[i], size), to_uint8(rgb[i]), to_uint8(target[i]),
                      to_uint8(F.interpolate(saliency[i : i + 1].float(), size=size)[0], signed=False)]
                     for i in range(raw.shape[0])], gap)


def save_png(img: np.ndarray, path: os.PathLike | str) -> Path:
    from PIL import Image

    from raw2rgb.pipeline.stage import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


def sample_grid(raw: torch.Tensor, rgb: torch.Tensor, target: torch.Tensor, saliency: torch.Tensor,
                path: os.PathLike | str) -> Path:
    return save_png(grid_rows(raw, rgb, target, saliency), path)


# -- the run report -----------------------------------------------------------------------------------

def training_curve(run_dir: os.PathLike | str, path: os.PathLike | str) -> Path:
    """Loss terms per logged step and validation PSNR per epoch, as one PNG plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raw2rgb.model.train import iter_stats

    records = list(iter_stats(run_dir))
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch" and "val_psnr" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100)
    for term in ("rgb", "attention", "adversarial", "perceptual", "d"):
        pts = [(r["step"], r[term]) for r in steps if term in r]
        if pts:
            ax1.plot(*zip(*pts), label={"rgb": "L1 (rgb)", "d": "discriminator"}.get(term, term), lw=1.2)
    ax1.set(xlabel="step", ylabel="loss", title="loss terms", yscale="log")
    ax1.legend(fontsize=8)
    for stage in (1, 2):
        pts = [(r["step"], r["val_psnr"]) for r in epochs if r["stage"] == stage]
        if pts:
            ax2.plot(*zip(*pts), marker="o", ms=3, label=f"stage {stage}")
    ax2.set(xlabel="step", ylabel="dB", title="validation PSNR (per epoch)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def contact_sheet(run_dir: os.PathLike | str, dataset: os.PathLike | str, path: os.PathLike | str,
                  split: str = "val", n: int = 4) -> Path:
    """Held-out samples, one row each: RAW preview | classical | model | target | saliency (SalGAN's
    or the fallback's map of the target)."""
    from torch.utils.data import default_collate

    from raw2rgb.model.data import ShardDataset, to_model
    from raw2rgb.model.evaluate import isp_batch, scene_colours
    from raw2rgb.model.infer import load_generator
    from raw2rgb.pipeline.shards import shards_root

    g, _ = load_generator(run_dir)
    root = shards_root(dataset)
    ds = ShardDataset(root, split, compact=True)
    step = max(1, len(ds) // n)
    batch = to_model(default_collate([ds[i] for i in range(0, step * n, step)[:n]]))
    colours = scene_colours(root)
    with torch.no_grad():
        out = g.rgb(batch["raw"])
    isp = isp_batch(batch["raw"], g.cfg.scale, [colours.get(i.split("/")[0], (None, None)) for i in batch["id"]])
    size = tuple(out.shape[-2:])
    sheet = assemble([[raw_preview(batch["raw"][i], size), to_uint8(isp[i]), to_uint8(out[i]),
                       to_uint8(batch["rgb"][i]),
                       to_uint8(F.interpolate(batch["saliency"][i : i + 1], size=size)[0], signed=False)]
                      for i in range(out.shape[0])])
    scale = max(1, 160 // size[0])  # small patches are shown larger (nearest, so pixels stay pixels)
    sheet = np.repeat(np.repeat(sheet, scale, axis=0), scale, axis=1)
    return save_png(sheet, path)


def write_report(run_dir: os.PathLike | str, out: os.PathLike | str, dataset: os.PathLike | str | None = None,
                 split: str = "val", images: list[tuple[str, os.PathLike | str]] = (),
                 metrics: dict[str, dict] | None = None) -> Path:
    """An HTML page beside its pictures: the contact sheet (``<out stem>.png``), the training curve,
    the metrics table (model vs classical on ``split``, evaluated here unless given) and any
    ``images`` (caption, path), copied next to it so the page stays whole when moved.

    Returns the HTML path."""
    import html
    import json
    import shutil

    from raw2rgb.model.train import iter_stats

    out = Path(out)
    assets = out.with_name(out.stem + "_files")
    assets.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(run_dir) / "config.json").read_text())
    parts = [f"<h1>raw2rgb run report</h1><p>Run <code>{html.escape(str(run_dir))}</code>, preset "
             f"<b>{html.escape(config['config']['preset'])}</b>, dataset <code>{html.escape(config['dataset'])}</code>."
             "</p>"]
    shown: list[str] = []
    if dataset is not None:
        sheet = contact_sheet(run_dir, dataset, out.with_suffix(".png"), split)
        shown.append(sheet.name)
        parts.append(f"<h2>Held-out samples ({html.escape(split)} split)</h2><p>RAW preview | classical pipeline | "
                     f"model | target | saliency</p><img src=\"{sheet.name}\" alt=\"contact sheet\">")
        if metrics is None:
            from raw2rgb.model.evaluate import evaluate

            metrics = {"model": evaluate(dataset, split, run_dir, "model").summary,
                       "classical (isp)": evaluate(dataset, split, None, "isp").summary}
    if metrics:
        rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{m['psnr']:.2f}</td><td>{m['ssim']:.4f}</td>"
                       f"<td>{m['psnr_cc']:.2f}</td><td>{m['images']}</td></tr>" for name, m in metrics.items())
        parts.append("<h2>Metrics</h2><table><tr><th>method</th><th>PSNR (dB)</th><th>SSIM</th>"
                     f"<th>colour-corrected PSNR (dB)</th><th>images</th></tr>{rows}</table>")
    curve = training_curve(run_dir, assets / "training_curve.png")
    shown.append(f"{assets.name}/{curve.name}")
    vals = [r for r in iter_stats(run_dir) if r.get("event") == "epoch" and "val_psnr" in r]
    summary = (f"validation PSNR {vals[0]['val_psnr']:.2f} dB after the first epoch, {vals[-1]['val_psnr']:.2f} dB "
               "after the last") if vals else "no validation recorded"
    parts.append(f"<h2>Training</h2><p>{summary}.</p><img src=\"{assets.name}/{curve.name}\" alt=\"training curve\">")
    for caption, src in images:
        dst = assets / Path(src).name
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        shown.append(f"{assets.name}/{dst.name}")
        parts.append(f"<h3>{html.escape(caption)}</h3><img src=\"{assets.name}/{dst.name}\" "
                     f"alt=\"{html.escape(caption)}\" style=\"max-width:100%\">")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}img{image-rendering:pixelated}")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>raw2rgb report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
    from raw2rgb.pipeline.stage import write_bytes

    write_bytes(out, page.encode())
    return out
