"""The paper's losses as functions of tensors, their weights, and the VGG16 feature extractor of the
perceptual term.

Eq. 1 ``L_rgb = |G1(x) − y|₁``; eq. 2 (attention) ``L_A = |G1(x)⊙G2(x) − y⊙s|₁``; eqs. 3–4 (LSGAN)
``L_G = ½E[(D(x, G1(x)) − 1)²]``, ``L_D = ½E[(D(x, y) − 1)²] + ½E[D(x, G1(x))²]``; perceptual
``|φ(G1(x)) − φ(y)|₁`` with φ = VGG16 conv4_3 before its ReLU on ImageNet-normalised images.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raw2rgb.config import JsonConfig, checked
from raw2rgb.errors import UserError

log = logging.getLogger(__name__)

VGG_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1
VGG_CONV4_3 = 22  # features[:22] ends with conv4_3, before its ReLU
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LossWeights(JsonConfig):
    """The weight of each term in the generator's total, beside ``L_rgb`` (weight 1). A new term is
    one field here and one function registered with :func:`g_term` under the field's name: the
    objective (:func:`objective`), the CLI's ``--NAME-weight`` options and the logged terms all
    read this list. Defaults are the paper's stage-2 weights (docs/paper.md)."""

    attention: float = checked(0.5, min=0)  # the saliency head learns only through this term
    adversarial: float = checked(0.01, min=0)  # stage 2
    perceptual: float = checked(1.0, min=0)  # stage 2; needs VGG16 ImageNet weights


STAGE2_TERMS = ("adversarial", "perceptual")  # terms only stage 2 computes
# Every logged term and its label: the weighted ones, L_rgb, the total and the discriminator's loss.
TERMS = {"rgb": "L1 (rgb)", **{f.name: f.name for f in dataclasses.fields(LossWeights)}, "d": "discriminator",
         "total": "total"}


@dataclass(frozen=True)
class StepTensors:
    """What a generator term is computed from in one training step: the batch's raw ``x``, target
    ``y`` and its saliency ``s``; G's ``rgb`` and ``saliency``; the stage; the discriminator ``D``
    (stage 2) and the perceptual module (None without VGG16)."""

    x: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor
    rgb: torch.Tensor
    saliency: torch.Tensor
    stage: int
    D: nn.Module | None = None
    perceptual: nn.Module | None = None


# The generator's weighted terms by LossWeights field: each gives its loss, or None where the step does
# not compute it (a stage-2 term in stage 1, the perceptual term without VGG16).
G_TERMS: dict[str, Callable[[StepTensors], torch.Tensor | None]] = {}


def g_term(name: str):
    """Register the function of the generator term ``name`` (a :class:`LossWeights` field)."""
    def register(fn: Callable[[StepTensors], torch.Tensor | None]):
        G_TERMS[name] = fn
        return fn
    return register


def objective(weights: LossWeights, t: StepTensors) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The generator's terms (``rgb`` and every field of ``weights`` the step computes) and their
    weighted total (eq. 1 plus the weighted terms)."""
    terms = {"rgb": l1(t.rgb.float(), t.y)}
    for f in dataclasses.fields(weights):
        value = G_TERMS[f.name](t)
        if value is not None:
            terms[f.name] = value
    return terms, weighted_total(terms, weights)


def weighted_total(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """``L_rgb`` plus each weighted term present in ``terms``."""
    total = terms["rgb"]
    for f in dataclasses.fields(weights):
        if f.name in terms:
            total = total + getattr(weights, f.name) * terms[f.name]
    return total


class WeightsMissing(UserError):
    """Pretrained weights that are needed and cannot be found; the message says how to provide them."""


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def attention(rgb: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor, target_saliency: torch.Tensor
              ) -> torch.Tensor:
    """Eq. 2: L1 between the output weighted by the predicted map and the target weighted by
    SalGAN's map. Maps are (B, 1, H, W) in [0, 1] and broadcast over the colour channels."""
    return l1(rgb * saliency, target * target_saliency)


def lsgan_g(fake_score: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((fake_score.float() - 1.0) ** 2).mean()


def lsgan_d(real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((real_score.float() - 1.0) ** 2).mean() + 0.5 * (fake_score.float() ** 2).mean()


def vgg_cache_path() -> Path:
    """Where torchvision's weights API keeps (and looks for) the VGG16 file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG_FILE


def _vgg_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and OS errors all mean "not this file"
        raise WeightsMissing(f"{path}: not a readable PyTorch weights file ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise WeightsMissing(f"{path}: not a VGG16 state dict")
    state = state.get("state_dict", state)
    # torchvision's file holds the whole network (features.N.*, classifier.*); keep the features.
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return feats or state


def load_vgg_features(weights: os.PathLike | str | None = None) -> nn.Sequential:
    """VGG16 ``features[:22]`` (conv1_1 … conv4_3, no final ReLU) with ImageNet weights, frozen.

    Looks at ``weights`` when given, else in torchvision's cache (``$TORCH_HOME/hub/checkpoints``),
    where its weights API downloads the file when it is not there yet (its progress bar and its
    hash check, as every torchvision user has seen).

    Raises:
        WeightsMissing: the file is missing (and cannot be downloaded) or is not VGG16's, with the
            three ways out.
    """
    # torchvision costs 1.7 s of import and only this term needs it: imported here, on use
    from torchvision.models import vgg16

    path = Path(weights) if weights else vgg_cache_path()
    if not path.is_file():
        why = f"{path} does not exist" if weights else _download_vgg(path)
        if why:
            raise WeightsMissing(
                f"the perceptual loss needs VGG16 ImageNet weights and {why}. Either put "
                f"torchvision's {VGG_FILE} at {path} (python -c \"import torchvision; "
                "torchvision.models.vgg16(weights='IMAGENET1K_V1')\" on a machine with internet, then copy the "
                "file), or pass --vgg-weights PATH, or train without it: --perceptual-weight 0")
    features = vgg16(weights=None).features[:VGG_CONV4_3]
    try:
        features.load_state_dict({k: v for k, v in _vgg_state(path).items() if int(k.split(".")[0]) < VGG_CONV4_3})
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise WeightsMissing(f"{path}: not VGG16 weights ({first})") from None
    for p in features.parameters():
        p.requires_grad_(False)
    return features.eval()


def _download_vgg(path: Path) -> str | None:
    """Fetch VGG16's ImageNet weights into torchvision's cache through its weights API; None when
    the file is there, else why not (offline, a failed hash check, a full disk), for the message."""
    from torchvision.models import VGG16_Weights

    log.info("downloading VGG16 ImageNet weights for the perceptual loss into %s", path.parent)
    try:
        VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; a bad hash a RuntimeError
        reason = " ".join(str(getattr(e, "reason", e)).split())[:200]
        return f"{path} does not exist and could not be downloaded ({reason})"
    return None if path.is_file() else f"{path} does not exist after its download"


class Perceptual(nn.Module):
    """``|φ(a) − φ(b)|₁`` on images in [-1, 1], φ = VGG16 conv4_3 before its ReLU."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Perceptual:
        return super().train(False)  # frozen feature extractor, whatever its owner does

    def _phi(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(((x + 1.0) * 0.5 - self.mean) / self.std)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self._phi(target)
        return F.l1_loss(self._phi(output).float(), ref.float())


# -- the generator's terms ---------------------------------------------------------------------------

@g_term("attention")
def _attention_term(t: StepTensors) -> torch.Tensor:
    return attention(t.rgb.float(), t.saliency.float(), t.y, t.s)


@g_term("adversarial")
def _adversarial_term(t: StepTensors) -> torch.Tensor | None:
    if t.stage != 2 or t.D is None:
        return None
    # plain D (no DDP sync for this pass) in eval mode: its spectral norms reuse this step's power
    # iteration (run in the D step) instead of iterating a second time; D has no other train/eval
    # difference (InstanceNorm without running statistics)
    t.D.eval()
    try:
        return lsgan_g(t.D(t.x, t.rgb))
    finally:
        t.D.train()


@g_term("perceptual")
def _perceptual_term(t: StepTensors) -> torch.Tensor | None:
    if t.stage != 2 or t.perceptual is None:
        return None
    return t.perceptual(t.rgb, t.y)
