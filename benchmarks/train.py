"""Training speed and memory at 224², as `raw2rgb train` runs it, against a dense matmul on the same device.

Prints, for stage 1 (G: L1 + attention) and stage 2 (D step + G step with LSGAN and VGG16 perceptual):
seconds per step, samples/s, model FLOPs per step and the achieved FLOP/s as a fraction of a dense
matmul measured in the same run on the same device and dtype. The networks, optimisers and kernel
policy (cudnn.benchmark, TF32, channels_last, fused Adam) are those of `raw2rgb train`
(``device.device_policy``, ``state.build``, ``state.optimisers``). FLOPs are counted once, in eager mode (a compiled
step would hide its kernels from the counter), and reported twice: as executed (the generator's
up-sampling convs in their sub-pixel form) and paper-nominal (the same step with the plain
upsample-then-conv the paper's FLOP count assumes). Targets on a CUDA machine with bf16: stage 1
>= 0.35 of the matmul rate, stage 2 >= 0.25; peak GPU memory at batch 8 <= 11 GB. The VGG16 has
random weights (same FLOPs; nothing is downloaded).

``--max-memory-gb N`` also finds the largest batch (a multiple of 8) whose stage-2 step fits in N GB:
peak memory is linear in the batch, so two measured batches predict it, and the prediction is
then measured.

    python benchmarks/train.py [--device auto] [--preset paper] [--batch 8 on CUDA, 1 on CPU] [--steps 10]
        [--compile] [--no-channels-last] [--size 224] [--max-memory-gb 40] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from raw2rgb.device import device_policy, resolve_device  # noqa: E402
from raw2rgb.model import losses  # noqa: E402
from raw2rgb.model.distributed import Dist  # noqa: E402
from raw2rgb.model.generator import Generator, Up, init_weights  # noqa: E402
from raw2rgb.model.state import build, optimisers  # noqa: E402
from raw2rgb.model.train import Runtime, TrainConfig, train_step  # noqa: E402


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


@contextlib.contextmanager
def plain_upsampling():
    """Up in the paper's form (nearest ×2, then a 3×3 conv at the doubled size) while counting."""
    fast = Up.forward
    Up.forward = Up.reference
    try:
        yield
    finally:
        Up.forward = fast


def generator_gflops(preset: str, size: int = 224) -> dict[str, float]:
    """GFLOPs of one generator forward (G1 + saliency head) on one size² image, executed and
    paper-nominal."""
    cfg = TrainConfig.preset_config(preset)
    g = Generator(cfg.generator)
    init_weights(g, cfg.init_std, torch.Generator().manual_seed(0))
    x = torch.rand(1, 4, size, size) * 2 - 1
    colour = _batch(cfg, 1, 1, torch.device("cpu"), torch.contiguous_format)["colour"]
    out = {}
    for name, ctx in (("executed", contextlib.nullcontext()), ("paper_nominal", plain_upsampling())):
        with ctx, torch.no_grad(), FlopCounterMode(display=False) as counter:
            g(x, colour)
        out[name] = counter.get_total_flops() / 1e9
    return out


def _batch(cfg: TrainConfig, batch: int, size: int, device: torch.device, fmt) -> dict[str, torch.Tensor]:
    s = cfg.generator.scale
    return {"raw": (torch.rand(batch, 4, size, size, device=device) * 2 - 1).contiguous(memory_format=fmt),
            "rgb": (torch.rand(batch, 3, s * size, s * size, device=device) * 2 - 1).contiguous(memory_format=fmt),
            "saliency": torch.rand(batch, 1, s * size, s * size, device=device).contiguous(memory_format=fmt),
            "colour": torch.tensor([[2.0, 1, 1.6, 1.7, -0.9, 0.2, 0, 1.3, -0.4, 0, -0.3, 1.3]] * batch,
                                   device=device)}


def measure(device: torch.device, preset: str = "paper", batch: int | None = None, steps: int | None = None,
            compile: bool = False, channels_last: bool = True, size: int = 224, matmul: float | None = None) -> dict:
    """Seconds per step, FLOPs (executed and paper-nominal) and peak memory of both stages, and the
    same-run matmul rate."""
    cuda = device.type == "cuda"
    device = device_policy(device)
    batch = batch or (8 if cuda else 1)
    steps = steps or (20 if cuda else 2)
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = TrainConfig.preset_config(preset, batch_size=batch)
    rt = Runtime(device=str(device), compile=False, channels_last=channels_last)
    nets = build(cfg, rt, device, Dist(), need_vgg=False, prior=None)  # eager: the FLOPs are counted on it
    from torchvision.models import vgg16

    nets.perceptual = losses.Perceptual(vgg16(weights=None).features[: losses.VGG_CONV4_3].requires_grad_(False))
    nets.perceptual.to(device, memory_format=torch.channels_last if cuda and channels_last else torch.preserve_format)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    fmt = torch.channels_last if cuda and channels_last else torch.contiguous_format
    batch_t = _batch(cfg, batch, size, device, fmt)
    peak = matmul or matmul_rate(device, dtype, 8192 if cuda else 2048)
    out = {"device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
           "preset": preset, "precision": "bf16 autocast" if cuda else "fp32", "batch": batch, "size": size,
           "compile": compile, "channels_last": bool(cuda and channels_last), "matmul_tflops": peak / 1e12}
    for stage in (1, 2):
        opts = optimisers(nets, cfg, stage, scaler_on=False)
        nets.g_train, nets.d_train = nets.G, nets.D
        train_step(nets, opts, batch_t, stage, cfg.weights, amp)  # warm-up
        counted = {}
        for name, ctx in (("executed", contextlib.nullcontext()), ("paper_nominal", plain_upsampling())):
            with ctx, FlopCounterMode(display=False) as counter:
                train_step(nets, opts, batch_t, stage, cfg.weights, amp)
            counted[name] = counter.get_total_flops()
        if compile:
            nets.g_train, nets.d_train = torch.compile(nets.G), torch.compile(nets.D)
            t0 = time.perf_counter()
            train_step(nets, opts, batch_t, stage, cfg.weights, amp)  # compilation
            sync(device)
            compile_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        train_step(nets, opts, batch_t, stage, cfg.weights, amp)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(nets, opts, batch_t, stage, cfg.weights, amp)
        sync(device)  # before the clock stops: the queued kernels are part of the step
        per_step = (time.perf_counter() - t0) / steps
        out[f"stage{stage}"] = {
            "seconds_per_step": per_step, "samples_per_s": batch / per_step,
            "tflop_per_step_executed": counted["executed"] / 1e12,
            "tflop_per_step_paper_nominal": counted["paper_nominal"] / 1e12,
            "fraction_of_matmul_executed": counted["executed"] / per_step / peak,
            "fraction_of_matmul_paper_nominal": counted["paper_nominal"] / per_step / peak,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None,
            **({"compile_seconds": compile_s} if compile else {})}
    out["generator_gflop_per_forward"] = generator_gflops(preset, size)
    return out


def stage2_peak_gb(device: torch.device, preset: str, batch: int, size: int) -> float:
    """Peak GPU memory of one stage-2 step at ``batch`` (GB); inf when it does not fit."""
    try:
        r = measure(device, preset, batch, steps=1, size=size, matmul=1.0)
        return r["stage2"]["peak_gpu_gb"]
    except torch.OutOfMemoryError:
        return float("inf")
    finally:
        torch.cuda.empty_cache()


def largest_batch(device: torch.device, preset: str, limit_gb: float, size: int = 224) -> dict:
    """The largest multiple of 8 whose stage-2 step peaks under ``limit_gb`` (CUDA)."""
    a, b = stage2_peak_gb(device, preset, 8, size), stage2_peak_gb(device, preset, 16, size)
    per_sample = (b - a) / 8
    guess = max(8, int((limit_gb - (a - 8 * per_sample)) / per_sample) // 8 * 8) if per_sample > 0 else 8
    while guess > 8 and stage2_peak_gb(device, preset, guess, size) > limit_gb:
        guess -= 8
    return {"limit_gb": limit_gb, "peak_gb_batch8": a, "peak_gb_batch16": b, "gb_per_sample": per_sample,
            "batch": guess}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--max-memory-gb", type=float, default=None, help="find the largest batch that fits (CUDA)")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = ap.parse_args()
    device = resolve_device(args.device)
    batch = args.batch
    fit = None
    if args.max_memory_gb is not None:
        if device.type != "cuda":
            sys.exit("--max-memory-gb needs CUDA")
        fit = largest_batch(device, args.preset, args.max_memory_gb, args.size)
        batch = fit["batch"]
    r = measure(device, args.preset, batch, args.steps, args.compile, not args.no_channels_last, args.size)
    if fit:
        r["largest_batch"] = fit
    if args.json:
        print(json.dumps(r))
        return
    g = r["generator_gflop_per_forward"]
    rows = [("device", r["device"]), ("preset", r["preset"]), ("precision", r["precision"]),
            ("batch", str(r["batch"])), ("compile", str(r["compile"])), ("channels_last", str(r["channels_last"])),
            ("dense matmul", f"{r['matmul_tflops']:.2f} TFLOP/s"),
            (f"generator forward, {args.size}²", f"{g['executed']:.1f} GFLOP executed, "
             f"{g['paper_nominal']:.1f} GFLOP paper-nominal")]
    for stage in (1, 2):
        m = r[f"stage{stage}"]
        target = 0.35 if stage == 1 else 0.25
        rows += [(f"stage {stage}: seconds per step", f"{m['seconds_per_step']:.3f}"),
                 (f"stage {stage}: samples/s", f"{m['samples_per_s']:.1f}"),
                 (f"stage {stage}: model FLOPs per step", f"{m['tflop_per_step_executed']:.3f} TFLOP executed, "
                  f"{m['tflop_per_step_paper_nominal']:.3f} paper-nominal"),
                 (f"stage {stage}: achieved / matmul (target >= {target} on CUDA)",
                  f"{m['fraction_of_matmul_executed']:.2f} executed, "
                  f"{m['fraction_of_matmul_paper_nominal']:.2f} paper-nominal")]
        if m["peak_gpu_gb"] is not None:
            rows.append((f"stage {stage}: peak GPU memory (target <= 11 GB at batch 8)", f"{m['peak_gpu_gb']:.2f} GB"))
    if fit:
        rows.append((f"largest batch under {fit['limit_gb']:.0f} GB", str(fit["batch"])))
    report(f"train ({r['preset']} configuration, {args.size}²)", rows)


if __name__ == "__main__":
    main()
