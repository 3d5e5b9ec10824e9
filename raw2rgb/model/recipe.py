"""The recipe of a training run and how it is put together: :class:`TrainConfig` (what a run's
results depend on), :class:`Runtime` (how to run it) and :func:`train_config`, the merge policy
``raw2rgb train`` uses (a preset, then a JSON file, then the options given), usable from Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from raw2rgb import config
from raw2rgb.config import FieldError, JsonConfig, checked
from raw2rgb.errors import ConfigError, UserError
from raw2rgb.model import losses
from raw2rgb.model.presets import PRESETS, DiscriminatorConfig, GeneratorConfig
from raw2rgb.pipeline import whitebalance

STAGES = {"1": (1,), "2": (2,), "all": (1, 2)}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LR_DECAYS = ("step", "cosine")


class TrainError(UserError):
    """A training run that cannot start or go on; the message is one line for the user."""


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """The recipe: everything a run's results depend on. Defaults are the paper's (docs/paper.md)."""

    preset: str = checked("paper", choices=PRESETS)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    stage1_epochs: int = checked(10, min=0)
    stage2_epochs: int = checked(30, min=0)
    batch_size: int = checked(8, min=1)  # per process
    lr_stage1: float = checked(2e-4, above=0)
    lr_g: float = checked(1e-4, above=0)
    lr_d: float = checked(4e-4, above=0)  # two time-scale update rule
    betas: tuple[float, float] = checked((0.5, 0.999), min=0, below=1)
    halve_every: int = checked(10, min=1)  # epochs (lr_decay "step")
    lr_decay: str = checked("step", choices=LR_DECAYS)  # step: halve every halve_every epochs (the paper); cosine: to
    # 1 % over each stage
    init_std: float = checked(0.02, above=0)
    ema: float = checked(0.0, min=0, below=1)  # decay of a moving average of G's weights (0: none, as the paper)
    weights: losses.LossWeights = field(default_factory=losses.LossWeights)
    crop: int | None = checked(None, min=8)  # random crop of the training patches (packed pixels)
    augment: bool = True  # Bayer-safe geometry on the fly (model/data.py)
    seed: int = checked(0, min=0)
    # where a RAW file has no white balance: pipeline/whitebalance.py (the prior's profile is fitted with it)
    white_balance: str = checked(whitebalance.DEFAULT_RULE, choices=whitebalance.RULES)

    def _check_together(self) -> None:
        if self.stage1_epochs + self.stage2_epochs == 0:
            raise FieldError(type(self).__name__, ("stage1_epochs",), "0 with stage2_epochs 0 would train nothing "
                             "(accepted: at least one epoch in one of the stages)")

    @classmethod
    def preset_config(cls, name: str, **overrides: Any) -> TrainConfig:
        if name not in PRESETS:
            raise TrainError(f"unknown preset {name!r} ({', '.join(PRESETS)})")
        preset = PRESETS[name]
        return cls(**{"preset": name, "generator": preset.generator, "discriminator": preset.discriminator,
                      **preset.schedule, **overrides})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        """As :meth:`JsonConfig.from_json`; configs written before the loss weights had their own
        dataclass (``w_attention``, ``w_adversarial``, ``w_perceptual``) are read too."""
        d = dict(d)
        legacy = {k[2:]: d.pop(k) for k in ("w_attention", "w_adversarial", "w_perceptual") if k in d}
        if legacy:
            d["weights"] = {**legacy, **d.get("weights", {})}
        return super().from_json(d)


@dataclass(frozen=True)
class Runtime(JsonConfig):
    """How to run, not what to learn: not part of a run's identity."""

    stages: str = checked("all", choices=STAGES)  # 1, 2 or all
    device: str = "auto"
    precision: str = checked("auto", choices=PRECISIONS)  # auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32
    compile: bool = False
    channels_last: bool = True  # on CUDA
    max_steps: int | None = checked(None, min=1)  # stop after this global step (a rerun with a larger one continues)
    checkpoint_every: int = checked(500, min=1)  # steps; also at every epoch's end
    log_every: int = checked(10, min=1)  # steps
    workers: int | None = checked(None, min=0)  # data-loading processes; None: 2 on CUDA, 0 on a CPU (its cores)
    samples: int = checked(4, min=0)  # images in each epoch's sample grid
    vgg_weights: str | None = None




def train_config(preset: str, config_file: os.PathLike | str | None = None,
                 changes: dict[str, Any] | None = None) -> TrainConfig:
    """A run's recipe: the preset, then the fields of ``config_file`` (a TrainConfig's JSON or a run's
    config.json; any subset), then ``changes`` (the options given). Each layer is checked field by
    field (types at any depth, unknown fields, ranges, finite numbers) as it is merged, before any
    work; a file that names another preset starts from that preset.

    Raises:
        ConfigError: unreadable JSON, unknown fields, values of the wrong type or out of range, naming
            the file when the value came from it.
    """
    base = TrainConfig.preset_config(preset).to_json()
    layers: list[tuple[str | None, dict]] = [(None, base)]
    if config_file is not None:
        loaded = config.read_json_object(config_file, "TrainConfig fields")
        loaded = loaded.get("config", loaded)  # a run's config.json holds {"config": …}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: \"config\" is not a JSON object of TrainConfig fields")
        if "preset" in loaded and loaded["preset"] != preset and loaded["preset"] in PRESETS:
            layers = [(None, TrainConfig.preset_config(loaded["preset"]).to_json())]
        layers.append((str(config_file), loaded))
    layers.append((None, changes or {}))
    return config.layered(TrainConfig, layers)
