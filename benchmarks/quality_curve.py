"""Quality against training minutes: what more compute buys, for the recommended network and alternatives.

For each network, one run whose schedule (the tiny preset's: stage 1, cosine decay, a moving average
of G) is stretched over the longest budget, stopped at each mark (``--minutes``) by the trainer's
``--max-steps`` and scored on the held-out split with the averaged generator, then resumed (resume
is exact, so the points are one run). The marks are converted to steps from a measured probe of the
network's speed on this machine. Sets as in benchmarks/quality.py.

    python benchmarks/quality_curve.py [--set zrr-varying] [--minutes 1,2,5,10,20] \\
        [--networks recommended,no-detail-filter,lighter] [--out build/quality]

Rows of earlier invocations (other networks, other marks) are kept in OUT/SET/curve.json and shown in
one table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quality  # noqa: E402

from raw2rgb.model.evaluate import evaluate  # noqa: E402
from raw2rgb.model.train import Runtime, TrainConfig, train  # noqa: E402
from raw2rgb.pipeline.shards import read_index, shards_root  # noqa: E402

NETWORKS = {  # name → (generator fields over the tiny preset's, training fields over its schedule)
    "recommended": ({}, {}),
    "no-detail-filter": ({"detail_filter": 0}, {}),  # the recommended network before the prior's detail filter
    "lighter": ({"base": 8, "res_blocks": 1, "saliency_width": 8}, {}),
    "batch-16": ({}, {"batch_size": 16, "lr_stage1": 1e-3}),
    "colour-branch": ({"colour_branch": "global"}, {}),
}


def config(name: str, epochs: int, ds: Path) -> TrainConfig:
    gen, schedule = NETWORKS[name]
    return quality.tiny_variant(gen, ds, stage1_epochs=epochs, stage2_epochs=0, **schedule)


def curve(ds: Path, held_out: str, out: Path, name: str, minutes: list[float]) -> list[dict]:
    n = read_index(shards_root(ds)).count("train")
    probe_cfg = config(name, 1, ds)
    probe = out / f"probe-{name}"
    train(ds, probe, probe_cfg, Runtime(max_steps=20, log_every=10, checkpoint_every=10_000, samples=0), force=True)
    # the trainer's own rate over steps 11–20 (set-up and warm-up excluded)
    rates = [json.loads(line)["samples_per_s"] for line in (probe / "stats.jsonl").read_text().splitlines()
             if json.loads(line).get("event") == "step"]
    per_step = probe_cfg.batch_size / rates[-1]
    steps_per_epoch = n // probe_cfg.batch_size
    total = int(max(minutes) * 60 / per_step)
    cfg = config(name, max(1, math.ceil(total / steps_per_epoch)), ds)
    run_dir, rows, spent = out / f"curve-{name}", [], 0.0
    for m in minutes:
        steps = max(1, int(m * 60 / per_step))
        t0 = time.perf_counter()
        train(ds, run_dir, cfg, Runtime(max_steps=steps, log_every=50, checkpoint_every=10_000, samples=0))
        spent += time.perf_counter() - t0
        s = evaluate(ds, held_out, run_dir, "model").summary
        rows.append({"network": name, "minutes_budget": m, "train_s": round(spent), "steps": steps,
                     "psnr": round(s["psnr"], 2), "ssim": round(s["ssim"], 4)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="zrr-varying", choices=sorted(quality.SETS))
    ap.add_argument("--minutes", default="1,2,5,10,20")
    ap.add_argument("--networks", default="recommended,no-detail-filter,lighter")
    ap.add_argument("--out", type=Path, default=Path("build/quality"))
    ap.add_argument("--real", type=Path, default=quality.REAL)
    args = ap.parse_args()
    ds = quality.dataset(args.out, args.set, args.real)
    if ds is None:
        sys.exit(f"quality_curve: no data for {args.set}")
    held_out = quality.HELD_OUT[quality.SETS[args.set]["kind"]]
    minutes = [float(m) for m in args.minutes.split(",")]
    results = args.out / args.set / "curve.json"  # earlier networks' rows are kept: one table over runs
    rows = json.loads(results.read_text()) if results.is_file() else []
    for name in args.networks.split(","):
        rows = [r for r in rows if r["network"] != name] + curve(ds, held_out, args.out / args.set, name, minutes)
        results.write_text(json.dumps(rows, indent=1))
    marks = sorted({r["minutes_budget"] for r in rows})
    print(f"\n| network | {' | '.join(f'{m:g} min' for m in marks)} |")
    print("|---|" + "---|" * len(marks))
    for name in dict.fromkeys(r["network"] for r in rows):
        got = {r["minutes_budget"]: r for r in rows if r["network"] == name}
        cells = [f"{got[m]['psnr']:.2f} ({got[m]['train_s']} s)" if m in got else "–" for m in marks]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
