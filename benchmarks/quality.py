"""Quality: the learned mapping against what a user could do without it, under one protocol (DESIGN §6b).

On the demo's data — the virtual camera's RAW paired with "another camera's" JPEGs, prepared as
`make demo` prepares it (scale 2, 64-px patches, split by scene at seed 0) — and on a harder pair
(a DSLR-like look with hue-dependent colour, sharpening and local contrast; the RAW from a phone
with lens blur, vignetting and more noise), it scores on the held-out split:

- the classical pipeline (as-shot white balance, the file's colour matrix, sRGB);
- the classical pipeline followed by a colour profile fitted on the train split (poly3 and a LUT);
- variants of the generator, each trained by the real trainer with the tiny preset's default
  schedule on this CPU: the recommended network (colour prior, no InstanceNorm), with
  InstanceNorm, without the prior, the paper's network at tiny size (InstanceNorm, no prior);
- the paper preset (the full paper network) trained for the same wall time.

Prints one table (also in docs/benchmarks.md); `--quick` trains one epoch per stage (a smoke run).

    python benchmarks/quality.py [--looks plain,dslr] [--variants ...] [--out build/quality] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raw2rgb import prepare as prep  # noqa: E402
from raw2rgb.model.evaluate import evaluate  # noqa: E402
from raw2rgb.model.generator import GeneratorConfig  # noqa: E402
from raw2rgb.model.losses import LossWeights  # noqa: E402
from raw2rgb.model.train import Runtime, TrainConfig, train  # noqa: E402
from raw2rgb.pipeline import profile, synth  # noqa: E402
from raw2rgb.pipeline.pairs import PatchParams  # noqa: E402

TINY = TrainConfig.preset_config("tiny")
VARIANTS = {
    "recommended": {},
    "lut-prior": {"prior_model": "lut"},
    "with-instancenorm": {"norm": "instance"},
    "no-prior": {"prior": "none"},
    "paper-network-tiny": {"norm": "instance", "prior": "none"},
    "paper-preset": None,  # the paper's network and sizes, trained for the recommended run's wall time
}
LOOKS = {"plain": {}, "dslr": {"look": synth.LOOKS["dslr"], "phone": True}}


def dataset(out: Path, look: str) -> Path:
    """The demo's dataset for a look (cached: prepare redoes nothing)."""
    src, ds = out / look / "raw", out / look / "dataset"
    if not src.is_dir():
        synth.paired_dngs(src, size=(512, 768), **LOOKS[look])
    cfg = prep.PrepareConfig(src=str(src), out=str(ds), layout="raw+jpeg", patch=PatchParams(size=64, stride=64),
                             min_inliers=12, scale=2, copies=2, split=(0.7, 0.3, 0.0), seed=0,
                             saliency_method="spectral-residual")
    prep.run(cfg)
    return ds


def row(look: str, name: str, summary: dict, seconds: float | None = None) -> dict:
    return {"look": look, "method": name, "psnr": round(summary["psnr"], 2), "ssim": round(summary["ssim"], 4),
            "psnr_cc": round(summary["psnr_cc"], 2), "train_s": round(seconds) if seconds else None}


def trained(ds: Path, run_dir: Path, cfg: TrainConfig, rt: Runtime) -> float:
    t0 = time.perf_counter()
    train(ds, run_dir, cfg, rt)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--looks", default="plain,dslr")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("build/quality"))
    ap.add_argument("--quick", action="store_true", help="one epoch per stage: check the script, not the model")
    args = ap.parse_args()
    rows = []
    for look in args.looks.split(","):
        ds = dataset(args.out, look)
        rows.append(row(look, "classical pipeline", evaluate(ds, "val", None, "isp").summary))
        for model in profile.MODELS:
            path = args.out / look / f"profile-{model}.json"
            profile.save(profile.fit_dataset(ds, "train", model), path)
            rows.append(row(look, f"profile ({model})", evaluate(ds, "val", None, "profile", profile=path).summary))
        print(*rows[-3:], sep="\n", flush=True)
        budget = None
        for name in args.variants.split(","):
            run_dir = args.out / look / f"run-{name}"
            rt = Runtime(log_every=50, checkpoint_every=10_000)  # data loading as `raw2rgb train` does it
            if VARIANTS[name] is None:  # the paper preset, for the recommended run's wall time
                cfg = TrainConfig.preset_config("paper", weights=LossWeights(perceptual=0.0))
                cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, scale=2),
                                          batch_size=TINY.batch_size)
                probe = args.out / look / "run-paper-probe"
                t = trained(ds, probe, cfg, Runtime(max_steps=3, checkpoint_every=10_000))
                steps = 1 if args.quick else max(3, int((budget or 300) / (t / 3)))
                rt = dataclasses.replace(rt, max_steps=steps)
            else:
                cfg = dataclasses.replace(TINY, generator=GeneratorConfig(**{**TINY.generator.to_json(), "scale": 2,
                                                                              **VARIANTS[name]}),
                                          weights=dataclasses.replace(TINY.weights, perceptual=0.0))
            if args.quick:
                cfg = dataclasses.replace(cfg, stage1_epochs=1, stage2_epochs=1)
            seconds = trained(ds, run_dir, cfg, rt)
            if name == "recommended":
                budget = seconds
            rows.append(row(look, name, evaluate(ds, "val", run_dir, "model").summary, seconds))
            print(rows[-1], flush=True)
    (args.out / "quality.json").write_text(json.dumps(rows, indent=1))
    print()
    print("| look | method | PSNR (dB) | SSIM | colour-corrected PSNR (dB) | training (s, 2 CPU cores) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['look']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr_cc']:.2f} | "
              f"{r['train_s'] if r['train_s'] is not None else '–'} |")


if __name__ == "__main__":
    main()
