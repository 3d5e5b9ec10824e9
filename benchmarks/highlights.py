"""Highlights rolled off to white where the RAW clipped (``develop.roll_off_highlights``), measured on a
real frame: the Sony concert stage in ``../shared/real`` and the camera's own JPEG of it.

A cubic profile and a lookup table are fitted on the whole frame (the classical rendering area-resampled
to the JPEG's grid against the JPEG; no alignment beyond that, which is enough for a profile of this
camera), and ``convert``'s renderer draws the frame with each, with and without the roll-off. Reported:

- at the JPEG's own resolution (outputs area-resampled to 1616×1080), over the JPEG pixels that hold a
  clipped RAW cell (its brightest sample at 0.99 of the white level or above): the mean saturation
  (HSV) beside the camera's, and the mean CIELAB chroma distance (Δab) to the camera's;
- at full resolution, over the pixels within 2 of a clipped sample: the share in false colour, a hue
  outside the stage light's blue-violet (hue below 180° or above 331°) at a saturation above 0.25;
  the camera's JPEG (bilinear to the sensor grid) has none;
- the whole frame's PSNR against the JPEG, and the roll-off's time.

Looks for the files in ``--real`` (default ``../shared/real`` beside the repository); a user's clone
does not have it, and then says so.

    python benchmarks/highlights.py [--real DIR] [--out build/highlights.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hsv, rgb2lab

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raw2rgb.model.renderers import ClassicalRenderer  # noqa: E402
from raw2rgb.pipeline import bayer, develop, rawio  # noqa: E402
from raw2rgb.pipeline import profile as colour_profile  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
RAW, JPEG = "_DSC2164.ARW", "_DSC2164.ARW.embedded-preview.jpg"
CLIPPED = 0.99  # of the white level


def area(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float → (h, w, C) by area averaging (PIL's box filter, per channel in float)."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c, np.float32), mode="F").resize(size, Image.BOX))
                     for c in np.moveaxis(img, -1, 0)], -1)


def saturation(rgb: np.ndarray) -> np.ndarray:
    top = rgb.max(-1)
    return np.where(top > 1e-6, (top - rgb.min(-1)) / np.maximum(top, 1e-6), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument("--out", type=Path, default=Path("build/highlights.json"))
    args = ap.parse_args()
    if not (args.real / RAW).exists():
        print(f"highlights: {args.real / RAW} is not there (the project's real files are not in a user's clone); "
              "nothing measured")
        return
    frame = rawio.read_raw(args.real / RAW)
    packed = frame.packed(np.float32)
    camera = np.asarray(Image.open(args.real / JPEG).convert("RGB"), np.float32) / 255
    size = camera.shape[1], camera.shape[0]
    info: dict = {"camera": "real"}
    isp = ClassicalRenderer().frame(frame, packed, info)
    small = area(isp, size)
    rng = np.random.default_rng(0)
    pick = rng.choice(small.shape[0] * small.shape[1], 1_000_000, replace=False)

    cells = packed.max(axis=0) >= CLIPPED
    touched = area(np.repeat(np.repeat(cells, 2, 0), 2, 1)[..., None].astype(np.float32), size)[..., 0] > 0
    near = ndimage.maximum_filter(bayer.unpack(packed) >= CLIPPED, size=5)
    camera_up = np.asarray(Image.fromarray(np.rint(camera * 255).astype(np.uint8)).resize(isp.shape[1::-1],
                                                                                          Image.BILINEAR)) / 255
    camera_lab = rgb2lab(camera[touched][None])[0]

    def false_colour(rgb: np.ndarray) -> float:
        hsv = rgb2hsv(rgb[near][None])[0]
        return float(((hsv[:, 1] > 0.25) & ((hsv[:, 0] < 0.5) | (hsv[:, 0] > 0.92))).mean())

    def row(rgb: np.ndarray) -> dict:
        s = area(rgb, size)
        lab = rgb2lab(s[touched][None])[0]
        return {"saturation": round(float(saturation(s[touched]).mean()), 3),
                "delta_ab": round(float(np.hypot(*(lab[:, 1:] - camera_lab[:, 1:]).T).mean()), 1),
                "false_colour": round(false_colour(rgb), 3),
                "psnr": round(float(10 * np.log10(1 / ((s - camera) ** 2).mean())), 2)}

    result = {"clipped_cells": int(cells.sum()), "jpeg_pixels": int(touched.sum()), "pixels_near": int(near.sum()),
              "camera": {"saturation": round(float(saturation(camera[touched]).mean()), 3),
                         "false_colour": round(false_colour(camera_up), 3)},
              "isp": row(isp)}
    for model in colour_profile.MODELS:
        coefficients, n = colour_profile.fit(small.reshape(-1, 3)[pick], camera.reshape(-1, 3)[pick], model=model)
        profile = colour_profile.Profile(model=model, coefficients=coefficients, lut_size=n)
        renderer = ClassicalRenderer(profile=profile)
        on = renderer.frame(frame, packed, info)
        roll_off, develop.roll_off_highlights = develop.roll_off_highlights, lambda rgb, weight: rgb
        try:
            off = renderer.frame(frame, packed, info)
        finally:
            develop.roll_off_highlights = roll_off
        start = time.perf_counter()
        develop.roll_off_highlights(off, develop.orient(develop.clip_weight(packed, 2), frame.orientation))  # its time
        seconds = time.perf_counter() - start
        white = colour_profile.apply(profile, np.ones((1, 3), np.float32))[0]
        result[model] = {"white": [round(float(v), 3) for v in white], "before": row(off), "after": row(on),
                         "roll_off_seconds": round(seconds, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
