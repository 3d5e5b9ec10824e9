"""What builds the networks (:class:`GeneratorConfig`, :class:`DiscriminatorConfig`) and the named
recipes over them: :data:`PRESETS`, each one :class:`Preset` holding its generator, discriminator,
schedule and help line. A new preset is one ``PRESETS.add`` here (or in a plugin); ``--preset``,
its help and ``TrainConfig.preset`` read the registry. No torch here: ``raw2rgb train --help``
reads this module without loading a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raw2rgb.config import FieldError, JsonConfig, checked
from raw2rgb.pipeline.profile import MODELS as PROFILE_MODELS
from raw2rgb.registry import Registry

NORMS, PRIORS, PRIOR_MODELS = ("instance", "none"), ("none", "profile"), PROFILE_MODELS
COLOUR_BRANCHES = ("none", "global")
MAX_WIDTH, MAX_DETAIL_FILTER = 256, 15  # the largest networks and filters a run may ask for (see the fields)


@dataclass(frozen=True)
class GeneratorConfig(JsonConfig):
    """What builds a generator (``model/generator.py``). The defaults are the paper's configuration."""

    # The bounds keep a network that fits a GPU (memory grows with base² per layer; 256 is 4× the paper's
    # widths, E4 with 2048 channels): base 100000 would ask for 1.28 TB before the first step.
    base: int = checked(64, min=1, max=MAX_WIDTH)  # channels of E1; E2..E4 have 2, 4, 8 times as many
    res_blocks: int = checked(4, min=0, max=64)
    saliency_width: int = checked(64, min=1, max=MAX_WIDTH)
    scale: int = checked(1, choices=(1, 2))  # output scale: 1 (the paper: at packed resolution), 2 (sensor's)
    # the RAW frames were binned by this to meet targets smaller than the sensor (prepare, a camera's M/S or
    # embedded JPEG): the model converts a frame binned alike, at the resolution it learned
    binning: int = checked(1, min=1, max=16)
    norm: str = checked("instance", choices=NORMS)  # instance (the paper) or none
    prior: str = checked("none", choices=PRIORS)  # none (the paper) or profile: a fitted profile, then the net
    prior_model: str = checked("poly3", choices=PRIOR_MODELS)  # the prior's profile (pipeline/profile.py's models)
    colour_branch: str = checked("none", choices=COLOUR_BRANCHES)  # global: each image's colour from its frame
    # k > 0: after the profile, a k×k linear filter fitted with it (the prior's detail; k odd). Part of the
    # prior: without one (prior "none", as over a preset to compare) there is no filter. Its fit solves
    # normal equations of (3k²)² entries: 15 takes 4 MB, 101 would take 7.5 GB
    detail_filter: int = checked(0, min=0, max=MAX_DETAIL_FILTER, rule=(lambda k: k % 2 == 1 or k == 0, "0 or odd"))

    def _check_together(self) -> None:
        if self.colour_branch != "none" and self.prior != "profile":
            raise FieldError(type(self).__name__, ("colour_branch",),
                             f"{self.colour_branch} corrects the colour prior's colour: it needs prior profile")


@dataclass(frozen=True)
class DiscriminatorConfig(JsonConfig):
    """What builds a discriminator (``model/discriminator.py``)."""

    base: int = checked(64, min=1, max=MAX_WIDTH)


@dataclass(frozen=True)
class Preset:
    """A named recipe: the networks, the schedule (``TrainConfig`` fields over its defaults, the
    paper's) and one line for ``--preset``'s help."""

    generator: GeneratorConfig
    discriminator: DiscriminatorConfig
    help: str
    schedule: dict[str, Any] = field(default_factory=dict)


PRESETS: Registry[Preset] = Registry("preset", default="standard")

# Why each schedule is what it is, with the measurements: docs/quality.md.
PRESETS.add("standard", Preset(
    GeneratorConfig(norm="none", prior="profile", detail_filter=7), DiscriminatorConfig(), schedule={"ema": 0.999},
    help="raw2rgb's recommended network: a fitted colour prior, no InstanceNorm; for GPUs"))
PRESETS.add("tiny", Preset(
    GeneratorConfig(base=16, res_blocks=2, saliency_width=16, norm="none", prior="profile", detail_filter=7),
    DiscriminatorConfig(base=16),
    schedule={"stage1_epochs": 24, "stage2_epochs": 0, "batch_size": 4, "lr_stage1": 5e-4, "lr_decay": "cosine",
              "ema": 0.995},
    help="its small size, with a short one-stage schedule: CPUs, the demo, tests"))
PRESETS.add("paper", Preset(
    GeneratorConfig(), DiscriminatorConfig(),
    help="exactly the paper's network and recipe, to reproduce it"))
