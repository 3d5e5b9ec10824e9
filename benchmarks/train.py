"""Training speed and memory of the paper configuration at 224², against a dense matmul on the same device.

Prints, for stage 1 (G: L1 + attention) and stage 2 (D step + G step with LSGAN and VGG16 perceptual):
seconds per step, samples/s, model FLOPs per step (counted with torch.utils.flop_counter), and the achieved
FLOP/s as a fraction of a dense matmul measured in the same run on the same device and dtype. Targets on a
CUDA machine with bf16: stage 1 >= 0.35 of the matmul rate, stage 2 >= 0.25; peak GPU memory at batch 8
<= 11 GB. The VGG16 here has random weights (same FLOPs; nothing is downloaded).

    python benchmarks/train.py [--device auto] [--preset paper] [--batch 8 on CUDA, 1 on CPU] [--steps 10] [--compile]
        [--no-channels-last]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from raw2rgb.device import resolve_device  # noqa: E402
from raw2rgb.model import losses  # noqa: E402
from raw2rgb.model.distributed import Dist  # noqa: E402
from raw2rgb.model.train import Runtime, TrainConfig, _build, _optimisers, train_step  # noqa: E402


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0 or reps < 3:
        a @ b
        reps += 1
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device: torch.device, preset: str = "paper", batch: int | None = None, steps: int | None = None,
            compile: bool = False, channels_last: bool = True, size: int = 224) -> dict:
    """Seconds per step, FLOPs and peak memory of both stages, and the same-run matmul rate."""
    cuda = device.type == "cuda"
    batch = batch or (8 if cuda else 1)
    steps = steps or (20 if cuda else 2)
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = TrainConfig.preset_config(preset, batch_size=batch)
    rt = Runtime(device=str(device), compile=compile, channels_last=channels_last)
    nets = _build(cfg, rt, device, Dist(), need_vgg=False, prior=None)
    from torchvision.models import vgg16

    nets.perceptual = losses.Perceptual(vgg16(weights=None).features[: losses.VGG_CONV4_3].requires_grad_(False))
    nets.perceptual.to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    fmt = torch.channels_last if cuda and channels_last else torch.contiguous_format
    s = cfg.generator.scale
    batch_t = {"raw": (torch.rand(batch, 4, size, size, device=device) * 2 - 1).contiguous(memory_format=fmt),
               "rgb": (torch.rand(batch, 3, s * size, s * size, device=device) * 2 - 1).contiguous(memory_format=fmt),
               "saliency": torch.rand(batch, 1, s * size, s * size, device=device).contiguous(memory_format=fmt),
               "colour": torch.tensor([[2.0, 1, 1.6, 1.7, -0.9, 0.2, 0, 1.3, -0.4, 0, -0.3, 1.3]] * batch,
                                      device=device)}
    peak = matmul_rate(device, dtype, 8192 if cuda else 4096)
    out = {"device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
           "preset": preset, "precision": "bf16 autocast" if cuda else "fp32", "batch": batch, "compile": compile,
           "channels_last": bool(cuda and channels_last), "matmul_tflops": peak / 1e12}
    for stage in (1, 2):
        opts = _optimisers(nets, cfg, stage, scaler_on=False)
        train_step(nets, opts, batch_t, stage, cfg.weights, amp)  # warm-up (and compilation)
        with FlopCounterMode(display=False) as counter:
            train_step(nets, opts, batch_t, stage, cfg.weights, amp)
        flops = counter.get_total_flops()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(nets, opts, batch_t, stage, cfg.weights, amp)
        sync(device)
        per_step = (time.perf_counter() - t0) / steps
        out[f"stage{stage}"] = {"seconds_per_step": per_step, "samples_per_s": batch / per_step,
                                "tflop_per_step": flops / 1e12, "fraction_of_matmul": flops / per_step / peak,
                                "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-channels-last", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    r = measure(device, args.preset, args.batch, args.steps, args.compile, not args.no_channels_last)
    rows = [("device", r["device"]), ("preset", r["preset"]), ("precision", r["precision"]),
            ("batch", str(r["batch"])), ("compile", str(r["compile"])), ("channels_last", str(r["channels_last"])),
            ("dense matmul", f"{r['matmul_tflops']:.2f} TFLOP/s")]
    for stage in (1, 2):
        m = r[f"stage{stage}"]
        target = 0.35 if stage == 1 else 0.25
        rows += [(f"stage {stage}: seconds per step", f"{m['seconds_per_step']:.3f}"),
                 (f"stage {stage}: samples/s", f"{m['samples_per_s']:.1f}"),
                 (f"stage {stage}: model FLOPs per step", f"{m['tflop_per_step']:.3f} TFLOP"),
                 (f"stage {stage}: achieved / matmul (target >= {target} on CUDA)", f"{m['fraction_of_matmul']:.2f}")]
        if m["peak_gpu_gb"] is not None:
            rows.append((f"stage {stage}: peak GPU memory (target <= 11 GB at batch 8)", f"{m['peak_gpu_gb']:.2f} GB"))
    report(f"train ({r['preset']} configuration, 224²)", rows)


if __name__ == "__main__":
    main()
