"""Data loading: ShardDataset against per-file loading of the same data in the AIM-2019 layout.

Both serve 224×224 packed raw (4 channels), a 224×224 target and its saliency map (scale 1)
through a DataLoader with batch 8 and 2 workers, shuffled; the timed loop receives the batches a
training loop receives. ShardDataset runs as training uses it (``compact=True``: stored integer
samples cross from the workers; ``to_model`` converts each batch on the GPU, timed separately
here on the CPU) and, for reference, converting to float in the workers. The per-file loader
reads what the paper's code read for each sample (a 4-channel PNG — 16-bit here, so the data are
the same —, the target JPEG and the saliency JPEG) with the same compact transport. Targets:
ShardDataset >= 5x the per-file loader and >= 1,000 samples/s.

    python benchmarks/loader.py [--samples 1024] [--workers 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from raw2rgb.model.data import ShardDataset, to_model  # noqa: E402
from raw2rgb.pipeline import bayer, rawio, shards, synth  # noqa: E402
from raw2rgb.pipeline.develop import area_downsample  # noqa: E402


class PerFile(Dataset):
    """The AIM-2019 layout, one file per array, as the paper's code loaded it."""

    def __init__(self, root: Path, n: int, compact: bool = True):
        self.root, self.n, self.compact = root, n, compact

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        raw = imagecodecs.png_decode((self.root / "TrainingPhoneRaw" / f"{i}.png").read_bytes())
        rgb = np.asarray(Image.open(self.root / "TrainingCanonRGB" / f"{i}.jpg").convert("RGB"))
        sal = np.asarray(Image.open(self.root / "TrainingSaliency" / f"{i}.jpg").convert("L"))
        sample = {"raw": torch.from_numpy(np.ascontiguousarray(np.moveaxis(raw, 2, 0))),
                  "rgb": torch.from_numpy(np.ascontiguousarray(np.moveaxis(rgb, 2, 0))),
                  "saliency": torch.from_numpy(sal[None].copy())}
        return sample if self.compact else to_model(sample)


def make_data(root: Path, n: int) -> None:
    cam = synth.Camera(noise=0.003)
    rng = np.random.default_rng(0)
    scenes = [synth.scene(s, (448, 448)) for s in synth.SCENES[:4]]
    for d in ("TrainingPhoneRaw", "TrainingCanonRGB", "TrainingSaliency"):
        (root / "aim" / d).mkdir(parents=True)
    raws, rgbs, sals = [], [], []
    for i in range(n):
        scene = scenes[i % 4]
        raw = bayer.normalize_packed(bayer.pack(synth.capture(scene, cam, rng)), cam.black, cam.white)
        rgb = np.rint(area_downsample(scene.astype(np.float32))).astype(np.uint8)
        sal = rgb[..., 1]
        (root / "aim" / "TrainingPhoneRaw" / f"{i}.png").write_bytes(rawio.encode_packed_png(raw))
        Image.fromarray(rgb).save(root / "aim" / "TrainingCanonRGB" / f"{i}.jpg", quality=95)
        Image.fromarray(sal).save(root / "aim" / "TrainingSaliency" / f"{i}.jpg", quality=95)
        raws.append(raw)
        rgbs.append(np.moveaxis(rgb, 2, 0))
        sals.append(sal[None])
    (root / "shards").mkdir()
    files = []
    for k, start in enumerate(range(0, n, 512)):
        sl = slice(start, start + 512)
        shards.write_shard(root / "shards" / f"train-{k:05d}.h5", [str(i) for i in range(n)][sl],
                           np.stack(raws[sl]), np.stack(rgbs[sl]), np.stack(sals[sl]),
                           {"format": shards.SHARD_FORMAT, "scale": 1})
        files.append(shards.ShardFile(f"train-{k:05d}.h5", len(raws[sl])))
    shards.write_index(root / "shards", shards.ShardIndex(shards.SHARD_FORMAT, 1,
                                                          {"train": shards.SplitIndex(n, tuple(files))}))


def rate(dataset: Dataset, workers: int, epochs: int) -> float:
    loader = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))
    for _ in loader:  # warm-up epoch: worker start, page cache
        pass
    best = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = sum(len(batch["raw"]) for batch in loader)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raw2rgb-loader-"))
    try:
        make_data(work, args.samples)
        shard_rate = rate(ShardDataset(work / "shards", "train", compact=True), args.workers, args.epochs)
        float_rate = rate(ShardDataset(work / "shards", "train"), args.workers, args.epochs)
        file_rate = rate(PerFile(work / "aim", args.samples), args.workers, args.epochs)
        batch = next(iter(DataLoader(ShardDataset(work / "shards", "train", compact=True), batch_size=8)))
        t0 = time.perf_counter()
        for _ in range(20):
            to_model(batch)
        convert_ms = (time.perf_counter() - t0) / 20 * 1000
        report(f"loader: {args.samples} samples of 224² packed, batch 8, {args.workers} workers (best epoch)", [
            ("ShardDataset (compact)", f"{shard_rate:.0f} samples/s  (target >= 1,000)"),
            ("ShardDataset (float in workers)", f"{float_rate:.0f} samples/s"),
            ("per-file, AIM-2019 layout", f"{file_rate:.0f} samples/s"),
            ("ratio", f"{shard_rate / file_rate:.1f}x  (target >= 5x)"),
            ("to_model on the CPU, one batch", f"{convert_ms:.1f} ms (on a GPU: microseconds)"),
        ])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
