"""`raw2rgb train`: the two-stage recipe as one restartable run.

Stage 1 trains G on ``L_rgb + 0.5 L_A``; stage 2 adds the discriminator, ``0.01 L_G`` and
``1 L_p`` with the two time-scale learning rates (the weights and terms: ``model/terms.py``).
The file reads in the order a run goes: :func:`train` → :func:`check` → set up and resume →
the stages and their epochs (:func:`_run_stages`) → an epoch's batches (:class:`_Loop`) → the D
step and the G step (:func:`train_step`) → log → validate → snapshot.

What the loop uses has a module of its own: the networks, optimisers and progress, and how they
are built, resumed and saved, ``model/state.py``; what stops a run early (signals, NaN losses, a
GPU out of memory) ``model/guards.py``; the colour prior's fitting ``model/prior_fit.py``; the
dataset's checks, the train and val sets and their loaders ``model/data.py``; the device and its
precision ``device.py``; the RUN folder's files and stats records ``model/run.py``; the time
estimate ``model/pace.py``; ranks and agreed decisions ``model/distributed.py``; the checkpoint
format ``model/checkpoint.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from raw2rgb.device import autocast, device_policy, resolve_device, resolve_precision
from raw2rgb.files import FolderLock
from raw2rgb.model import checkpoint, distributed, guards, prior_fit, run, state
from raw2rgb.model.data import ShardDataset, check_dataset, loader, to_model, training_sets
from raw2rgb.model.distributed import Dist
from raw2rgb.model.evaluate import score, summarise
from raw2rgb.model.pace import Pace
from raw2rgb.model.pictures import grid_rows, save_png
from raw2rgb.model.prior import model_white_balance
from raw2rgb.model.recipe import STAGES, Runtime, TrainConfig, TrainError
from raw2rgb.model.state import Nets, Optimisers, Progress
from raw2rgb.model.terms import LOSS_TERMS, LossWeights, StepTensors, lsgan_d, objective
from raw2rgb.pipeline.shards import ShardIndex, cameras, colour_source, dataset_key, shards_root

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


def check(dataset: os.PathLike | str, cfg: TrainConfig, rt: Runtime, world: int | None = None
          ) -> tuple[Path, ShardIndex, torch.device, str]:
    """Everything a run can be refused for before it writes anything: the device and its
    precision, the shards and what the config asks of them (scale, crop, a batch's worth of
    samples). :func:`train` calls it before it touches RUN and ``train --dry-run`` calls it too,
    so a plan that is printed is one the run accepts and a refused start leaves nothing behind.

    Returns:
        The shards folder, its index, the device and the precision the run will use.

    Raises:
        UserError: the first thing that would refuse the run, in one line.
    """
    device = resolve_device(rt.device)
    precision = resolve_precision(rt.precision, device)
    if rt.vgg_weights is not None and not Path(rt.vgg_weights).is_file():
        raise TrainError(f"{rt.vgg_weights}: no such VGG16 weights file (--vgg-weights)")
    root = shards_root(dataset)
    world = world if world is not None else int(os.environ.get("WORLD_SIZE", "1"))
    return root, check_dataset(root, cfg, world), device, precision


# -- set up and resume --------------------------------------------------------------------------------

def _train(root: Path, index: ShardIndex, precision: str, run_dir: Path, cfg: TrainConfig, rt: Runtime,
           device: torch.device, dist: Dist, force: bool, on_step: Callable[[int], None] | None,
           progress_bar) -> TrainResult:
    """This process's run: its device, RUN and the resumed state; nothing more when the run is
    done; else the data, the loop's bookkeeping, and the stages."""
    device = device_policy(device, dist.local_rank if dist.grouped else None)
    stages = STAGES[rt.stages]
    identity = {"format": checkpoint.FORMAT, "config": cfg.to_json(), "dataset": str(root),
                "dataset_key": dataset_key(root), "colour": colour_source(root, index)}
    nets, opts, progress = _open(root, run_dir, identity, cfg, rt, device, precision, dist, force, stages)
    done = _finished(progress, stages, cfg, rt)
    if done:
        return TrainResult(run_dir, 0, progress.step, True, f"{run_dir}: {done}; nothing to do")
    # the colour of files without a white balance: the prior's rule and gains (restored with a resumed
    # checkpoint), else the config's rule on this data
    wb = model_white_balance(nets.G) if nets.G.prior is not None else cfg.white_balance
    train_set, val_set = training_sets(root, index, cfg, wb, dist.main)
    stats = run.Stats(run_dir, progress.stats_lines, dist.main)
    per_epoch = len(train_set) // (cfg.batch_size * dist.world)
    total = sum(_epochs(cfg, st) * per_epoch for st in range(1, stages[-1] + 1))
    pace = Pace(min(total, rt.max_steps or total), progress.step, str(device), cfg.preset)
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
        progress = Progress(stage=stages[0], step=progress.step, stats_lines=progress.stats_lines)
        opts = state.optimisers(nets, cfg, stages[0], precision == "fp16")
    owner = {"dataset_key": identity["dataset_key"], "colour": identity["colour"]}
    loop = _Loop(run_dir, cfg, rt, dist, device, autocast(device, precision), nets, opts, progress,
                 state.Snapshots(run_dir, cfg, cameras(root, index), dist.world, precision, owner), stats,
                 guards.FiniteTerms(run_dir, dist, device), pace)
    return _run_stages(loop, stages, train_set, val_set, on_step, progress_bar)


def _open(root: Path, run_dir: Path, identity: dict[str, Any], cfg: TrainConfig, rt: Runtime, device: torch.device,
          precision: str, dist: Dist, force: bool, stages: tuple[int, ...]) -> tuple[Nets, Optimisers, Progress]:
    """RUN folder, the colour prior, the networks and the resumed state (the dataset was checked
    by :func:`check`). A start that this call began (it wrote RUN/config.json) and that fails
    before its first step removes what it wrote: a refused start never sticks."""
    wrote = run.open_run(run_dir, identity, force) if dist.main else False
    distributed.barrier(dist)
    try:
        if not dist.main:
            run.open_run(run_dir, identity, False)  # the same checks; rank 0 has written it
        latest = state.read_latest(run_dir, identity)  # another run's checkpoint is refused before any write
        if dist.main:
            run.log_to_file(run_dir)
        prior = prior_fit.fit_for_run(root, run_dir, cfg, dist)
        # a schedule without stage 2 (the tiny preset's) needs no VGG16, whatever the weights say
        need_vgg = cfg.weights.perceptual > 0 and any(st in stages and _epochs(cfg, st) > 0
                                                      for st in LOSS_TERMS["perceptual"].stages)
        nets = state.build(cfg, rt, device, dist, need_vgg=need_vgg, prior=prior)
        progress, opts = state.resume(run_dir, nets, cfg, precision, dist, latest)
    except BaseException:
        if wrote and not run.took_a_step(run_dir):
            run.close_log(run_dir)
            run.discard(run_dir)
        raise
    return nets, opts, progress


def _finished(progress: Progress, stages: tuple[int, ...], cfg: TrainConfig, rt: Runtime) -> str | None:
    """Why a resumed run has nothing left to do (its last stage is done, or ``max_steps``), or None."""
    last = stages[-1]
    if progress.stage > last or (progress.stage == last and progress.epoch >= _epochs(cfg, last)):
        return f"stage {last} is finished (step {progress.step})"
    return rt.stop_at(progress.step)


def _epochs(cfg: TrainConfig, stage: int) -> int:
    return cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs


# -- the stages and their epochs ----------------------------------------------------------------------

def _run_stages(loop: _Loop, stages: tuple[int, ...], train_set: ShardDataset, val_set: ShardDataset | None,
                on_step: Callable[[int], None] | None, progress_bar) -> TrainResult:
    """Per stage, per epoch: the epoch's batches, then its end (validation, samples, checkpoint);
    per stage its checkpoint; at the end, the ranks' weights compared."""
    last_val: dict[str, float] = {}
    try:
        with guards.StopRequest() as stop:
            for stage in stages:
                if stage < loop.progress.stage:
                    continue
                while loop.progress.epoch < _epochs(loop.cfg, stage):
                    why = loop.epoch(stage, train_set, stop, on_step, progress_bar)
                    if why:
                        return TrainResult(loop.run_dir, loop.steps_run, loop.progress.step, False,
                                           f"{loop.run_dir}: {why} at step {loop.progress.step}; checkpoint saved, "
                                           "rerun the command to continue", last_val,
                                           (stop.signal or signal.SIGTERM) if why == guards.INTERRUPTED else None)
                    last_val = loop.end_of_epoch(stage, val_set, val_set if val_set is not None else train_set)
                loop.end_of_stage(stage)
        distributed.compare_ranks([loop.nets.G, loop.nets.D], loop.nets.g_train, loop.progress.step, loop.dist,
                                  loop.stats)
    finally:
        loop.stats.close()
    return TrainResult(loop.run_dir, loop.steps_run, loop.progress.step, True,
                       f"{loop.run_dir}: stage {stages[-1]} finished at step {loop.progress.step}", last_val)


# -- an epoch's batches -------------------------------------------------------------------------------

@dataclass
class _Loop:
    """What an epoch's steps, logs and snapshots share (one training process)."""

    run_dir: Path
    cfg: TrainConfig
    rt: Runtime
    dist: Dist
    device: torch.device
    amp: torch.autocast
    nets: Nets
    opts: Optimisers
    progress: Progress
    snapshots: state.Snapshots
    stats: run.Stats
    finite: guards.FiniteTerms
    pace: Pace
    last_terms: dict[str, torch.Tensor] = field(default_factory=dict)  # the last step's, for the epoch's record

    @property
    def steps_run(self) -> int:
        """Steps taken by this process (the pace counts from the step it started at)."""
        return self.progress.step - self.pace.done

    def epoch(self, stage: int, train_set: ShardDataset, stop: guards.StopRequest,
              on_step: Callable[[int], None] | None, progress_bar) -> str | None:
        """The rest of this epoch's batches; why it stopped early (after a checkpoint), or None."""
        progress, cfg, rt, dist = self.progress, self.cfg, self.rt, self.dist
        train_set.set_epoch(progress.epoch + (cfg.stage1_epochs if stage == 2 else 0))
        batches = distributed.epoch_batches(len(train_set), cfg.batch_size, cfg.seed, stage, progress.epoch, dist)
        bar = None
        if progress_bar and dist.main:
            bar = progress_bar(total=len(batches), initial=progress.batch,
                               desc=f"stage {stage} epoch {progress.epoch + 1}")
        per_step = cfg.batch_size * dist.world  # samples a step takes over every process
        t0, seen = time.perf_counter(), 0
        try:
            for batch in loader(train_set, batches[progress.batch :], self.device, rt.workers):
                terms = self.step(stage, batch)
                seen += per_step
                if dist.main:
                    self.pace.note(progress.step, stage, progress.epoch + 1, _epochs(cfg, stage), per_step,
                                   terms["total"])
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
                # -- stop early (a stop request is decided by all ranks together)
                stopping = stop.agreed(dist, self.device, progress.step, last_batch=progress.batch == len(batches))
                why = guards.INTERRUPTED if stopping else rt.stop_at(progress.step)
                if why:
                    self.snapshot()
                    return why
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
        with guards.out_of_memory(self.cfg.batch_size, self.device):
            terms = train_step(self.nets, self.opts, batch, stage, self.cfg.weights, self.amp)
        self.nets.update_average(self.cfg.ema, self.progress.step)
        self.finite.note(terms, self.progress.step)
        self.last_terms = terms
        self.progress.batch += 1
        self.progress.step += 1
        return terms

    def log_step(self, stage: int, terms: dict[str, torch.Tensor], rate: float) -> None:
        self.finite.check(self.progress.step)
        rates = {"lr_g": self.opts.opt_G.param_groups[0]["lr"], "samples_per_s": round(rate, 2)}
        if stage == 2:
            rates["lr_d"] = self.opts.opt_D.param_groups[0]["lr"]
        self.stats.write(run.progress_record("step", self.progress.step, stage, self.progress.epoch + 1, terms,
                                             **rates))

    def snapshot(self, name: str | None = None) -> None:
        """Save RUN/checkpoints/latest.pt (rank 0), and copy it to ``name`` when given."""
        self.finite.check(self.progress.step)
        if not self.dist.main:
            return
        self.progress.stats_lines = self.stats.lines
        self.snapshots.save(self.nets, self.opts, self.progress, name)

    def end_of_epoch(self, stage: int, val_set: ShardDataset | None, sample_source: ShardDataset
                     ) -> dict[str, float]:
        """Schedules, validation, the epoch's record and its sample grid (rank 0; the others wait), the
        next epoch's checkpoint. Returns the validation's metrics ({} where this process has none)."""
        self.opts.step_schedules(stage)
        self.finite.check(self.progress.step)
        val: dict[str, float] = {}
        epoch = self.progress.epoch + 1
        if self.dist.main:
            if val_set is not None:
                n, size = len(val_set), self.cfg.batch_size
                batches = [list(range(i, min(n, i + size))) for i in range(0, n, size)]
                val = validate(self.nets.G_eval, loader(val_set, batches, self.device, self.rt.workers), self.device,
                               self.amp)
                log.info("stage %d epoch %d (step %d): val PSNR %.2f dB, SSIM %.4f", stage, epoch,
                         self.progress.step, val["val_psnr"], val["val_ssim"])
            self.stats.write(run.progress_record("epoch", self.progress.step, stage, epoch, self.last_terms, **val))
            n = min(self.rt.samples, len(sample_source))
            if n:
                batch = to_model(default_collate([sample_source[i] for i in range(n)]), self.device)
                sample_source.close()  # no open HDF5 handle for the next loader's forked workers
                write_samples(self.nets.G_eval, batch, self.run_dir / run.SAMPLES / f"stage{stage}-epoch"
                              f"{epoch:03d}.png", self.amp)
        distributed.barrier(self.dist)
        self.progress.epoch += 1
        self.progress.batch = 0
        self.snapshot()
        return val

    def end_of_stage(self, stage: int) -> None:
        """The stage's checkpoint; the next stage starts with fresh optimisers (its loss scaling this one's)."""
        self.progress = Progress(stage=stage + 1, step=self.progress.step, stats_lines=self.stats.lines)
        if stage == 1:
            self.opts = state.optimisers(self.nets, self.cfg, 2, self.opts.scaler.is_enabled())
        name = run.STAGE1 if stage == 1 else run.FINAL
        self.snapshot(name)
        if self.dist.main:
            log.info("stage %d finished at step %d: %s", stage, self.progress.step, run.checkpoint(self.run_dir, name))


# -- the step -----------------------------------------------------------------------------------------

def train_step(nets: Nets, opts: Optimisers, batch: dict[str, torch.Tensor], stage: int,
               weights: LossWeights, amp: torch.autocast) -> dict[str, torch.Tensor]:
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
            loss_d = lsgan_d(real, fake)
        opts.opt_D.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opts.opt_D)
        terms["d"] = loss_d.detach()
        _set_requires_grad(nets.D, False)
    with amp:  # the G step: the objective's terms (model/terms.py), D frozen
        g_terms, total = objective(weights, StepTensors(
            x, y, s, rgb, sal, stage, D=nets.D, perceptual=nets.perceptual))  # a term runs in its own stages
    terms.update(g_terms)
    opts.opt_G.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(opts.opt_G)
    scaler.update()
    terms["total"] = total
    return {k: v.detach().float() for k, v in terms.items()}


def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


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


__all__ = ["TrainConfig", "Runtime", "TrainError", "TrainResult", "train", "check", "train_step", "validate"]
