"""Quality: the learned mapping against what a user could do without it, under one protocol, on several
sets of data — the demo's, and sets nobody tuned on.

Sets (``--sets``):

- ``plain``: the demo's data — the virtual camera's DNGs (with colour metadata) paired with "another
  camera's" JPEGs, prepared as `make demo` prepares it (scale 2, 64-px patches, split by scene at
  seed 0); scored on the val split;
- ``dslr``: a harder pair: a DSLR-like look (hue-dependent colour, sharpening, local contrast) from a
  phone's RAW (lens blur, vignetting, more noise);
- ``zrr-steady`` / ``zrr-varying``: `raw2rgb synth --zrr`: ZRR-layout crops without colour metadata
  (10-bit one-plane mosaics), under one light or a light per scene (the target camera white-balances
  on its own); chelsea's crops held out in test/;
- ``real-sony``: a real camera's RAW and its own JPEG (the Sony A7R III's ARW and its 1616×1080
  preview), when the real files are there, laid out as a RAW+JPEG shooter has them and prepared by
  the product itself with its defaults (`raw2rgb prepare SHOOT -o DATASET`: binned to the JPEG,
  64-px patches, the right-hand band of the one frame held out); the recommended network trained by
  `raw2rgb train DATASET -o RUN --preset tiny` (docs/camera-look.md); ``real-sony-embedded``: the
  ARW alone, its target the JPEG inside it.

For each set, on the held-out split:

- the classical pipeline (as-shot white balance and matrix; where the file has none, the default
  white-balance rule's gains and camera RGB);
- the classical pipeline followed by a colour profile fitted on the train split: poly3 under each
  white-balance rule (one row on sets with metadata, where the rule is not used), and a LUT;
- a plain cubic on the raw planes, independent of raw2rgb's colour code: camera RGB (bilinear
  demosaicing, no white balance), gamma 2.2, 20 terms a channel, least squares on the train split;
- generator variants, each trained by the real trainer with the tiny preset's default schedule on
  this CPU (``--variants``): the recommended network, with the learned global colour branch, and
  the older comparisons (with InstanceNorm, without the prior, the paper's network at tiny size, the
  paper preset for the recommended run's wall time).

Prints one table per set (also written to OUT/quality.json); `--quick` trains one epoch (a smoke run).

    python benchmarks/quality.py [--sets plain,dslr,zrr-steady,zrr-varying,real-sony]
        [--variants recommended,colour-branch] [--out build/quality] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raw2rgb import prepare as prep  # noqa: E402
from raw2rgb.model.data import ShardDataset, to_model  # noqa: E402
from raw2rgb.model.evaluate import evaluate, score, summarise  # noqa: E402
from raw2rgb.model.generator import GeneratorConfig  # noqa: E402
from raw2rgb.model.prior import ColourPrior, demosaic_bilinear  # noqa: E402
from raw2rgb.model.prior_fit import PriorFit, fit_detail_on_split  # noqa: E402
from raw2rgb.model.terms import LossWeights  # noqa: E402
from raw2rgb.model.train import Runtime, TrainConfig, train  # noqa: E402
from raw2rgb.pipeline import profile, profile_fit, synth, whitebalance  # noqa: E402
from raw2rgb.pipeline.pairs import PatchParams  # noqa: E402
from raw2rgb.pipeline.profile import poly3_terms  # noqa: E402
from raw2rgb.pipeline.shards import read_index, shards_root  # noqa: E402

TINY = TrainConfig.preset_config("tiny")
# Real camera files, where the project keeps them for measuring (``../shared/real`` beside the repository; a
# user's clone has none, and the set says so): name → (the RAW, the same camera's own JPEG of the shot)
REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
PAIRS = {"sony": ("_DSC2164.ARW", "_DSC2164.ARW.embedded-preview.jpg")}
VARIANTS = {
    "recommended": {},
    "colour-branch": {"colour_branch": "global"},
    "lut-prior": {"prior_model": "lut"},
    "no-detail-filter": {"detail_filter": 0},
    "with-instancenorm": {"norm": "instance"},
    "no-prior": {"prior": "none"},
    "paper-network-tiny": {"norm": "instance", "prior": "none"},
    "paper-preset": None,  # the paper's network and sizes, trained for the recommended run's wall time
}
SETS = {
    "plain": {"kind": "raw+jpeg"},
    "dslr": {"kind": "raw+jpeg", "look": synth.LOOKS["dslr"], "phone": True},
    "zrr-steady": {"kind": "zrr", "light": "steady"},
    "zrr-varying": {"kind": "zrr", "light": "varying"},
    "real-sony": {"kind": "camera", "pair": "sony"},
    "real-sony-embedded": {"kind": "camera", "pair": "sony", "embedded": True},
}
HELD_OUT = {"raw+jpeg": "val", "zrr": "test", "camera": "test"}  # the split each kind scores on
R2R = [sys.executable, "-m", "raw2rgb"]


def product(*args: object) -> float:
    """Run a raw2rgb command as a user would (its own defaults); its wall time."""
    t0 = time.perf_counter()
    subprocess.run([*R2R, *map(str, args)], check=True)
    return time.perf_counter() - t0


def dataset(out: Path, name: str, real: Path) -> Path | None:
    """A set's DATASET (cached: prepare redoes nothing); None when its source cannot be had here."""
    spec = SETS[name]
    src, ds = out / name / "raw", out / name / "dataset"
    kind = spec["kind"]
    if not src.is_dir():
        tmp = src.with_name("raw.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        if kind == "raw+jpeg":
            synth.paired_dngs(tmp, size=(512, 768), look=spec.get("look", synth.Look()), phone=spec.get("phone", False))
        elif kind == "zrr":  # crops of 256 sensor pixels: as many 64-px patches per scene as the demo's
            synth.zrr_dataset(tmp, size=(512, 768), crop=256, light=spec["light"])
        else:  # the shooter's folder: the RAW and (unless embedded) the camera's JPEG under the RAW's stem
            raw, jpeg = (real / f for f in PAIRS[spec["pair"]])
            if not raw.is_file():
                print(f"quality: {name}: {raw} not here; set skipped", flush=True)
                return None
            tmp.mkdir(parents=True)
            shutil.copyfile(raw, tmp / raw.name)
            if not spec.get("embedded"):
                shutil.copyfile(jpeg, tmp / f"{raw.stem}.JPG")
        tmp.rename(src)
    if kind == "camera":  # the product's own prepare with its defaults
        seconds = product("prepare", src, "-o", ds)
        (out / name / "prepare-seconds.txt").write_text(f"{seconds:.1f}\n")
        return ds
    patch = 64
    cfg = prep.PrepareConfig(src=str(src), out=str(ds), layout="raw+jpeg" if kind == "raw+jpeg" else "zrr",
                             patch=PatchParams(size=patch, stride=patch), min_inliers=12, scale=2,
                             copies=2 if kind == "raw+jpeg" else 1,
                             split=(0.7, 0.3, 0.0) if kind == "raw+jpeg" else (1.0, 0.0, 0.0), seed=0,
                             saliency_method="spectral-residual")
    prep.run(cfg)
    return ds


def row(name: str, method: str, summary: dict, seconds: float | None = None) -> dict:
    return {"set": name, "method": method, "psnr": round(summary["psnr"], 2), "ssim": round(summary["ssim"], 4),
            "psnr_cc": round(summary["psnr_cc"], 2), "train_s": round(seconds) if seconds else None}


# -- a plain cubic on the raw planes: the baseline a user writes in 30 lines ----------------------------

def _camera_rgb(batch: dict) -> torch.Tensor:
    """(B, 3, 2h, 2w) camera RGB of a batch's raw, bilinear, no white balance, gamma 2.2."""
    return demosaic_bilinear(((batch["raw"] + 1) * 0.5).clamp(0, 1)).clamp(0, 1) ** (1 / 2.2)


def _terms(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B·H·W, 20) cubic terms, pixels in (B, H, W) order."""
    return torch.stack(poly3_terms(x[:, 0], x[:, 1], x[:, 2]), -1).reshape(-1, 20).double()


def plain_cubic(ds: Path, held_out: str) -> dict:
    loader = DataLoader(ShardDataset(shards_root(ds), "train", compact=True), batch_size=16)
    a, b = torch.zeros(20, 20, dtype=torch.float64), torch.zeros(20, 3, dtype=torch.float64)
    for batch in loader:
        batch = to_model(batch)
        t = _terms(_camera_rgb(batch))
        y = ((batch["rgb"] + 1) * 0.5).permute(0, 2, 3, 1).reshape(-1, 3).double()
        a, b = a + t.T @ t, b + t.T @ y
    coef = torch.linalg.lstsq(a, b).solution.float()

    def predict(batch: dict) -> torch.Tensor:
        x = _camera_rgb(batch)
        out = (_terms(x).float() @ coef).reshape(x.shape[0], *x.shape[2:], 3)
        return out.permute(0, 3, 1, 2).clamp(0, 1) * 2 - 1

    loader = DataLoader(ShardDataset(shards_root(ds), held_out, compact=True), batch_size=8)
    return summarise(score(predict, loader, torch.device("cpu")))


# -- the run -------------------------------------------------------------------------------------------

def profiles(name: str, ds: Path, held_out: str, out: Path, with_metadata: bool) -> list[dict]:
    rows = []
    rules = [whitebalance.DEFAULT_RULE] if with_metadata else list(whitebalance.RULES)
    for rule in rules:
        path = out / name / f"profile-poly3-{rule}.json"
        profile.save(profile_fit.fit_dataset(ds, "train", "poly3", white_balance_rule=rule), path)
        label = "profile (poly3)" + ("" if with_metadata else f", white balance {rule}")
        rows.append(row(name, label, evaluate(ds, held_out, None, "profile", profile=path).summary))
    path = out / name / "profile-lut.json"
    profile.save(profile_fit.fit_dataset(ds, "train", "lut"), path)
    rows.append(row(name, "profile (lut)" + ("" if with_metadata else f", white balance {whitebalance.DEFAULT_RULE}"),
                    evaluate(ds, held_out, None, "profile", profile=path).summary))
    return rows


def prior_alone(ds: Path, held_out: str) -> dict:
    """The recommended network's prior at step 0: the default profile and the detail filter fitted
    after it on the train split, as training fits them; no network."""
    g = TINY.generator
    fit = profile_fit.fit_dataset(ds, "train", g.prior_model)
    prior = ColourPrior(2, g.prior_model, detail=g.detail_filter)
    PriorFit(fit, fit_detail_on_split(shards_root(ds), fit, 2, g.detail_filter)[:2]).set_on(prior)
    loader = DataLoader(ShardDataset(shards_root(ds), held_out, compact=True, white_balance=fit.white_balance),
                        batch_size=8)
    return summarise(score(lambda b: prior(b["raw"], b["colour"]), loader, torch.device("cpu")))


def tiny_variant(generator: dict, ds: Path | None = None, **schedule) -> TrainConfig:
    """The tiny preset at output scale 2 (and the binning of ``ds``'s shards) without the perceptual
    term (no VGG weights here), with generator fields and schedule fields over its own."""
    binning = (read_index(shards_root(ds)).binning or 1) if ds is not None else 1
    fields = {**TINY.generator.to_json(), "scale": 2, "binning": binning, **generator}
    return dataclasses.replace(TINY, generator=GeneratorConfig(**fields),
                               weights=dataclasses.replace(TINY.weights, perceptual=0.0), **schedule)


def trained(ds: Path, run_dir: Path, cfg: TrainConfig, rt: Runtime) -> float:
    t0 = time.perf_counter()
    train(ds, run_dir, cfg, rt, force=True)  # a benchmark trains anew: a finished run would take 0 s
    return time.perf_counter() - t0


def models(name: str, ds: Path, held_out: str, out: Path, variants: list[str], quick: bool) -> list[dict]:
    rows, budget = [], None
    for variant in variants:
        run_dir = out / name / f"run-{variant}"
        rt = Runtime(log_every=50, checkpoint_every=10_000)  # data loading as `raw2rgb train` does it
        if VARIANTS[variant] is None:  # the paper preset, for the recommended run's wall time
            cfg = TrainConfig.preset_config("paper", weights=LossWeights(perceptual=0.0))
            binning = read_index(shards_root(ds)).binning or 1
            cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, scale=2, binning=binning),
                                      batch_size=TINY.batch_size)
            t = trained(ds, out / name / "run-paper-probe", cfg, Runtime(max_steps=3, checkpoint_every=10_000))
            rt = dataclasses.replace(rt, max_steps=1 if quick else max(3, int((budget or 300) / (t / 3))))
        elif variant == "recommended" and SETS[name]["kind"] == "camera":  # the product's own command and defaults
            shutil.rmtree(run_dir, ignore_errors=True)
            seconds = product("train", ds, "-o", run_dir, "--preset", "tiny", *(["--epochs", "1,0"] if quick else []))
            budget = seconds
            rows.append(row(name, variant, evaluate(ds, held_out, run_dir, "model").summary, seconds))
            print(rows[-1], flush=True)
            continue
        else:
            cfg = tiny_variant(VARIANTS[variant], ds)
        if quick:
            cfg = dataclasses.replace(cfg, stage1_epochs=1, stage2_epochs=0 if cfg.stage2_epochs == 0 else 1)
        seconds = trained(ds, run_dir, cfg, rt)
        if variant == "recommended":
            budget = seconds
        rows.append(row(name, variant, evaluate(ds, held_out, run_dir, "model").summary, seconds))
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| set | method | PSNR (dB) | SSIM | colour-corrected PSNR (dB) | training (s, 2 CPU cores) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr_cc']:.2f} | "
              f"{r['train_s'] if r['train_s'] is not None else '–'} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--variants", default="recommended,colour-branch")
    ap.add_argument("--out", type=Path, default=Path("build/quality"))
    ap.add_argument("--real", type=Path, default=REAL, help="folder of real camera files")
    ap.add_argument("--no-models", action="store_true", help="the classical pipeline and the profiles only")
    ap.add_argument("--quick", action="store_true", help="one epoch: check the script, not the model")
    args = ap.parse_args()
    results = args.out / "quality.json"
    rows = json.loads(results.read_text()) if results.is_file() else []
    for name in args.sets.split(","):
        ds = dataset(args.out, name, args.real)
        if ds is None:
            continue
        kind = SETS[name]["kind"]
        held_out = HELD_OUT[kind]
        new = [row(name, "classical pipeline", evaluate(ds, held_out, None, "isp").summary),
               row(name, "plain cubic on the raw planes", plain_cubic(ds, held_out))]
        new += profiles(name, ds, held_out, args.out, with_metadata=kind in ("raw+jpeg", "camera"))
        new.append(row(name, f"profile + {TINY.generator.detail_filter}×{TINY.generator.detail_filter} detail filter "
                             "(the recommended network's prior alone)", prior_alone(ds, held_out)))
        print(table(new), flush=True)
        if not args.no_models:
            new += models(name, ds, held_out, args.out, args.variants.split(","), args.quick)
        done = {(r["set"], r["method"]) for r in new}
        rows = [r for r in rows if (r["set"], r["method"]) not in done] + new
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
