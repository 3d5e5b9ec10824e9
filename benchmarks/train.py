"""Training speed and memory of the paper configuration at 224², against a dense matmul on the same device.

Prints, for stage 1 (G: L1 + attention) and stage 2 (D step + G step with LSGAN and VGG16 perceptual):
seconds per step, samples/s, model FLOPs per step (counted with torch.utils.flop_counter), and the achieved
FLOP/s as a fraction of a dense matmul measured in the same run on the same device and dtype. Targets on a
CUDA machine with bf16: stage 1 >= 0.35 of the matmul rate, stage 2 >= 0.25; peak GPU memory at batch 8
<= 11 GB. The VGG16 here has random weights (same FLOPs; nothing is downloaded).

    python benchmarks/train.py [--device auto] [--batch 8 on CUDA, 1 on CPU] [--steps 10] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from raw2rgb.device import resolve_device  # noqa: E402
from raw2rgb.model import losses  # noqa: E402
from raw2rgb.model.train import Dist, Runtime, TrainConfig, _build, _optimisers, train_step  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (8 if cuda else 1)
    steps = args.steps or (20 if cuda else 2)
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = TrainConfig(batch_size=batch)
    rt = Runtime(device=str(device), compile=args.compile)
    nets = _build(cfg, rt, device, Dist(), need_vgg=False)
    from torchvision.models import vgg16

    nets.perceptual = losses.Perceptual(vgg16(weights=None).features[: losses.VGG_CONV4_3].requires_grad_(False))
    nets.perceptual.to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    batch_t = {"raw": (torch.rand(batch, 4, 224, 224, device=device) * 2 - 1).contiguous(memory_format=fmt),
               "rgb": (torch.rand(batch, 3, 224, 224, device=device) * 2 - 1).contiguous(memory_format=fmt),
               "saliency": torch.rand(batch, 1, 224, 224, device=device).contiguous(memory_format=fmt)}
    peak = matmul_rate(device, dtype, 8192 if cuda else 4096)
    rows = [("device", torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"),
            ("precision", "bf16 autocast" if cuda else "fp32"), ("batch", str(batch)),
            ("compile", str(args.compile)), ("dense matmul", f"{peak / 1e12:.2f} TFLOP/s")]
    for stage in (1, 2):
        opts = _optimisers(nets, cfg, stage, scaler_on=False)
        from torch.utils.flop_counter import FlopCounterMode

        train_step(nets, opts, batch_t, stage, cfg, amp)  # warm-up (and compilation)
        with FlopCounterMode(display=False) as counter:
            train_step(nets, opts, batch_t, stage, cfg, amp)
        flops = counter.get_total_flops()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(nets, opts, batch_t, stage, cfg, amp)
        sync(device)
        per_step = (time.perf_counter() - t0) / steps
        achieved = flops / per_step
        target = 0.35 if stage == 1 else 0.25
        rows += [(f"stage {stage}: seconds per step", f"{per_step:.3f}"),
                 (f"stage {stage}: samples/s", f"{batch / per_step:.1f}"),
                 (f"stage {stage}: model FLOPs per step", f"{flops / 1e12:.3f} TFLOP"),
                 (f"stage {stage}: achieved / matmul (target >= {target} on CUDA)",
                  f"{achieved / 1e12:.2f} TFLOP/s = {achieved / peak:.2f}")]
        if cuda:
            rows.append((f"stage {stage}: peak GPU memory (target <= 11 GB at batch 8)",
                         f"{torch.cuda.max_memory_allocated(device) / 1e9:.2f} GB"))
    report("train (paper configuration, 224²)", rows)


if __name__ == "__main__":
    main()
