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
from raw2rgb.device import device_field
from raw2rgb.errors import ConfigError, UserError
from raw2rgb.model.presets import PRESETS, DiscriminatorConfig, GeneratorConfig
from raw2rgb.model.terms import LossWeights
from raw2rgb.pipeline import whitebalance

STAGES = {"1": (1,), "2": (2,), "all": (1, 2)}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LR_DECAYS = ("step", "cosine")


class TrainError(UserError):
    """A training run that cannot start or go on; the message is one line for the user."""


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """The recipe: everything a run's results depend on. Defaults are the paper's (docs/paper.md)."""

    preset: str = checked("paper", choices=PRESETS, option=False)  # the CLI's --preset (its default: the registry's)
    # the networks: from the preset or a --config file; generator.scale and binning from the shards (train_config)
    generator: GeneratorConfig = checked(default_factory=GeneratorConfig, option=False)
    discriminator: DiscriminatorConfig = checked(default_factory=DiscriminatorConfig, option=False)
    stage1_epochs: int = checked(10, min=0, option=False)  # the CLI's --epochs E1,E2
    stage2_epochs: int = checked(30, min=0, option=False)
    batch_size: int = checked(8, min=1, metavar="N", help="Batch size per process (paper code 8).")
    lr_stage1: float = checked(2e-4, above=0, metavar="LR", help="Learning rate of stage 1.")
    lr_g: float = checked(1e-4, above=0, metavar="LR", help="G's learning rate in stage 2.")
    lr_d: float = checked(4e-4, above=0, metavar="LR", help="D's learning rate in stage 2 (two time-scale rule).")
    betas: tuple[float, float] = checked((0.5, 0.999), min=0, below=1, metavar="B1,B2", help="Adam's betas.")
    halve_every: int = checked(10, min=1, metavar="EPOCHS", help="--lr-decay step: halve the rates this often.")
    lr_decay: str = checked("step", choices=LR_DECAYS, help="step: halve every --halve-every epochs (the paper); "
                            "cosine: to 1 % over each stage.")
    init_std: float = checked(0.02, above=0, metavar="STD", help="Standard deviation of the initial weights.")
    ema: float = checked(0.0, min=0, below=1, metavar="DECAY",
                         help="Decay of a moving average of G's weights, used for validation and saved (0: none, "
                              "as the paper).")
    weights: LossWeights = field(default_factory=LossWeights)
    crop: int | None = checked(None, min=8, metavar="C",
                               help="Random crop of the training patches, packed pixels (a multiple of 8).")
    augment: bool = checked(True, help="Bayer-safe flips and transposes on the fly.")
    seed: int = checked(0, min=0, help="Random seed (data order, augmentation, init).")
    # the prior's profile is fitted with it (pipeline/whitebalance.py)
    white_balance: str = checked(whitebalance.DEFAULT_RULE, choices=whitebalance.RULES,
                                 help="For RAW files without a white balance (ZRR mosaics): dataset (one grey world "
                                      "over the train split) or frame-* (an estimate over each whole frame).")

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

    stages: str = checked("all", choices=STAGES, help="Stages to run.")
    device: str = device_field()
    precision: str = checked("auto", choices=PRECISIONS, help="auto: bf16 autocast on CUDA, fp32 on CPU.")
    compile: bool = checked(False, help="torch.compile the networks.")
    channels_last: bool = checked(True, help="Channels-last memory format on CUDA.")
    max_steps: int | None = checked(None, min=1, metavar="N", help="Stop (with a checkpoint) at this global step; "
                                    "rerun with a larger one to go on.")
    checkpoint_every: int = checked(500, min=1, metavar="STEPS", help="Checkpoint interval (also at every epoch's "
                                                                      "end).")
    log_every: int = checked(10, min=1, metavar="STEPS", help="stats.jsonl interval.")
    workers: int | None = checked(None, min=0, metavar="N", help="Data-loading processes [default: 2 on CUDA, 0 on a "
                                  "CPU (they would take its cores)].")
    samples: int = checked(4, min=0, metavar="N", help="Images in each epoch's sample grid.")
    vgg_weights: str | None = checked(None, metavar="PTH", help="VGG16 ImageNet weights [default: torchvision's "
                                      "cache].")

    def stop_at(self, step: int) -> str | None:
        """Why a run stops once global step ``step`` is done: ``max_steps`` reached (None: it goes on)."""
        if self.max_steps is not None and step >= self.max_steps:
            return f"reached --max-steps {self.max_steps}"
        return None


def train_config(preset: str | None = None, config_file: os.PathLike | str | None = None,
                 changes: dict[str, Any] | None = None, dataset: os.PathLike | str | None = None) -> TrainConfig:
    """A run's recipe: the preset (None: the registry's default), then the fields of ``config_file`` (a
    TrainConfig's JSON or a run's config.json; any subset), then ``changes`` (the options given), then
    what the shards of ``dataset`` decide (the generator's output scale and binning: a model learns
    the resolution of its data). Each layer is checked field by field (types at any depth, unknown
    fields, ranges, finite numbers) as it is merged, before any work; a file that names another preset
    starts from that preset. ``raw2rgb train`` is this with its options as ``changes``.

    Raises:
        ConfigError: unreadable JSON, unknown fields, values of the wrong type or out of range, naming
            the file when the value came from it.
        ShardError: ``dataset`` holds no readable shards.
    """
    preset = preset or PRESETS.default
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
    if dataset is not None:
        from raw2rgb.pipeline.shards import read_index, shards_root
        index = read_index(shards_root(dataset))
        layers.append((str(dataset), {"generator": {"scale": index.scale, "binning": index.binning or 1}}))
    return config.layered(TrainConfig, layers)
