"""`raw2rgb train`: the two-stage recipe as one restartable run.

Stage 1 trains G on ``L_rgb + 0.5 L_A``; stage 2 adds the discriminator, ``0.01 L_G`` and
``1 L_p`` with the two time-scale learning rates (the weights live in ``losses.LossWeights``).
:func:`train` is the loop, read top to bottom: set up → resume → per stage, per epoch, per batch:
the D step and the G step (:func:`train_step`) → log → validate → snapshot. The networks,
optimisers and progress, and how they are built, resumed and saved, are ``model/state.py``'s; what
stops a run early (signals, NaN losses, the ranks' agreement) ``model/guards.py``'s; the RUN
folder's files ``model/run.py``'s, the checkpoint format ``model/checkpoint.py``'s, ranks and
agreed decisions ``model/distributed.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

from raw2rgb.device import resolve_device
from raw2rgb.files import FolderLock
from raw2rgb.model import checkpoint, distributed, guards, losses, run, state
from raw2rgb.model.data import ShardDataset, to_model
from raw2rgb.model.distributed import Dist
from raw2rgb.model.evaluate import score, summarise
from raw2rgb.model.pictures import grid_rows, save_png
from raw2rgb.model.prior import PriorFit, fit_detail_on_split, model_white_balance
from raw2rgb.model.recipe import LR_DECAYS, PRECISIONS, STAGES, Runtime, TrainConfig, TrainError, train_config  # noqa: F401
from raw2rgb.model.state import Nets, Optimisers, Progress
from raw2rgb.pipeline import profile as colour_profile
from raw2rgb.pipeline import whitebalance
from raw2rgb.pipeline.shards import ShardIndex, cameras, colour_source, dataset_key, read_index, shards_root
from raw2rgb.pipeline.shards import validate as validate_shards

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    steps_run: int
    step: int
    finished: bool
    message: str
    last_val: dict[str, float] = field(default_factory=dict)
    signal: int | None = None  # the signal that stopped the run early (SIGINT, SIGTERM)


# -- the step ---------------------------------------------------------------------------------------

def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def train_step(nets: Nets, opts: Optimisers, batch: dict[str, torch.Tensor], stage: int,
               weights: losses.LossWeights, amp: torch.autocast) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the loss terms (detached). Stage 2: the D step on
    (real, fake.detach()) first, then the G step with D's gradients off (pix2pix)."""
    x, y, s = batch["raw"], batch["rgb"], batch["saliency"]
    scaler = opts.scaler
    with amp:
        rgb, sal = nets.g_train(x, batch.get("colour"), batch.get("thumb"))
    terms: dict[str, torch.Tensor] = {}
    if stage == 2:
        _set_requires_grad(nets.D, True)
        with amp:  # real and fake in one batch: InstanceNorm is per image, so this is exact
            real, fake = nets.d_train(torch.cat([x, x]), torch.cat([y, rgb.detach()])).chunk(2)
            loss_d = losses.lsgan_d(real, fake)
        opts.opt_D.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opts.opt_D)
        terms["d"] = loss_d.detach()
        _set_requires_grad(nets.D, False)
    with amp:  # the G step: the objective's terms (losses.objective), D frozen
        g_terms, total = losses.objective(weights, losses.StepTensors(
            x, y, s, rgb, sal, stage, D=nets.D if stage == 2 else None, perceptual=nets.perceptual))
    terms.update(g_terms)
    opts.opt_G.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(opts.opt_G)
    scaler.update()
    terms["total"] = total
    return {k: v.detach().float() for k, v in terms.items()}


# -- validation and samples ---------------------------------------------------------------------------

def validate(G: nn.Module, loader, device: torch.device, amp: torch.autocast) -> dict[str, float]:
    """Mean per-image PSNR (255 scale, as in the paper) and SSIM over a split (``evaluate.score``)."""
    was = G.training
    G.eval()

    def predict(b: dict[str, Any]) -> torch.Tensor:
        with amp:
            return G.rgb(b["raw"], b.get("colour"), b.get("thumb")).float()

    rows = score(predict, loader, device, psnr_cc=False)
    G.train(was)
    if not rows:
        return {}
    s = summarise(rows)
    return {"val_psnr": s["psnr"], "val_ssim": s["ssim"], "val_images": s["images"]}


@torch.no_grad()
def write_samples(G: nn.Module, batch: dict[str, torch.Tensor], path: Path, amp: torch.autocast) -> None:
    """A grid, one row per image: raw preview | output | target | predicted saliency."""
    was = G.training
    G.eval()
    with amp:
        rgb, sal = G(batch["raw"], batch.get("colour"), batch.get("thumb"))
    G.train(was)
    save_png(grid_rows(batch["raw"], rgb.float(), batch["rgb"], sal.float()), path)


# -- set-up pieces ----------------------------------------------------------------------------------

def check(dataset: os.PathLike | str, cfg: TrainConfig, rt: Runtime, world: int | None = None
          ) -> tuple[Path, ShardIndex, torch.device, str]:
    """Everything a run can be refused for before it writes anything: the stages, the device and
    its precision, the shards and what the config asks of them (scale, crop, a batch's worth of
    samples). :func:`train` calls it before it touches RUN and ``train --dry-run`` calls it too,
    so a plan that is printed is one the run accepts and a refused start leaves nothing behind.

    Returns:
        The shards folder, its index, the device and the precision the run will use.

    Raises:
        UserError: the first thing that would refuse the run, in one line.
    """
    if rt.stages not in STAGES:
        raise TrainError(f"unknown stage {rt.stages!r} (1, 2 or all)")
    device = resolve_device(rt.device)
    precision = _precision(rt, device)
    root = shards_root(dataset)
    world = world if world is not None else int(os.environ.get("WORLD_SIZE", "1"))
    return root, _check_dataset(root, cfg, world), device, precision


def _check_dataset(root: Path, cfg: TrainConfig, world: int = 1) -> ShardIndex:
    index = read_index(root)
    validate_shards(root, index)
    if index.count("train") == 0:
        raise TrainError(f"{root}: the train split is empty (no training samples); check prepare's --split")
    if index.count("train") < cfg.batch_size * world:  # the epoch would make no batch (the last partial one is dropped)
        raise TrainError(f"{root}: {index.count('train')} training samples make no batch of {cfg.batch_size} × "
                         f"{world} process(es); lower --batch-size")
    if (index.binning or 1) != cfg.generator.binning:
        raise TrainError(f"{root}: the shards' frames are binned by {index.binning or 1}, the config's generator "
                         f"by {cfg.generator.binning}; leave generator.binning to the shards (train sets it from them)")
    if index.scale != cfg.generator.scale:
        raise TrainError(f"{root}: shards are at output scale {index.scale}, the config's generator at "
                         f"{cfg.generator.scale}; rebuild the shards with --scale {cfg.generator.scale} or change "
                         "the config")
    size = index.crop
    crop = cfg.crop or size
    if crop and (crop % 8 or (size and crop > size)):
        raise TrainError(f"{root}: patches of {crop} packed pixels; the generator needs a multiple of 8 no larger "
                         f"than the shards' {size} (use --crop)")
    return index


def _precision(rt: Runtime, device: torch.device) -> str:
    p = rt.precision
    if p not in PRECISIONS:
        raise TrainError(f"unknown precision {p!r} ({', '.join(PRECISIONS)})")
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise TrainError("--precision fp16 needs CUDA")
    return p


def _fit_prior(root: Path, run_dir: Path, cfg: TrainConfig, dist: Dist) -> PriorFit | None:
    """The colour prior's profile, fitted on the train split (deterministic: every rank fits the
    same one), and saved as RUN/profile.json for ``convert --method profile``; then its detail filter
    (``detail_filter``), fitted on the profile's renderings of the same samples. None without a
    prior, and when resuming: the prior's coefficients and filter are buffers of G, restored with the
    checkpoint."""
    g = cfg.generator
    if g.prior != "profile":
        return None
    if run.checkpoint(run_dir).is_file() and (run_dir / run.PROFILE).is_file():
        return None
    t0 = time.perf_counter()
    profile = colour_profile.fit_dataset(root, "train", g.prior_model, white_balance_rule=cfg.white_balance)
    if dist.main:
        colour_profile.save(profile, run_dir / run.PROFILE)
        log.info("colour prior: a %s profile fitted on %d train pixels in %.1f s (train PSNR %.2f dB)", profile.model,
                 profile.fitted_on["pixels"], time.perf_counter() - t0, profile.fitted_on["fit_psnr"])
    if not g.detail_filter:
        return PriorFit(profile)
    t0 = time.perf_counter()
    weight, bias, psnr = fit_detail_on_split(root, profile, g.scale, g.detail_filter, seed=cfg.seed)
    if dist.main:
        log.info("colour prior: a %d×%d detail filter fitted in %.1f s (train PSNR %.2f dB)", g.detail_filter,
                 g.detail_filter, time.perf_counter() - t0, psnr)
    return PriorFit(profile, (weight, bias))


def _finished(progress: Progress, stages: tuple[int, ...], cfg: TrainConfig, rt: Runtime) -> str | None:
    last = stages[-1]
    epochs = cfg.stage1_epochs if last == 1 else cfg.stage2_epochs
    if progress.stage > last or (progress.stage == last and progress.epoch >= epochs):
        return f"stage {last} is finished (step {progress.step})"
    if rt.max_steps is not None and progress.step >= rt.max_steps:
        return f"reached --max-steps {rt.max_steps}"
    return None


def _datasets(root: Path, index: ShardIndex, cfg: TrainConfig, dist: Dist, wb: whitebalance.WhiteBalance | str
              ) -> tuple[ShardDataset, ShardDataset | None]:
    train_set = ShardDataset(root, "train", augment=cfg.augment, crop=cfg.crop, seed=cfg.seed, compact=True,
                             white_balance=wb)
    val_set = ShardDataset(root, "val", compact=True, white_balance=wb) if index.count("val") else None
    if val_set is None and dist.main:
        log.warning("%s: no val split; no validation (prepare with --split giving val a share)", root)
    return train_set, val_set


PROGRESS_EVERY = 30.0  # seconds between progress lines on the console and in log.txt
ESTIMATE_AFTER = (3, 10.0)  # the run's time is estimated after this many steps and at least these seconds
LONG_RUN = 3600.0  # seconds: a run estimated longer than this is told how to be shorter


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@dataclass
class Pace:
    """How far a run is and how long it has left, from this process's own steps: one estimate once
    the first steps are timed (with how to make the run shorter when it passes an hour), then a
    progress line every :data:`PROGRESS_EVERY` seconds, on the console and in log.txt — a CPU run
    of an hour is never silent between its start and its end."""

    total: int  # steps of the whole run
    done: int  # steps done when this process started
    device: str
    preset: str
    t0: float = field(default_factory=time.perf_counter)
    first: int | None = None  # the step the timing starts at (after the first, which compiles and warms)
    t_first: float = 0.0
    last_line: float = field(default_factory=time.perf_counter)
    estimated: bool = False

    def rate(self, step: int) -> float | None:
        """Steps per second since the first timed step."""
        if self.first is None or step <= self.first:
            return None
        return (step - self.first) / max(1e-9, time.perf_counter() - self.t_first)

    def note(self, step: int, stage: int, epoch: int, epochs: int, per_step: int, loss: float) -> None:
        """After step ``step`` (``per_step`` samples a step over every process; ``loss``: G's terms)."""
        now = time.perf_counter()
        if self.first is None:
            self.first, self.t_first = step, now
            return
        rate = self.rate(step)
        left = (self.total - step) / rate if rate else float("nan")
        if not self.estimated and step - self.first >= ESTIMATE_AFTER[0] and now - self.t_first >= ESTIMATE_AFTER[1]:
            self.estimated = True
            log.info("estimated: %s for the %d steps left (%.2f steps/s on %s)", _duration(left), self.total - step,
                     rate, self.device)
            if left > LONG_RUN:
                hint = ("--preset tiny (a short one-stage schedule of a small network: minutes on a CPU)"
                        if self.preset != "tiny" else "fewer --epochs or smaller --crop")
                log.warning("this run would take about %s on %s: for a first try use %s, or train on a GPU "
                            "(docs/gpus.md); Ctrl-C stops it after a checkpoint, and rerunning continues it",
                            _duration(left), self.device, hint)
        if now - self.last_line >= PROGRESS_EVERY:
            self.last_line = now
            log.info("stage %d epoch %d/%d, step %d/%d: %.1f samples/s, loss %.4f, %s left", stage, epoch, epochs,
                     step, self.total, (rate or 0.0) * per_step, loss, _duration(left))


@dataclass
class _Loop:
    """What the loop's helpers share (one training process)."""

    root: Path
    run_dir: Path
    cfg: TrainConfig
    rt: Runtime
    device: torch.device
    dist: Dist
    precision: str
    nets: Nets
    opts: Optimisers
    progress: Progress
    stats: run.Stats
    amp: torch.autocast
    cameras: list[str]
    finite: guards.FiniteTerms
    owner: dict[str, Any] = field(default_factory=dict)  # the dataset a checkpoint records (state.read_latest)
    last_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    last_val: dict[str, float] = field(default_factory=dict)
    steps_run: int = 0  # by this process
    pace: Pace | None = None

    def loader(self, dataset: ShardDataset, batches: list[list[int]]) -> DataLoader:
        workers = self.rt.workers if self.rt.workers is not None else (2 if self.device.type == "cuda" else 0)
        return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                          pin_memory=self.device.type == "cuda", worker_init_fn=guards.ignore_stop_signals)

    def check_finite(self) -> None:
        self.finite.check(self.progress.step)

    def log_step(self, stage: int, terms: dict[str, torch.Tensor], rate: float) -> None:
        self.check_finite()
        record = {"step": self.progress.step, "event": "step", "stage": stage, "epoch": self.progress.epoch + 1,
                  **{k: round(float(v), 6) for k, v in terms.items()},
                  "lr_g": self.opts.opt_G.param_groups[0]["lr"], "samples_per_s": round(rate, 2)}
        if stage == 2:
            record["lr_d"] = self.opts.opt_D.param_groups[0]["lr"]
        self.stats.write(record)

    def snapshot(self, name: str | None = None) -> None:
        """Save RUN/checkpoints/latest.pt (rank 0), and copy it to ``name`` when given."""
        self.check_finite()
        if not self.dist.main:
            return
        self.progress.stats_lines = self.stats.lines
        state.snapshot(self.run_dir, self.nets, self.opts, self.progress, self.cfg, self.cameras, self.dist.world,
                       self.precision, name, self.owner)

    def epoch(self, stage: int, train_set: ShardDataset, stop: guards.StopRequest,
              on_step: Callable[[int], None] | None, progress_bar) -> str | None:
        """The rest of this epoch's batches; why it stopped early (after a checkpoint), or None."""
        progress, cfg, rt, dist = self.progress, self.cfg, self.rt, self.dist
        train_set.set_epoch(progress.epoch + (cfg.stage1_epochs if stage == 2 else 0))
        batches = distributed.epoch_batches(len(train_set), cfg.batch_size, cfg.seed, stage, progress.epoch, dist)
        if not batches:
            raise TrainError(f"{self.root}: {len(train_set)} training samples make no batch of "
                             f"{cfg.batch_size} × {dist.world}; lower --batch-size")
        bar = None
        if progress_bar and dist.main:
            bar = progress_bar(total=len(batches), initial=progress.batch,
                               desc=f"stage {stage} epoch {progress.epoch + 1}")
        t0, seen = time.perf_counter(), 0
        try:
            for batch in self.loader(train_set, batches[progress.batch :]):
                terms = self.step(stage, batch)
                seen += cfg.batch_size * dist.world
                if self.pace is not None and dist.main:
                    self.pace.note(progress.step, stage, progress.epoch + 1,
                                   cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs, cfg.batch_size * dist.world,
                                   float(sum(v.item() for k, v in terms.items() if k != "d")))
                # -- log
                if bar is not None:
                    bar.update(1)
                if progress.step % rt.log_every == 0:
                    self.log_step(stage, terms, seen / (time.perf_counter() - t0))
                    if bar is not None:
                        bar.set_postfix({k: f"{v.item():.4f}" for k, v in terms.items()})
                    t0, seen = time.perf_counter(), 0
                if progress.step % rt.checkpoint_every == 0:
                    self.snapshot()
                if on_step is not None:
                    on_step(progress.step)
                # -- stop early (decided by all ranks together)
                stopping = stop.agreed(dist, self.device, progress.step, last_batch=progress.batch == len(batches))
                if stopping or (rt.max_steps is not None and progress.step >= rt.max_steps):
                    self.snapshot()
                    return guards.INTERRUPTED if stopping else f"reached --max-steps {rt.max_steps}"
        finally:
            if bar is not None:
                bar.close()
        return None

    def step(self, stage: int, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One training step on a loader's batch: the GAN step, the moving average, the counters."""
        batch = to_model(batch, self.device, non_blocking=True)
        if self.rt.channels_last and self.device.type == "cuda":
            batch = {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.ndim == 4 else v
                     for k, v in batch.items()}
        try:
            terms = train_step(self.nets, self.opts, batch, stage, self.cfg.weights, self.amp)
        except torch.OutOfMemoryError:
            raise TrainError(f"out of GPU memory at batch size {self.cfg.batch_size} on {self.device}; lower "
                             "--batch-size (or use --crop for smaller patches)") from None
        if self.nets.G_ema is not None:
            state.update_ema(self.nets.G_ema, self.nets.G, self.cfg.ema, self.progress.step)
        self.finite.note(terms, self.progress.step)
        self.last_terms = terms
        self.progress.batch += 1
        self.progress.step += 1
        self.steps_run += 1
        return terms

    def end_of_epoch(self, stage: int, val_set: ShardDataset | None, sample_source: ShardDataset) -> None:
        """Schedules, validation, the epoch's record and its sample grid (rank 0; the others wait), the
        next epoch's checkpoint."""
        with warnings.catch_warnings():
            # a run resumed at the end of its first epoch steps the schedule before this process
            # has stepped the optimiser; the order is right (it stepped before the interruption)
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.opts.sched_G.step()
            if stage == 2:  # D is idle in stage 1
                self.opts.sched_D.step()
        self.check_finite()
        if self.dist.main:
            record: dict[str, Any] = {"step": self.progress.step, "event": "epoch", "stage": stage,
                                      "epoch": self.progress.epoch + 1}
            record.update({k: round(float(v), 6) for k, v in self.last_terms.items()})
            if val_set is not None:
                n = len(val_set)
                batches = [list(range(i, min(n, i + self.cfg.batch_size))) for i in range(0, n, self.cfg.batch_size)]
                self.last_val = validate(self.nets.G_eval, self.loader(val_set, batches), self.device, self.amp)
                record.update(self.last_val)
                log.info("stage %d epoch %d (step %d): val PSNR %.2f dB, SSIM %.4f", stage, self.progress.epoch + 1,
                         self.progress.step, self.last_val["val_psnr"], self.last_val["val_ssim"])
            self.stats.write(record)
            n = min(self.rt.samples, len(sample_source))
            if n:
                batch = to_model(default_collate([sample_source[i] for i in range(n)]), self.device)
                sample_source.close()  # no open HDF5 handle for the next loader's forked workers
                write_samples(self.nets.G_eval, batch, self.run_dir / run.SAMPLES / f"stage{stage}-epoch"
                              f"{self.progress.epoch + 1:03d}.png", self.amp)
        distributed.barrier(self.dist)
        self.progress.epoch += 1
        self.progress.batch = 0
        self.snapshot()

    def end_of_stage(self, stage: int) -> None:
        """The stage's checkpoint; the next stage starts with fresh optimisers."""
        self.progress = Progress(stage=stage + 1, step=self.progress.step, stats_lines=self.stats.lines)
        if stage == 1:
            self.opts = state.optimisers(self.nets, self.cfg, 2, self.precision == "fp16")
        name = run.STAGE1 if stage == 1 else run.FINAL
        self.snapshot(name)
        if self.dist.main:
            log.info("stage %d finished at step %d: %s", stage, self.progress.step, run.checkpoint(self.run_dir, name))

    def compare_ranks(self) -> None:
        """Under DDP every process must end with the same weights; record their digests."""
        if not self.dist.grouped:
            return
        digest = distributed.weights_digest(self.nets.G) + ":" + distributed.weights_digest(self.nets.D)
        digests = distributed.gather(digest, self.dist)
        self.stats.write({"step": self.progress.step, "event": "ranks", "backend": self.dist.backend,
                          "ddp": isinstance(getattr(self.nets.g_train, "_orig_mod", self.nets.g_train),
                                            DistributedDataParallel),
                          "weights_sha256": digests})
        if len(set(digests)) != 1:
            raise TrainError(f"the {self.dist.world} processes ended with different weights: {digests}")


def dataset_cameras(root: Path) -> list[str]:
    """The cameras ("make model") of a shards folder's RAW files, as the shards record them; convert
    warns when a file comes from another camera."""
    return cameras(root)


# -- the loop --------------------------------------------------------------------------------------

def train(dataset: os.PathLike | str, run_dir: os.PathLike | str, cfg: TrainConfig, rt: Runtime = Runtime(),
          force: bool = False, on_step: Callable[[int], None] | None = None, progress_bar=None) -> TrainResult:
    """Train (or continue training) a model on a shards folder into ``run_dir``.

    Args:
        dataset: a shards folder or a prepare DATASET.
        run_dir: the RUN folder (locked for the run: a second run on it is refused).
        on_step: called with the global step after each step (and after a checkpoint due then).
        progress_bar: a tqdm-like factory for the per-epoch bar (``cli.py`` gives one).

    Raises:
        UserError: bad dataset, other config, missing VGG weights, OOM, a NaN loss, a locked RUN, ….
    """
    root, index, device, precision = check(dataset, cfg, rt)  # before RUN is touched
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    dist = distributed.init(device)
    try:
        with FolderLock(run_dir, "raw2rgb train") if dist.main else contextlib.nullcontext():
            return _train(root, index, precision, run_dir, cfg, rt, device, dist, force, on_step, progress_bar)
    except BaseException:
        if created and dist.main:  # a start refused while setting up leaves no folder either
            run.remove_if_unused(run_dir)
        raise
    finally:
        run.close_log(run_dir)
        dist.close()


def _train(root: Path, index: ShardIndex, precision: str, run_dir: Path, cfg: TrainConfig, rt: Runtime,
           device: torch.device, dist: Dist, force: bool, on_step: Callable[[int], None] | None,
           progress_bar) -> TrainResult:
    device = device_policy(device, dist)
    set_up = _set_up(root, index, precision, run_dir, cfg, rt, device, dist, force)
    if isinstance(set_up, TrainResult):
        return set_up
    loop, stages, train_set, val_set = set_up
    # -- the loop: stages → epochs → batches
    try:
        with guards.StopRequest() as stop:
            for stage in stages:
                if stage < loop.progress.stage:
                    continue
                epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs
                while loop.progress.epoch < epochs:
                    why = loop.epoch(stage, train_set, stop, on_step, progress_bar)
                    if why:
                        return TrainResult(run_dir, loop.steps_run, loop.progress.step, False,
                                           f"{run_dir}: {why} at step {loop.progress.step}; checkpoint saved, rerun "
                                           "the command to continue", loop.last_val,
                                           (stop.signal or signal.SIGTERM) if why == guards.INTERRUPTED else None)
                    loop.end_of_epoch(stage, val_set, val_set if val_set is not None else train_set)
                loop.end_of_stage(stage)
        loop.compare_ranks()
    finally:
        loop.stats.close()
    return TrainResult(run_dir, loop.steps_run, loop.progress.step, True,
                       f"{run_dir}: stage {stages[-1]} finished at step {loop.progress.step}", loop.last_val)


def device_policy(device: torch.device, dist: Dist) -> torch.device:
    """This process's device (its own GPU under DDP) and the CUDA kernel policy."""
    if device.type == "cuda":
        if dist.grouped:
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 parts (losses, norms) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    return device


def _set_up(root: Path, index: ShardIndex, precision: str, run_dir: Path, cfg: TrainConfig, rt: Runtime,
            device: torch.device, dist: Dist, force: bool
            ) -> TrainResult | tuple[_Loop, tuple[int, ...], ShardDataset, ShardDataset | None]:
    """RUN folder, networks and the resumed state (the dataset was checked by :func:`check`); a
    TrainResult when nothing is left to do. A start that this call began (it wrote RUN/config.json)
    and that fails before its first step removes what it wrote: a refused start never sticks."""
    identity = {"format": checkpoint.FORMAT, "config": cfg.to_json(), "dataset": str(root),
                "dataset_key": dataset_key(root), "colour": colour_source(root, index)}
    wrote = run.open_run(run_dir, identity, force) if dist.main else False
    distributed.barrier(dist)
    try:
        if not dist.main:
            run.open_run(run_dir, identity, False)  # the same checks; rank 0 has written it
        latest = state.read_latest(run_dir, identity)  # another run's checkpoint is refused before any write
        if dist.main:
            run.log_to_file(run_dir)
        stages = STAGES[rt.stages]
        prior = _fit_prior(root, run_dir, cfg, dist)
        # a schedule without stage 2 (the tiny preset's) needs no VGG16, whatever the weights say
        need_vgg = 2 in stages and cfg.stage2_epochs > 0 and cfg.weights.perceptual > 0
        nets = state.build(cfg, rt, device, dist, need_vgg=need_vgg, prior=prior)
        progress, opts = state.resume(run_dir, nets, cfg, precision, dist, latest)
    except BaseException:
        if wrote and not run.took_a_step(run_dir):
            run.close_log(run_dir)
            run.discard(run_dir)
        raise
    done = _finished(progress, stages, cfg, rt)
    if done:
        return TrainResult(run_dir, 0, progress.step, True, f"{run_dir}: {done}; nothing to do")
    amp = torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                         enabled=precision != "fp32")
    # the colour of files without a white balance: the prior's rule and gains (restored with a resumed
    # checkpoint), else the config's rule on this data
    wb = model_white_balance(nets.G) if nets.G.prior is not None else cfg.white_balance
    train_set, val_set = _datasets(root, index, cfg, dist, wb)
    loop = _Loop(root, run_dir, cfg, rt, device, dist, precision, nets, opts, progress,
                 run.Stats(run_dir, progress.stats_lines, dist.main), amp, dataset_cameras(root),
                 guards.FiniteTerms(run_dir, dist, device),
                 owner={"dataset_key": identity["dataset_key"], "colour": identity["colour"]})
    per_epoch = len(train_set) // (cfg.batch_size * dist.world)
    epochs = {1: cfg.stage1_epochs, 2: cfg.stage2_epochs}
    total = sum(epochs[st] * per_epoch for st in range(1, stages[-1] + 1))
    if rt.max_steps is not None:
        total = min(total, rt.max_steps)
    loop.pace = Pace(total, progress.step, str(device), cfg.preset)
    if dist.main:
        if progress.step:
            log.info("resuming %s at step %d (stage %d, epoch %d, batch %d)", run_dir, progress.step, progress.stage,
                     progress.epoch + 1, progress.batch)
        log.info("training %s on %s: %s, %s, %d train / %d val samples, batch %d × %d process(es)", run_dir, root,
                 cfg.preset, precision, index.count("train"), index.count("val"), cfg.batch_size,
                 dist.world)
    if progress.stage < stages[0]:
        log.warning("starting stage %d without a finished stage %d: the generator starts from %s", stages[0],
                    progress.stage, "its initialisation" if progress.step == 0 else f"step {progress.step}")
        loop.progress = Progress(stage=stages[0], step=progress.step, stats_lines=loop.stats.lines)
        loop.opts = state.optimisers(nets, cfg, stages[0], precision == "fp16")
    return loop, stages, train_set, val_set


__all__ = ["TrainConfig", "Runtime", "TrainError", "TrainResult", "train", "train_step", "validate", "dataset_cameras"]
