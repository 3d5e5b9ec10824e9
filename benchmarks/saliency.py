"""Saliency throughput: SalGAN and spectral residual inference, and the whole stage against inference.

Prints maps/s at 256x192 for SalGAN (batch 8; bf16 autocast on CUDA) and for the classical
method, then the throughput of the whole saliency stage (JPEG decode + inference + HDF5 write)
on the same number of images, as a ratio to SalGAN inference alone. Target: >= 0.8 (I/O must not
dominate). SalGAN runs with random weights: speed does not depend on their values.

    python benchmarks/saliency.py [--device auto] [--images 64] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from raw2rgb.device import resolve_device  # noqa: E402
from raw2rgb.pipeline import synth  # noqa: E402
from raw2rgb.salgan import label, methods  # noqa: E402
from raw2rgb.salgan.classical import spectral_residual  # noqa: E402
from raw2rgb.salgan.model import SalGAN  # noqa: E402
from raw2rgb.salgan.weights import save_weights  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=None, help="default: 16384 on CUDA, 24 on CPU")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--debug", action="store_true", help="print the stage's per-shard timings")
    args = ap.parse_args()
    if args.debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(relativeCreated)8.0f ms %(message)s")
    device = str(resolve_device(args.device))
    n = args.images or (16384 if device.startswith("cuda") else 24)
    bs = args.batch_size
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="raw2rgb-sal-"))
    try:
        from PIL import Image

        scenes = [synth.scene(s, (192, 256)) for s in synth.SCENES]
        paths = []
        for i in range(n):
            p = work / "img" / f"{i:06d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(scenes[i % len(scenes)]).save(p, quality=95)
            paths.append((p.stem, str(p)))
        weights = save_weights(SalGAN().state_dict(), work / "salgan.pt")
        model = label._salgan(str(weights), device)  # the stage's own Predictor (CUDA graph)

        # Inference alone: a decoded batch already on the device; pre- and post-processing and
        # the network, with one synchronisation at the end.
        batch = torch.from_numpy(np.stack(scenes[:1] * bs)).permute(0, 3, 1, 2).contiguous().to(device)
        for _ in range(3):
            model(batch)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n // bs):
            model(batch)
        _sync(device)
        infer = (n // bs) * bs / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(min(n, 256)):
            spectral_residual(scenes[i % len(scenes)])
        classical = min(n, 256) / (time.perf_counter() - t0)

        method = methods.Method("salgan", str(weights), "bench")
        t0 = time.perf_counter()
        result = label.label(paths, work / "sal", method, batch_size=bs, device=device, workers=args.workers)
        _sync(device)
        stage = n / (time.perf_counter() - t0)
        assert result.done and not result.failed, result.summary()

        name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
        report(f"saliency at 256x192 on {name} ({n} images, batch {bs})", [
            ("SalGAN inference", f"{infer:.1f} maps/s"),
            ("spectral residual (1 core)", f"{classical:.1f} maps/s"),
            ("stage: decode+infer+write", f"{stage:.1f} maps/s"),
            ("stage / inference", f"{stage / infer:.2f}  (target >= 0.8)"),
        ])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
