"""A training run's state: the networks and G's moving average, the named optimisers and schedules,
and where the run is; built fresh, resumed from RUN's latest checkpoint, and saved as a snapshot
(:class:`Snapshots`).

What a checkpoint holds is ``model/checkpoint.py``'s; this module decides what goes in it and how a
run picks it up again (the names of the state dicts, ``G``, ``D``, ``G_ema``, ``opt_G``, ``opt_D``,
``sched_G``, ``sched_D``, ``scaler``, are the checkpoint's: old checkpoints resume).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raw2rgb.errors import ConfigError
from raw2rgb.model import checkpoint, losses, run
from raw2rgb.model.discriminator import Discriminator
from raw2rgb.model.distributed import Dist
from raw2rgb.model.generator import Generator, init_weights
from raw2rgb.model.prior_fit import PriorFit
from raw2rgb.model.recipe import LR_DECAYS, Runtime, TrainConfig, TrainError
from raw2rgb.model.run import colour_words

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run is: the next batch to run is batch ``batch`` of ``epoch`` of ``stage``."""

    stage: int = 1
    epoch: int = 0
    batch: int = 0
    step: int = 0
    stats_lines: int = 0  # lines of stats.jsonl that belong to this state


# -- the networks ---------------------------------------------------------------------------------

@dataclass
class Nets:
    G: nn.Module  # plain modules: state dicts
    D: nn.Module
    g_train: nn.Module  # what the step calls: DDP and/or compiled wrappers
    d_train: nn.Module
    perceptual: nn.Module | None
    G_ema: nn.Module | None = None  # a moving average of G's weights (cfg.ema): validated, saved, converted

    @property
    def G_eval(self) -> nn.Module:
        """The generator to validate and convert with: the average when there is one."""
        return self.G_ema if self.G_ema is not None else self.G

    def update_average(self, decay: float, step: int) -> None:
        """After step ``step``: G's moving average (:func:`update_ema`), when the run keeps one."""
        if self.G_ema is not None:
            update_ema(self.G_ema, self.G, decay, step)


def build(cfg: TrainConfig, rt: Runtime, device: torch.device, dist: Dist, need_vgg: bool,
          prior: PriorFit | None) -> Nets:
    """G and D initialised from ``cfg.seed`` (the same on every rank), on ``device`` in the runtime's
    memory format, wrapped for the step (DDP under a process group, ``torch.compile`` when asked),
    with the VGG features of the perceptual loss when ``need_vgg`` and G's moving average when
    ``cfg.ema``."""
    G, D = Generator(cfg.generator), Discriminator(cfg.discriminator)
    gen = torch.Generator().manual_seed(cfg.seed)
    init_weights(G, cfg.init_std, gen)
    init_weights(D, cfg.init_std, gen)
    if prior is not None:
        prior.set_on(G.prior)
    fmt = torch.channels_last if rt.channels_last and device.type == "cuda" else torch.contiguous_format
    perceptual = None
    if need_vgg:
        perceptual = losses.Perceptual(losses.load_vgg_features(rt.vgg_weights)).to(device, memory_format=fmt)
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    g_train, d_train = G, D
    if dist.grouped:
        ids = [device.index] if device.type == "cuda" else None
        g_train, d_train = DistributedDataParallel(G, device_ids=ids), DistributedDataParallel(D, device_ids=ids)
    if rt.compile:
        g_train, d_train = torch.compile(g_train), torch.compile(d_train)
    g_ema = copy.deepcopy(G).requires_grad_(False) if cfg.ema > 0 else None
    return Nets(G, D, g_train, d_train, perceptual, g_ema)


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float, step: int) -> None:
    """``ema ← d·ema + (1 − d)·net`` for parameters (buffers copied), with d ramping up from 0 over
    the first steps (d = min(decay, (1 + step) / (10 + step))), so that the average starts as the
    network rather than its initialisation."""
    d = min(decay, (1 + step) / (10 + step))
    # one multi-tensor kernel per list, not one launch per parameter
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1 - d)
    buffers = list(ema.buffers())
    if buffers:
        torch._foreach_copy_(buffers, list(net.buffers()))


# -- the optimisers -------------------------------------------------------------------------------

@dataclass
class Optimisers:
    """A stage's optimisers, their learning-rate schedules and the fp16 loss scale; the field names
    are the checkpoint's keys."""

    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    sched_G: torch.optim.lr_scheduler.LRScheduler
    sched_D: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def states(self) -> dict[str, Any]:
        """Name → object with a ``state_dict()``, in the checkpoint's order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def load(self, blob: dict[str, Any]) -> None:
        for name, obj in self.states().items():
            obj.load_state_dict(blob[name])

    def step_schedules(self, stage: int) -> None:
        """At an epoch's end: G's learning rate, and D's in stage 2 (D is idle in stage 1)."""
        with warnings.catch_warnings():
            # a run resumed at the end of its first epoch steps the schedule before this process
            # has stepped the optimiser; the order is right (it stepped before the interruption)
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.sched_G.step()
            if stage == 2:
                self.sched_D.step()


def optimisers(nets: Nets, cfg: TrainConfig, stage: int, scaler_on: bool) -> Optimisers:
    """Fresh Adam per stage; learning rates stepped per epoch: halved every ``halve_every`` epochs
    (the paper), or a cosine from the stage's rate to 1 % of it at the stage's end — the weights a
    short run ends with are then not one noisy step of a high rate."""
    lr_g = cfg.lr_stage1 if stage == 1 else cfg.lr_g
    fused = next(nets.G.parameters()).is_cuda  # one kernel for the whole update (CUDA only)
    opt_g = torch.optim.Adam(nets.G.parameters(), lr=lr_g, betas=cfg.betas, fused=fused)
    opt_d = torch.optim.Adam(nets.D.parameters(), lr=cfg.lr_d, betas=cfg.betas, fused=fused)
    if cfg.lr_decay not in LR_DECAYS:
        raise TrainError(f"unknown lr_decay {cfg.lr_decay!r} ({', '.join(LR_DECAYS)})")
    if cfg.lr_decay == "cosine":
        epochs = max(1, cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs)
        sched = [torch.optim.lr_scheduler.CosineAnnealingLR(o, epochs, eta_min=o.param_groups[0]["lr"] * 0.01)
                 for o in (opt_g, opt_d)]
    else:
        sched = [torch.optim.lr_scheduler.StepLR(o, max(1, cfg.halve_every), 0.5) for o in (opt_g, opt_d)]
    return Optimisers(opt_g, opt_d, sched[0], sched[1], torch.amp.GradScaler(enabled=scaler_on))


# -- resume and snapshot --------------------------------------------------------------------------

def read_latest(run_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """RUN's latest checkpoint (None when there is none), once it is known to be this run's.

    A checkpoint carries its run's config (the seed and the networks included) and the key and
    colour source of the dataset it was trained on (``run``; files of before it carry the config
    only). Another run's file, copied or restored over this one's, would otherwise resume in
    silence (with the other seed's weights, or a colour prior fitted on other data than
    RUN/profile.json) and be saved again under this run's name, or end in a ``load_state_dict``
    traceback for another architecture. Checked before anything in RUN is written.

    Raises:
        TrainError: the checkpoint belongs to another run, naming the fields that differ.
        CheckpointError: unreadable or corrupted.
    """
    path = run.checkpoint(run_dir)
    if not path.is_file():
        return None
    blob = checkpoint.load(path)
    if "run" not in blob:  # written before checkpoints recorded their data: the config alone can be checked
        log.warning("%s: written before checkpoints recorded their dataset; its config is this run's, its data "
                    "cannot be checked (use --force to start over if it came from another run)", path)
    differences = _other_run(blob, identity)
    if differences:
        raise TrainError(f"{path}: belongs to another run ({differences}); put this run's checkpoint back, or use "
                         "--force to start this run over")
    return blob


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 16 else text[:12] + "…"


def _other_run(blob: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """How a checkpoint's run differs from ``identity`` (``seed 1, this run 0``), or None."""
    saved = blob.get("config")
    try:
        saved = TrainConfig.from_json(saved).to_json()  # a config of an older raw2rgb, completed
    except ConfigError as e:
        return f"its config is not one this raw2rgb reads: {e}"
    differ = [(name, old, new) for name, old, new in _leaves(saved, identity["config"]) if old != new]
    owner = blob.get("run") or {}
    for key in ("dataset_key", "colour"):  # other shards usually have another colour too: the key says enough
        if key in owner and owner[key] != identity.get(key):
            differ.append((key, owner[key], identity.get(key)))
            break
    if not differ:
        return None
    words = [f"{name} {_shown(old)}, this run {_shown(new)}" if name != "colour" else
             f"colour from {colour_words(old)}, this run's from {colour_words(new)}" for name, old, new in differ]
    return "; ".join(words[:3]) + (f"; and {len(words) - 3} more" if len(words) > 3 else "")


def _leaves(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted name, old value, new value) of two JSON configs, nested configs field by field."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [leaf for key in sorted(set(old) | set(new))
                for leaf in _leaves(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [(prefix[:-1], old, new)]


def resume(run_dir: Path, nets: Nets, cfg: TrainConfig, precision: str, dist: Dist,
           blob: dict[str, Any] | None = None) -> tuple[Progress, Optimisers]:
    """The progress and optimisers of RUN's latest checkpoint (fresh ones when there is none), with
    the networks' weights and the RNG states restored; ``blob``: the checkpoint as
    :func:`read_latest` gave it (read here when not given)."""
    path = run.checkpoint(run_dir)
    if blob is None and path.is_file():
        blob = checkpoint.load(path)
    if blob is None:
        return Progress(), optimisers(nets, cfg, 1, precision == "fp16")
    progress = Progress(**blob["progress"])
    saved = blob.get("precision") or ("fp16" if blob.get("scaler") else "bf16 or fp32")
    if (saved == "fp16") != (precision == "fp16"):
        raise TrainError(f"{path}: written with {saved} training, resumed with --precision {precision}; fp16 keeps a "
                         "loss scale the others do not: resume with the precision the run started with, or --force")
    world = int(blob.get("world", 1))
    if world != dist.world and progress.batch > 0:
        raise TrainError(f"{path}: written by {world} process(es) in the middle of an epoch; resume it with {world} "
                         "(torchrun --nproc_per_node), or finish the epoch first")
    nets.G.load_state_dict(blob["G"])
    nets.D.load_state_dict(blob["D"])
    if nets.G_ema is not None:
        nets.G_ema.load_state_dict(blob.get("G_ema", blob["G"]))
    opts = optimisers(nets, cfg, progress.stage, precision == "fp16")
    opts.load(blob)
    checkpoint.set_rng_state(blob["rng"])
    return progress, opts


@dataclass(frozen=True)
class Snapshots:
    """Where a run's checkpoints go and what each records beside the state: the config, the
    cameras of the data, the number of processes, the precision, and ``owner``, the dataset's key
    and colour source, by which a resume knows the file is its run's (:func:`read_latest`)."""

    run_dir: Path
    cfg: TrainConfig
    cameras: list[str]
    world: int
    precision: str
    owner: dict[str, Any]

    def save(self, nets: Nets, opts: Optimisers, progress: Progress, name: str | None = None) -> None:
        """Save RUN/checkpoints/latest.pt, and copy it to ``name`` when given (one process writes)."""
        latest = run.checkpoint(self.run_dir)
        ema = {"G_ema": nets.G_ema} if nets.G_ema is not None else {}
        checkpoint.save(latest, {"G": nets.G, "D": nets.D, **ema, **opts.states()}, self.cfg.to_json(),
                        dataclasses.asdict(progress), self.cameras, self.world, self.precision, run=self.owner)
        if name:
            partial = latest.with_name(f".{name}.partial")
            shutil.copyfile(latest, partial)
            os.replace(partial, latest.with_name(name))
