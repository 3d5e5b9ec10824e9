"""The run report: a contact sheet of held-out samples, the training curves, the metrics of the model
beside the classical pipeline and the fitted profile, and any converted photos, as
one HTML page beside its pictures. Any split size is shown as it is: up to :data:`SHEET_ROWS`
samples, the page saying how many, and a sentence instead of the sheet and metrics for an empty one."""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from raw2rgb.files import write_bytes
from raw2rgb.model import run, terms
from raw2rgb.model.data import ShardDataset, to_model
from raw2rgb.model.evaluate import evaluate
from raw2rgb.model.pictures import assemble, enlarge, raw_preview, saliency_tile, save_png, to_uint8
from raw2rgb.model.renderers import ClassicalRenderer
from raw2rgb.pipeline import profile as colour_profile
from raw2rgb.pipeline.shards import ShardError, read_index, shards_root
from raw2rgb.render import RENDER_METHODS, ScoreConfig

SHEET_ROWS = 4  # samples a contact sheet shows at most


def training_curve(run_dir: os.PathLike | str, path: os.PathLike | str) -> Path:
    """Every logged loss term (``terms.TERMS``) per step and validation PSNR per epoch, one PNG."""
    # matplotlib costs 0.3 s of import on every command's start and only this plot needs it
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = list(run.iter_stats(run_dir))
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch" and "val_psnr" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=100)
    for term, label in terms.TERMS.items():
        pts = [(r["step"], r[term]) for r in steps if term in r and r[term] > 0]
        if pts and term != "total":
            ax1.plot(*zip(*pts), label=label, lw=1.2)
    ax1.set(xlabel="step", ylabel="loss", title="loss terms", yscale="log")
    # legend() over no lines is a matplotlib warning on the user's terminal: a run without steps or validation
    if ax1.lines:
        ax1.legend(fontsize=8)
    for stage in (1, 2):
        pts = [(r["step"], r["val_psnr"]) for r in epochs if r["stage"] == stage]
        if pts:
            ax2.plot(*zip(*pts), marker="o", ms=3, label=f"stage {stage}")
    ax2.set(xlabel="step", ylabel="dB", title="validation PSNR (per epoch)")
    if ax2.lines:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def sheet_samples(count: int, n: int = SHEET_ROWS) -> range:
    """The samples a contact sheet shows of a split of ``count``: ``n`` spread over the split, or all
    of a smaller one (a val split of 3 showed an IndexError; of 0, nothing)."""
    return range(0, count, max(1, count // n))[:n]


def contact_sheet(run_dir: os.PathLike | str, dataset: os.PathLike | str, path: os.PathLike | str,
                  split: str = "val", n: int = SHEET_ROWS, profile: colour_profile.Profile | None = None) -> Path:
    """Samples of ``split`` (:func:`sheet_samples`, at least one), one row each: RAW preview | classical |
    [profile] | model | target | saliency (SalGAN's or the fallback's map of the target)."""
    model = RENDER_METHODS["model"].open(str(run_dir), None)
    root = shards_root(dataset)
    ds = ShardDataset(root, split, compact=True, white_balance=model.white_balance)
    picked = sheet_samples(len(ds), n)
    if not picked:
        raise ShardError(f"{root}: the {split} split holds no samples to show")
    batch = to_model(default_collate([ds[i] for i in picked]))
    out = model.batch(batch)
    columns = [RENDER_METHODS["isp"].open(None, None).batch(batch, model.scale)]
    if profile is not None:  # rendered with the profile's own white-balance rule, as evaluate scores it
        by_profile = ShardDataset(root, split, compact=True, white_balance=profile.white_balance)
        colour = torch.stack([by_profile[i]["colour"] for i in picked])
        columns.append(ClassicalRenderer(profile=profile).batch({**batch, "colour": colour}, model.scale))
    columns += [out, batch["rgb"]]
    size = tuple(out.shape[-2:])
    sheet = assemble([[raw_preview(batch["raw"][i], size)] + [to_uint8(c[i]) for c in columns]
                      + [saliency_tile(batch["saliency"][i], size)] for i in range(out.shape[0])])
    return save_png(enlarge(sheet, 160, size[0]), path)


def _table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{m['psnr']:.2f}</td><td>{m['ssim']:.4f}</td>"
                   f"<td>{m['psnr_cc']:.2f}</td><td>{m['images']}</td></tr>" for name, m in metrics.items())
    return ("<table><tr><th>method</th><th>PSNR (dB)</th><th>SSIM</th><th>colour-corrected PSNR (dB)</th>"
            f"<th>images</th></tr>{rows}</table>")


def write_report(run_dir: os.PathLike | str, out: os.PathLike | str, dataset: os.PathLike | str | None = None,
                 split: str = ScoreConfig.split, images: list[tuple[str, os.PathLike | str]] = (),
                 metrics: dict[str, dict] | None = None, profile: os.PathLike | str | None = None) -> Path:
    """An HTML page beside its pictures: the contact sheet (``<out stem>.png``), the training curve,
    the metrics table (on ``split``, evaluated here unless given: every rendering method the report
    has the input for — the classical pipeline, the fitted ``profile`` when given, the run's model)
    and any ``images`` (caption, path), copied next to it so the page stays whole when moved.
    ``profile`` None: the run's own profile.json, when it has one.

    Returns the HTML path."""
    out = Path(out)
    if profile is None and (Path(run_dir) / run.PROFILE).is_file():
        profile = Path(run_dir) / run.PROFILE
    assets = out.with_name(out.stem + "_files")
    identity = run.read_identity(run_dir)
    prof = colour_profile.load(profile) if profile else None
    count = read_index(shards_root(dataset)).count(split) if dataset is not None else 0  # the shards checked
    assets.mkdir(parents=True, exist_ok=True)  # after every check: a refused report leaves no folder
    parts = [f"<h1>raw2rgb run report</h1><p>Run <code>{html.escape(str(run_dir))}</code>, preset "
             f"<b>{html.escape(identity['config']['preset'])}</b>, dataset "
             f"<code>{html.escape(identity['dataset'])}</code>.</p>"]
    # the train split is what the model learnt from: never called held out
    title = ("Training samples (train split, not held out)" if split == "train"
             else f"Held-out samples ({html.escape(split)} split)")
    if dataset is not None and not count:
        parts.append(f"<h2>{title}</h2><p>The {html.escape(split)} split holds no samples: no contact sheet and no "
                     "metrics on it (raw2rgb report --split names another).</p>")
    elif dataset is not None:
        sheet = contact_sheet(run_dir, dataset, out.with_suffix(".png"), split, profile=prof)
        columns = "RAW preview | classical pipeline | " + ("fitted profile | " if prof else "") + \
            "model | target | saliency"
        shown = len(sheet_samples(count))
        parts.append(f"<h2>{title}</h2><p>{shown} of the split's {count} samples, one a row: {columns}</p>"
                     f"<img src=\"{sheet.name}\" alt=\"contact sheet\">")
        if metrics is None:  # every method the report has the input for (the run's checkpoint, the profile), the
            # networks last: the classical renderings are what a model is read against
            have = {"checkpoint": run_dir, "profile": profile}
            metrics = {m.title or name: evaluate(dataset, split, method=name,
                                                 **({m.needs.name: have[m.needs.name]} if m.needs else {})).summary
                       for name, m in sorted(RENDER_METHODS.items(), key=lambda e: e[1].device)
                       if m.needs is None or have.get(m.needs.name)}
    if metrics:
        parts.append(f"<h2>Metrics</h2>{_table(metrics)}")
    curve = training_curve(run_dir, assets / "training_curve.png")
    vals = [r for r in run.iter_stats(run_dir) if r.get("event") == "epoch" and "val_psnr" in r]
    summary = (f"validation PSNR {vals[0]['val_psnr']:.2f} dB after the first epoch, {vals[-1]['val_psnr']:.2f} dB "
               "after the last") if vals else "no validation recorded"
    parts.append(f"<h2>Training</h2><p>{summary}.</p><img src=\"{assets.name}/{curve.name}\" alt=\"training curve\">")
    for i, (caption, src) in enumerate(images, 1):
        dst = assets / f"{i:02d}-{Path(src).name}"  # numbered: conversions by several methods share a name
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        parts.append(f"<h3>{html.escape(caption)}</h3><img src=\"{assets.name}/{dst.name}\" "
                     f"alt=\"{html.escape(caption)}\" style=\"max-width:100%\">")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}img{image-rendering:pixelated}")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>raw2rgb report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
    write_bytes(out, page.encode())
    return out

