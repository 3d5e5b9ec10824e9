"""prepare throughput: the zrr layout (448² crops) in pairs/s and two-camera alignment in seconds per
12-megapixel pair, each against the decode-only floor measured in the same run.

zrr: unpack + patches stages (pairing, normalisation, cutting, scoring, PNG writes) against
reading the same files (ZRR mosaic PNG + Canon JPEG). pairs: the patches stage on one synthetic
12-MP pair (RAW preview, ORB + RANSAC, sub-pixel refinement, warp at sensor resolution, cut,
score, write) against decoding the DNG and the JPEG.

    python benchmarks/prepare.py [--zrr-pairs 200] [--size 3000 4000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.transform import ProjectiveTransform, warp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from raw2rgb import prepare as prep  # noqa: E402
from raw2rgb.pipeline import bayer, pairs, rawio, synth  # noqa: E402
from raw2rgb.pipeline.pairs import PatchParams  # noqa: E402


def make_zrr(root: Path, n: int) -> None:
    for d in ("huawei_raw", "canon"):
        (root / "train" / d).mkdir(parents=True)
    scenes = [synth.scene(s, (448, 448)) for s in synth.SCENES]
    for i in range(n):
        scene = scenes[i % len(scenes)]
        mosaic = (bayer.mosaic(scene.astype(np.uint16), "RGGB") * 4 + 60 + (i % 7)).clip(0, 1023).astype(np.uint16)
        Image.fromarray(mosaic).save(root / "train" / "huawei_raw" / f"{i}.png")
        Image.fromarray(scene).save(root / "train" / "canon" / f"{i}.jpg", quality=95)


def make_pair(root: Path, size: tuple[int, int]) -> None:
    h, w = size
    scene = synth.scene("astronaut", size)
    cam = synth.Camera(pattern="RGGB", noise=0.003)
    synth.write_dng(root / "raw" / "big.dng", synth.capture(scene, cam, np.random.default_rng(0)), cam)
    th = np.deg2rad(1.0)
    m = np.array([[1.04 * np.cos(th), -1.04 * np.sin(th), 60], [1.04 * np.sin(th), 1.04 * np.cos(th), 40],
                  [0, 0, 1]])
    out = warp(scene.astype(np.float32) / 255, ProjectiveTransform(np.linalg.inv(m)),
               output_shape=(int(h * 1.1), int(w * 1.1)), order=1)
    (root / "rgb").mkdir(parents=True)
    Image.fromarray((out * 255 + 0.5).astype(np.uint8)).save(root / "rgb" / "big.jpg", quality=95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zrr-pairs", type=int, default=200)
    ap.add_argument("--size", type=int, nargs=2, default=(3000, 4000), metavar=("H", "W"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raw2rgb-prep-"))
    try:
        make_zrr(work / "zrr", args.zrr_pairs)
        found, _ = pairs.find_pairs(work / "zrr", "zrr")
        t0 = time.perf_counter()
        for p in found:
            rawio.read_raw(p.raw)
            pairs.read_rgb(p.rgb)
        zrr_floor = time.perf_counter() - t0
        cfg = prep.PrepareConfig(src=str(work / "zrr"), out=str(work / "zrr-ds"), layout="zrr",
                                 patch=PatchParams(size=224, stride=224, min_score=-1), jobs=1)
        t0 = time.perf_counter()
        result = prep.run(cfg, until="patches")
        zrr_time = time.perf_counter() - t0
        assert result.summary["patches_kept"] == args.zrr_pairs, result.summary

        make_pair(work / "pair", tuple(args.size))
        t0 = time.perf_counter()
        rawio.read_raw(work / "pair" / "raw" / "big.dng")
        pairs.read_rgb(work / "pair" / "rgb" / "big.jpg")
        pair_floor = time.perf_counter() - t0
        cfg = prep.PrepareConfig(src=str(work / "pair"), out=str(work / "pair-ds"), layout="pairs",
                                 patch=PatchParams(size=224, stride=224, min_score=0.3), jobs=1)
        t0 = time.perf_counter()
        prep.run(cfg, until="unpack")
        unpack_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = prep.run(cfg, until="patches")
        patch_time = time.perf_counter() - t0
        assert result.summary["aligned"] == 1, result.summary
        n = args.zrr_pairs
        mp = args.size[0] * args.size[1] / 1e6
        both = unpack_time + patch_time
        report("prepare", [
            (f"zrr floor (decode {n} pairs)", f"{n / zrr_floor:.1f} pairs/s"),
            ("zrr unpack + patches, 448² crops", f"{n / zrr_time:.1f} pairs/s ({zrr_time / zrr_floor:.2f}x the floor)"),
            (f"pairs floor (decode one {mp:.0f}-MP pair)", f"{pair_floor:.2f} s"),
            ("pairs unpack stage", f"{unpack_time:.2f} s"),
            ("pairs patches stage (align+warp+cut)", f"{patch_time:.2f} s"),
            ("pairs both stages / floor", f"{both:.2f} s per pair = {both / pair_floor:.1f}x the floor"),
            ("patches kept from the pair", f"{result.summary['patches_kept']}"),
        ])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
