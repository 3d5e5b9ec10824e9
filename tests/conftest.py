"""Fixtures shared by the suite: synthetic DNGs from the virtual camera, never downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raw2rgb.pipeline import bayer, synth

# Non-zero, distinct per-channel black levels (R, G1, B, G2) so a channel mix-up shows.
BLACK = (600, 610, 620, 630)
WHITE = 15000
# A flat scene with one value per colour in camera space (after black level): R, G, B.
FLAT = {"R": 1000, "G": 3000, "B": 7000}


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The suite's own cache folder: measured overlaps and weights never touch the user's."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(autouse=True, scope="session")
def _no_downloads():
    """The suite never downloads: torchvision's weights API (VGG16) meets a machine without internet
    unless a test replaces the download with a local copy."""
    import urllib.error

    import torch.hub

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError(f"the test suite downloads nothing ({url})")

    real = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = offline
    yield
    torch.hub.download_url_to_file = real


def flat_mosaic(pattern: str, shape=(64, 96)) -> np.ndarray:
    """A mosaic whose every sample reads its colour's value in FLAT plus its channel's black."""
    m = np.zeros(shape, dtype=np.uint16)
    for name, (dy, dx) in bayer.channel_offsets(pattern).items():
        m[dy::2, dx::2] = FLAT[name[0]] + BLACK[bayer.CHANNELS.index(name)]
    return m


@pytest.fixture
def make_dng(tmp_path: Path):
    """make_dng(name, pattern, mosaic=None, **camera) -> path of a DNG written by the virtual camera."""

    def make(name: str, pattern: str = "RGGB", mosaic: np.ndarray | None = None, **kw) -> Path:
        camera = synth.Camera(pattern=pattern, black=kw.pop("black", BLACK),
                              white=kw.pop("white", WHITE), **kw)
        if mosaic is None:
            mosaic = flat_mosaic(pattern)
        return synth.write_dng(tmp_path / name, mosaic, camera)

    return make


def kill_midway(cmd: list[str], out_dir: Path, pattern: str, at_least: int, timeout: float = 120) -> int:
    """Start ``cmd``; SIGKILL its process group once ``at_least`` files match ``pattern`` in
    ``out_dir``; return how many matched at the kill."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(list(out_dir.glob(pattern))) < at_least:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list(out_dir.glob(pattern)))


def torch_image(img: np.ndarray):
    """(H, W, 3) array → (1, 3, H, W) float32 tensor, values unchanged."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


def cli(*args, catch: bool = False):
    """Run ``raw2rgb -q ARGS`` in-process; return click's result."""
    from click.testing import CliRunner

    from raw2rgb.cli import main

    return CliRunner().invoke(main, ["-q", *map(str, args)], catch_exceptions=catch)


@pytest.fixture(scope="session")
def labelled(tmp_path_factory):
    """A mini ZRR source prepared up to saliency (spectral residual), 112-px patches."""
    from PIL import Image

    root = tmp_path_factory.mktemp("zrr")
    for d in ("huawei_raw", "canon"):
        (root / "src" / "train" / d).mkdir(parents=True)
    for i in range(6):
        scene = synth.scene(synth.SCENES[i % 4], (448, 448))
        mosaic = (bayer.mosaic(scene.astype(np.uint16), "RGGB") * 4 + 63).clip(0, 1023).astype(np.uint16)
        Image.fromarray(mosaic).save(root / "src" / "train" / "huawei_raw" / f"{i}.png")
        Image.fromarray(scene).save(root / "src" / "train" / "canon" / f"{i}.jpg", quality=95)
    result = cli("prepare", root / "src", "-o", root / "ds", "--until", "saliency", "--patch-size", "112",
                  "--saliency-method", "spectral-residual", "--min-score", "-1", "--split", "0.5,0.5,0")
    assert result.exit_code == 0, result.output
    return root / "ds"


def build_shards(ds: Path, out: Path, *extra) -> dict:
    """The shards command on a prepared DATASET's patches and saliency; index.json."""
    import json

    result = cli("shards", ds / "patches", ds / "saliency", "-o", out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "index.json").read_text())


def zrr_source(root: Path, n_train: int = 6, n_test: int = 2) -> dict[str, np.ndarray]:
    """A mini ZRR folder: train|test/huawei_raw/N.png mosaics (one 8-bit, as ZRR saves dark crops) and
    canon/N.jpg; returns the mosaics by scene."""
    from PIL import Image

    mosaics = {}
    for part, n in (("train", n_train), ("test", n_test)):
        (root / part / "huawei_raw").mkdir(parents=True)
        (root / part / "canon").mkdir(parents=True)
        for i in range(n):
            scene = synth.scene(synth.SCENES[i % 4], (448, 448))
            mosaic = (bayer.mosaic(scene.astype(np.uint16), "RGGB") * 4 + 20).clip(0, 1023)
            if i == 0:  # ZRR saves a crop 8-bit when its max is <= 255
                mosaic = (mosaic // 4).astype(np.uint8)
            else:
                mosaic = mosaic.astype(np.uint16)
            Image.fromarray(mosaic).save(root / part / "huawei_raw" / f"{i}.png")
            Image.fromarray(scene).save(root / part / "canon" / f"{i}.jpg", quality=95)
            mosaics[f"{part}/{i}"] = mosaic
    return mosaics
