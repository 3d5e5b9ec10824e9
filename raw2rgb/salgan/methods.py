"""The saliency methods (:data:`SALIENCY_METHODS`) and how a run picks one (:func:`resolve_method`).
No torch at import: the CLI reads the registry for ``--method``'s choices and help, and a method
loads what it computes with (SalGAN's network and weights) when it is used.

``auto`` is the registry's rule: SalGAN when its weights are found, else the weight-free spectral
residual method (with a warning that says how to get the weights).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raw2rgb.config import JsonConfig, checked
from raw2rgb.device import device_field
from raw2rgb.files import file_sha256
from raw2rgb.registry import AUTO, Auto, Registry

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaliencyMethod:
    """A way to compute saliency maps: ``on_image`` maps one HWC uint8 image to its (H, W) map in
    the loader's workers (numpy; a classical method), or ``predictor(weights, device)``
    gives a callable on a batch of images on the device (a network; ``needs_weights`` then says
    it needs a weights file, found as for SalGAN). ``help`` is one line for ``--method``."""

    help: str
    on_image: Callable[[np.ndarray], np.ndarray] | None = None
    predictor: Callable[[str | None, str], Callable[[torch.Tensor], torch.Tensor]] | None = None
    needs_weights: bool = False


def _salgan(weights: str, device: str) -> Any:
    """SalGAN's predictor for the weights on the device, loaded once per process."""
    from raw2rgb.device import cached
    from raw2rgb.salgan.model import Predictor
    from raw2rgb.salgan.weights import load_salgan

    return cached(("salgan", weights, device), lambda: Predictor(load_salgan(weights, device)))


def _spectral_residual(rgb: np.ndarray) -> np.ndarray:
    from raw2rgb.salgan.classical import spectral_residual  # scipy and scikit-image: on use

    return spectral_residual(rgb)


def _auto(weights: os.PathLike | str | None = None) -> str:
    """SalGAN when its weights are found; else, unless ``weights`` named a file that is not there,
    spectral residual.

    Raises:
        WeightsError: ``weights`` given and not found.
    """
    from raw2rgb.salgan.weights import WeightsError, default_path, find_weights

    try:
        find_weights(weights)
    except WeightsError:
        if weights:
            raise
        log.warning("no SalGAN weights found (--weights, $RAW2RGB_SALGAN_WEIGHTS, %s): using the "
                    "weight-free spectral residual method; docs/weights.md says how to get "
                    "them", default_path())
        return "spectral-residual"
    return "salgan"


SALIENCY_METHODS: Registry[SaliencyMethod] = Registry(
    "saliency method", default=AUTO, auto=Auto("SalGAN when its weights are found, else spectral residual", _auto))
SALIENCY_METHODS.add("salgan", SaliencyMethod(
    "the paper's network (its weights: docs/weights.md)", predictor=_salgan, needs_weights=True))
SALIENCY_METHODS.add("spectral-residual", SaliencyMethod(
    "a weight-free classical method (Hou and Zhang 2007)", on_image=_spectral_residual))


@dataclass(frozen=True)
class Method:
    """The saliency method a run uses, resolved from ``auto`` and the weights found."""

    name: str  # a SALIENCY_METHODS entry
    weights: str | None = None
    weights_sha256: str = ""


def resolve_method(method: str, weights: os.PathLike | str | None = None) -> Method:
    """The method a run uses (``auto`` resolved: :data:`SALIENCY_METHODS`' rule), with its weights
    file and their sha256 when it needs weights.

    Raises:
        UnknownEntry: no such method.
        WeightsError: a method that needs weights, and none are found (the message says where to
            put them).
    """
    name = SALIENCY_METHODS.resolve(method, weights)
    if not SALIENCY_METHODS[name].needs_weights:
        return Method(name)
    from raw2rgb.salgan.weights import find_weights

    path = find_weights(weights)
    return Method(name, str(path), file_sha256(path))


@dataclass(frozen=True)
class SaliencyConfig(JsonConfig):
    """How ``raw2rgb saliency`` labels images (its options; ``prepare`` sets method, weights, batch and
    device from its own config)."""

    method: str = checked(AUTO, choices=SALIENCY_METHODS, help="How to compute the maps:")
    weights: str | None = checked(None, metavar="PT", help="Converted SalGAN weights [default: "
                                  "$RAW2RGB_SALGAN_WEIGHTS, then ~/.cache/raw2rgb/salgan.pt].")
    batch_size: int = checked(8, min=1, metavar="N", help="Images per batch.")
    device: str = device_field()
    workers: int | None = checked(None, min=0, metavar="N", help="Image-decoding processes [default: min(4, "
                                  "cores)].")
    shard_size: int = checked(1024, min=1, metavar="N", help="Maps per shard.")
