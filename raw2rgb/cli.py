"""The ``raw2rgb`` command: each command parses its options, calls one library function and prints
what it returns. Its defaults, checks and policy are the library's.

A command's options are its config's fields (``options.py``: default, range, choices and help come
from the field's declaration), made when the command is first parsed or shown; what is declared
here is the CLI's own: arguments, ``-o``, short flags, how a run goes (``--force``, ``--dry-run``,
``--jobs``, ``--backend``), examples and the printed summaries. It loads lazily: a command's module
is imported when the command runs, and registries (presets, layouts, saliency and rendering
methods, loss terms) are read when a help page or a parse needs them. No ``--help`` imports torch;
``convert`` never imports the training loop (tests/test_imports.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import threading
from inspect import cleandoc
from pathlib import Path

import click

from raw2rgb import __version__, files
from raw2rgb.device import DEVICE_HELP
from raw2rgb.errors import Interrupted, UserError, environment_message, one_line, printable
from raw2rgb.options import LazyChoice, LazyOption, config_options, given, parsed

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

def _presets():
    from raw2rgb.model.presets import PRESETS
    return PRESETS


def _registry_help(get, lead: str, default: bool = False):
    """A help line: ``lead``, then each entry's ``name: help`` from the registry ``get()`` returns (and
    its default, for an option whose own default is None)."""
    def text() -> str:
        reg = get()
        return f"{lead} {reg.help()}." + (f" [default: {reg.default}]" if default else "")
    return text


def from_config(tag: str, module: str, name: str, **how):
    """``more_params`` for a command: the options of config class ``module.name`` (read when the
    command is first parsed or shown, so its module is imported only then), each from its field's
    declaration (``options.config_options``; ``how``: its ``rename``, ``skip`` and ``default``)."""
    def make() -> list[click.Option]:
        import importlib
        return config_options(getattr(importlib.import_module(module), name), tag, **how)
    return make


def render_inputs() -> list[click.Option]:
    """``more_params`` of convert and evaluate: ``--method`` (the rendering methods' registry) and one
    option per input a method renders with (``render.inputs()``: ``--checkpoint``, ``--profile``)."""
    from raw2rgb import render
    return [LazyOption(["--method", "method"], type=LazyChoice(lambda: render.RENDER_METHODS),
                       default=render.RENDER_METHODS.default,
                       lazy_help=_registry_help(lambda: render.RENDER_METHODS, "How to render:"))] + [
        click.Option([i.option, i.name], type=click.Path(exists=True, dir_okay=i.folder, path_type=Path), default=None,
                     metavar=i.metavar, help=i.help) for i in render.inputs()]


def both(*makers):
    """``more_params`` of several makers, in order."""
    return lambda: [option for make in makers for option in make()]


def _taken(options: dict, names) -> dict:
    """The values of ``names`` taken out of a command's parsed ``options``."""
    return {name: options.pop(name) for name in names}


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


jobs_option = click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, metavar="N",
                           help="Worker processes [default: min(4, cores)].")


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
    """``more_params``: a function giving more options (a config's), called when the command is first
    parsed or shown (options read from a module the command alone needs); they go after the option
    named ``more_after`` (default: after the arguments and ``-o``). Two options of one name are a
    bug of the declarations (two configs, or a nested config and its parent), refused here."""

    def __init__(self, *args, more_params=None, more_after: str = "out_dir", **kwargs) -> None:
        self._more_params, self._more_after = more_params, more_after
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._more_params is not None:
            more, self._more_params = self._more_params, None
            names = [p.name for p in self._params]
            at = names.index(self._more_after) + 1 if self._more_after in names else \
                sum(1 for p in self._params if isinstance(p, click.Argument))
            self._params = self._params[:at] + more() + self._params[at:]
            opts = [o for p in self._params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])]
            twice = sorted({o for o in opts if opts.count(o) > 1})
            if twice:
                raise RuntimeError(f"{self.name}: options declared twice: {', '.join(twice)}")
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

@main.command(more_params=from_config("cfg", "raw2rgb.pipeline.unpack", "UnpackConfig"))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@out_option("Output folder (packed PNGs, JSON sidecars, manifest.json).")
# Execution
@jobs_option
@force_option("Redo every file, even those up to date.")
@overwrite_option
@click.pass_obj
@user_errors
@backend_options
def unpack(obj, inputs: tuple[str, ...], out_dir: Path, jobs: int | None, force: bool, overwrite: bool,
           **options) -> None:
    """Unpack RAW files into 4-channel packed PNGs (R, G1, B, G2).

    INPUTS are files, folders (searched recursively) or glob patterns: any Bayer RAW LibRaw
    reads (DNG, CR2, NEF, ARW, RW2, ORF, …), ZRR mosaic PNGs and AIM-2019 packed PNGs. Every
    mosaic is cropped to RGGB phase, black/white-level normalised and written losslessly with a
    JSON sidecar of its metadata. Files already up to date are skipped.

    \b
    Example:
      raw2rgb unpack photos/ 'more/*.dng' -o packed/ -j 4
    """
    from raw2rgb.pipeline import unpack as unpack_stage
    cfg = parsed(unpack_stage.UnpackConfig, options)
    result = unpack_stage.unpack_files(inputs, out_dir, cfg, jobs=jobs, force=force,
                                       progress=_progress(obj["quiet"]), overwrite=overwrite)
    click.echo(f"wrote {len(result.manifest.ok)} packed PNGs to {out_dir}", err=True)
    _finish(result)


# -- saliency -------------------------------------------------------------------------------------

@main.command(more_params=from_config("cfg", "raw2rgb.salgan.methods", "SaliencyConfig"))
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGES...")
@out_option("Output folder (saliency-NNNNN.h5 shards, manifest.json).")
@force_option("Recompute every shard.")
@click.pass_obj
@user_errors
@backend_options
def saliency(obj, inputs, out_dir, force, **options) -> None:
    """Label images with saliency maps, written as HDF5 shards.

    IMAGES are image files, folders (searched recursively) or glob patterns. Maps have the size
    of their image, uint8 0-255. Shards already up to date are skipped; a killed run resumes at
    the first unfinished shard.

    \b
    Example:
      raw2rgb saliency canon/ -o saliency/ --weights salgan.pt
    """
    from raw2rgb.salgan import label, methods
    cfg = parsed(methods.SaliencyConfig, options)
    _finish(label.label_files(inputs, out_dir, cfg, force=force, progress=_progress(obj["quiet"])))


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

def _prepare_stages():
    from raw2rgb.dataset import STAGES
    return STAGES


@main.command(more_params=from_config("cfg", "raw2rgb.prepare", "PrepareConfig", rename={"patch.size": "patch-size"}))
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Dataset folder: one sub-folder per stage.", metavar="DATASET")
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
def prepare(obj, src, out_dir, until, force, replace_source, jobs, dry_run, **options) -> None:
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
    cfg = parsed(prep.PrepareConfig, options, src=str(src), out=str(out_dir), jobs=jobs)
    if dry_run:
        click.echo(json.dumps(prep.plan(cfg, until, frozenset(force), replace_source).to_json(), indent=1))
        return
    result = prep.run(cfg, until=until, force=frozenset(force), progress=_progress(obj["quiet"]),
                      replace_source=replace_source)
    lines = [r.summary() for r in result.stages.values()] + prep.summary_lines(result.summary)
    _finish(result, lines, details=f"{out_dir}/summary.json")


# -- shards ---------------------------------------------------------------------------------------

@main.command("shards", more_params=from_config("cfg", "raw2rgb.pipeline.shards", "ShardsConfig"))
@click.argument("patches", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("saliency_dir", metavar="SALIENCY", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Output folder: SPLIT-NNNNN.h5, index.json, manifest.json.", metavar="SHARDS")
@click.option("--splits", "splits_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="JSON", help="splits.json of prepare [default: PATCHES/../splits.json; else all train].")
@jobs_option
@force_option("Rewrite every shard.")
@click.pass_obj
@user_errors
def shards_command(obj, patches, saliency_dir, out_dir, splits_file, jobs, force, **options) -> None:
    """Write training shards from a patches folder and its saliency shards.

    The last stage of `prepare`, on its own: per split, HDF5 shards of raw, target and saliency,
    with K Bayer-safe transformed copies of each patch.

    \b
    Example:
      raw2rgb shards ds/patches ds/saliency -o ds/shards-x4 --copies 4
    """
    from raw2rgb.pipeline import shards as shard_stage
    cfg = parsed(shard_stage.ShardsConfig, options)
    result = shard_stage.build_from_stages(patches, saliency_dir, out_dir, splits_file=splits_file, cfg=cfg,
                                           jobs=jobs, force=force, progress=_progress(obj["quiet"]))
    _finish(result)


# -- inspect --------------------------------------------------------------------------------------

@main.command()
@click.argument("shards_dir", metavar="SHARDS", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=8, metavar="N", help="Batch to load per split.")
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


@main.command(more_after="epochs", more_params=both(
    from_config("cfg", "raw2rgb.model.recipe", "TrainConfig", rename={"weights.*": "{}-weight"},
                default="preset's; paper {}"),
    from_config("rt", "raw2rgb.model.recipe", "Runtime", rename={"stages": "stage"})))
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Run folder: config.json, stats.jsonl, checkpoints/, samples/, tensorboard/.", metavar="RUN")
# Recipe (the run's identity)
@click.option("--preset", type=LazyChoice(_presets), default=None, cls=LazyOption,
              lazy_help=_registry_help(_presets, "Network and schedule:", default=True))
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="JSON", help="TrainConfig fields as JSON (any subset; a run's config.json works): over the "
                                   "preset, under the options given.")
@click.option("--epochs", callback=_pair, default=None, metavar="E1,E2",
              help="Epochs of stage 1 and 2 [preset's; paper 10,30].")
# Execution (not part of the run's identity)
@force_option("Start RUN over even when it holds another config or dataset (removes only what a run writes).")
@click.option("--dry-run", is_flag=True, help="Check the dataset and options as the run does and print the resolved "
              "configuration as JSON; train nothing.")
@click.pass_obj
@user_errors
def train(obj, dataset, out_dir, preset, config_file, epochs, force, dry_run, **options) -> None:
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
    from raw2rgb.model import recipe
    changes = given(options, "cfg")
    if epochs:
        changes.update(stage1_epochs=epochs[0], stage2_epochs=epochs[1])
    cfg = recipe.train_config(preset, config_file, changes, dataset=dataset)
    rt = parsed(recipe.Runtime, options, "rt")
    from raw2rgb.model import train as tr
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

@main.command(more_params=both(render_inputs, from_config("cfg", "raw2rgb.convert", "ConvertConfig")))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@out_option("Output folder (one image per RAW file, manifest.json).")
# Execution
@click.option("--device", default="auto", metavar="DEV", help=DEVICE_HELP)
@jobs_option
@force_option("Convert every file, even those up to date.")
@overwrite_option
@click.pass_obj
@user_errors
@backend_options
def convert(obj, inputs, out_dir, device, jobs, force, overwrite, **options) -> None:
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
    from raw2rgb import render
    method = options.pop("method")
    given_inputs = _taken(options, [i.name for i in render.inputs()])
    cfg, result = conv.convert_files(inputs, out_dir, method, device=device, jobs=jobs, force=force,
                                     progress=_progress(obj["quiet"]), overwrite=overwrite, **given_inputs,
                                     **given(options, "cfg"))
    click.echo(conv.summary_line(cfg.method, result, out_dir), err=True)
    _finish(result)


# -- evaluate -------------------------------------------------------------------------------------

@main.command(more_params=both(from_config("cfg", "raw2rgb.render", "ScoreConfig"), render_inputs))
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None, callback=output_path(True),
              metavar="DIR", help="Write per_image.csv and summary.json here.")
@user_errors
def evaluate(dataset, out_dir, **options) -> None:
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
    from raw2rgb import render
    from raw2rgb.model import evaluate as ev
    cfg = parsed(render.ScoreConfig, options)
    method = options.pop("method")
    result = ev.evaluate(dataset, cfg.split, method=method, device=cfg.device, batch_size=cfg.batch_size,
                         **_taken(options, [i.name for i in render.inputs()]))
    if out_dir:
        ev.write(result, out_dir)
    click.echo(json.dumps(result.summary, indent=1))


# -- profile --------------------------------------------------------------------------------------

@main.group(cls=_Group)
def profile() -> None:
    """Colour profiles: the classical rendering → a target camera's look, fitted in seconds."""


@profile.command("fit", more_after="out", more_params=from_config("cfg", "raw2rgb.pipeline.profile_fit",
                                                                   "FitConfig"))
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), metavar="JSON",
              callback=output_path(False), help="The profile file to write.")
@user_errors
def profile_fit(dataset, out, **options) -> None:
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
    from raw2rgb.pipeline import profile as colour_profile
    from raw2rgb.pipeline import profile_fit
    cfg = parsed(profile_fit.FitConfig, options)
    fitted = profile_fit.fit_on(dataset, cfg)
    colour_profile.save(fitted, out)
    click.echo(f"wrote {out}: {fitted.model} profile, scale {fitted.scale}, {fitted.fitted_on['samples']} samples "
               f"of {cfg.split}, fit PSNR {fitted.fitted_on['fit_psnr']:.2f} dB, cameras: "
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


@main.command(more_after="dataset", more_params=from_config("cfg", "raw2rgb.render", "ScoreConfig",
                                                            skip=("batch_size", "device")))
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A prepared DATASET: adds held-out samples (RAW | classical | model | target | saliency) and "
                   "the metrics of the model and of the classical pipeline.")
@click.option("--profile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="JSON", help="A fitted colour profile: shown and scored beside the model [default: the run's "
                                   "profile.json, when it has one].")
@click.option("--image", "images", multiple=True, callback=_captioned, metavar="CAPTION=PATH",
              help="Another image to show (repeatable), e.g. a converted photo.")
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), callback=output_path(False),
              metavar="REPORT.html", help="The page; its pictures go beside it (REPORT.png, REPORT_files/).")
@user_errors
def report(run_dir, dataset, profile, images, out, **options) -> None:
    """An HTML report of a training run: contact sheet, metrics, training curve.

    \b
    Example:
      raw2rgb report runs/paper --dataset ds/ -o runs/paper/report.html
    """
    from raw2rgb import render
    from raw2rgb.model import report as rep
    cfg = parsed(render.ScoreConfig, options)
    path = rep.write_report(run_dir, out, dataset, cfg.split, list(images), profile=profile)
    sheet = path.with_suffix(".png")  # none for an empty split: the page says so instead
    click.echo(f"wrote {path}" + (f" and {sheet}" if dataset and f'src="{sheet.name}"' in path.read_text() else ""))


# -- synth ----------------------------------------------------------------------------------------

@main.command(more_params=from_config("cfg", "raw2rgb.pipeline.synth", "SynthConfig"))
@out_option("Where to write the DNGs.")
@user_errors
def synth(out_dir: Path, **options) -> None:
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
    from raw2rgb.pipeline import synth as virtual_camera
    cfg = parsed(virtual_camera.SynthConfig, options)
    for line in virtual_camera.write(out_dir, cfg):
        click.echo(line)


if __name__ == "__main__":
    main()
