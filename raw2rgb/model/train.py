"""`raw2rgb train`: the paper's two-stage recipe as one restartable run (DESIGN §3, §6).

Stage 1 trains G on ``L_rgb + 0.5 L_A``; stage 2 adds the discriminator, ``0.01 L_G`` and
``1 L_p`` with the two time-scale learning rates. The loop is one function read top to bottom:
set up → resume → per stage, per epoch: D step and G step per batch → validate → snapshot.

A RUN folder holds ``config.json`` (the :class:`TrainConfig` and the dataset's key),
``stats.jsonl`` (one JSON object per logged step and per validation), ``log.txt``,
``checkpoints/`` (``latest.pt``, ``stage1.pt``, ``final.pt``), ``samples/`` (a grid per epoch) and
``tensorboard/``. The same command on a finished RUN does nothing; on an interrupted one it
continues from ``latest.pt`` (whatever was logged after it is dropped); another config or
changed shards are refused unless ``force``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raw2rgb.config import JsonConfig
from raw2rgb.model import losses
from raw2rgb.model.discriminator import PRESETS as D_PRESETS
from raw2rgb.model.discriminator import Discriminator, DiscriminatorConfig
from raw2rgb.model.generator import PRESETS as G_PRESETS
from raw2rgb.model.generator import Generator, GeneratorConfig, init_weights

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CONFIG = "config.json"
STATS = "stats.jsonl"
STAGES = {"1": (1,), "2": (2,), "all": (1, 2)}


class TrainError(Exception):
    """A training run that cannot start or go on; the message is one line for the user."""


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """The recipe: everything a run's results depend on. Defaults are the paper's (DESIGN §6)."""

    preset: str = "paper"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    stage1_epochs: int = 10
    stage2_epochs: int = 30
    batch_size: int = 8  # per process
    lr_stage1: float = 2e-4
    lr_g: float = 1e-4
    lr_d: float = 4e-4  # two time-scale update rule
    betas: tuple[float, float] = (0.5, 0.999)
    halve_every: int = 10  # epochs
    init_std: float = 0.02
    w_attention: float = 0.5
    w_adversarial: float = 0.01
    w_perceptual: float = 1.0
    crop: int | None = None  # random crop of the training patches (packed pixels)
    augment: bool = True  # Bayer-safe geometry on the fly (model/data.py)
    seed: int = 0

    @classmethod
    def preset_config(cls, name: str, **overrides: Any) -> TrainConfig:
        if name not in G_PRESETS:
            raise ValueError(f"unknown preset {name!r} (paper, tiny)")
        return cls(preset=name, generator=G_PRESETS[name], discriminator=D_PRESETS[name], **overrides)


@dataclass(frozen=True)
class Runtime(JsonConfig):
    """How to run, not what to learn: not part of a run's identity."""

    stages: str = "all"  # 1, 2 or all
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32
    compile: bool = False
    channels_last: bool = True  # on CUDA
    max_steps: int | None = None  # stop after this global step (a rerun with a larger one continues)
    checkpoint_every: int = 500  # steps; also at every epoch's end
    log_every: int = 10  # steps
    workers: int = 2
    samples: int = 4  # images in each epoch's sample grid
    vgg_weights: str | None = None


@dataclass
class Progress:
    """Where a run is: the next batch to run is batch ``batch`` of ``epoch`` of ``stage``."""

    stage: int = 1
    epoch: int = 0
    batch: int = 0
    step: int = 0
    stats_lines: int = 0  # lines of stats.jsonl that belong to this state


@dataclass
class TrainResult:
    run_dir: Path
    steps_run: int
    step: int
    finished: bool
    message: str
    last_val: dict[str, float] = field(default_factory=dict)


# -- the distributed setting ----------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this run initialised the process group, and ends it

    def close(self) -> None:
        """End the process group this run started: a gloo/NCCL group left to the interpreter's exit
        can abort the process ("terminate called without an active exception")."""
        if self.owned:
            import torch.distributed as tdist

            tdist.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_dist(device: torch.device) -> Dist:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    owned = not tdist.is_initialized()
    if owned:
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.barrier()


# -- data -------------------------------------------------------------------------------------------

def epoch_batches(n: int, batch_size: int, seed: int, stage: int, epoch: int, dist: Dist) -> list[list[int]]:
    """This process's batches of one epoch: a permutation seeded by (seed, stage, epoch), cut into
    global batches of ``batch_size × world`` (the last partial one dropped), each split by rank."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stage, epoch]).generate_state(1)[0]))
    perm = torch.randperm(n, generator=g).tolist()
    per_step = batch_size * dist.world
    out = []
    for start in range(0, n - per_step + 1, per_step):
        chunk = perm[start : start + per_step]
        out.append(chunk[dist.rank * batch_size : (dist.rank + 1) * batch_size])
    return out


def _check_dataset(root: Path, cfg: TrainConfig) -> dict[str, Any]:
    from raw2rgb.pipeline.shards import ShardError, read_index, split_count

    try:
        index = read_index(root)
    except ShardError as e:
        raise TrainError(str(e)) from None
    if split_count(index, "train") == 0:
        raise TrainError(f"{root}: the train split is empty (no training samples); check prepare's --split")
    if int(index["scale"]) != cfg.generator.scale:
        raise TrainError(f"{root}: shards are at output scale {index['scale']}, the config's generator at "
                         f"{cfg.generator.scale}; rebuild the shards with --scale {cfg.generator.scale} or change "
                         "the config")
    size = index.get("crop")
    crop = cfg.crop or size
    if crop and (crop % 8 or (size and crop > size)):
        raise TrainError(f"{root}: patches of {crop} packed pixels; the generator needs a multiple of 8 no larger "
                         f"than the shards' {size} (use --crop)")
    return index


# -- the run folder ---------------------------------------------------------------------------------

def _prepare_run_dir(run_dir: Path, cfg: TrainConfig, dataset: Path, key: str, force: bool, dist: Dist) -> None:
    """Create RUN, or check that it is this config on this dataset (``force``: start over)."""
    wanted = {"format": CHECKPOINT_FORMAT, "config": cfg.to_json(), "dataset": str(dataset), "dataset_key": key}
    path = run_dir / CONFIG
    if path.is_file() and not force:
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise TrainError(f"{path}: unreadable; use --force to start this run over") from None
        if saved.get("config") != wanted["config"]:
            diff = sorted(k for k in set(saved.get("config", {})) | set(wanted["config"])
                          if saved.get("config", {}).get(k) != wanted["config"].get(k))
            raise TrainError(f"{run_dir} holds a run with another config (differs in {', '.join(diff)}); "
                             "use --force to start over, or another -o")
        if saved.get("dataset_key") != key:
            raise TrainError(f"{run_dir} was trained on other shards (the dataset changed since); use --force "
                             "to start over, or another -o")
        return
    if not dist.main:
        return
    if force and run_dir.exists():
        for name in ("checkpoints", "samples", "tensorboard"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for name in (STATS, "log.txt"):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
    elif run_dir.exists() and any(run_dir.iterdir()) and not path.is_file():
        raise TrainError(f"{run_dir} is not empty and holds no run; choose an empty or new folder")
    from raw2rgb.pipeline.stage import write_json

    write_json(path, wanted)


def _truncate_stats(path: Path, lines: int) -> None:
    """Keep the first ``lines`` lines: what was logged after the checkpoint is redone."""
    if not path.is_file():
        return
    kept = path.read_text().splitlines(keepends=True)[:lines]
    from raw2rgb.pipeline.stage import write_bytes

    write_bytes(path, "".join(kept).encode())


class _Stats:
    """stats.jsonl, TensorBoard scalars and log lines (rank 0 only)."""

    def __init__(self, run_dir: Path, lines: int, enabled: bool) -> None:
        self.path, self.lines, self.enabled, self.tb = run_dir / STATS, lines, enabled, None
        if enabled:
            _truncate_stats(self.path, lines)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.lines += 1
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "stage", "epoch"):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# -- checkpoints ------------------------------------------------------------------------------------

def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": json.dumps(np.random.get_state()[1].tolist()),
             "numpy_pos": int(np.random.get_state()[2]), "python": json.dumps(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(json.loads(state["numpy"]), dtype=np.uint32), state["numpy_pos"]))
    random.setstate((3, tuple(json.loads(state["python"])), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, nets: dict[str, nn.Module], opts: dict[str, Any], cfg: TrainConfig,
                    progress: Progress, cameras: list[str] | None = None) -> None:
    """One dict of state dicts, progress, RNG states, config, the training cameras and format;
    written atomically (a failed save raises)."""
    from raw2rgb.pipeline.stage import atomic_path

    blob = {"format": CHECKPOINT_FORMAT, "kind": "raw2rgb-train", "config": cfg.to_json(),
            "progress": dataclasses.asdict(progress), "rng": _rng_state(), "cameras": list(cameras or []),
            **{k: v.state_dict() for k, v in nets.items()},
            **{k: v.state_dict() for k, v in opts.items()}}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path: os.PathLike | str) -> dict[str, Any]:
    """A checkpoint's dict, loaded with ``weights_only=True`` on the CPU.

    Raises:
        TrainError: unreadable, not a raw2rgb checkpoint, or of another format version.
    """
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainError(f"{path}: no such checkpoint") from None
    except Exception as e:  # noqa: BLE001 - pickle, zip and OS errors all mean "not this file"
        raise TrainError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("kind") != "raw2rgb-train" or "G" not in blob:
        raise TrainError(f"{path}: not a raw2rgb checkpoint")
    if blob.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: checkpoint format {blob.get('format')}, this raw2rgb reads {CHECKPOINT_FORMAT}")
    return blob


# -- the step ---------------------------------------------------------------------------------------

@dataclass
class _Nets:
    G: nn.Module  # plain modules: state dicts, validation
    D: nn.Module
    g_train: nn.Module  # what the step calls: DDP and/or compiled wrappers
    d_train: nn.Module
    perceptual: nn.Module | None


def _set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def train_step(nets: _Nets, opts: dict[str, Any], batch: dict[str, torch.Tensor], stage: int, cfg: TrainConfig,
               amp: torch.autocast) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the loss terms (detached). Stage 2: the D step on
    (real, fake.detach()) first, then the G step with D's gradients off (pix2pix)."""
    x, y, s = batch["raw"], batch["rgb"], batch["saliency"]
    scaler = opts["scaler"]
    with amp:
        rgb, sal = nets.g_train(x)
    terms: dict[str, torch.Tensor] = {}
    if stage == 2:
        _set_requires_grad(nets.D, True)
        with amp:  # real and fake in one batch: InstanceNorm is per image, so this is exact
            scores = nets.d_train(torch.cat([x, x]), torch.cat([y, rgb.detach()]))
            real, fake = scores.chunk(2)
            loss_d = losses.lsgan_d(real, fake)
        opts["opt_D"].zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opts["opt_D"])
        terms["d"] = loss_d.detach()
        _set_requires_grad(nets.D, False)
    with amp:
        terms["rgb"] = losses.l1(rgb.float(), y)
        terms["attention"] = losses.attention(rgb.float(), sal.float(), y, s)
        total = terms["rgb"] + cfg.w_attention * terms["attention"]
        if stage == 2:
            terms["adversarial"] = losses.lsgan_g(nets.D(x, rgb))  # plain D: no DDP sync for this pass
            total = total + cfg.w_adversarial * terms["adversarial"]
            if nets.perceptual is not None:
                terms["perceptual"] = nets.perceptual(rgb, y)
                total = total + cfg.w_perceptual * terms["perceptual"]
    opts["opt_G"].zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(opts["opt_G"])
    scaler.update()
    terms["total"] = total
    return {k: v.detach().float() for k, v in terms.items()}


# -- validation and samples ---------------------------------------------------------------------------

@torch.no_grad()
def validate(G: nn.Module, loader, device: torch.device, amp: torch.autocast) -> dict[str, float]:
    """Mean per-image PSNR (255 scale, as in the paper) and SSIM over a split."""
    from raw2rgb.model import metrics
    from raw2rgb.model.data import to_model

    was = G.training
    G.eval()
    psnrs: list[float] = []
    ssims: list[float] = []
    for batch in loader:
        b = to_model(batch, device, non_blocking=True)
        with amp:
            out = G.rgb(b["raw"])
        out, ref = metrics.to_255(out), metrics.to_255(b["rgb"])
        psnrs += metrics.psnr(out, ref).tolist()
        ssims += metrics.ssim(out, ref).tolist()
    G.train(was)
    if not psnrs:
        return {}
    return {"val_psnr": metrics.mean_finite(psnrs), "val_ssim": float(np.mean(ssims)), "val_images": len(psnrs)}


@torch.no_grad()
def write_samples(G: nn.Module, batch: dict[str, torch.Tensor], path: Path, amp: torch.autocast) -> None:
    """A grid, one row per image: raw preview | output | target | predicted saliency."""
    from raw2rgb.model.report import sample_grid

    was = G.training
    G.eval()
    with amp:
        rgb, sal = G(batch["raw"])
    G.train(was)
    sample_grid(batch["raw"], rgb.float(), batch["rgb"], sal.float(), path)


# -- the loop --------------------------------------------------------------------------------------

def _precision(rt: Runtime, device: torch.device) -> str:
    p = rt.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if p not in ("bf16", "fp16", "fp32"):
        raise TrainError(f"unknown precision {p!r} (auto, bf16, fp16, fp32)")
    if p == "fp16" and device.type != "cuda":
        raise TrainError("--precision fp16 needs CUDA")
    return p


def _build(cfg: TrainConfig, rt: Runtime, device: torch.device, dist: Dist, need_vgg: bool) -> _Nets:
    G, D = Generator(cfg.generator), Discriminator(cfg.discriminator)
    gen = torch.Generator().manual_seed(cfg.seed)
    init_weights(G, cfg.init_std, gen)
    init_weights(D, cfg.init_std, gen)
    perceptual = None
    if need_vgg:
        try:
            perceptual = losses.Perceptual(losses.load_vgg_features(rt.vgg_weights)).to(device)
        except losses.WeightsMissing as e:
            raise TrainError(str(e)) from None
    fmt = torch.channels_last if rt.channels_last and device.type == "cuda" else torch.contiguous_format
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    g_train, d_train = G, D
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        g_train, d_train = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
    if rt.compile:
        g_train, d_train = torch.compile(g_train), torch.compile(d_train)
    return _Nets(G, D, g_train, d_train, perceptual)


def _optimisers(nets: _Nets, cfg: TrainConfig, stage: int, scaler_on: bool) -> dict[str, Any]:
    """Fresh Adam per stage; learning rates halve every ``halve_every`` epochs (StepLR per epoch)."""
    lr_g = cfg.lr_stage1 if stage == 1 else cfg.lr_g
    opt_g = torch.optim.Adam(nets.G.parameters(), lr=lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(nets.D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    step = max(1, cfg.halve_every)
    return {"opt_G": opt_g, "opt_D": opt_d,
            "sched_G": torch.optim.lr_scheduler.StepLR(opt_g, step, 0.5),
            "sched_D": torch.optim.lr_scheduler.StepLR(opt_d, step, 0.5),
            "scaler": torch.amp.GradScaler(enabled=scaler_on)}


def _resume(run_dir: Path, nets: _Nets, opts_for: Callable[[int], dict[str, Any]]) -> tuple[Progress, dict]:
    path = run_dir / "checkpoints" / "latest.pt"
    if not path.is_file():
        return Progress(), opts_for(1)
    blob = load_checkpoint(path)
    progress = Progress(**blob["progress"])
    nets.G.load_state_dict(blob["G"])
    nets.D.load_state_dict(blob["D"])
    opts = opts_for(progress.stage)
    for k, v in opts.items():
        v.load_state_dict(blob[k])
    _set_rng_state(blob["rng"])
    log.debug("resuming %s at step %d (stage %d, epoch %d, batch %d)", run_dir, progress.step, progress.stage,
             progress.epoch + 1, progress.batch)
    return progress, opts


class _StopRequest:
    """Ctrl-C / SIGTERM: finish the step in hand, save, stop."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (again to stop at once)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(dataset: os.PathLike | str, run_dir: os.PathLike | str, cfg: TrainConfig, rt: Runtime = Runtime(),
          force: bool = False, on_step: Callable[[int], None] | None = None, progress_bar=None) -> TrainResult:
    """Train (or continue training) a model on a shards folder into ``run_dir``.

    Args:
        dataset: a shards folder or a prepare DATASET.
        run_dir: the RUN folder.
        on_step: called with the global step after each step (and after a checkpoint due then).
        progress_bar: a tqdm-like factory for the per-epoch bar (``cli.py`` gives one).

    Raises:
        TrainError: bad dataset, other config, missing VGG weights, OOM, a NaN loss, ….
    """
    from raw2rgb.device import DeviceError, resolve_device
    from raw2rgb.pipeline.shards import shards_root

    run_dir, root = Path(run_dir), shards_root(dataset)
    if rt.stages not in STAGES:
        raise TrainError(f"unknown stage {rt.stages!r} (1, 2 or all)")
    try:
        device = resolve_device(rt.device)
    except DeviceError as e:
        raise TrainError(str(e)) from None
    dist = _init_dist(device)
    try:
        return _train(root, run_dir, cfg, rt, device, dist, force, on_step, progress_bar)
    finally:
        dist.close()


def _train(root: Path, run_dir: Path, cfg: TrainConfig, rt: Runtime, device: torch.device, dist: Dist, force: bool,
           on_step, progress_bar) -> TrainResult:
    from raw2rgb.pipeline.shards import ShardError, dataset_key

    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    index = _check_dataset(root, cfg)
    try:
        key = dataset_key(root)
    except ShardError as e:
        raise TrainError(str(e)) from None
    _prepare_run_dir(run_dir, cfg, root, key, force, dist)
    _barrier(dist)
    if dist.main:
        _log_to_file(run_dir / "log.txt")
    precision = _precision(rt, device)
    stages = STAGES[rt.stages]
    need_vgg = 2 in stages and cfg.w_perceptual > 0
    nets = _build(cfg, rt, device, dist, need_vgg)
    progress, opts = _resume(run_dir, nets, lambda st: _optimisers(nets, cfg, st, precision == "fp16"))
    done = _finished(progress, stages, cfg, rt)
    if done:
        return TrainResult(run_dir, 0, progress.step, True, f"{run_dir}: {done}; nothing to do")
    amp = torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
                         enabled=precision != "fp32")
    stats = _Stats(run_dir, progress.stats_lines, dist.main)
    if dist.main and progress.step:
        log.info("resuming %s at step %d (stage %d, epoch %d, batch %d)", run_dir, progress.step, progress.stage,
                 progress.epoch + 1, progress.batch)
    if dist.main:
        log.info("training %s on %s: %s, %s, %d train / %d val samples, batch %d × %d process(es)", run_dir, root,
                 cfg.preset, precision, index["splits"]["train"]["count"],
                 index["splits"].get("val", {}).get("count", 0), cfg.batch_size, dist.world)
    loop = _Loop(root, run_dir, cfg, rt, device, dist, nets, opts, progress, stats, amp, on_step, progress_bar)
    try:
        return loop.run(stages)
    finally:
        stats.close()


def _finished(progress: Progress, stages: tuple[int, ...], cfg: TrainConfig, rt: Runtime) -> str | None:
    last = stages[-1]
    epochs = cfg.stage1_epochs if last == 1 else cfg.stage2_epochs
    if progress.stage > last or (progress.stage == last and progress.epoch >= epochs):
        return f"stage {last} is finished (step {progress.step})"
    if rt.max_steps is not None and progress.step >= rt.max_steps:
        return f"reached --max-steps {rt.max_steps}"
    return None


def _log_to_file(path: Path) -> None:
    root = logging.getLogger("raw2rgb")
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path.resolve()) for h in root.handlers):
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


class _Loop:
    """The state of one training process between steps; :meth:`run` is the loop."""

    def __init__(self, root, run_dir, cfg, rt, device, dist, nets, opts, progress, stats, amp, on_step, bar):
        from raw2rgb.model.data import ShardDataset

        self.root, self.run_dir, self.cfg, self.rt, self.device, self.dist = root, run_dir, cfg, rt, device, dist
        self.nets, self.opts, self.p, self.stats, self.amp = nets, opts, progress, stats, amp
        self.on_step, self.bar = on_step, bar
        self.train_set = ShardDataset(root, "train", augment=cfg.augment, crop=cfg.crop, seed=cfg.seed,
                                      compact=True)
        try:
            self.val_set = ShardDataset(root, "val", compact=True)
            if len(self.val_set) == 0:
                self.val_set = None
        except Exception:  # noqa: BLE001 - no val split
            self.val_set = None
        if self.val_set is None and dist.main:
            log.warning("%s: no val split; no validation (prepare with --split giving val a share)", root)
        self.cameras = dataset_cameras(root)
        self.steps_run = 0
        self.last_val: dict[str, float] = {}
        self.bad = torch.zeros(8, dtype=torch.bool, device=device)
        self.term_names: list[str] = []
        self.last_terms: dict[str, torch.Tensor] = {}

    def _loader(self, dataset, batches):
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_sampler=batches, num_workers=self.rt.workers,
                          pin_memory=self.device.type == "cuda")

    def run(self, stages: tuple[int, ...]) -> TrainResult:
        if self.p.stage < stages[0]:
            log.warning("starting stage %d without a finished stage %d: the generator starts from %s",
                        stages[0], self.p.stage, "its initialisation" if self.p.step == 0 else f"step {self.p.step}")
            self.p = Progress(stage=stages[0], step=self.p.step, stats_lines=self.stats.lines)
            self.opts = _optimisers(self.nets, self.cfg, stages[0], self.opts["scaler"].is_enabled())
        with _StopRequest() as stop:
            for stage in stages:
                if stage < self.p.stage:
                    continue
                epochs = self.cfg.stage1_epochs if stage == 1 else self.cfg.stage2_epochs
                while self.p.epoch < epochs:
                    message = self._epoch(stage, stop)
                    if message:
                        return TrainResult(self.run_dir, self.steps_run, self.p.step, False, message, self.last_val)
                self._stage_done(stage)
        self._compare_ranks()
        return TrainResult(self.run_dir, self.steps_run, self.p.step, True,
                           f"{self.run_dir}: stage {stages[-1]} finished at step {self.p.step}", self.last_val)

    def _compare_ranks(self) -> None:
        """Under DDP every process must end with the same weights; record their digests."""
        if self.dist.world == 1:
            return
        digests: list[Any] = [None] * self.dist.world
        torch.distributed.all_gather_object(digests, weights_digest(self.nets.G) + ":" + weights_digest(self.nets.D))
        self.stats.write({"step": self.p.step, "event": "ranks", "weights_sha256": digests})
        if len(set(digests)) != 1:
            raise TrainError(f"the {self.dist.world} processes ended with different weights: {digests}")

    def _stage_done(self, stage: int) -> None:
        ckpt = self.run_dir / "checkpoints"
        if stage == 1:
            self.p = Progress(stage=2, step=self.p.step, stats_lines=self.stats.lines)
            self.opts = _optimisers(self.nets, self.cfg, 2, self.opts["scaler"].is_enabled())
        else:
            self.p = Progress(stage=3, step=self.p.step, stats_lines=self.stats.lines)
        self._checkpoint()
        if self.dist.main:
            name = "stage1.pt" if stage == 1 else "final.pt"
            shutil.copyfile(ckpt / "latest.pt", ckpt / f".{name}.partial")
            os.replace(ckpt / f".{name}.partial", ckpt / name)
            log.info("stage %d finished at step %d: %s", stage, self.p.step, ckpt / name)

    def _epoch(self, stage: int, stop: _StopRequest) -> str | None:
        """Run the rest of the current epoch; a message when the run must stop before its end."""
        cfg, p = self.cfg, self.p
        global_epoch = p.epoch + (cfg.stage1_epochs if stage == 2 else 0)
        self.train_set.set_epoch(global_epoch)
        batches = epoch_batches(len(self.train_set), cfg.batch_size, cfg.seed, stage, p.epoch, self.dist)
        if not batches:
            raise TrainError(f"{self.root}: {len(self.train_set)} training samples make no batch of "
                             f"{cfg.batch_size} × {self.dist.world}; lower --batch-size")
        todo = batches[p.batch :]
        bar = self.bar(total=len(batches), initial=p.batch, desc=f"stage {stage} epoch {p.epoch + 1}") \
            if self.bar and self.dist.main else None
        t0, n0 = time.perf_counter(), 0
        from raw2rgb.model.data import to_model

        for batch in self._loader(self.train_set, todo):
            batch = to_model(batch, self.device, non_blocking=True)
            if self.rt.channels_last and self.device.type == "cuda":
                batch = {k: v.contiguous(memory_format=torch.channels_last) if torch.is_tensor(v) and v.ndim == 4
                         else v for k, v in batch.items()}
            terms = self._step(batch, stage)
            p.batch += 1
            p.step += 1
            self.steps_run += 1
            n0 += cfg.batch_size * self.dist.world
            if bar is not None:
                bar.update(1)
                if p.step % self.rt.log_every == 0:
                    bar.set_postfix({k: f"{v.item():.4f}" for k, v in terms.items()})
            if p.step % self.rt.log_every == 0:
                self._log_step(stage, terms, n0 / (time.perf_counter() - t0))
                t0, n0 = time.perf_counter(), 0
            if p.step % self.rt.checkpoint_every == 0:
                self._checkpoint()
            if self.on_step is not None:
                self.on_step(p.step)
            if stop.requested or (self.rt.max_steps is not None and p.step >= self.rt.max_steps):
                self._checkpoint()
                if bar is not None:
                    bar.close()
                why = "interrupted" if stop.requested else f"reached --max-steps {self.rt.max_steps}"
                return f"{self.run_dir}: {why} at step {p.step}; checkpoint saved, rerun the command to continue"
        if bar is not None:
            bar.close()
        self.opts["sched_G"].step()
        if stage == 2:  # D is idle in stage 1
            self.opts["sched_D"].step()
        self._end_of_epoch(stage)
        p.epoch += 1
        p.batch = 0
        self._checkpoint()
        return None

    def _step(self, batch: dict[str, torch.Tensor], stage: int) -> dict[str, torch.Tensor]:
        try:
            terms = train_step(self.nets, self.opts, batch, stage, self.cfg, self.amp)
        except torch.OutOfMemoryError:
            raise TrainError(f"out of GPU memory at batch size {self.cfg.batch_size} on {self.device}; lower "
                             "--batch-size (or use --crop for smaller patches)") from None
        names = list(terms)
        if names != self.term_names[: len(names)] or len(names) != len(self.term_names):
            self._check_finite()
            self.term_names = names
            self.bad = torch.zeros(len(names), dtype=torch.bool, device=self.device)
        self.bad |= ~torch.isfinite(torch.stack(list(terms.values())))  # no GPU sync here
        self.last_terms = terms
        return terms

    def _check_finite(self) -> None:
        if self.term_names and bool(self.bad.any()):
            bad = [n for n, b in zip(self.term_names, self.bad.tolist()) if b and n != "total"]
            raise TrainError(f"loss {', '.join(bad) or 'total'} became NaN or infinite by step {self.p.step}; "
                             f"stopped, the last good checkpoint ({self.run_dir}/checkpoints/latest.pt) is kept. "
                             "Lower the learning rates or check the data")

    def _log_step(self, stage: int, terms: dict[str, torch.Tensor], rate: float) -> None:
        self._check_finite()
        record = {"step": self.p.step, "event": "step", "stage": stage, "epoch": self.p.epoch + 1,
                  **{k: round(float(v), 6) for k, v in terms.items()},
                  "lr_g": self.opts["opt_G"].param_groups[0]["lr"], "samples_per_s": round(rate, 2)}
        if stage == 2:
            record["lr_d"] = self.opts["opt_D"].param_groups[0]["lr"]
        self.stats.write(record)

    def _end_of_epoch(self, stage: int) -> None:
        self._check_finite()
        if not self.dist.main:
            _barrier(self.dist)
            return
        record: dict[str, Any] = {"step": self.p.step, "event": "epoch", "stage": stage, "epoch": self.p.epoch + 1}
        record.update({k: round(float(v), 6) for k, v in self.last_terms.items()})
        if self.val_set is not None:
            self.last_val = validate(self.nets.G, self._loader(self.val_set, _plain_batches(len(self.val_set),
                                     self.cfg.batch_size)), self.device, self.amp)
            record.update(self.last_val)
            log.info("stage %d epoch %d (step %d): val PSNR %.2f dB, SSIM %.4f", stage, self.p.epoch + 1,
                     self.p.step, self.last_val["val_psnr"], self.last_val["val_ssim"])
        self.stats.write(record)
        self._samples(stage)
        _barrier(self.dist)

    def _samples(self, stage: int) -> None:
        from torch.utils.data import default_collate

        from raw2rgb.model.data import to_model

        source = self.val_set if self.val_set is not None else self.train_set
        n = min(self.rt.samples, len(source))
        if n == 0:
            return
        batch = to_model(default_collate([source[i] for i in range(n)]), self.device)
        write_samples(self.nets.G, batch, self.run_dir / "samples" / f"stage{stage}-epoch{self.p.epoch + 1:03d}.png",
                      self.amp)

    def _checkpoint(self) -> None:
        self._check_finite()
        if self.dist.main:
            self.p.stats_lines = self.stats.lines
            save_checkpoint(self.run_dir / "checkpoints" / "latest.pt", {"G": self.nets.G, "D": self.nets.D},
                            self.opts, self.cfg, self.p, self.cameras)


def dataset_cameras(shards: Path, limit: int = 10_000) -> list[str]:
    """The cameras ("make model") of a prepare DATASET's RAW files, from its unpack sidecars
    (none for a bare shards folder); convert warns when a file comes from another camera."""
    unpack = shards.parent / "unpack"
    found: set[str] = set()
    if shards.name == "shards" and unpack.is_dir():
        for k, path in enumerate(sorted(unpack.glob("*.json"))):
            if k >= limit:
                break
            try:
                frame = json.loads(path.read_text()).get("frame", {})
            except (OSError, ValueError):
                continue
            name = " ".join(p for p in (frame.get("make"), frame.get("model")) if p)
            if name:
                found.add(name)
    return sorted(found)


def _plain_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def weights_digest(net: nn.Module) -> str:
    """sha256 of a network's parameters and buffers (to compare processes or runs)."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def iter_stats(run_dir: os.PathLike | str) -> Iterator[dict[str, Any]]:
    path = Path(run_dir) / STATS
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


__all__ = ["TrainConfig", "Runtime", "TrainError", "TrainResult", "train", "load_checkpoint", "save_checkpoint",
           "epoch_batches", "validate", "weights_digest", "iter_stats"]
