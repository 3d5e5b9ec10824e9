"""Real camera data for the quality benchmark: a real RAW and the same camera's own JPEG of the shot,
laid out as ZRR ships its pairs (one-plane RGGB 10-bit PNG mosaics without colour metadata, aligned
JPEG crops), the right third of the frame held out in ``test/``.

The JPEG (the camera's embedded preview) is smaller than the sensor, so the mosaic is binned — each
colour plane averaged over k×k cells, which keeps a valid RGGB mosaic — to a size the JPEG covers,
and the JPEG is aligned onto it (raw2rgb's own aligner: features, then a dense refinement) and
resampled there: the target is never enlarged beyond its own detail. Levels follow ZRR's (black
63, white 1020 in 10 bits).

Looks for the files in ``--real`` (default: ``../shared/real`` beside the repository, where the
project keeps real files for measuring; a user's clone does not have it, and then says so).

    python benchmarks/real_data.py --out build/quality/real-sony [--real DIR] [--crop 128]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raw2rgb.pipeline import align, bayer, develop, rawio  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
PAIRS = {"sony": ("_DSC2164.ARW", "_DSC2164.ARW.embedded-preview.jpg")}  # name → (RAW, the camera's JPEG)
BLACK, WHITE = 63, 1020  # ZRR's 10-bit levels


def bin_packed(packed: np.ndarray, k: int) -> np.ndarray:
    """(4, h, w) planes → (4, h // k, w // k), each plane averaged over k×k cells."""
    c, h, w = packed.shape
    h, w = h // k * k, w // k * k
    return packed[:, :h, :w].reshape(c, h // k, k, w // k, k).mean(axis=(2, 4))


def zrr_pairs(out: Path, raw_path: Path, jpeg_path: Path, crop: int = 128, held_out: float = 1 / 3) -> dict:
    """Write ``out/{train,test}/{huawei_raw,canon}/N.{png,jpg}`` from one RAW and its camera's JPEG;
    returns what was written (also ``out/real.json``)."""
    frame = rawio.read_raw(raw_path)
    packed = frame.packed(np.float32)  # (4, H/2, W/2) RGGB in [0, 1]
    jpeg = np.asarray(Image.open(jpeg_path).convert("RGB"))
    if frame.orientation in (5, 6):  # the JPEG is upright; bring it back to the sensor's orientation
        jpeg = np.ascontiguousarray(np.rot90(jpeg, -1 if frame.orientation == 5 else 1))
    elif frame.orientation == 3:
        jpeg = np.ascontiguousarray(jpeg[::-1, ::-1])
    # bin so the mosaic (2 × packed) is no larger than the JPEG: the target is never enlarged
    k = int(np.ceil(max(2 * packed.shape[1] / jpeg.shape[0], 2 * packed.shape[2] / jpeg.shape[1])))
    binned = bin_packed(packed, k)
    preview = develop.luma(develop.develop(binned, frame.wb_gains, frame.cam_to_rgb, scale=1))
    found = align.align_target(preview, jpeg, name=raw_path.name)
    target, cover = align.warp_target(jpeg, found.matrix, binned.shape[1:])
    mosaic = bayer.unpack(binned)  # (2h, 2w) RGGB in [0, 1]
    levels = np.rint(BLACK + np.clip(mosaic, 0, 1) * (WHITE - BLACK)).astype(np.uint16)
    target8 = np.rint(np.clip(target, 0, 1) * 255).astype(np.uint8)
    h, w = mosaic.shape
    # the tiles' grid starts where the JPEG's field of view does (the camera crops its JPEG)
    full = cover >= 0.999
    rows, cols = np.flatnonzero(full[:, w // 2]), np.flatnonzero(full[h // 2])
    y0, y1 = (int(rows[0]) + 1) // 2 * 2, int(rows[-1]) + 1
    xa, xb = (int(cols[0]) + 1) // 2 * 2, int(cols[-1]) + 1
    split_x = (xa + int((xb - xa) * (1 - held_out))) // 2 * 2
    counters, crops = {"train": 0, "test": 0}, []
    for split, (x0, x1) in (("train", (xa, split_x)), ("test", (split_x, xb))):
        for y in range(y0, y1 - crop + 1, crop):
            for x in range(x0, x1 - crop + 1, crop):
                if cover[y : y + crop, x : x + crop].min() < 0.999:  # the JPEG does not cover it all
                    continue
                n = counters[split]
                counters[split] += 1
                for sub in ("huawei_raw", "canon"):
                    (out / split / sub).mkdir(parents=True, exist_ok=True)
                (out / split / "huawei_raw" / f"{n}.png").write_bytes(
                    imagecodecs.png_encode(np.ascontiguousarray(levels[y : y + crop, x : x + crop])))
                Image.fromarray(target8[y : y + crop, x : x + crop]).save(out / split / "canon" / f"{n}.jpg",
                                                                           quality=95)
                crops.append({"split": split, "n": n, "y": y, "x": x})
    record = {"raw": raw_path.name, "jpeg": jpeg_path.name, "camera": f"{frame.make} {frame.model}", "bin": k,
              "mosaic": [h, w], "crop": crop, "alignment_residual_px": round(float(found.residual_median), 3),
              "counts": counters, "crops": crops}
    (out / "real.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument("--pair", default="sony", choices=sorted(PAIRS))
    ap.add_argument("--crop", type=int, default=128)
    args = ap.parse_args()
    raw, jpeg = (args.real / f for f in PAIRS[args.pair])
    if not raw.is_file() or not jpeg.is_file():
        sys.exit(f"real_data: {raw} or {jpeg} not found (real camera files are not part of a clone)")
    r = zrr_pairs(args.out, raw, jpeg, args.crop)
    print(f"{r['camera']}: binned {r['bin']}×, mosaic {r['mosaic'][0]}×{r['mosaic'][1]}, alignment residual "
          f"{r['alignment_residual_px']} px, {r['counts']['train']} train / {r['counts']['test']} test crops")


if __name__ == "__main__":
    main()
