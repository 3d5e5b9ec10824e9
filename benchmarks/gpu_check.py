"""`make gpu-check`: one prepared run for the minutes a GPU is at hand; every figure into one JSON file.

On a CUDA machine, in this order and within a time budget (default 7 minutes; what does not fit is
recorded as skipped):

1. the CUDA-marked tests (`pytest -m cuda`);
2. `benchmarks/train.py` for the paper preset in bf16 at batch 8, stage 1 and stage 2, with and
   without `--compile`, and without channels_last (seconds per step, FLOP/s as a fraction of a
   same-run dense bf16 matmul, peak memory);
3. the folded generator's 224² inference throughput in images/s (the poster: 28 images/s on a
   GTX 1080 Ti);
4. a 12-MP `convert` end to end (seconds, peak GPU memory, pixels through the network per frame
   pixel);
5. CUDA against CPU: PSNR, SSIM and colour-corrected PSNR of the same outputs, grey and clipped
   ones included;
6. a 1-process NCCL `torchrun` smoke run and its resume.

Without CUDA it says so in one line and runs what it can (5 on the CPU alone, 6 on gloo).

The GPU machine has torch but not rawpy, imagecodecs or this project's smaller dependencies, and no
package index: `make gpu-wheels` (here, with an index) downloads them into build/wheels, which the
device run carries; this script installs what is missing from there into build/pydeps.

    python benchmarks/gpu_check.py [--out build/gpu-check.json] [--budget 420]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = {"rawpy": "rawpy", "imagecodecs": "imagecodecs", "tifffile": "tifffile", "click": "click",
          "joblib": "joblib", "tqdm": "tqdm", "pytest": "pytest", "pytest_timeout": "pytest-timeout"}


def ensure_dependencies() -> dict:
    """Import what the project needs; install what is missing from build/wheels (no index)."""
    missing = [pkg for mod, pkg in NEEDED.items() if importlib.util.find_spec(mod) is None]
    note = {"missing": missing}
    wheels, target = REPO / "build" / "wheels", REPO / "build" / "pydeps"
    if missing and wheels.is_dir():
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                               "--target", str(target), *missing], capture_output=True, text=True)
        note["installed"] = proc.returncode == 0
        note["pip"] = proc.stderr[-500:]
    if target.is_dir():
        sys.path.insert(0, str(target))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), str(REPO),
                                                                  os.environ.get("PYTHONPATH")]))
    note["still_missing"] = [pkg for mod, pkg in NEEDED.items() if importlib.util.find_spec(mod) is None]
    return note


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def step(results: dict, name: str, budget: Budget, need: float, fn) -> None:
    """Run one part, recording its figures, its error, or that it did not fit the time left."""
    if budget.left() < need:
        results[name] = {"skipped": f"{budget.left():.0f} s left, needs about {need:.0f}"}
        return
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 - a failed part is a finding, the others still run
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    if isinstance(results[name], dict):
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"gpu-check: {name}: {json.dumps(results[name], default=str)[:400]}", flush=True)


def cuda_tests() -> dict:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           str(REPO / "tests")], capture_output=True, text=True, cwd=REPO, timeout=240)
    return {"returncode": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}


def train_speed(device, compile_: bool, channels_last: bool = True) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train as bench  # benchmarks/train.py

    return bench.measure(device, "paper", batch=8, steps=10, compile=compile_, channels_last=channels_last)


def inference_throughput(device) -> dict:
    import torch

    from raw2rgb.model.generator import Generator, fold_spectral_norm, init_weights

    g = Generator()
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    g = fold_spectral_norm(g).eval().to(device)
    out = {}
    for batch in (1, 8, 32):
        x = torch.rand(batch, 4, 224, 224, device=device) * 2 - 1
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for _ in range(3):
                g.rgb(x)
            torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 3:
                g.rgb(x)
                n += batch
            torch.cuda.synchronize()
        out[f"batch{batch}_images_per_s"] = round(n / (time.perf_counter() - t0), 1)
    out["poster_gtx1080ti_images_per_s"] = 28
    return out


def convert_12mp(device, tile: int = 2048) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import convert as bench  # benchmarks/convert.py

    from raw2rgb.model import checkpoint
    from raw2rgb.model.discriminator import Discriminator
    from raw2rgb.model.generator import Generator, init_weights
    from raw2rgb.model.train import TrainConfig
    from raw2rgb.pipeline import synth

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cam = synth.Camera(noise=0.002)
        dng = synth.write_dng(tmp / "frame.dng", synth.capture(synth.scene("astronaut", (3000, 4000)), cam,
                                                               np.random.default_rng(0)), cam)
        cfg = TrainConfig.preset_config("paper")
        g = Generator(cfg.generator)
        init_weights(g, 0.02, torch.Generator().manual_seed(0))
        checkpoint.save(tmp / "paper.pt", {"G": g, "D": Discriminator(cfg.discriminator)}, cfg.to_json(), {})
        out = {}
        for t in (512, tile):
            proc = subprocess.run([sys.executable, "-c", bench.CONVERT_SCRIPT, str(dng), str(tmp / "paper.pt"),
                                   str(tmp / f"out{t}"), str(device), "1", str(t)], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode:
                raise RuntimeError(proc.stderr[-1500:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            out[f"tile{t}"] = {"seconds": round(r["total"], 2), "network_seconds": round(r["net"], 2),
                               "peak_gpu_gib": round(r["gpu_peak"] / 2**30, 2),
                               "pixels_through_network_per_frame_pixel": round(r["pixels"] / (1500 * 2000), 2),
                               "failed": r["failed"]}
        return out


def metric_agreement(device) -> dict:
    import torch

    from raw2rgb.model import metrics

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 256, (4, 3, 64, 64), generator=g).float()
    outputs = {"noisy": (target + torch.randn(target.shape, generator=g) * 12).clamp(0, 255).round(),
               "grey": target.mean(1, keepdim=True).expand(-1, 3, -1, -1).round(),
               "clipped": torch.full_like(target, 255.0)}
    out = {}
    for name, o in outputs.items():
        for fn in ("psnr", "ssim", "psnr_cc"):
            cpu = getattr(metrics, fn)(o, target)
            dev = getattr(metrics, fn)(o.to(device), target.to(device)).cpu()
            out[f"{name}_{fn}_max_abs_diff"] = float((cpu - dev).abs().max())
            out[f"{name}_{fn}_cpu"] = round(float(cpu.mean()), 4)
    return out


def ddp_smoke(cuda: bool) -> dict:
    import numpy as np

    from raw2rgb.files import write_json
    from raw2rgb.pipeline import shards

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        n = 8
        shards.write_shard(tmp / "train-00000.h5", [f"s/{i}" for i in range(n)],
                           rng.integers(0, 65535, (n, 4, 32, 32)).astype(np.uint16),
                           rng.integers(0, 255, (n, 3, 32, 32)).astype(np.uint8),
                           rng.integers(0, 255, (n, 1, 32, 32)).astype(np.uint8), {"format": 1, "scale": 1})
        write_json(tmp / "index.json", {"format": 1, "scale": 1, "crop": 32, "splits": {"train": {
            "count": n, "shards": [{"file": "train-00000.h5", "count": n}]}}})
        base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29561",
                "-m", "raw2rgb", "-q", "train", str(tmp), "-o", str(tmp / "run"), "--preset", "tiny", "--epochs",
                "2,0", "--batch-size", "2", "--perceptual-weight", "0", "--workers", "0", "--log-every", "1",
                "--device", "cuda" if cuda else "cpu"]
        first = subprocess.run(base + ["--max-steps", "2"], capture_output=True, text=True, timeout=180)
        second = subprocess.run(base, capture_output=True, text=True, timeout=180)
        steps = [json.loads(line)["step"] for line in (tmp / "run" / "stats.jsonl").read_text().splitlines()
                 if json.loads(line).get("event") == "step"]
        return {"backend": "nccl" if cuda else "gloo", "first_rc": first.returncode, "resume_rc": second.returncode,
                "steps": steps, "stderr": (first.stderr + second.stderr)[-800:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "gpu-check.json")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for everything")
    args = ap.parse_args()
    budget = Budget(args.budget)
    results: dict = {"dependencies": ensure_dependencies()}
    sys.path.insert(0, str(REPO))
    import torch

    cuda = torch.cuda.is_available()
    results["environment"] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": cuda,
                              "device": torch.cuda.get_device_name(0) if cuda else None}
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        print("gpu-check: no CUDA device here; running what the CPU can (metrics, a gloo smoke run)", flush=True)
    else:
        step(results, "cuda_tests", budget, 60, cuda_tests)
        step(results, "train_paper_bf16_b8", budget, 60, lambda: train_speed(device, False))
        step(results, "train_paper_bf16_b8_no_channels_last", budget, 50, lambda: train_speed(device, False, False))
        step(results, "inference_224", budget, 20, lambda: inference_throughput(device))
        step(results, "convert_12mp", budget, 60, lambda: convert_12mp(device))
    step(results, "metrics_cuda_vs_cpu" if cuda else "metrics_cpu", budget, 10, lambda: metric_agreement(device))
    step(results, "torchrun_smoke_and_resume", budget, 60, lambda: ddp_smoke(cuda))
    if cuda:
        step(results, "train_paper_bf16_b8_compile", budget, 150, lambda: train_speed(device, True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"gpu-check: wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
