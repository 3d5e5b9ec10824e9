"""The photographer's walk-through on a real frame (docs/camera-look.md): after `benchmarks/quality.py
--sets real-sony` has prepared the shoot and trained the look through the product's own commands,
convert the RAW with the fitted profile and with the model (`raw2rgb convert`), and lay crops of the
held-out band side by side at the model's resolution: the camera's own JPEG | the profile | the model.

The model renders at the resolution it learned (the RAW binned as its targets were); the JPEG and the
profile's full-resolution rendering are area-resampled to that grid, so the three are compared pixel
for pixel, none enlarged.

    python benchmarks/camera_look.py [--quality build/quality] [--out docs/images/camera-look-crops.png]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quality  # noqa: E402

from raw2rgb.pipeline.align import area_resize  # noqa: E402

R2R = [sys.executable, "-m", "raw2rgb"]


def convert(raw: Path, out: Path, *args: str) -> np.ndarray:
    subprocess.run([*R2R, "-q", "convert", str(raw), "-o", str(out), *args], check=True)
    return np.asarray(Image.open(out / f"{raw.stem}.png").convert("RGB"))


def crops(images: list[np.ndarray], boxes: list[tuple[int, int, int]], zoom: int) -> Image.Image:
    """Rows of crops (y, x, side) of each image, side by side, each enlarged ``zoom``× by pixel
    repetition (so a pixel is a pixel), with a gap between them."""
    gap = 6
    side = boxes[0][2] * zoom
    sheet = Image.new("RGB", (len(images) * (side + gap) - gap, len(boxes) * (side + gap) - gap + 22), "white")
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(("camera JPEG", "fitted profile", "model")):
        draw.text((i * (side + gap) + 4, 4), label, fill="black")
    for r, (y, x, s) in enumerate(boxes):
        for c, img in enumerate(images):
            tile = Image.fromarray(img[y : y + s, x : x + s]).resize((side, side), Image.Resampling.NEAREST)
            sheet.paste(tile, (c * (side + gap), 22 + r * (side + gap)))
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", type=Path, default=Path("build/quality"))
    ap.add_argument("--set", default="real-sony")
    ap.add_argument("--out", type=Path, default=Path("docs/images/camera-look-crops.png"))
    args = ap.parse_args()
    work = args.quality / args.set
    raw = next((work / "raw").glob("*.ARW"))
    jpeg_path = quality.REAL / quality.PAIRS[quality.SETS[args.set]["pair"]][1]
    model = convert(raw, work / "convert-model", "--checkpoint", str(work / "run-recommended"))
    profile = convert(raw, work / "convert-profile", "--profile", str(work / "profile-poly3-dataset.json"))
    jpeg = np.asarray(Image.open(jpeg_path).convert("RGB"))
    h, w = model.shape[:2]
    profile, jpeg = area_resize(profile, (h, w)), area_resize(jpeg, (h, w))
    # the held-out band is the right-hand quarter: crops from it, where the stage has detail
    side = 96
    boxes = [(int(h * 0.25), int(w * 0.80), side), (int(h * 0.62), int(w * 0.86), side)]
    sheet = crops([jpeg, profile, model], boxes, zoom=3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(json.dumps({"model": [w, h], "jpeg": list(Image.open(jpeg_path).size), "profile_full": list(
        Image.open(work / "convert-profile" / f"{raw.stem}.png").size), "crops": boxes, "out": str(args.out)}))


if __name__ == "__main__":
    main()
