"""The GPU check: one prepared run for the minutes a GPU machine is lent; every figure into one JSON file.

Run it through ``benchmarks/gpu_device.sh`` (the device command in docs/gpus.md), which installs the
carried wheels first; ``make gpu-rehearsal`` runs that same command here in a clean environment like
the GPU machine's. Parts, in this order, each within what is left of one deadline (default 8
minutes; every sub-process's timeout is capped at the time left, and a part that no longer fits
says so):

1. ``environment``: Python, torch, CUDA, the device, and which of raw2rgb's imports are there;
2. ``cuda_tests``: the CUDA-marked tests (on a CPU: collected only, to show they would run);
3. ``train_*``: training speed as ``raw2rgb train`` runs it (benchmarks/train.py): presets paper and
   standard in bf16 at batch 8, without channels_last, at the largest batch that fits in 40 GB, and
   compiled (seconds per step, FLOP/s executed and paper-nominal as a fraction of a same-run dense
   matmul, peak memory);
4. ``step_parts``: the step's rewritten parts against the forms they replaced (benchmarks/step_parts.py);
   ``loader``: ShardDataset's samples/s from real shards on this machine's cores, against the GPU's
   training rate;
5. ``inference_224``: the folded generator's 224² images/s (the poster: 28 on a GTX 1080 Ti);
6. ``convert_12mp``: a 12-MP ``convert`` end to end (seconds, peak GPU memory);
7. ``metrics``: CUDA against CPU for PSNR, SSIM and colour-corrected PSNR;
8. ``torchrun_smoke``: a 1-rank NCCL process group with DDP (``RAW2RGB_PROCESS_GROUP=1``), a run and its
   resume.

Without CUDA the CUDA parts say "no CUDA" and the rest runs small, so a rehearsal on a CPU meets every
import and code path. The JSON is rewritten after every part (a timeout keeps what was measured), to
``$OUT/gpu-check.json`` when ``OUT`` is set, else build/gpu-check.json; a failing part keeps the last
40 lines of its output.

    python benchmarks/gpu_check.py [--out FILE] [--deadline 480] [--only PART ...]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
TAIL = 40  # lines kept of a failing part's output
DEADLINE = 480.0  # seconds for everything: the device command's budget, with room to rerun it once
MEMORY_LIMIT_GB = 40.0
# What raw2rgb and this check import (module → distribution)
IMPORTS = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "h5py": "h5py",
           "cv2": "opencv-python-headless", "skimage": "scikit-image", "scipy": "scipy", "PIL": "pillow",
           "tifffile": "tifffile", "imageio": "imageio", "click": "click", "joblib": "joblib", "tqdm": "tqdm",
           "tensorboard": "tensorboard", "matplotlib": "matplotlib", "rawpy": "rawpy", "imagecodecs": "imagecodecs",
           "png": "pypng", "pytest": "pytest", "onnx": "onnx", "onnxruntime": "onnxruntime"}


class PartFailed(Exception):
    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def tail(text: str, n: int = TAIL) -> list[str]:
    return text.splitlines()[-n:]


def python() -> list[str]:
    """This interpreter with its start-up flags (-S in the rehearsal): sub-processes start as this one."""
    return [sys.executable, *subprocess._args_from_interpreter_flags()]


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu-check.json" if out else REPO / "build" / "gpu-check.json"


class Check:
    """The parts' results, the deadline, and the JSON file rewritten after every part."""

    def __init__(self, out: Path, deadline: float) -> None:
        self.out, self.end = out, time.monotonic() + deadline
        self.results: dict = {"deadline_s": deadline, "out": str(out)}

    def left(self) -> float:
        return self.end - time.monotonic()

    def timeout(self, want: float) -> float:
        """``want`` seconds, or what is left of the deadline (less a margin to write the file)."""
        left = self.left() - 5
        if left <= 1:
            raise PartFailed(f"no time left (deadline {self.results['deadline_s']:.0f} s)")
        return min(want, left)

    def run(self, args: list[str], want: float, env: dict | None = None, cwd: Path = REPO) -> str:
        """A sub-process within the deadline; its stdout. Raises PartFailed with its output's last lines."""
        timeout = self.timeout(want)
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                                  env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise PartFailed(f"timed out after {timeout:.0f} s", out + err) from None
        if proc.returncode:
            raise PartFailed(f"exit {proc.returncode}: {' '.join(args[-6:])}", proc.stdout + proc.stderr)
        return proc.stdout

    def part(self, name: str, need: float, fn: Callable[[], dict]) -> dict:
        """Run one part: its figures, its error with the output's last lines, or why it was skipped."""
        if self.left() < need:
            result = {"skipped": f"{self.left():.0f} s left of the deadline, needs about {need:.0f}"}
        else:
            t0 = time.perf_counter()
            try:
                result = fn()
            except PartFailed as e:
                result = {"error": str(e), "output_tail": tail(e.output)}
            except Exception as e:  # noqa: BLE001 - a failed part is a finding; the others still run
                result = {"error": f"{type(e).__name__}: {e}", "output_tail": tail(traceback.format_exc())}
            result["seconds"] = round(time.perf_counter() - t0, 1)
        self.results[name] = result
        self.write()
        brief = "error: " + result["error"] if "error" in result else result.get("skipped") or "ok"
        print(f"gpu-check: {name}: {brief} ({result.get('seconds', 0)} s)", flush=True)
        return result

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".partial")
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, self.out)


# -- the parts --------------------------------------------------------------------------------------------

def environment() -> dict:
    import torch

    found, missing = {}, []
    for module, dist in IMPORTS.items():
        if importlib.util.find_spec(module) is None:
            missing.append(dist)
            continue
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "?"
    cuda = torch.cuda.is_available()
    return {"python": sys.version.split()[0], "flags": subprocess._args_from_interpreter_flags(),
            "site_imported": "site" in sys.modules and not sys.flags.no_site, "torch": torch.__version__,
            "cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
            "gpus": torch.cuda.device_count() if cuda else 0, "cpus": os.cpu_count(), "packages": found,
            "missing": missing}


def cuda_tests(check: Check, cuda: bool, tests: Path = REPO / "tests") -> dict:
    """The CUDA-marked tests (collected only without CUDA); a module that fails to import is an error
    of its own, not of the whole run."""
    args = [*python(), "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "--continue-on-collection-errors",
            "-o", "addopts=", str(tests)]
    if not cuda:
        args.insert(args.index("-q"), "--collect-only")
    timeout = check.timeout(300)
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    collected = sum(1 for line in lines if "::" in line) if not cuda else None
    out = {"ran": cuda, "returncode": proc.returncode, "summary": lines[-1] if lines else "",
           "collected": collected}
    if proc.returncode not in (0, 5) or "error" in out["summary"]:
        out["output_tail"] = tail(proc.stdout + proc.stderr)
    return out


def train_figures(check: Check, preset: str, cuda: bool, batch: int | None = None, compile: bool = False,
                  channels_last: bool = True, fit_gb: float | None = None, want: float = 150) -> dict:
    args = [*python(), str(BENCH / "train.py"), "--json", "--preset", preset]
    if cuda:
        args += ["--device", "cuda"] + (["--batch", str(batch)] if batch else [])
        args += ["--max-memory-gb", str(fit_gb)] if fit_gb else []
    else:  # the same code path, small: a CPU cannot say anything about GPU speed
        args += ["--device", "cpu", "--batch", "1", "--steps", "1", "--size", "32"]
    args += ["--compile"] if compile else []
    args += [] if channels_last else ["--no-channels-last"]
    return json.loads(check.run(args, want).strip().splitlines()[-1])


def loader_rate(train_rates: list[float], cuda: bool) -> dict:
    """ShardDataset through a DataLoader on this machine's cores (as training feeds the GPU) against the
    fastest training rate measured."""
    sys.path.insert(0, str(BENCH))
    import loader as bench  # benchmarks/loader.py

    from raw2rgb.model.data import ShardDataset

    workers = min(16, os.cpu_count() or 1)
    n = 512 if cuda else 32
    with tempfile.TemporaryDirectory() as tmp:
        bench.make_data(Path(tmp), n)
        rate = bench.rate(ShardDataset(Path(tmp) / "shards", "train", compact=True), workers, 2)
    fastest = max(train_rates, default=None)
    return {"workers": workers, "samples": n, "samples_per_s": round(rate, 1), "fastest_training_samples_per_s":
            fastest, "loader_over_training": round(rate / fastest, 2) if fastest else None}


def inference_throughput(device) -> dict:
    import torch

    from raw2rgb.model.generator import Generator, fold_spectral_norm, init_weights

    g = Generator()
    init_weights(g, 0.02, torch.Generator().manual_seed(0))
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    g = fold_spectral_norm(g).eval().to(device, memory_format=fmt)
    out = {}
    for batch in (1, 8, 32) if cuda else (1,):
        x = (torch.rand(batch, 4, 224, 224, device=device) * 2 - 1).contiguous(memory_format=fmt)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            for _ in range(3 if cuda else 1):
                g.rgb(x)
            if cuda:
                torch.cuda.synchronize()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < (3 if cuda else 0.5):
                g.rgb(x)
                n += batch
            if cuda:
                torch.cuda.synchronize()
        out[f"batch{batch}_images_per_s"] = round(n / (time.perf_counter() - t0), 1)
    out["poster_gtx1080ti_images_per_s"] = 28
    return out


def convert_frame(check: Check, device, cuda: bool) -> dict:
    """``convert`` end to end with the paper generator (random weights): 12 MP on CUDA, a small frame on a
    CPU (the same code path)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(BENCH))
    import convert as bench  # benchmarks/convert.py

    from raw2rgb.model import checkpoint
    from raw2rgb.model.discriminator import Discriminator
    from raw2rgb.model.generator import Generator, init_weights
    from raw2rgb.model.train import TrainConfig
    from raw2rgb.pipeline import synth

    size = (3000, 4000) if cuda else (256, 384)  # the CPU's: the code path, not a figure
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cam = synth.Camera(noise=0.002)
        dng = synth.write_dng(tmp / "frame.dng", synth.capture(synth.scene("astronaut", size), cam,
                                                               np.random.default_rng(0)), cam)
        cfg = TrainConfig.preset_config("paper")
        g = Generator(cfg.generator)
        init_weights(g, 0.02, torch.Generator().manual_seed(0))
        checkpoint.save(tmp / "paper.pt", {"G": g, "D": Discriminator(cfg.discriminator)}, cfg.to_json(), {})
        out = {"megapixels": size[0] * size[1] / 1e6}
        for t in (512, 2048) if cuda else (256,):
            stdout = check.run([*python(), "-c", bench.CONVERT_SCRIPT, str(dng), str(tmp / "paper.pt"),
                                str(tmp / f"out{t}"), str(device), "1", str(t)], 240)
            r = json.loads(stdout.strip().splitlines()[-1])
            out[f"tile{t}"] = {"seconds": round(r["total"], 2), "network_seconds": round(r["net"], 2),
                               "peak_gpu_gib": round(r["gpu_peak"] / 2**30, 2), "peak_rss_gib":
                               round(r["maxrss_kb"] / 2**20, 2), "pixels_through_network_per_frame_pixel":
                               round(r["pixels"] / (size[0] * size[1] / 4), 2), "failed": r["failed"]}
        return out


def metric_agreement(device) -> dict:
    import torch

    from raw2rgb.model import metrics

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 256, (4, 3, 64, 64), generator=g).float()
    outputs = {"noisy": (target + torch.randn(target.shape, generator=g) * 12).clamp(0, 255).round(),
               "grey": target.mean(1, keepdim=True).expand(-1, 3, -1, -1).round(),
               "clipped": torch.full_like(target, 255.0)}
    out = {"device": str(device)}
    for name, o in outputs.items():
        for fn in ("psnr", "ssim", "psnr_cc"):
            cpu = getattr(metrics, fn)(o, target)
            dev = getattr(metrics, fn)(o.to(device), target.to(device)).cpu()
            out[f"{name}_{fn}_max_abs_diff"] = float((cpu - dev).abs().max())
            out[f"{name}_{fn}_cpu"] = round(float(cpu.mean()), 4)
    return out


def torchrun_smoke(check: Check, cuda: bool) -> dict:
    """A 1-rank process group (NCCL on a GPU) with DDP, forced by RAW2RGB_PROCESS_GROUP: a run stopped at
    step 2, then resumed to its end."""
    sys.path.insert(0, str(REPO))
    from tests.model.conftest import make_shards

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_shards(tmp / "shards", {"train": 8, "val": 0})
        base = [*python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "raw2rgb",
                "-q", "train", str(tmp / "shards"), "-o", str(tmp / "run"), "--preset", "tiny", "--epochs", "2,0",
                "--batch-size", "2", "--perceptual-weight", "0", "--workers", "0", "--log-every", "1",
                "--device", "cuda" if cuda else "cpu"]
        env = {"RAW2RGB_PROCESS_GROUP": "1"}
        check.run(base + ["--max-steps", "2"], 180, env)
        check.run(base, 180, env)
        records = [json.loads(line) for line in (tmp / "run" / "stats.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if r.get("event") == "step"]
        ranks = [r for r in records if r.get("event") == "ranks"]
        ok = steps == list(range(1, 9)) and bool(ranks) and ranks[-1].get("ddp") is True
        return {"backend": ranks[-1].get("backend") if ranks else None, "ddp": ranks[-1].get("ddp") if ranks else None,
                "steps": steps, "resumed": steps[:2] == [1, 2] and len(steps) == 8, "ok": ok}


# -- the run ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="the JSON file (default: $OUT/gpu-check.json, else "
                    "build/gpu-check.json)")
    ap.add_argument("--deadline", type=float, default=DEADLINE, help="seconds for everything")
    ap.add_argument("--only", nargs="+", default=None, help="run only these parts (by name prefix)")
    args = ap.parse_args(argv)
    check = Check(args.out or default_out(), args.deadline)
    sys.path.insert(0, str(REPO))

    def part(name: str, need: float, fn: Callable[[], dict]) -> dict | None:
        if args.only and not any(name.startswith(p) for p in args.only):
            return None
        return check.part(name, need, fn)

    env = part("environment", 0, environment) or environment()
    cuda = env.get("cuda", False)
    if not cuda:
        print("gpu-check: no CUDA here: CUDA parts run small on the CPU (same code paths, no GPU figures)", flush=True)
    import torch

    device = torch.device("cuda" if cuda else "cpu")
    part("cuda_tests", 20, lambda: cuda_tests(check, cuda))
    rates = []

    def train(name: str, need: float, **kw) -> None:
        r = part(name, need, lambda: train_figures(check, cuda=cuda, **kw))
        if r and "stage1" in r:
            rates.append(round(r["stage1"]["samples_per_s"], 1))

    def cuda_only(name: str, need: float, fn: Callable[[], None]) -> None:
        if cuda:
            fn()
        elif not args.only or any(name.startswith(p) for p in args.only):
            check.results[name] = {"skipped": "no CUDA"}
            check.write()
            print(f"gpu-check: {name}: no CUDA, skipped", flush=True)

    train("train_paper_b8", 40, preset="paper", batch=8)
    train("train_standard_b8", 40, preset="standard", batch=8)
    cuda_only("train_paper_b8_no_channels_last", 40,
              lambda: train("train_paper_b8_no_channels_last", 40, preset="paper", batch=8, channels_last=False))
    cuda_only("train_paper_largest_batch", 90,
              lambda: train("train_paper_largest_batch", 90, preset="paper", fit_gb=MEMORY_LIMIT_GB))
    cuda_only("train_standard_largest_batch", 90,
              lambda: train("train_standard_largest_batch", 90, preset="standard", fit_gb=MEMORY_LIMIT_GB))
    part("step_parts", 20, lambda: json.loads(check.run(
        [*python(), str(BENCH / "step_parts.py"), "--json", "--device", "cuda" if cuda else "cpu", "--reps",
         "10" if cuda else "2"], 90).strip().splitlines()[-1]))
    part("loader", 30, lambda: loader_rate(rates, cuda))
    part("inference_224", 15, lambda: inference_throughput(device))
    part("convert_12mp", 40, lambda: convert_frame(check, device, cuda))
    part("metrics", 10, lambda: metric_agreement(device))
    part("torchrun_smoke", 40, lambda: torchrun_smoke(check, cuda))
    # last: compilation can take minutes, and what it leaves out of the deadline is only this part
    cuda_only("train_paper_b8_compile", 120,
              lambda: train("train_paper_b8_compile", 120, preset="paper", batch=8, compile=True, want=240))
    check.results["deadline_left_s"] = round(check.left(), 1)
    check.write()
    print(f"gpu-check: wrote {check.out}", flush=True)
    return check.results


if __name__ == "__main__":
    main()
