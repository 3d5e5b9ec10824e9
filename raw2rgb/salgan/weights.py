"""SalGAN weights: import of the original Lasagne file, lookup of a converted file, safe loading.

The released generator weights are ``gen_modelWeights0090.npz`` (Theano/Lasagne, 127 MB): 54
arrays ``arr_0 … arr_53`` in layer order — 26 encoder, 26 decoder, 2 output — each conv as a
kernel (out, in, kh, kw) then a bias. Lasagne ran the encoder (VGG16, built with
``flip_filters=False``) as cross-correlation, but the decoder and output layers with its default
``flip_filters=True``, i.e. as true convolution: in PyTorch, which correlates, those kernels are
flipped spatially. The one public converter gets this (and the BGR input order) wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from raw2rgb.errors import UserError
from raw2rgb.files import atomic_path, cache_dir
from raw2rgb.salgan.model import SalGAN

ENV_VAR = "RAW2RGB_SALGAN_WEIGHTS"
ORIGINAL_FILE = "gen_modelWeights0090.npz"
ORIGINAL_SOURCE = ("the SalGAN authors' release (github.com/imatge-upc/salgan, "
                   "'gen_modelWeights0090.npz', linked from its README)")
N_ENCODER_ARRAYS = 26
FORMAT_VERSION = 1


class WeightsError(UserError):
    """Weights that are missing or do not fit; the message says what to do."""


def default_path() -> Path:
    return cache_dir() / "salgan.pt"


def find_weights(explicit: os.PathLike | str | None = None) -> Path:
    """Locate converted SalGAN weights: ``explicit``, then ``$RAW2RGB_SALGAN_WEIGHTS``, then the cache.

    Raises:
        WeightsError: none found; the message names all three places and how to make the file.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: SalGAN weights file not found")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path} (from ${ENV_VAR}): SalGAN weights file not found")
        return path
    if default_path().is_file():
        return default_path()
    raise WeightsError(
        f"no SalGAN weights: looked for --weights PATH, ${ENV_VAR} and {default_path()}. "
        f"Download {ORIGINAL_FILE} from {ORIGINAL_SOURCE}, then run "
        f"'raw2rgb salgan import-weights {ORIGINAL_FILE}' to convert it into {default_path()}; "
        "or use --method spectral-residual, which needs no weights")


def import_npz(npz_path: os.PathLike | str) -> dict[str, torch.Tensor]:
    """Convert the original Lasagne weight file into a state dict of :class:`SalGAN`.

    Raises:
        WeightsError: the file is not of the original structure (names the array that differs).
    """
    npz_path = Path(npz_path)
    model = SalGAN()
    convs = model.convs()
    try:
        data = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{npz_path}: not a readable .npz file ({e})") from None
    with data:
        expected = 2 * len(convs)
        names = [f"arr_{i}" for i in range(expected)]
        if sorted(data.files, key=lambda n: int(n[4:]) if n[4:].isdigit() else -1) != names:
            raise WeightsError(f"{npz_path}: expected {expected} arrays arr_0 … arr_{expected - 1} "
                               f"(the original SalGAN generator), found {len(data.files)}")
        for i, conv in enumerate(convs):
            w, b = data[f"arr_{2 * i}"], data[f"arr_{2 * i + 1}"]
            if w.shape != tuple(conv.weight.shape) or b.shape != tuple(conv.bias.shape):
                raise WeightsError(
                    f"{npz_path}: arr_{2 * i} has shape {w.shape}, expected "
                    f"{tuple(conv.weight.shape)} for conv {i + 1} of {len(convs)}")
            if 2 * i >= N_ENCODER_ARRAYS:  # decoder and output: Lasagne's true convolution
                w = w[:, :, ::-1, ::-1]
            conv.weight.data = torch.from_numpy(np.array(w, dtype=np.float32, order="C", copy=True))
            conv.bias.data = torch.from_numpy(np.array(b, dtype=np.float32, copy=True))
    return {k: v.clone() for k, v in model.state_dict().items()}


def save_weights(state: dict[str, torch.Tensor], path: os.PathLike | str) -> Path:
    """Save a SalGAN state dict atomically (a failed save raises)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT_VERSION, "model": "salgan", "state_dict": state}, tmp)
    return path


def load_salgan(path: os.PathLike | str, device: str | torch.device = "cpu") -> SalGAN:
    """Load converted weights (``torch.load(weights_only=True)``) into an eval-mode SalGAN.

    Raises:
        WeightsError: unreadable, or not SalGAN weights.
    """
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and OS errors all mean "not this file"
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(e).__name__})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    model = SalGAN()
    try:
        if state is None:
            raise RuntimeError("no state dict")
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise WeightsError(f"{path}: not SalGAN weights ({first})") from None
    return model.to(device).eval()
