"""The training step's parts that were rewritten for speed, each timed against the form it replaced, in
the same run on the same device (CPU here; the GPU check runs the whole step there):

1. reflection padding by slices against ``nn.ReflectionPad2d`` before a 3×3 conv, forward and
   backward, channels_last;
2. the moving average of G by one multi-tensor lerp against one ``lerp_`` per parameter (the paper
   generator's 24 M parameters);
3. D's spectral norm iterated once per GAN step (D in eval mode for the G step's pass) against twice;
4. the ranks' stop agreement every 8 steps against every step (a 1-rank gloo group: the collective's
   own cost, without the GPU sync it also forces there).

On CUDA it also times the slice-written padding against the kernel (the CPU keeps the kernel, which
is faster there). ``--json`` prints one line of figures (the GPU check reads it).

    python benchmarks/step_parts.py [--device auto] [--reps 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import report  # noqa: E402

from raw2rgb.device import resolve_device  # noqa: E402
from raw2rgb.model import distributed  # noqa: E402
from raw2rgb.model.discriminator import Discriminator  # noqa: E402
from raw2rgb.model.generator import Generator, reflect_pad_slices  # noqa: E402

DEVICE = torch.device("cpu")


def best(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def pads(reps: int) -> tuple[float, float]:
    n = 16 if DEVICE.type == "cuda" else 4
    x = torch.randn(n, 64, 112, 112, device=DEVICE).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    conv = nn.Conv2d(64, 64, 3, bias=False).to(DEVICE, memory_format=torch.channels_last)

    def step(pad) -> None:
        conv(pad(x)).square().mean().backward()

    return (best(lambda: step(nn.ReflectionPad2d(1)), reps),
            best(lambda: step(lambda t: reflect_pad_slices(t, 1)), reps))


def ema(reps: int) -> tuple[float, float]:
    net, avg = Generator().to(DEVICE), Generator().to(DEVICE)
    params, avg_params = list(net.parameters()), list(avg.parameters())

    @torch.no_grad()
    def loop() -> None:
        for e, p in zip(avg_params, params):
            e.lerp_(p, 0.001)

    @torch.no_grad()
    def foreach() -> None:
        torch._foreach_lerp_(avg_params, params, 0.001)

    return best(loop, reps), best(foreach, reps)


def d_passes(reps: int) -> tuple[float, float]:
    d = Discriminator().to(DEVICE)
    raw, rgb = (torch.rand(2, 4, 64, 64, device=DEVICE) * 2 - 1, torch.rand(2, 3, 64, 64, device=DEVICE) * 2 - 1)

    def gan_step(eval_for_g: bool) -> None:
        d.train()
        d(torch.cat([raw, raw]), torch.cat([rgb, rgb])).mean().backward()  # the D step's pass
        if eval_for_g:
            d.eval()
        d(raw, rgb.requires_grad_(True)).mean().backward()  # the G step's pass
        d.train()

    return best(lambda: gan_step(False), reps), best(lambda: gan_step(True), reps)


def agreement(steps: int) -> tuple[float, float]:
    os.environ[distributed.FORCE_GROUP] = "1"
    for k in ("WORLD_SIZE", "MASTER_ADDR"):
        os.environ.pop(k, None)
    dist = distributed.init(DEVICE)
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            distributed.agree(False, dist, DEVICE)
        every = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(steps):
            if (i + 1) % 8 == 0:
                distributed.agree(False, dist, DEVICE)
        eighth = time.perf_counter() - t0
    finally:
        dist.close()
    return every / steps, eighth / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    global DEVICE
    DEVICE = resolve_device(args.device)
    figures = {"reflection pad + conv3, fwd+bwd (channels_last): kernel vs slices": pads(args.reps),
               "moving average of G (paper generator): loop vs foreach": ema(args.reps),
               "D's passes in one GAN step (paper D, 2 × 64²): twice vs once": d_passes(max(3, args.reps // 4)),
               f"stop agreement per step (1-rank {'nccl' if DEVICE.type == 'cuda' else 'gloo'}): every step vs "
               "every 8": agreement(400)}
    if args.json:
        print(json.dumps({k: {"before_ms": old * 1e3, "now_ms": new * 1e3, "speed-up": old / new}
                          for k, (old, new) in figures.items()}))
        return
    rows = [("device", str(DEVICE) if DEVICE.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)")]
    rows += [(k, f"{old * 1e3:.2f} ms before, {new * 1e3:.2f} ms now ({old / new:.2f}x)")
             for k, (old, new) in figures.items()]
    report("training-step parts, before and now", rows)


if __name__ == "__main__":
    main()
