"""The ``raw2rgb`` command: parses options, builds configs and calls the library. Nothing else."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from raw2rgb import __version__

log = logging.getLogger("raw2rgb")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return prefix + record.getMessage()


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine() if verbose < 2 else logging.Formatter(
        "%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)


def _progress(quiet: bool):
    """A tqdm factory for the stage machinery (bars only on a terminal)."""
    from tqdm import tqdm

    return functools.partial(tqdm, disable=quiet or not sys.stderr.isatty(), leave=False,
                             dynamic_ncols=True)


def _finish(result, summary: list[str] | None = None, details: str = "manifest.json") -> None:
    """Print a run's summary; exit 1 with the failures listed (20 at most) when any failed."""
    for line in summary or [result.summary()]:
        click.echo(line, err=True)
    problems = result.problems()
    for reason in problems[:20]:
        click.echo(f"  failed: {reason}", err=True)
    if len(problems) > 20:
        click.echo(f"  … and {len(problems) - 20} more (see {details})", err=True)
    if problems:
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="raw2rgb")
@click.option("-v", "--verbose", count=True, help="More detail (-vv: debug, with tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Learned RAW-to-RGB mapping: build datasets, train, convert."""
    _setup_logging(verbose)
    ctx.obj = {"quiet": quiet}


# -- unpack ---------------------------------------------------------------------------------------

@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
# Output
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="DIR", help="Output folder (packed PNGs, JSON sidecars, manifest.json).")
@click.option("--bit-depth", type=click.Choice(["16", "8"]), default="16",
              help="16: lossless; 8: the AIM-2019 form.")
# ZRR PNG inputs
@click.option("--zrr-levels", type=click.Choice(["liteisp", "pynet"]), default="liteisp",
              help="Black/white level for ZRR mosaic PNGs: liteisp = 63/1020, pynet = 0/1020.")
# Execution
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, metavar="N",
              help="Worker processes.")
@click.option("--force", is_flag=True, help="Redo every file, even those up to date.")
@click.pass_obj
def unpack(obj, inputs: tuple[str, ...], out_dir: Path, bit_depth: str, zrr_levels: str,
           jobs: int, force: bool) -> None:
    """Unpack RAW files into 4-channel packed PNGs (R, G1, B, G2).

    INPUTS are files, folders (searched recursively) or glob patterns: any Bayer RAW LibRaw
    reads (DNG, CR2, NEF, ARW, RW2, ORF, …), ZRR mosaic PNGs and AIM-2019 packed PNGs. Every
    mosaic is cropped to RGGB phase, black/white-level normalised and written losslessly with a
    JSON sidecar of its metadata. Files already up to date are skipped.
    """
    from raw2rgb.pipeline import rawio
    from raw2rgb.pipeline import unpack as unpack_stage
    from raw2rgb.pipeline.stage import InputError

    try:
        items = unpack_stage.collect_inputs(inputs)
    except InputError as e:
        raise click.ClickException(str(e)) from None
    try:
        result = unpack_stage.unpack(items, out_dir, bit_depth=int(bit_depth),
                                     zrr_levels=rawio.ZRR_LEVELS[zrr_levels], jobs=jobs,
                                     force=force, progress=_progress(obj["quiet"]))
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {len(result.manifest.ok)} packed PNGs to {out_dir}", err=True)
    _finish(result)


# -- saliency -------------------------------------------------------------------------------------

@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES...")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="DIR", help="Output folder (saliency-NNNNN.h5 shards, manifest.json).")
# Method
@click.option("--method", type=click.Choice(["auto", "salgan", "spectral-residual"]), default="auto",
              help="auto: SalGAN when its weights are found, else spectral residual (with a warning).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PT",
              help="Converted SalGAN weights [default: $RAW2RGB_SALGAN_WEIGHTS, then "
                   "~/.cache/raw2rgb/salgan.pt].")
# Execution
@click.option("--batch-size", type=click.IntRange(min=1), default=8, metavar="N", help="Images per batch.")
@click.option("--device", default="auto", metavar="DEV", help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="Image-decoding processes [default: min(4, cores)].")
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, metavar="N", help="Maps per shard.")
@click.option("--force", is_flag=True, help="Recompute every shard.")
@click.pass_obj
def saliency(obj, inputs, out_dir, method, weights, batch_size, device, workers, shard_size, force) -> None:
    """Label images with saliency maps, written as HDF5 shards.

    IMAGES are image files, folders (searched recursively) or glob patterns. Maps have the size
    of their image, uint8 0-255. Shards already up to date are skipped; a killed run resumes at
    the first unfinished shard.
    """
    from raw2rgb.pipeline.stage import InputError, collect_files
    from raw2rgb.salgan import label
    from raw2rgb.salgan.weights import WeightsError

    try:
        images = collect_files(inputs, label.is_image_path)
        resolved = label.resolve_method(method, weights)
    except (InputError, WeightsError) as e:
        raise click.ClickException(str(e)) from None
    log.info("saliency: %d images, method %s", len(images), resolved.name)
    result = label.label(images, out_dir, resolved, shard_size=shard_size, batch_size=batch_size,
                         device=device, workers=workers, force=force, progress=_progress(obj["quiet"]))
    _finish(result)


@main.group()
def salgan() -> None:
    """SalGAN weights."""


@salgan.command("import-weights")
@click.argument("npz", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PT",
              help="Where to write [default: ~/.cache/raw2rgb/salgan.pt, where lookup finds it].")
def import_weights(npz: Path, out: Path | None) -> None:
    """Convert the original SalGAN generator weights (gen_modelWeights0090.npz) for raw2rgb.

    The decoder's kernels are flipped, since Lasagne ran those layers as true convolutions.
    """
    from raw2rgb.salgan import weights as w

    try:
        path = w.save_weights(w.import_npz(npz), out or w.default_path())
    except w.WeightsError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {path}")


# -- prepare --------------------------------------------------------------------------------------

def _ratios(ctx, param, value: str) -> tuple[float, float, float]:
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise click.BadParameter("three non-negative ratios train,val,test, e.g. 0.9,0.1,0")
    return tuple(parts)  # type: ignore[return-value]


@main.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="DATASET", help="Dataset folder: one sub-folder per stage.")
# Source
@click.option("--layout", type=click.Choice(["auto", "zrr", "aim2019", "raw+jpeg", "pairs"]), default="auto",
              help="How SRC is organised (README: prepare).")
@click.option("--pairs-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="CSV", help="pairs layout: a CSV with columns raw,rgb[,scene], paths inside SRC.")
@click.option("--zrr-levels", type=click.Choice(["liteisp", "pynet"]), default="liteisp",
              help="ZRR black/white level: liteisp = 63/1020, pynet = 0/1020.")
# Patches
@click.option("--patch-size", type=click.IntRange(min=8), default=224, metavar="P", help="Patch size, packed pixels.")
@click.option("--stride", type=click.IntRange(min=1), default=None, metavar="S", help="[default: patch size]")
@click.option("--scale", type=click.Choice(["1", "2"]), default="1",
              help="Shards: target at packed resolution (1, the paper) or full sensor resolution (2).")
@click.option("--copies", type=click.IntRange(min=1), default=1, metavar="K",
              help="Shards: K Bayer-safe transformed copies per patch (1: none).")
@click.option("--crop", type=click.IntRange(min=8), default=None, metavar="C",
              help="Shards: patch size [default: the patch size; with --copies > 1 the largest multiple of 8 "
                   "below it].")
@click.option("--min-score", type=float, default=0.5, metavar="NCC", help="Drop patches scoring below.")
@click.option("--max-clipped", type=click.FloatRange(0, 1), default=1.0, metavar="FRAC",
              help="Drop patches with more clipped RAW samples than this fraction.")
@click.option("--min-mean", type=click.FloatRange(0, 1), default=0.0, metavar="LEVEL",
              help="Drop patches whose mean RAW level is below.")
@click.option("--min-inliers", type=click.IntRange(min=4), default=25, metavar="N",
              help="Feature matches that must agree on a homography.")
# Splits
@click.option("--split", "split", default="0.9,0.1,0", callback=_ratios, metavar="TR,VA,TE",
              help="Split ratios by scene.")
@click.option("--seed", type=int, default=0, help="Split seed.")
# Saliency
@click.option("--saliency-method", type=click.Choice(["auto", "salgan", "spectral-residual"]), default="auto")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PT",
              help="SalGAN weights (see raw2rgb saliency --help).")
@click.option("--device", default="auto", metavar="DEV", help="Saliency device.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, metavar="N", help="Saliency batch size.")
# Execution
@click.option("--until", type=click.Choice(["unpack", "patches", "saliency", "shards"]), default="shards",
              help="Last stage to run.")
@click.option("--force", "force", multiple=True, type=click.Choice(["unpack", "patches", "saliency", "shards"]),
              help="Redo a stage even when up to date (repeatable).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker processes for unpack and patches [default: min(4, cores)].")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and plan as JSON; run nothing.")
@click.pass_obj
def prepare(obj, src, out_dir, layout, pairs_csv, zrr_levels, patch_size, stride, scale, copies, crop, min_score,
            max_clipped,
            min_mean, min_inliers, split, seed, saliency_method, weights, device, batch_size, until, force, jobs,
            dry_run) -> None:
    """Build a paired training dataset from SRC into DATASET.

    Stages: unpack (RAW -> packed PNG), patches (pair, align, cut, score), saliency (maps of the
    target patches), shards (HDF5 training shards per split, with Bayer-safe augmentation). Each
    is cached in its own folder; a rerun redoes only what changed.
    """
    import json

    from raw2rgb import prepare as prep
    from raw2rgb.pipeline.pairs import PairError, PatchParams
    from raw2rgb.salgan.weights import WeightsError

    try:
        resolved = prep.resolve_layout(src, layout)
    except PairError as e:
        raise click.ClickException(str(e)) from None
    cfg = prep.PrepareConfig(
        src=str(src.resolve()), out=str(out_dir.resolve()), layout=resolved,
        pairs_csv=str(pairs_csv) if pairs_csv else None, zrr_levels=zrr_levels,
        patch=PatchParams(size=patch_size, stride=stride or patch_size, min_score=min_score,
                          max_clipped=max_clipped, min_mean=min_mean),
        min_inliers=min_inliers, scale=int(scale), copies=copies, crop=crop, split=split, seed=seed,
        saliency_method=saliency_method,
        weights=str(weights) if weights else None, device=device, batch_size=batch_size,
        jobs=jobs or prep.default_jobs())
    if dry_run:
        found, unpaired = prep.plan(cfg)
        click.echo(json.dumps({"config": cfg.to_json(), "pairs": len(found), "unpaired": unpaired,
                               "stages": list(prep.STAGES[: prep.STAGES.index(until) + 1]),
                               "force": sorted(force)}, indent=1))
        return
    try:
        result = prep.run(cfg, until=until, force=frozenset(force), progress=_progress(obj["quiet"]))
    except (WeightsError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    lines = [r.summary() for r in result.stages.values()] + prep.summary_lines(result.summary)
    _finish(result, lines, details=f"{out_dir}/summary.json")


# -- augment --------------------------------------------------------------------------------------

@main.command()
@click.argument("patches", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("saliency_dir", metavar="SALIENCY", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="SHARDS", help="Output folder: SPLIT-NNNNN.h5, index.json, manifest.json.")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="JSON", help="splits.json of prepare [default: PATCHES/../splits.json; else all train].")
@click.option("--scale", type=click.Choice(["1", "2"]), default="1", help="Target at packed (1) or sensor (2) size.")
@click.option("--copies", type=click.IntRange(min=1), default=1, metavar="K", help="Transformed copies per patch.")
@click.option("--crop", type=click.IntRange(min=8), default=None, metavar="C", help="Patch size in the shards.")
@click.option("--seed", type=int, default=0, help="Augmentation seed.")
@click.option("--shard-size", type=click.IntRange(min=1), default=512, metavar="N", help="Patches per shard.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, metavar="N", help="Worker processes.")
@click.option("--force", is_flag=True, help="Rewrite every shard.")
@click.pass_obj
def augment(obj, patches, saliency_dir, out_dir, splits_file, scale, copies, crop, seed, shard_size, jobs,
            force) -> None:
    """Write training shards from a patches folder and its saliency shards.

    The last stage of `prepare`, on its own: per split, HDF5 shards of raw, target and saliency,
    with K Bayer-safe transformed copies of each patch.
    """
    import json

    from raw2rgb.pipeline import shards
    from raw2rgb.pipeline.stage import Manifest

    splits_file = splits_file or (patches.parent / "splits.json")
    splits = json.loads(Path(splits_file).read_text())["scenes"] if Path(splits_file).is_file() else {}
    sal = Manifest.load(saliency_dir)
    try:
        samples, owners = shards.samples_from(patches, saliency_dir, splits)
        result = shards.build(samples, owners, out_dir, scale=int(scale), copies=copies, crop=crop, seed=seed,
                              saliency_method=sal.params.get("method", "") if sal else "", shard_size=shard_size,
                              jobs=jobs, force=force, progress=_progress(obj["quiet"]))
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None
    _finish(result)


# -- inspect --------------------------------------------------------------------------------------

@main.command()
@click.argument("shards_dir", metavar="SHARDS", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=8, metavar="N", help="Batch to load per split.")
def inspect(shards_dir: Path, batch_size: int) -> None:
    """Load a batch of every split of a shards folder and print counts, shapes and value ranges.

    SHARDS is a shards folder or a prepare DATASET (its shards/ is used).
    """
    import json

    from torch.utils.data import DataLoader

    from raw2rgb.model.data import ShardDataset
    from raw2rgb.pipeline.shards import INDEX, ShardError

    root = shards_dir / "shards" if (shards_dir / "shards" / INDEX).is_file() else shards_dir
    try:
        index = json.loads((root / INDEX).read_text())
        click.echo(f"{root}: scale {index['scale']}, crop {index.get('crop')}, copies {index.get('copies')}, "
                   f"saliency {index.get('saliency_method') or '?'}")
        for split, entry in sorted(index["splits"].items()):
            batch = next(iter(DataLoader(ShardDataset(root, split), batch_size=batch_size)))
            ranges = ", ".join(f"{k} {tuple(batch[k].shape)} [{batch[k].min():.2f}, {batch[k].max():.2f}]"
                               for k in ("raw", "rgb", "saliency"))
            click.echo(f"  {split}: {entry['count']} samples in {len(entry['shards'])} shards; {ranges}")
    except (OSError, ValueError, KeyError, ShardError) as e:
        raise click.ClickException(f"{root}: {e}") from None


# -- synth ----------------------------------------------------------------------------------------

@main.command()
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="DIR", help="Where to write the DNGs.")
@click.option("--size", type=(click.IntRange(min=64), click.IntRange(min=64)), default=(512, 768),
              metavar="H W", help="Sensor size in pixels.")
@click.option("--seed", type=int, default=0, help="Noise seed.")
def synth(out_dir: Path, size: tuple[int, int], seed: int) -> None:
    """Write sample DNGs from a virtual camera (one per CFA pattern), each with its JPEG."""
    from raw2rgb.pipeline import synth as virtual_camera

    for p in virtual_camera.sample_dngs(out_dir, size=size, seed=seed):
        click.echo(str(p))


if __name__ == "__main__":
    main()
