"""Synthetic SalGAN weight files of the original structure (random values), built once."""

from __future__ import annotations

import numpy as np
import pytest

from raw2rgb.salgan.model import SalGAN


def random_npz_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """54 arrays arr_0 … arr_53 shaped like gen_modelWeights0090.npz, He-scaled so activations
    stay of order one through 27 layers; kernels deliberately asymmetric."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i, conv in enumerate(SalGAN().convs()):
        out_c, in_c, kh, kw = conv.weight.shape
        arrays[f"arr_{2 * i}"] = (rng.normal(0, np.sqrt(2.0 / (in_c * kh * kw)), (out_c, in_c, kh, kw))
                                  .astype(np.float32))
        arrays[f"arr_{2 * i + 1}"] = rng.normal(0, 0.05, out_c).astype(np.float32)
    return arrays


@pytest.fixture(scope="session")
def npz_arrays():
    return random_npz_arrays()


@pytest.fixture(scope="session")
def npz_file(tmp_path_factory, npz_arrays):
    path = tmp_path_factory.mktemp("salgan") / "gen_modelWeights0090.npz"
    np.savez(path, **npz_arrays)
    return path


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory, npz_file):
    from raw2rgb.salgan.weights import import_npz, save_weights

    return save_weights(import_npz(npz_file), tmp_path_factory.mktemp("salgan-pt") / "salgan.pt")
