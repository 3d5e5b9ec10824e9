"""Synthetic training shards: virtual-camera RAW of natural scenes paired with the scenes themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raw2rgb.files import write_json
from raw2rgb.model.terms import LossWeights
from raw2rgb.model.train import TrainConfig
from raw2rgb.pipeline import bayer, shards, synth
from raw2rgb.pipeline.develop import area_downsample


def make_shards(root: Path, counts: dict[str, int], size: int = 32, scale: int = 1, seed: int = 0) -> Path:
    """A shards folder: per split, ``counts[split]`` patches of ``size`` packed pixels cut at random from
    the skimage scenes; raw = the virtual camera's capture (noise-free), target = the scene."""
    rng = np.random.default_rng(seed)
    camera = synth.Camera()
    scenes = [synth.scene(name, (256, 256)) for name in synth.SCENES[:4]]
    splits = {}
    for split, n in counts.items():
        if n == 0:
            splits[split] = {"count": 0, "shards": []}
            continue
        raws, rgbs, sals, ids = [], [], [], []
        for i in range(n):
            img = scenes[int(rng.integers(len(scenes)))]
            y, x = (int(v) * 2 for v in rng.integers(0, (256 - 2 * size) // 2, 2))
            crop = img[y : y + 2 * size, x : x + 2 * size]
            mosaic = synth.capture(crop, camera)
            raws.append(bayer.normalize_packed(bayer.planes(mosaic), camera.black, camera.white))
            rgb = crop if scale == 2 else np.rint(area_downsample(crop.astype(np.float32))).astype(np.uint8)
            rgbs.append(rgb.transpose(2, 0, 1))
            sals.append(np.clip(rgb.mean(axis=2, keepdims=True), 0, 255).astype(np.uint8).transpose(2, 0, 1))
            ids.append(f"{split}{i}")
        name = f"{split}-00000.h5"
        shards.write_shard(root / name, ids, np.stack(raws), np.stack(rgbs), np.stack(sals),
                           {"format": shards.SHARD_FORMAT, "scale": scale, "inputs_key": f"synthetic-{seed}-{split}"})
        splits[split] = {"count": n, "shards": [{"file": name, "count": n}]}
    write_json(root / shards.INDEX, {"format": shards.SHARD_FORMAT, "scale": scale, "crop": size, "copies": 1,
                                     "saliency_method": "synthetic", "splits": splits})
    return root


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), {"train": 8, "val": 4})


def tiny_config(**kw) -> TrainConfig:
    """The tiny preset for one epoch per stage, batch 4, no VGG: seconds on a CPU."""
    base = {"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 4, "weights": LossWeights(perceptual=0.0)}
    return TrainConfig.preset_config("tiny", **{**base, **kw})
