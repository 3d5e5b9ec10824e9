"""The torch parts of the losses: the VGG16 feature extractor of the perceptual term
(``|φ(G1(x)) − φ(y)|₁``, φ = VGG16 conv4_3 before its ReLU on ImageNet-normalised images) and how
its weights are found.

The objective itself (the terms, their weights, the total and the paper's equations) is
``model/terms.py``, which imports no torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raw2rgb.errors import UserError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VGG_CONV4_3", "VGG_FILE", "Perceptual", "WeightsMissing",
           "load_vgg_features", "vgg_cache_path"]

log = logging.getLogger(__name__)

VGG_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1
VGG_CONV4_3 = 22  # features[:22] ends with conv4_3, before its ReLU
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsMissing(UserError):
    """Pretrained weights that are needed and cannot be found; the message says how to provide them."""


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
