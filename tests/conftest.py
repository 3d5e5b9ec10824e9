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
