"""The ``raw2rgb`` command: parses options, builds configs and calls the library. Nothing else.

It loads lazily: a command's module is imported when the command runs, and choices, defaults and
help lines that come from the library (the registries of presets, layouts, saliency and rendering
methods; the profile models, white-balance rules, …) are read when a help page or a parse needs
them. ``raw2rgb --help`` imports no torch; ``convert`` never imports the training loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import threading
from inspect import cleandoc
from pathlib import Path

import click

from raw2rgb import __version__, files
from raw2rgb.errors import Interrupted, UserError, environment_message, one_line, printable

log = logging.getLogger("raw2rgb")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return prefix + printable(record.getMessage())


def _setup_logging(verbose: int) -> None:
    """0: progress and results; -v: raw2rgb's debug detail (timings, per-item notes); -vv: every
    library's debug output with timestamps, and tracebacks for errors."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine() if verbose < 2 else logging.Formatter(
        "%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # other libraries: warnings and up below -vv (matplotlib's "generated new fontManager" is no result of ours)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("raw2rgb").setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)
    # exifread's warnings ("File format not recognized.") name no file; metadata.read_exif says which at -v
    logging.getLogger("exifread").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


def user_errors(fn):
    """Turn a :class:`UserError` (and an error the machine causes: disk full, out of memory, no
    permission) into a one-line ClickException; anything else is a bug and keeps its traceback (-vv:
    every error keeps it). A stop signal obeyed (Ctrl-C; SIGTERM in an item stage) exits with
    128 + the signal, as a shell reports it, not click's "Aborted!" and 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt as e:
            _stopped(e)
        except Exception as e:
            if logging.getLogger().level <= logging.DEBUG:
                raise
            if isinstance(e, UserError):
                raise click.ClickException(one_line(str(e))) from None
            why = environment_message(e)
            if why is None:
                raise
            raise click.ClickException(why) from None

    return wrapper


# -- what the library declares, read when needed -----------------------------------------------------

class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices are read from the library when first needed (``get``
    returns them; ``first`` go before them, e.g. ``auto``), so an entry registered before the
    parse or the help page is a choice."""

    def __init__(self, get, first: tuple[str, ...] = ()) -> None:
        self._get, self._first = get, first
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*self._first, *self._get())

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ sets it; the library's list wins
        pass


class LazyOption(click.Option):
    """An option whose help line (``lazy_help``, a function) is read from the library when the help
    page is shown."""

    def __init__(self, *args, lazy_help=None, **kwargs) -> None:
        self._lazy_help = lazy_help
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx):
        if self._lazy_help is not None:
            self.help = self._lazy_help()
        return super().get_help_record(ctx)


def _zrr_levels():
    from raw2rgb.pipeline import rawio
    return rawio.ZRR_LEVELS


def _presets():
    from raw2rgb.model.presets import PRESETS
    return PRESETS


def _layouts():
    from raw2rgb.pipeline.pairs import LAYOUTS
    return LAYOUTS


def _saliency_methods():
    from raw2rgb.salgan.label import SALIENCY_METHODS
    return SALIENCY_METHODS


def _render_methods():
    from raw2rgb.render import RENDER_METHODS
    return RENDER_METHODS


def _registry_help(get, lead: str, default: str | None = None):
    """A help line: ``lead``, then each entry's ``name: help`` from the registry ``get()`` returns."""
    def text() -> str:
        reg = get()
        tail = f" [default: {default or reg.default}]" if (default or reg.default) else ""
        return f"{lead} {reg.help()}.{tail}"
    return text


def zrr_levels_option(help: str):
    return click.option("--zrr-levels", type=LazyChoice(_zrr_levels), default="liteisp", help=help)


# -- options every command shares, one default each -------------------------------------------------

def output_path(folder: bool):
    """A click callback for an output path: ``files.check_output``, the one check behind every
    command's ``-o`` (a path under a file, a file where a folder goes or the reverse), as one line."""

    def check(ctx, param, value: Path | None) -> Path | None:
        if value is not None:
            try:
                files.check_output(value, folder)
            except UserError as e:
                raise click.ClickException(f"{param.opts[0]} {e}" if str(e).startswith(str(value)) else str(e)) \
                    from None
        return value

    return check


def out_option(help: str, metavar: str = "DIR"):
    return click.option("-o", "--out", "out_dir", required=True, metavar=metavar, help=help,
                        type=click.Path(path_type=Path), callback=output_path(folder=True))


device_option = click.option("--device", default="auto", metavar="DEV",
                             help="auto (CUDA when present), cpu, cuda or cuda:N.")
jobs_option = click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
                           help="Worker processes [default: min(4, cores)].")
seed_option = click.option("--seed", type=click.IntRange(min=0), default=0,
                           help="Random seed (splits, augmentation, init).")


def batch_option(help: str = "Images per batch."):
    return click.option("--batch-size", type=click.IntRange(min=1), default=8, metavar="N", help=help)


def method_options(fn):
    """``--checkpoint``, ``--profile`` and ``--method``: how convert and evaluate make their pictures."""
    for option in reversed([
        click.option("--checkpoint", type=click.Path(exists=True, path_type=Path), default=None, metavar="CKPT|RUN",
                     help="A trained checkpoint, or a RUN folder (its final checkpoint)."),
        click.option("--profile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     metavar="JSON", help="A colour profile (raw2rgb profile fit; a RUN's profile.json)."),
        click.option("--method", type=LazyChoice(_render_methods), default=None, cls=LazyOption,
                     lazy_help=_registry_help(_render_methods, "How to render:", "model with a checkpoint, profile "
                                              "with a profile, else isp")),
    ]):
        fn = option(fn)
    return fn


def force_option(help: str):
    return click.option("--force", is_flag=True, help=help)


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace files in the output folder that raw2rgb did not write (a camera's JPEG of the same name); "
         "without it such a file is kept and its input fails.")


def backend_options(fn):
    """``--backend local|dask`` and ``--scheduler ADDRESS``: run the command's stages on a Dask cluster."""

    @functools.wraps(fn)
    def wrapper(*args, backend: str, scheduler: str | None, **kwargs):
        if backend == "local":
            if scheduler:
                raise click.UsageError("--scheduler goes with --backend dask")
            return fn(*args, **kwargs)
        if not scheduler:
            raise click.UsageError("--backend dask needs --scheduler ADDRESS (e.g. tcp://head-node:8786)")
        from raw2rgb.pipeline import stage
        with stage.dask_cluster(scheduler):
            return fn(*args, **kwargs)

    click.option("--scheduler", default=None, metavar="ADDRESS",
                 help="The Dask scheduler, e.g. tcp://head-node:8786 (workers must share the file system).")(wrapper)
    click.option("--backend", type=click.Choice(["local", "dask"]), default="local",
                 help="local: processes on this machine (--jobs); dask: the cluster at --scheduler "
                      "(pip install 'raw2rgb[dist]').")(wrapper)
    return wrapper


def _jobs(jobs: int | None) -> int:
    return jobs or min(4, os.cpu_count() or 1)


def _progress(quiet: bool):
    """A tqdm factory for the stage machinery (bars only on a terminal)."""
    from tqdm import tqdm
    return functools.partial(tqdm, disable=quiet or not sys.stderr.isatty(), leave=False,
                             dynamic_ncols=True)


def _finish(result, summary: list[str] | None = None, details: str = "manifest.json") -> None:
    """Print a run's summary; exit 1 with the failures listed (20 at most) when any failed."""
    for line in summary or [result.summary()]:
        click.echo(printable(line), err=True)
    problems = result.problems()
    for reason in problems[:20]:
        click.echo(f"  failed: {printable(reason)}", err=True)
    if len(problems) > 20:
        click.echo(f"  … and {len(problems) - 20} more (see {details})", err=True)
    if problems:
        sys.exit(1)


class _ExamplesLast:
    """A command whose docstring's closing "Examples:" block is shown after the options."""

    def __init__(self, *args, help: str | None = None, **kwargs) -> None:
        help = cleandoc(help) if help else help
        if help and "\b\nExample" in help:
            help, examples = help.split("\b\nExample", 1)
            kwargs["epilog"] = "\b\nExample" + examples
        super().__init__(*args, help=help, **kwargs)


class _Command(_ExamplesLast, click.Command):
    """``more_params``: a function giving more options, called when the command is first parsed or
    shown (options read from a module the command alone needs)."""

    def __init__(self, *args, more_params=None, **kwargs) -> None:
        self._more_params = more_params
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._more_params is not None:
            more, self._more_params = self._more_params, None
            self._params = self._params + more()
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value


class _Group(_ExamplesLast, click.Group):
    command_class = _Command

    def invoke(self, ctx: click.Context):
        """Run the command, parsing its options included (which imports the library: seconds), with a
        stop signal obeyed as :func:`user_errors` obeys it: 128 + the signal and one line, not click's
        "Aborted!" and 1; SIGTERM, which would kill the process silently, is a stop too."""
        with _stop_is_interrupted():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt as e:
                _stopped(e)


def _stopped(e: KeyboardInterrupt):
    """Exit as a stop signal obeyed: its one line, and 128 + the signal (130 Ctrl-C, 143 SIGTERM)."""
    click.echo(str(e) if isinstance(e, Interrupted) else "interrupted (SIGINT)", err=True)
    sys.exit(128 + getattr(e, "signal", 2))


@contextlib.contextmanager
def _stop_is_interrupted():
    """SIGTERM raises :class:`Interrupted` in the block, as Ctrl-C raises KeyboardInterrupt (the
    stages and train set their own handlers inside it). Only in the main thread, where a handler can
    be set, and only over the default action."""
    import signal

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handle(signum, frame):
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="raw2rgb")
@click.option("-v", "--verbose", count=True,
              help="-v: raw2rgb's debug detail (timings, per-item notes); -vv: every library's, with tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Learned RAW-to-RGB mapping (the saliency-map-aided GAN of Zhao et al. 2019): build paired
    datasets from RAW files, train the two-stage GAN, evaluate, convert RAW files to photos
    (with a model, or the classical pipeline), export.

    \b
    Examples:
      raw2rgb convert IMG_0042.dng -o out/
      raw2rgb prepare my-pairs/ -o ds --layout pairs
      raw2rgb train ds -o runs/mine
      raw2rgb convert shoot/ -o out/ --checkpoint runs/mine
      raw2rgb COMMAND --help
    """
    _setup_logging(verbose)
    ctx.obj = {"quiet": quiet}


# -- unpack ---------------------------------------------------------------------------------------

@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
# Output
@out_option("Output folder (packed PNGs, JSON sidecars, manifest.json).")
@click.option("--bit-depth", type=click.Choice(["16", "8"]), default="16",
              help="16: lossless; 8: the AIM-2019 form.")
# ZRR PNG inputs
@zrr_levels_option("Black/white level for ZRR mosaic PNGs: liteisp = 63/1020, pynet = 0/1020.")
# Execution
@jobs_option
@force_option("Redo every file, even those up to date.")
@overwrite_option
@click.pass_obj
@user_errors
@backend_options
def unpack(obj, inputs: tuple[str, ...], out_dir: Path, bit_depth: str, zrr_levels: str,
           jobs: int | None, force: bool, overwrite: bool) -> None:
    """Unpack RAW files into 4-channel packed PNGs (R, G1, B, G2).

    INPUTS are files, folders (searched recursively) or glob patterns: any Bayer RAW LibRaw
    reads (DNG, CR2, NEF, ARW, RW2, ORF, …), ZRR mosaic PNGs and AIM-2019 packed PNGs. Every
    mosaic is cropped to RGGB phase, black/white-level normalised and written losslessly with a
    JSON sidecar of its metadata. Files already up to date are skipped.

    \b
    Example:
      raw2rgb unpack photos/ 'more/*.dng' -o packed/ -j 4
    """
    from raw2rgb.pipeline import rawio
    from raw2rgb.pipeline import unpack as unpack_stage
    items = unpack_stage.collect_inputs(inputs, out_dir)
    result = unpack_stage.unpack(items, out_dir, bit_depth=int(bit_depth), zrr_levels=rawio.ZRR_LEVELS[zrr_levels],
                                 jobs=_jobs(jobs), force=force, progress=_progress(obj["quiet"]), overwrite=overwrite)
    click.echo(f"wrote {len(result.manifest.ok)} packed PNGs to {out_dir}", err=True)
    _finish(result)


# -- saliency -------------------------------------------------------------------------------------

@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES...")
@out_option("Output folder (saliency-NNNNN.h5 shards, manifest.json).")
# Method
@click.option("--method", type=LazyChoice(_saliency_methods, ("auto",)), default="auto", cls=LazyOption,
              lazy_help=_registry_help(_saliency_methods, "auto: SalGAN when its weights are found, else spectral "
                                       "residual (with a warning);"))
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PT",
              help="Converted SalGAN weights [default: $RAW2RGB_SALGAN_WEIGHTS, then "
                   "~/.cache/raw2rgb/salgan.pt].")
# Execution
@batch_option()
@device_option
@click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="Image-decoding processes [default: min(4, cores)].")
@click.option("--shard-size", type=click.IntRange(min=1), default=1024, metavar="N", help="Maps per shard.")
@force_option("Recompute every shard.")
@click.pass_obj
@user_errors
@backend_options
def saliency(obj, inputs, out_dir, method, weights, batch_size, device, workers, shard_size, force) -> None:
    """Label images with saliency maps, written as HDF5 shards.

    IMAGES are image files, folders (searched recursively) or glob patterns. Maps have the size
    of their image, uint8 0-255. Shards already up to date are skipped; a killed run resumes at
    the first unfinished shard.

    \b
    Example:
      raw2rgb saliency canon/ -o saliency/ --weights salgan.pt
    """
    from raw2rgb.salgan import label
    images = files.collect_files(inputs, label.is_image_path)
    resolved = label.resolve_method(method, weights)
    log.info("saliency: %d images, method %s", len(images), resolved.name)
    result = label.label(images, out_dir, resolved, shard_size=shard_size, batch_size=batch_size,
                         device=device, workers=workers, force=force, progress=_progress(obj["quiet"]))
    _finish(result)


@main.group(cls=_Group)
def salgan() -> None:
    """SalGAN weights."""


@salgan.command("import-weights")
@click.argument("npz", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, metavar="PT", callback=output_path(False),
              help="Where to write [default: ~/.cache/raw2rgb/salgan.pt, where lookup finds it].")
@user_errors
def import_weights(npz: Path, out: Path | None) -> None:
    """Convert the original SalGAN generator weights (gen_modelWeights0090.npz) for raw2rgb.

    The decoder's kernels are flipped, since Lasagne ran those layers as true convolutions.

    \b
    Example:
      raw2rgb salgan import-weights gen_modelWeights0090.npz
    """
    from raw2rgb.salgan import weights as salgan_weights
    path = salgan_weights.save_weights(salgan_weights.import_npz(npz), out or salgan_weights.default_path())
    click.echo(f"wrote {path}")


# -- prepare --------------------------------------------------------------------------------------

def _ratios(ctx, param, value: str) -> tuple[float, float, float]:
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts) or sum(parts) <= 0:
        raise click.BadParameter("three non-negative ratios train,val,test, e.g. 0.9,0.1,0")
    return tuple(parts)  # type: ignore[return-value]


def _prepare_stages():
    from raw2rgb.dataset import STAGES
    return STAGES


@main.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Dataset folder: one sub-folder per stage.", metavar="DATASET")
# Source
@click.option("--layout", type=LazyChoice(_layouts, ("auto",)), default="auto", cls=LazyOption,
              lazy_help=_registry_help(_layouts, "How SRC is organised (docs/data.md: layouts): auto (detected);"))
@click.option("--pairs-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="CSV", help="pairs layout: a CSV with columns raw,rgb[,scene], paths inside SRC.")
@zrr_levels_option("ZRR black/white level: liteisp = 63/1020, pynet = 0/1020.")
# Patches
@click.option("--patch-size", type=click.IntRange(min=8), default=None, metavar="P", cls=LazyOption, lazy_help=lambda: (
    "Patch size, packed pixels [default: the layout's: " + ", ".join(f"{n} {e.patch}" for n, e in _layouts().items())
    + "]."))
@click.option("--stride", type=click.IntRange(min=1), default=None, metavar="S", cls=LazyOption, lazy_help=lambda: (
    "[default: the patch size; " + ", ".join(f"{n} half of it" for n, e in _layouts().items() if e.stride == 0.5)
    + "]"))
@click.option("--scale", type=click.Choice(["1", "2"]), default=None, cls=LazyOption, lazy_help=lambda: (
    "Shards: target at packed resolution (1, the paper) or full sensor resolution (2) [default: the layout's: "
    + ", ".join(f"{n} {e.scale}" for n, e in _layouts().items()) + "; convert writes full-resolution photos]."))
@click.option("--copies", type=click.IntRange(1, 64), default=1, metavar="K",  # prepare.MAX_COPIES
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
@click.option("--max-shift", type=click.FloatRange(min=0), default=2.0, metavar="PX",
              help="Drop patches whose local alignment residual (target pixels) is larger: parallax, motion.")
# Splits
@click.option("--split", "split", default="0.9,0.1,0", callback=_ratios, metavar="TR,VA,TE",
              help="Split ratios by scene.")
@seed_option
# Saliency
@click.option("--saliency-method", type=LazyChoice(_saliency_methods, ("auto",)), default="auto",
              help="See raw2rgb saliency --help.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PT",
              help="SalGAN weights (see raw2rgb saliency --help).")
@device_option
@batch_option("Saliency batch size.")
# Execution
@click.option("--until", type=LazyChoice(_prepare_stages), default="shards", help="Last stage to run.")
@click.option("--force", "force", multiple=True, type=LazyChoice(_prepare_stages),
              help="Redo a stage even when up to date (repeatable).")
@click.option("--replace-source", is_flag=True,
              help="DATASET was built from another SRC: rebuild it from this one (the other's data is replaced).")
@jobs_option
@click.option("--dry-run", is_flag=True, help="Check the options as the run does and print the resolved "
              "configuration and plan as JSON; run nothing.")
@click.pass_obj
@user_errors
@backend_options
def prepare(obj, src, out_dir, layout, pairs_csv, zrr_levels, patch_size, stride, scale, copies, crop, min_score,
            max_clipped, min_mean, min_inliers, max_shift, split, seed, saliency_method, weights, device, batch_size,
            until, force, replace_source, jobs, dry_run) -> None:
    """Build a paired training dataset from SRC into DATASET.

    Stages: unpack (RAW -> packed PNG), patches (pair, align, cut, score), saliency (maps of the
    target patches), shards (HDF5 training shards per split, with Bayer-safe augmentation). Each
    is cached in its own folder; a rerun redoes only what changed. DATASET keeps to the SRC it was
    built from: another SRC is refused (--replace-source rebuilds it from the new one).

    \b
    Examples:
      raw2rgb prepare ZRR/ -o zrr-ds --layout zrr
      raw2rgb prepare my-pairs/ -o ds --layout pairs --patch-size 224 --split 0.8,0.1,0.1
    """
    from raw2rgb import prepare as prep
    from raw2rgb.pipeline.pairs import LAYOUTS, PatchParams
    layout = prep.resolve_layout(src, layout)
    scale = scale or LAYOUTS[layout].scale
    patch_size = patch_size or LAYOUTS[layout].patch
    stride = stride or max(1, round(patch_size * LAYOUTS[layout].stride))
    cfg = prep.PrepareConfig(
        src=str(src.resolve()), out=str(out_dir.resolve()), layout=layout,
        pairs_csv=str(pairs_csv) if pairs_csv else None, zrr_levels=zrr_levels,
        patch=PatchParams(size=patch_size, stride=stride, min_score=min_score,
                          max_clipped=max_clipped, min_mean=min_mean, max_shift=max_shift),
        min_inliers=min_inliers, scale=int(scale), copies=copies, crop=crop, split=split, seed=seed,
        saliency_method=saliency_method,
        weights=str(weights) if weights else None, device=device, batch_size=batch_size, jobs=_jobs(jobs))
    if dry_run:
        prep.check(cfg)  # the run's own checks, in its order: the plan printed is one it accepts
        found, unpaired = prep.plan(cfg)
        prep.check_source(Path(cfg.out), prep.source_record(cfg, found), replace_source)
        click.echo(json.dumps({"config": cfg.to_json(), "pairs": len(found), "unpaired": unpaired,
                               "stages": list(prep.STAGES[: prep.STAGES.index(until) + 1]),
                               "force": sorted(force)}, indent=1))
        return
    result = prep.run(cfg, until=until, force=frozenset(force), progress=_progress(obj["quiet"]),
                      replace_source=replace_source)
    lines = [r.summary() for r in result.stages.values()] + prep.summary_lines(result.summary)
    _finish(result, lines, details=f"{out_dir}/summary.json")


# -- shards ---------------------------------------------------------------------------------------

@main.command("shards")
@click.argument("patches", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("saliency_dir", metavar="SALIENCY", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Output folder: SPLIT-NNNNN.h5, index.json, manifest.json.", metavar="SHARDS")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="JSON", help="splits.json of prepare [default: PATCHES/../splits.json; else all train].")
@click.option("--scale", type=click.Choice(["1", "2"]), default="1", help="Target at packed (1) or sensor (2) size.")
@click.option("--copies", type=click.IntRange(1, 64), default=1, metavar="K", help="Transformed copies per patch.")
@click.option("--crop", type=click.IntRange(min=8), default=None, metavar="C", help="Patch size in the shards.")
@seed_option
@click.option("--shard-size", type=click.IntRange(min=1), default=512, metavar="N", help="Patches per shard.")
@jobs_option
@force_option("Rewrite every shard.")
@click.pass_obj
@user_errors
def shards_command(obj, patches, saliency_dir, out_dir, splits_file, scale, copies, crop, seed, shard_size, jobs,
                   force) -> None:
    """Write training shards from a patches folder and its saliency shards.

    The last stage of `prepare`, on its own: per split, HDF5 shards of raw, target and saliency,
    with K Bayer-safe transformed copies of each patch.

    \b
    Example:
      raw2rgb shards ds/patches ds/saliency -o ds/shards-x4 --copies 4
    """
    from raw2rgb.pipeline import shards as shard_stage
    result = shard_stage.build_from_stages(patches, saliency_dir, out_dir, splits_file=splits_file, scale=int(scale),
                                      copies=copies, crop=crop, seed=seed, shard_size=shard_size, jobs=_jobs(jobs),
                                      force=force, progress=_progress(obj["quiet"]))
    _finish(result)


# -- inspect --------------------------------------------------------------------------------------

@main.command()
@click.argument("shards_dir", metavar="SHARDS", type=click.Path(exists=True, file_okay=False, path_type=Path))
@batch_option("Batch to load per split.")
@user_errors
def inspect(shards_dir: Path, batch_size: int) -> None:
    """Load a batch of every split of a shards folder and print counts, shapes and value ranges.

    SHARDS is a shards folder or a prepare DATASET (its shards/ is used).

    \b
    Example:
      raw2rgb inspect ds/
    """
    from raw2rgb.model.data import describe
    for line in describe(shards_dir, batch_size):
        click.echo(line)


# -- train ----------------------------------------------------------------------------------------

def _precisions():
    from raw2rgb.model.recipe import PRECISIONS
    return PRECISIONS


def _pair(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 0:
        raise click.BadParameter("epochs of stage 1 and stage 2, e.g. 10,30 (or one number for both)")
    return parts[0], parts[1]


def loss_weight_options():
    """``--NAME-weight W`` for every term of ``losses.LossWeights`` (one place lists the terms), made
    when the train command is first parsed or shown."""

    from raw2rgb.model import losses
    return [click.Option([f"--{f.name}-weight", f"w_{f.name}"], type=click.FloatRange(min=0), default=None,
                         metavar="W", help=f"Weight of the {f.name} term [preset's; paper {f.default:g}]."
                         + (" 0: no VGG16 needed." if f.name == "perceptual" else ""))
            for f in dataclasses.fields(losses.LossWeights)]


@main.command(more_params=loss_weight_options)
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Run folder: config.json, stats.jsonl, checkpoints/, samples/, tensorboard/.", metavar="RUN")
# Recipe (the run's identity)
@click.option("--preset", type=LazyChoice(_presets), default=None, cls=LazyOption,
              lazy_help=_registry_help(_presets, "Network and schedule:"))
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="JSON", help="TrainConfig fields as JSON (any subset; a run's config.json works): over the "
                                   "preset, under the options given.")
@click.option("--epochs", callback=_pair, default=None, metavar="E1,E2",
              help="Epochs of stage 1 and 2 [preset's; paper 10,30].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="Batch size per process [preset's; paper code 8].")
@click.option("--crop", type=click.IntRange(min=8), default=None, metavar="C",
              help="Random crop of the training patches (a multiple of 8).")
@click.option("--scale", type=click.Choice(["1", "2"]), default=None, help="Output scale [default: the shards'].")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Random seed (data order, augmentation, init) [0].")
# Execution (not part of the run's identity)
@click.option("--stage", "stages", type=click.Choice(["1", "2", "all"]), default="all", help="Stages to run.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop (with a checkpoint) at this global step; rerun with a larger one to go on.")
@device_option
@click.option("--precision", type=LazyChoice(_precisions), default="auto",
              help="auto: bf16 autocast on CUDA, fp32 on CPU.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the networks.")
@click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="Data-loading processes [default: 2 on CUDA, 0 on a CPU (they would take its cores)].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, metavar="STEPS",
              help="Checkpoint interval (also at every epoch's end).")
@click.option("--log-every", type=click.IntRange(min=1), default=10, metavar="STEPS", help="stats.jsonl interval.")
@click.option("--vgg-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="PTH", help="VGG16 ImageNet weights [default: torchvision's cache].")
@force_option("Start RUN over even when it holds another config or dataset (removes only what a run writes).")
@click.option("--dry-run", is_flag=True, help="Check the dataset and options as the run does and print the resolved "
              "configuration as JSON; train nothing.")
@click.pass_obj
@user_errors
def train(obj, dataset, out_dir, preset, config_file, epochs, batch_size, crop, scale, seed, stages, max_steps,
          device, precision, compile_, workers, checkpoint_every, log_every, vgg_weights, force, dry_run,
          **weights) -> None:
    """Train the model on a prepared DATASET into RUN.

    Stage 1: L1 + attention loss; stage 2: + LSGAN discriminator + VGG16 perceptual loss (the
    paper's recipe). Rerunning the same command continues an interrupted run and does
    nothing on a finished one; an interrupted run exits 130 (Ctrl-C) or 143 (SIGTERM) after its
    checkpoint. Multi-GPU: launch with torchrun.

    \b
    Examples:
      raw2rgb train ds/ -o runs/mine                             # the recommended network
      raw2rgb train ds/ -o runs/cpu --preset tiny --perceptual-weight 0
      raw2rgb train zrr/ -o runs/paper --preset paper            # reproduce the paper
      torchrun --nproc_per_node 4 -m raw2rgb train ds/ -o runs/ddp
    """
    changes: dict = {}
    if epochs:
        changes.update(stage1_epochs=epochs[0], stage2_epochs=epochs[1])
    changes.update({k: v for k, v in (("batch_size", batch_size), ("crop", crop), ("seed", seed)) if v is not None})
    given_weights = {k[2:]: v for k, v in weights.items() if v is not None}
    if given_weights:
        changes["weights"] = given_weights
    from raw2rgb.model import recipe
    from raw2rgb.model import train as tr
    from raw2rgb.pipeline import shards as shard_stage
    index = shard_stage.read_index(shard_stage.shards_root(dataset))
    out_scale = int(scale) if scale else index.scale
    changes["generator"] = {"scale": out_scale, "binning": index.binning or 1}  # the shards' resolution
    cfg = recipe.train_config(preset or _presets().default, config_file, changes)
    rt = recipe.Runtime(stages=stages, device=device, precision=precision, compile=compile_, max_steps=max_steps,
                    checkpoint_every=checkpoint_every, log_every=log_every, workers=workers,
                    vgg_weights=str(vgg_weights) if vgg_weights else None)
    if dry_run:
        tr.check(dataset, cfg, rt)  # the run's own checks: the plan printed is one it accepts
        click.echo(json.dumps({"config": cfg.to_json(), "runtime": rt.to_json()}, indent=1))
        return
    result = tr.train(dataset, out_dir, cfg, rt, force=force, progress_bar=_progress(obj["quiet"]))
    click.echo(result.message, err=True)
    if result.last_val:
        click.echo(f"validation: PSNR {result.last_val['val_psnr']:.2f} dB, SSIM {result.last_val['val_ssim']:.4f}",
                   err=True)
    if result.signal is not None:
        sys.exit(128 + int(result.signal))  # 130 for Ctrl-C, 143 for SIGTERM: a scheduler sees the interrupt


# -- convert --------------------------------------------------------------------------------------

@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@out_option("Output folder (one image per RAW file, manifest.json).")
# Method
@method_options
# Tiling
@click.option("--tile", type=click.IntRange(min=16), default=None, metavar="N",
              help="Tile size, packed pixels [default: 512].")
@click.option("--overlap", type=click.IntRange(min=0), default=None, metavar="N",
              help="Tile overlap, packed pixels [default: what the model needs for tiles to match one pass, "
                   "measured once per model].")
# Output
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "tiff16"]), default="png",  # convert.FORMATS
              help="png and jpg: 8-bit sRGB; tiff16: 16-bit sRGB.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, metavar="Q", help="JPEG quality.")
@zrr_levels_option("Black/white level for ZRR mosaic PNG inputs.")
# Execution
@device_option
@jobs_option
@force_option("Convert every file, even those up to date.")
@overwrite_option
@click.pass_obj
@user_errors
@backend_options
def convert(obj, inputs, out_dir, checkpoint, profile, method, tile, overlap, fmt, quality, zrr_levels, device,
            jobs, force, overwrite) -> None:
    """Convert RAW files to full-resolution RGB images.

    INPUTS are files, folders (searched recursively) or glob patterns of any Bayer RAW (DNG, CR2,
    NEF, ARW, …). With a checkpoint the trained model runs over overlapping tiles (no seams, memory
    bounded by the tile); with a profile, the classical pipeline followed by that colour profile
    (another camera's look in seconds, on any machine); without either, the classical pipeline
    (black/white level, as-shot white balance, demosaicing, the file's colour matrix, sRGB).
    Files already converted with the same settings are skipped.

    \b
    Examples:
      raw2rgb convert photo.dng -o out/                              # classical pipeline
      raw2rgb convert shoot/ -o out/ --checkpoint runs/mine          # the trained model
      raw2rgb convert shoot/ -o out/ --profile runs/mine/profile.json
    """
    from raw2rgb import convert as conv
    from raw2rgb.pipeline import rawio
    from raw2rgb.pipeline import unpack as unpack_stage
    cfg = conv.resolve(method, checkpoint, profile, tile=tile or conv.TILE, overlap=overlap, format=fmt,
                       quality=quality, zrr_levels=rawio.ZRR_LEVELS[zrr_levels])
    items = unpack_stage.collect_inputs(inputs, out_dir)
    result = conv.convert(items, out_dir, cfg, device=device, jobs=_jobs(jobs),
                          force=force, progress=_progress(obj["quiet"]), overwrite=overwrite)
    click.echo(conv.summary_line(cfg.method, result, out_dir), err=True)
    _finish(result)


# -- evaluate -------------------------------------------------------------------------------------

@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", help="Split to evaluate.")
@method_options
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None, callback=output_path(True),
              metavar="DIR", help="Write per_image.csv and summary.json here.")
@batch_option()
@device_option
@user_errors
def evaluate(dataset, split, checkpoint, profile, method, out_dir, batch_size, device) -> None:
    """PSNR, SSIM and colour-corrected PSNR on a split of a prepared DATASET.

    PSNR as in the paper (255 scale, per image, averaged); SSIM with a Gaussian window (as
    scikit-image's gaussian_weights=True); colour-corrected PSNR after an affine colour fit per
    image. Prints summary.json. Score a model beside the classical pipeline and the fitted profile
    (docs/convert.md): a model worth training beats both.

    \b
    Examples:
      raw2rgb evaluate ds/ --checkpoint runs/mine -o runs/mine/eval
      raw2rgb evaluate ds/ --method isp
      raw2rgb evaluate ds/ --profile runs/mine/profile.json
    """
    from raw2rgb.model import evaluate as ev
    from raw2rgb.render import default_method
    method = method or default_method(checkpoint, profile)
    result = ev.evaluate(dataset, split, checkpoint, method, device, batch_size, profile=profile)
    if out_dir:
        ev.write(result, out_dir)
    click.echo(json.dumps(result.summary, indent=1))


# -- profile --------------------------------------------------------------------------------------

def _profile_module():
    from raw2rgb.pipeline import profile as colour_profile
    return colour_profile


def _wb_rules():
    from raw2rgb.pipeline import whitebalance
    return whitebalance.RULES


@main.group(cls=_Group)
def profile() -> None:
    """Colour profiles: the classical rendering → a target camera's look, fitted in seconds."""


@profile.command("fit")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), metavar="JSON",
              callback=output_path(False), help="The profile file to write.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", help="Split to fit on.")
@click.option("--model", type=LazyChoice(lambda: _profile_module().MODELS), default="poly3",
              help="poly3: a cubic polynomial per channel (20 terms); lut: a 3-D lookup table (docs/benchmarks.md "
                   "compares them).")
@click.option("--lut-size", type=click.IntRange(min=2, max=33), default=9,  # profile.DEFAULT_LUT_SIZE
              metavar="N", help="lut: nodes per axis.")
@click.option("--white-balance", type=LazyChoice(_wb_rules), default="dataset",  # whitebalance.DEFAULT_RULE
              show_default=True, help="For RAW files without a white balance (ZRR mosaics): dataset (one grey world "
                                      "over the train split) or frame-* (an estimate over each whole frame); recorded "
                                      "in the profile, which convert and evaluate follow (docs/training.md).")
@user_errors
def profile_fit(dataset, out, split, model, lut_size, white_balance) -> None:
    """Fit a colour profile on a split of a prepared DATASET and save it as JSON.

    Each patch is rendered by the classical pipeline with its RAW file's white balance and colour
    matrix; the profile maps those renderings to the targets by least squares. Use it with
    `convert --profile` (any RAW of the same camera, full resolution) and `evaluate --profile`
    (the baseline every trained model is shown beside).

    \b
    Examples:
      raw2rgb profile fit ds/ -o look.json
      raw2rgb convert shoot/ -o out/ --profile look.json
    """
    colour_profile = _profile_module()
    fitted = colour_profile.fit_dataset(dataset, split, model, lut_size, white_balance_rule=white_balance)
    colour_profile.save(fitted, out)
    click.echo(f"wrote {out}: {fitted.model} profile, scale {fitted.scale}, {fitted.fitted_on['samples']} samples "
               f"of {split}, fit PSNR {fitted.fitted_on['fit_psnr']:.2f} dB, cameras: "
               f"{', '.join(fitted.cameras) or 'unknown'}, white balance: {fitted.white_balance.describe()}", err=True)


# -- export ---------------------------------------------------------------------------------------

@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path), metavar="CKPT|RUN")
@click.option("--onnx", type=click.Path(path_type=Path), default=None, metavar="OUT.onnx", callback=output_path(False),
              help="Write an ONNX model (opset 18).")
@click.option("--pt2", type=click.Path(path_type=Path), default=None, metavar="OUT.pt2", callback=output_path(False),
              help="Write a torch.export program.")
@user_errors
def export(checkpoint, onnx, pt2) -> None:
    """Export the inference generator: spectral norm folded, dynamic batch, height and width.

    Input raw (B, 4, h, w) in [-1, 1] with h, w multiples of 8; output rgb in [-1, 1].

    \b
    Example:
      raw2rgb export runs/paper --onnx g.onnx --pt2 g.pt2
    """
    if not onnx and not pt2:
        raise click.UsageError("give --onnx OUT.onnx and/or --pt2 OUT.pt2")
    from raw2rgb.model import export as ex
    if onnx:
        click.echo(f"wrote {ex.export_onnx(checkpoint, onnx)}")
    if pt2:
        click.echo(f"wrote {ex.export_pt2(checkpoint, pt2)}")


# -- report ---------------------------------------------------------------------------------------

def _captioned(ctx, param, values) -> list[tuple[str, Path]]:
    out = []
    for v in values:
        caption, sep, path = v.partition("=")
        if not sep or not Path(path).is_file():
            raise click.BadParameter(f"{v!r}: CAPTION=PATH of an existing image")
        out.append((caption, Path(path)))
    return out


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A prepared DATASET: adds held-out samples (RAW | classical | model | target | saliency) and "
                   "the metrics of the model and of the classical pipeline.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", help="Held-out split.")
@click.option("--profile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="JSON", help="A fitted colour profile: shown and scored beside the model [default: the run's "
                                   "profile.json, when it has one].")
@click.option("--image", "images", multiple=True, callback=_captioned, metavar="CAPTION=PATH",
              help="Another image to show (repeatable), e.g. a converted photo.")
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), callback=output_path(False),
              metavar="REPORT.html", help="The page; its pictures go beside it (REPORT.png, REPORT_files/).")
@user_errors
def report(run_dir, dataset, split, profile, images, out) -> None:
    """An HTML report of a training run: contact sheet, metrics, training curve.

    \b
    Example:
      raw2rgb report runs/paper --dataset ds/ -o runs/paper/report.html
    """
    from raw2rgb.model import report as rep
    from raw2rgb.model import run
    if profile is None and (run_dir / run.PROFILE).is_file():
        profile = run_dir / run.PROFILE
    path = rep.write_report(run_dir, out, dataset, split, list(images), profile=profile)
    sheet = path.with_suffix(".png")  # none for an empty split: the page says so instead
    click.echo(f"wrote {path}" + (f" and {sheet}" if dataset and f'src="{sheet.name}"' in path.read_text() else ""))


# -- synth ----------------------------------------------------------------------------------------

def _synth():
    from raw2rgb.pipeline import synth as virtual_camera
    return virtual_camera


@main.command()
@out_option("Where to write the DNGs.")
@click.option("--size", type=(click.IntRange(64, 8192), click.IntRange(64, 8192)), default=None,  # synth.MAX_SIDE
              metavar="H W",
              help="Sensor size in pixels, 64 to 8192 per side [default: 512 768; --zrr: 896 1344; "
                   "--shoot: 2592 3888].")
@click.option("--pairs", is_flag=True,
              help="A two-camera dataset: every bundled scene and a colour chart, each JPEG rendered by another "
                   "camera with its own look (what the demo trains on).")
@click.option("--look", type=LazyChoice(lambda: _synth().LOOKS), default="plain",
              help="--pairs: the other camera's look: plain (colour and tone) or dslr (also hue-dependent colour, "
                   "sharpening, local contrast).")
@click.option("--phone", is_flag=True, help="--pairs: the RAW from a small-sensor phone (lens blur, vignetting, "
                                             "more noise).")
@click.option("--zrr", is_flag=True, help="A ZRR-layout dataset: the phone's RAW as 10-bit one-plane PNG mosaics "
                                           "without metadata and the other camera's JPEG, cut into aligned crops "
                                           "(train|test/huawei_raw/N.png, canon/N.jpg; chelsea in test/).")
@click.option("--light", type=LazyChoice(lambda: _synth().LIGHTS), default="steady", show_default=True,
              help="--zrr: one light for every scene, or each scene under its own (the RAW carries its cast; the "
                   "other camera white-balances on its own).")
@click.option("--crop", type=click.IntRange(min=16), default=None, cls=LazyOption,
              lazy_help=lambda: f"--zrr: crop size in sensor pixels (even) [default: {_synth().ZRR_CROP}].",
              metavar="N")
@click.option("--shoot", is_flag=True, help="A photographer's shoot: one camera's frame and its own JPEG, rendered "
                                             "with --look (default here: dslr) and made --jpeg-scale times smaller, "
                                             "as an M/S-size or embedded JPEG is.")
@click.option("--jpeg-scale", type=click.FloatRange(1.0, 16.0), default=3.2, show_default=True, metavar="F",
              help="--shoot: how much smaller the JPEG is than the sensor (the A7R III's preview: 3.2).")
@click.option("--embedded", is_flag=True, help="--shoot: the JPEG inside each DNG (its preview), none beside it.")
@seed_option
@user_errors
def synth(out_dir: Path, size: tuple[int, int] | None, pairs: bool, look: str, phone: bool, zrr: bool, light: str,
          crop: int, shoot: bool, jpeg_scale: float, embedded: bool, seed: int) -> None:
    """Write sample DNGs from a virtual camera, each with a JPEG beside it.

    Default: one DNG per CFA pattern with the camera's own JPEG. --pairs: every colour scene
    scikit-image bundles and a colour chart, the JPEG from "another camera" (warmer, more saturated,
    more contrast; --look dslr adds a DSLR JPEG engine's local processing).

    \b
    Examples:
      raw2rgb synth -o samples/
      raw2rgb synth -o pairs/ --pairs --size 512 768
      raw2rgb synth -o hard/ --pairs --look dslr --phone
      raw2rgb synth -o zrr-like/ --zrr --light varying
      raw2rgb synth -o shoot/ --shoot --embedded                  # RAW alone, its JPEG inside
    """
    virtual_camera = _synth()
    if shoot:
        looks = click.get_current_context().get_parameter_source("look") == click.core.ParameterSource.DEFAULT
        made = virtual_camera.camera_shoot(out_dir, size=size or (2592, 3888), jpeg_scale=jpeg_scale,
                                           embedded=embedded, seed=seed,
                                           look=virtual_camera.LOOKS["dslr" if looks else look])
        for p in made:
            click.echo(str(p))
        return
    crop = crop or virtual_camera.ZRR_CROP
    if zrr:
        if crop % 2:
            raise click.BadParameter(f"{crop}: the crops keep the mosaic's RGGB phase, so an even size",
                                     param_hint="--crop")
        size = size or (896, 1344)
        if crop > min(size):
            raise click.BadParameter(f"{crop} is larger than the frame {size[0]}×{size[1]}", param_hint="--crop")
        records = virtual_camera.zrr_dataset(out_dir, size=size, crop=crop, seed=seed, look=virtual_camera.LOOKS[look],
                                             light=light)
        click.echo(f"wrote {len(records)} crops to {out_dir} (zrr layout, {light} light)")
        return
    size = size or (512, 768)
    made = virtual_camera.paired_dngs(out_dir, size=size, seed=seed, look=virtual_camera.LOOKS[look], phone=phone) \
        if pairs else virtual_camera.sample_dngs(out_dir, size=size, seed=seed)
    for p in made:
        click.echo(str(p))


if __name__ == "__main__":
    main()
