"""Conversion speed and memory: folded inference generator vs the training form, 12 MP convert, classical
pipeline vs LibRaw.

Prints, in one run:
  1. generator images/s at 224² — the training-form generator (G1 + saliency head, spectral-norm power
     iteration each forward, as the paper's code ran it) and the folded inference generator (G1 only,
     plain weights); the ratio (target >= 1.3x);
  2. `convert` of a synthetic 12-megapixel DNG with the paper generator (random weights): seconds, peak
     RSS (target <= 3 GB), the time inside network passes (statistics pass included) and total / that
     (target <= 1.4x), and the statistics pass against one whole-frame pass (target <= 1);
  3. the classical pipeline (`--method isp`, read + develop) against rawpy's postprocess on the same
     file (target <= 1.5x);
  4. on CUDA: the 12 MP end-to-end seconds in bf16 (target <= 1 s) and peak GPU memory.

    python benchmarks/convert.py [--device auto] [--size 3000 4000] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from raw2rgb.device import resolve_device  # noqa: E402
from raw2rgb.model import checkpoint  # noqa: E402
from raw2rgb.model.generator import Generator, fold_spectral_norm, init_weights  # noqa: E402
from raw2rgb.model.train import TrainConfig  # noqa: E402
from raw2rgb.pipeline import synth  # noqa: E402

CONVERT_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from raw2rgb import convert as conv
    from raw2rgb.pipeline.unpack import collect_inputs
    from raw2rgb.model import generator as gmod
    spent = {"net": 0.0, "calls": 0, "pixels": 0, "stats": 0.0, "stats_pixels": 0}
    def timed(method, stats):
        def run(self, x, *args):
            if x.is_cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            y = method(self, x, *args)
            if x.is_cuda:
                torch.cuda.synchronize()
            dt, px = time.perf_counter() - t, x.shape[0] * x.shape[2] * x.shape[3]
            spent["net"] += dt
            spent["calls"] += 1
            spent["pixels"] += px
            if stats:
                spent["stats"] += dt
                spent["stats_pixels"] += px
            return y
        return run
    gmod.Generator.rgb = timed(gmod.Generator.rgb, False)
    gmod.Generator.run_normalisations = timed(gmod.Generator.run_normalisations, True)
    dng, ckpt, out, device, batch = sys.argv[1:6]  # argv[6]: the tile
    t0 = time.perf_counter()
    cfg = conv.resolve("model", ckpt, tile=int(sys.argv[6]), overlap=64, format="png")
    items = collect_inputs([dng])
    result = conv.convert(items, out, cfg, device=device, force=True)
    total = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    print(json.dumps({"total": total, **spent, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "gpu_peak": gpu, "failed": [r.reason for r in result.failed]}))
""")


def images_per_s(fn, x: torch.Tensor, device: torch.device, seconds: float = 5.0) -> float:
    with torch.no_grad():
        fn(x)  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2:
            fn(x)
            n += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)


def generator_speed(device: torch.device, batch: int) -> tuple[float, float]:
    g = Generator()
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    x = torch.rand(batch, 4, 224, 224, device=device) * 2 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    train_form = g.to(device).train()  # spectral norm: a power iteration in every forward, as in training
    with amp:
        slow = images_per_s(lambda t: train_form(t), x, device)
    folded = fold_spectral_norm(train_form).eval()
    with amp:
        fast = images_per_s(lambda t: folded.rgb(t), x, device)
    return slow, fast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, nargs=2, default=(3000, 4000), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1, help="generator batch at 224²")
    ap.add_argument("--tile", type=int, default=512, help="convert's tile (packed pixels)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)

    slow, fast = generator_speed(device, args.batch)
    rows = [("device", f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else
             torch.cuda.get_device_name(device)),
            ("training-form generator, 224²", f"{slow:.2f} images/s"),
            ("folded inference generator, 224²", f"{fast:.2f} images/s"),
            ("ratio (target >= 1.3)", f"{fast / slow:.2f}x")]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cam = synth.Camera(noise=0.002)
        scene = synth.scene("astronaut", tuple(args.size))
        dng = synth.write_dng(tmp / "frame.dng", synth.capture(scene, cam, np.random.default_rng(0)), cam)
        cfg = TrainConfig()
        g = Generator(cfg.generator)
        init_weights(g, 0.02, torch.Generator().manual_seed(0))
        from raw2rgb.model.discriminator import Discriminator

        checkpoint.save(tmp / "paper.pt", {"G": g, "D": Discriminator(cfg.discriminator)}, cfg.to_json(), {})
        proc = subprocess.run([sys.executable, "-c", CONVERT_SCRIPT, str(dng), str(tmp / "paper.pt"), str(tmp / "out"),
                               str(device), "1", str(args.tile)], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        packed_px = (args.size[0] // 2) * (args.size[1] // 2)
        rows += [(f"convert {args.size[0] * args.size[1] / 1e6:.0f} MP, paper generator", f"{r['total']:.1f} s"),
                 ("  peak RSS (target <= 3 GB)", f"{r['maxrss_kb'] / 2**20:.2f} GB"),
                 ("  inside network passes", f"{r['net']:.1f} s in {r['calls']} passes"),
                 ("  total / network (target <= 1.4)", f"{r['total'] / r['net']:.2f}x"),
                 ("  pixels through the network / frame", f"{r['pixels'] / packed_px:.2f}x"),
                 ("  statistics pass (target <= 1 whole-frame pass)",
                  f"{r['stats']:.1f} s on {r['stats_pixels'] / packed_px:.2f} of the frame's pixels, "
                  "without the output layers")]
        if device.type == "cuda":
            rows += [("  end to end in bf16 (target <= 1 s)", f"{r['total']:.2f} s"),
                     ("  peak GPU memory", f"{r['gpu_peak'] / 2**30:.2f} GiB")]

        import rawpy

        from raw2rgb.pipeline import develop, rawio

        def ours() -> None:
            frame = rawio.read_raw(dng)
            develop.develop(frame.packed(np.float32), frame.wb_gains, frame.cam_to_rgb, scale=2,
                            orientation=frame.orientation)

        def libraw(algorithm) -> None:
            with rawpy.imread(str(dng)) as raw:
                raw.postprocess(use_camera_wb=True, demosaic_algorithm=algorithm)

        times = {}
        for name, fn in (("isp", ours), ("rawpy AHD", lambda: libraw(None)),
                         ("rawpy linear", lambda: libraw(rawpy.DemosaicAlgorithm.LINEAR))):
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            times[name] = best
        rows += [("classical pipeline (read + develop)", f"{times['isp']:.2f} s"),
                 ("rawpy postprocess (default AHD)", f"{times['rawpy AHD']:.2f} s"),
                 ("rawpy postprocess (bilinear)", f"{times['rawpy linear']:.2f} s"),
                 ("isp / rawpy default (target <= 1.5)", f"{times['isp'] / times['rawpy AHD']:.2f}x"),
                 ("isp / rawpy bilinear", f"{times['isp'] / times['rawpy linear']:.2f}x")]
    report("convert", rows)


if __name__ == "__main__":
    main()
