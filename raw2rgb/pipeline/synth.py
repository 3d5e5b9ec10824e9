"""A virtual camera: natural images turned into RAW mosaics and written as real DNG files.

Nothing can be downloaded here, so tests, the demo and the benchmarks make their RAW files:
an sRGB image from ``skimage.data`` goes backwards through a camera pipeline (Brooks et al.,
"Unprocessing Images for Learned Raw Denoising", CVPR 2019): inverse sRGB gamma, inverse colour
matrix, inverse white balance, mosaic, black/white level, noise. The DNG holds the tags LibRaw
needs (CFA, per-channel black level, white level, ColorMatrix1, AsShotNeutral), so reading it
back exercises the same path as a real camera file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import skimage.data
import tifffile
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.color import hsv2rgb
from skimage.transform import resize

from raw2rgb.config import JsonConfig, checked
from raw2rgb.errors import InputError
from raw2rgb.pipeline import bayer, metadata
from raw2rgb.pipeline.align import area_resize
from raw2rgb.pipeline.develop import cam_to_srgb, linear_to_srgb, srgb_to_linear

# Canon EOS 350D ColorMatrix (XYZ -> camera, D65), as in its DNGs: a plausible real camera.
CANON_350D_XYZ_TO_CAM = (
    (0.6018, -0.0617, -0.0965),
    (-0.8645, 1.5881, 0.2975),
    (-0.1530, 0.1719, 0.7642),
)
SCENES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina")
# The demo's dataset: every colour photograph skimage.data ships (no download), and a colour chart, as
# anyone profiling a camera shoots one: without it no scene holds saturated yellows and greens, and
# every fit extrapolates them (the cat's green iris came out amber).
ALL_SCENES = SCENES + ("hubble_deep_field", "stereo_motorcycle", "chart")
MAX_SIDE = 8192  # pixels per side of a synthetic frame: 1.6 GB of working memory at 8192²
# the sensor sizes (pixels) of what synth writes: sample DNGs and a two-camera set; a ZRR-layout set (six crops
# of 448 a scene); a photographer's shoot (a 10 MP frame)
SAMPLE_SIZE, ZRR_SIZE, SHOOT_SIZE = (512, 768), (896, 1344), (2592, 3888)


@dataclass(frozen=True)
class Camera(JsonConfig):
    """What the virtual camera records: CFA, levels, colour, white balance, noise."""

    pattern: str = "RGGB"
    black: tuple[int, int, int, int] = (512, 512, 512, 512)  # R, G1, B, G2
    white: int = 16383
    xyz_to_cam: tuple[tuple[float, ...], ...] = CANON_350D_XYZ_TO_CAM
    wb_gains: tuple[float, float, float] = (2.0, 1.0, 1.6)  # as shot, R G B
    noise: float = 0.0  # Gaussian read noise, as a fraction of white - black
    shot_noise: float = 0.0  # photon noise: std at full scale, as a fraction (std ∝ √signal)
    blur: float = 0.0  # lens blur: Gaussian sigma in sensor pixels (a small phone lens)
    vignetting: float = 0.0  # light lost at the frame's corners (cos⁴-like falloff)
    make: str = "raw2rgb"
    model: str = "Virtual Camera"


PHONE = {"noise": 0.006, "shot_noise": 0.012, "blur": 0.9, "vignetting": 0.25}  # a small-sensor phone's optics


def unprocess(srgb: np.ndarray, camera: Camera) -> np.ndarray:
    """sRGB image (H, W, 3) uint8 or float in [0, 1] → camera RGB before white balance, [0, 1]."""
    x = srgb.astype(np.float64) / 255.0 if srgb.dtype == np.uint8 else np.asarray(srgb, np.float64)
    lin = srgb_to_linear(x)
    cam_from_rgb = np.linalg.inv(cam_to_srgb(np.array(camera.xyz_to_cam)))
    cam = lin @ cam_from_rgb.T
    cam /= np.asarray(camera.wb_gains)
    return np.clip(cam, 0.0, 1.0)


def vignette(h: int, w: int, strength: float) -> np.ndarray:
    """(h, w) gain: 1 at the centre, ``1 - strength`` at the corners (cos⁴ of the field angle)."""
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (((h - 1) / 2) ** 2 + ((w - 1) / 2) ** 2)
    tan2 = r2 * ((1 - strength) ** -0.5 - 1)  # cos⁴ = 1 / (1 + tan²)² reaches 1 - strength at r = 1
    return 1.0 / (1.0 + tan2) ** 2


def capture(srgb: np.ndarray, camera: Camera, rng: np.random.Generator | None = None) -> np.ndarray:
    """The mosaic (H, W) uint16 the virtual camera records of an sRGB scene: lens blur and
    vignetting on the light, then the mosaic, black/white level, photon and read noise."""
    light = unprocess(srgb, camera)
    if camera.blur > 0:
        light = gaussian_filter(light, (camera.blur, camera.blur, 0), mode="reflect")
    if camera.vignetting > 0:
        light = light * vignette(*light.shape[:2], camera.vignetting)[..., None]
    cam = bayer.mosaic(light, camera.pattern)
    black = bayer.cell_values(camera.pattern, camera.black)
    black_map = np.tile(black, (cam.shape[0] // 2 + 1, cam.shape[1] // 2 + 1))[: cam.shape[0], : cam.shape[1]]
    span = camera.white - black_map
    values = black_map + cam * span
    if camera.noise > 0 or camera.shot_noise > 0:
        rng = rng or np.random.default_rng(0)
        std = np.sqrt((camera.noise * span) ** 2 + camera.shot_noise**2 * np.clip(cam, 0, 1) * span**2)
        values += rng.standard_normal(values.shape) * std
    return np.clip(np.rint(values), 0, camera.white).astype(np.uint16)


def _rationals(values, den: int = 1_000_000) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        out += [int(round(float(v) * den)), den]
    return tuple(out)


# write_dng's ``exif``: name → (tag, tifffile type)
EXIF_TAGS = {"Orientation": (metadata.ORIENTATION, "H"), "ExposureTime": (metadata.EXPOSURE_TIME, "2I"),
             "FNumber": (metadata.F_NUMBER, "2I"), "ISO": (metadata.ISO, "H"),
             "DateTimeOriginal": (metadata.DATE_TIME_ORIGINAL, "s"), "FocalLength": (metadata.FOCAL_LENGTH, "2I"),
             "LensModel": (metadata.LENS_MODEL, "s")}


def write_dng(path: os.PathLike | str, data: np.ndarray, camera: Camera,
              cfa: tuple[int, int, tuple[int, ...]] | None = None, linear: bool = False,
              preview: np.ndarray | None = None, exif: dict[str, Any] | None = None) -> Path:
    """Write a DNG that LibRaw reads bit-exactly (docs/architecture.md: offline test data).

    Args:
        path: where to write.
        data: (H, W) uint16 mosaic, or (H, W, 3) for ``linear=True``.
        camera: levels, colour and names to record.
        cfa: override (rows, cols, colour codes 0=R 1=G 2=B) — e.g. a 6×6 X-Trans cell.
        linear: write a LinearRaw (demosaiced, 3 samples per pixel) DNG instead of a CFA one.
        preview: (h, w, 3) uint8, the camera's own rendering to embed as a JPEG preview: then, as a
            camera writes a DNG, IFD0 is the preview and the RAW is its SubIFD.
        exif: shooting data by the names of :data:`EXIF_TAGS` (rationals as (numerator,
            denominator)), written in IFD0 as TIFF/EP allows; ``Orientation`` is LibRaw's flip too.
    """
    path = Path(path)
    neutral = [1.0 / g for g in camera.wb_gains]
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (271, "s", 0, camera.make, True),
        (272, "s", 0, camera.model, True),
        (50708, "s", 0, f"{camera.make} {camera.model}", True),  # UniqueCameraModel
        (50717, "I", 1, int(camera.white), True),  # WhiteLevel
        (50721, "2i", 9, _rationals(np.ravel(camera.xyz_to_cam)), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1 = D65
        (50728, "2I", 3, _rationals(neutral), True),  # AsShotNeutral
    ]
    photometric, mosaic_tags = _mosaic_tags(camera, cfa, linear)
    tags += mosaic_tags
    for name, value in (exif or {}).items():
        if name not in EXIF_TAGS:
            raise ValueError(f"unknown EXIF tag {name!r} ({', '.join(EXIF_TAGS)})")
        code, kind = EXIF_TAGS[name]
        tags.append((code, kind, 0 if kind == "s" else 1, value, True))
    path.parent.mkdir(parents=True, exist_ok=True)
    if preview is None:
        tifffile.imwrite(path, np.ascontiguousarray(data, dtype=np.uint16), photometric=photometric,
                         subfiletype=0, metadata=None, extratags=tags)
    else:
        _write_with_preview(path, data, preview, photometric, tags)
    return path


def _mosaic_tags(camera: Camera, cfa: tuple[int, int, tuple[int, ...]] | None, linear: bool
                 ) -> tuple[int, list[tuple]]:
    """The photometric interpretation and the tags of the image data: a LinearRaw's black level, or a
    CFA's pattern and per-site black levels."""
    tags: list[tuple] = []
    if linear:
        photometric = 34892  # LinearRaw
        tags.append((50714, "I", 1, int(camera.black[0]), True))
    else:
        photometric = 32803  # CFA
        if cfa is None:
            codes = {"R": 0, "G": 1, "B": 2}
            cfa = (2, 2, tuple(codes[c] for c in bayer.check_pattern(camera.pattern)))
        rows, cols, cells = cfa
        tags += [
            (33421, "H", 2, (rows, cols), True),  # CFARepeatPatternDim
            (33422, "B", len(cells), tuple(cells), True),  # CFAPattern
            (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
            (50711, "H", 1, 1, True),  # CFALayout: rectangular
        ]
        if (rows, cols) == (2, 2):
            cell = bayer.cell_values(camera.pattern, camera.black)
            tags += [(50713, "H", 2, (2, 2), True),  # BlackLevelRepeatDim
                     (50714, "I", 4, tuple(int(v) for v in cell.ravel()), True)]
        else:
            tags.append((50714, "I", 1, int(camera.black[0]), True))
    return photometric, tags


def _write_with_preview(path: Path, data: np.ndarray, preview: np.ndarray, photometric: int, tags: list[tuple]
                        ) -> None:
    """As a camera writes a DNG: IFD0 the JPEG preview (in one strip: LibRaw reads the first only), with
    the file's tags; the RAW its SubIFD, with the image's."""
    shared = {50706, 50707, 271, 272, 50708, 50721, 50778, 50728, *(code for code, _ in EXIF_TAGS.values())}
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.ascontiguousarray(preview, dtype=np.uint8), photometric="rgb", compression="jpeg",
                  compressionargs={"level": 95}, rowsperstrip=preview.shape[0], subfiletype=1, subifds=1,
                  metadata=None, extratags=[t for t in tags if t[0] in shared])
        tif.write(np.ascontiguousarray(data, dtype=np.uint16), photometric=photometric, subfiletype=0,
                  metadata=None, extratags=[t for t in tags if t[0] not in shared])


CHART_SATURATIONS, CHART_VALUES = (0.85, 0.6, 0.35), (0.9, 0.65, 0.4)


def colour_chart(h: int = 512, w: int = 768) -> np.ndarray:
    """A colour chart (H, W, 3) uint8: 24 hues (columns) × 3 saturations × 3 values (rows), patches
    on a dark frame with a faint paper grain. Like a printed chart it holds no display primaries
    (saturation and value below 1): with them, clipped by the other camera's look, a profile fitted
    with the chart lost 1.4 dB on the natural scenes of the harder look (benchmarks/quality.py)."""
    hue = np.arange(24) / 24
    sv = [(s, v) for v in CHART_VALUES for s in CHART_SATURATIONS]
    cells = hsv2rgb(np.array([[[x, s, v] for x in hue] for s, v in sv]))  # (9, 24, 3)
    rows = np.minimum(np.arange(h) * len(sv) // h, len(sv) - 1)
    cols = np.minimum(np.arange(w) * len(hue) // w, len(hue) - 1)
    img = cells[rows][:, cols]
    gap = 2  # the dark frame around each patch
    edge_y = np.abs(np.arange(h) - np.round((rows + 0.5) * h / len(sv))) > h / len(sv) / 2 - gap
    edge_x = np.abs(np.arange(w) - np.round((cols + 0.5) * w / len(hue))) > w / len(hue) / 2 - gap
    img[edge_y] = 0.12
    img[:, edge_x] = 0.12
    return np.clip(np.rint(img * (1 + faint_texture(h, w, 1.0, 0.015, 3)) * 255), 0, 255).astype(np.uint8)


def scene(name: str = "astronaut", size: tuple[int, int] | None = None) -> np.ndarray:
    """A natural sRGB image (H, W, 3) uint8 from ``skimage.data`` (or ``chart``: the colour chart),
    optionally resized to (H, W).

    Raises:
        InputError: a side longer than :data:`MAX_SIDE`.
    """
    if size is not None and max(size) > MAX_SIDE:
        # the pipeline holds a few float64 copies of the frame: about 24 bytes a pixel, 224 GiB at 100000²
        raise InputError(f"a synthetic frame of {size[0]}×{size[1]} pixels: at most {MAX_SIDE} per side")
    if name == "chart":
        return colour_chart(*(size or (512, 768)))
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if size is not None and tuple(size) != img.shape[:2]:
        img = (resize(img, size, order=1, anti_aliasing=True, preserve_range=True) + 0.5).astype(np.uint8)
    return img


def sample_dngs(out_dir: os.PathLike | str, size: tuple[int, int] = SAMPLE_SIZE,
                seed: int = 0) -> list[Path]:
    """One DNG per CFA pattern, each of another scene, with distinct per-channel black levels,
    and beside each the camera's own JPEG of the scene (``NAME.jpg``), as a camera writes
    RAW+JPEG."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, pattern in enumerate(bayer.PATTERNS):
        camera = Camera(pattern=pattern, black=(500 + i, 510 + i, 520 + i, 530 + i),
                        white=16383, noise=0.002, model=f"Virtual {pattern}")
        rgb = scene(SCENES[i], size)
        path = Path(out_dir) / f"{SCENES[i]}_{pattern.lower()}.dng"
        paths.append(write_dng(path, capture(rgb, camera, rng), camera))
        Image.fromarray(rgb).save(path.with_suffix(".jpg"), quality=92)
    return paths


@dataclass(frozen=True)
class Look(JsonConfig):
    """How "another camera" renders a scene: its own white point, saturation and tone curve and,
    like a DSLR's JPEG engine, hue-dependent colour, capture sharpening and local contrast. A model
    trained on such targets must learn them; a fixed classical pipeline cannot, and a colour
    profile (one function of each pixel's colour) cannot learn the local parts."""

    warmth: tuple[float, float, float] = (1.08, 1.0, 0.88)  # linear gains R, G, B
    saturation: float = 1.3
    contrast: float = 0.6  # blend towards a smoothstep S-curve on the sRGB values
    hue_shift: float = 0.0  # degrees: hues turn by up to this much, depending on the hue
    hue_saturation: float = 0.0  # saturation varies with hue by ± this fraction (warm hues gain)
    sharpen: float = 0.0  # unsharp mask on luma, σ 1 px (capture sharpening)
    local_contrast: float = 0.0  # unsharp mask on luma, σ 3 % of the frame's diagonal (clarity)


LOOKS = {
    "plain": Look(),  # a global look: colour and tone
    "dslr": Look(contrast=0.7, hue_shift=10.0, hue_saturation=0.15, sharpen=0.8, local_contrast=0.35),
}


_LUMA_601 = np.array([0.299, 0.587, 0.114])  # develop.LUMA_601 in float64: the looks are rendered in float64


def _hue_rendition(x: np.ndarray, shift: float, sat: float) -> np.ndarray:
    """Turn hues and scale chroma by hue, in an opponent space of sRGB values (luma kept)."""
    y = x @ _LUMA_601
    a = x[..., 0] - y  # red-cyan
    b = x[..., 2] - y  # blue-yellow
    hue = np.arctan2(b, a)
    turn = -np.deg2rad(shift) * np.sin(2 * hue)  # oranges turn towards red, greens towards cyan
    gain = 1.0 + sat * np.cos(hue - np.deg2rad(-30))  # warm (skin, orange) hues gain chroma
    c, s = np.cos(turn) * gain, np.sin(turn) * gain
    a2, b2 = a * c - b * s, a * s + b * c
    r, bl = y + a2, y + b2
    g = (y - 0.299 * r - 0.114 * bl) / 0.587
    return np.stack([r, g, bl], -1)


def _unsharp_luma(x: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    y = x @ _LUMA_601
    detail = y - gaussian_filter(y, sigma, mode="reflect")
    return x + amount * detail[..., None]


def render_look(srgb: np.ndarray, look: Look = Look()) -> np.ndarray:
    """An sRGB image (H, W, 3) uint8 as the other camera would render the same scene (uint8)."""
    lin = srgb_to_linear(srgb.astype(np.float64) / 255.0) * np.asarray(look.warmth)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    lin = y[..., None] + look.saturation * (lin - y[..., None])
    x = linear_to_srgb(np.clip(lin, 0, 1))
    if look.hue_shift or look.hue_saturation:
        x = np.clip(_hue_rendition(x, look.hue_shift, look.hue_saturation), 0, 1)
    x = x + look.contrast * (x * x * (3 - 2 * x) - x)
    if look.local_contrast:
        x = _unsharp_luma(x, 0.03 * float(np.hypot(*x.shape[:2])), look.local_contrast)
    if look.sharpen:
        x = _unsharp_luma(x, 1.0, look.sharpen)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def paired_dngs(out_dir: os.PathLike | str, size: tuple[int, int] = SAMPLE_SIZE, seed: int = 0,
                scenes: tuple[str, ...] = ALL_SCENES, look: Look = Look(), phone: bool = False) -> list[Path]:
    """A RAW+JPEG dataset of two cameras: each scene's DNG from the virtual camera (with noise, CFA
    patterns taking turns; ``phone``: a small sensor's lens blur, vignetting and noise) beside
    ``NAME.jpg``, the scene as another camera with its own ``look`` renders it."""
    rng = np.random.default_rng(seed)
    paths = []
    optics = PHONE if phone else {"noise": 0.004}
    camera_model = "Virtual Phone" if phone else "Virtual Camera"
    for i, name in enumerate(scenes):
        pattern = bayer.PATTERNS[i % 4]
        # one camera model (the CFA phase varies, as crops of one sensor's frames do)
        camera = Camera(pattern=pattern, black=(500 + i, 510 + i, 520 + i, 530 + i), model=camera_model, **optics)
        rgb = scene(name, size)
        path = Path(out_dir) / f"{name}.dng"
        paths.append(write_dng(path, capture(rgb, camera, rng), camera))
        Image.fromarray(render_look(rgb, look)).save(path.with_suffix(".jpg"), quality=92)
    return paths


def camera_shoot(out_dir: os.PathLike | str, size: tuple[int, int] = SHOOT_SIZE, jpeg_scale: float = 3.2,
                 embedded: bool = False, seed: int = 0, scenes: tuple[str, ...] = ("astronaut",),
                 look: Look = LOOKS["dslr"]) -> list[Path]:
    """A photographer's shoot: one camera's DNGs and its own JPEGs of the same frames, rendered with
    ``look`` from the whole frame and then made ``jpeg_scale`` times smaller by area averaging, as a
    camera writes an M/S-size JPEG or the preview inside its RAW. ``embedded``: the JPEG goes inside
    each DNG (its preview) instead of beside it.

    Returns:
        The DNG paths.
    """
    rng = np.random.default_rng(seed)
    camera = Camera(noise=0.003, model="Virtual Shooter")
    paths = []
    for name in scenes:
        rgb = scene(name, size)
        small = (max(1, round(size[0] / jpeg_scale)), max(1, round(size[1] / jpeg_scale)))
        jpeg = area_resize(render_look(rgb, look), small)
        path = Path(out_dir) / f"{name}.dng"
        if embedded:
            paths.append(write_dng(path, capture(rgb, camera, rng), camera, preview=jpeg))
        else:
            paths.append(write_dng(path, capture(rgb, camera, rng), camera))
            Image.fromarray(jpeg).save(path.with_suffix(".jpg"), quality=95)
    return paths


# -- ZRR layout ---------------------------------------------------------------------------------------
# ZRR (Ignatov et al. 2020) ships 448×448 crops of a phone's RAW, one-plane RGGB mosaics of 10-bit values
# in PNG with no metadata (saved 8-bit when a crop's max is ≤ 255), beside the same crops of a DSLR's
# JPEG: train|test/huawei_raw/N.png and train|test/canon/N.jpg (pairs.find_pairs, layout zrr).
ZRR_CAMERA = Camera(black=(63, 63, 63, 63), white=1020, model="Virtual Phone", **PHONE)  # levels as liteisp reads
LIGHTS = ("steady", "varying")
ZRR_CROP = 448
ZRR_TEST_SCENES = ("chelsea",)  # held out in test/, as the demo holds chelsea out


def illuminant_gains(rng: np.random.Generator) -> tuple[float, float, float]:
    """As-shot gains (R, G, B) of a light drawn between warm tungsten and cool shade, as a phone's
    sensor sees them: R from 1.4 to 2.8, B from 2.4 to 1.2 (warm light: much red, little blue)."""
    t = float(rng.uniform())  # 0 warm, 1 cool
    jitter = rng.normal(0, 0.06, 2)
    return (float((1.4 + 1.4 * t) * np.exp(jitter[0])), 1.0, float((2.4 - 1.2 * t) * np.exp(jitter[1])))


def zrr_dataset(out_dir: os.PathLike | str, size: tuple[int, int] = ZRR_SIZE, crop: int = ZRR_CROP,
                seed: int = 0, scenes: tuple[str, ...] = ALL_SCENES, look: Look = Look(), light: str = "steady",
                test_scenes: tuple[str, ...] = ZRR_TEST_SCENES, camera: Camera = ZRR_CAMERA) -> list[dict]:
    """A ZRR-layout dataset from the virtual phone: each scene captured whole at ``size`` (sensor
    pixels), the other camera's JPEG of it rendered with ``look``, both cut into aligned ``crop``²
    tiles written as ZRR ships them (no metadata: the RAW's white balance is lost). ``light``:
    ``steady`` — one light for every scene (the camera's ``wb_gains``); ``varying`` — each scene
    under its own light (:func:`illuminant_gains`), so the RAW carries that light's cast while the
    target, white-balanced by the other camera on its own, does not. Scenes in ``test_scenes`` go
    to ``test/``. Returns one record per crop (split, number, scene, position, the light's gains),
    also written to ``synth.json``.

    Raises:
        ValueError: an unknown light, or a crop that is odd or larger than the frame.
    """
    if light not in LIGHTS:
        raise ValueError(f"light must be one of {', '.join(LIGHTS)}, got {light!r}")
    if crop % 2 or crop > min(size):
        raise ValueError(f"crop {crop}: an even size within the frame {size[0]}×{size[1]}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    counters = {"train": 0, "test": 0}
    for name in scenes:
        gains = illuminant_gains(rng) if light == "varying" else camera.wb_gains
        cam = dataclasses.replace(camera, wb_gains=gains)
        rgb = scene(name, size)
        mosaic = capture(rgb, cam, rng)
        target = render_look(rgb, look)
        split = "test" if name in test_scenes else "train"
        for y in range(0, size[0] - crop + 1, crop):
            for x in range(0, size[1] - crop + 1, crop):
                n = counters[split]
                counters[split] += 1
                tile = mosaic[y : y + crop, x : x + crop]
                tile = tile.astype(np.uint8) if tile.max() <= 255 else tile  # ZRR saves dark crops 8-bit
                raw_path = out / split / "huawei_raw" / f"{n}.png"
                raw_path.parent.mkdir(parents=True, exist_ok=True)
                raw_path.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(tile)))
                rgb_path = out / split / "canon" / f"{n}.jpg"
                rgb_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(target[y : y + crop, x : x + crop]).save(rgb_path, quality=95)
                records.append({"split": split, "n": n, "scene": name, "y": y, "x": x,
                                "wb_gains": [round(g, 6) for g in gains]})
    (out / "synth.json").write_text(json.dumps({"light": light, "look": look.to_json(), "crop": crop,
                                                "camera": camera.to_json(), "crops": records}, indent=1) + "\n")
    return records


# -- low-texture scenes (alignment tests and benchmarks) ------------------------------------------

def faint_texture(h: int, w: int, sigma: float, amplitude: float, seed: int) -> np.ndarray:
    """Low-contrast texture (thin cloud, plaster): smoothed noise of relative ``amplitude``, (h, w, 1)."""
    f = gaussian_filter(np.random.default_rng(seed).standard_normal((h, w)), sigma)
    return (f / f.std() * amplitude)[..., None]


def sky_over_strip(h: int = 512, w: int = 768) -> np.ndarray:
    """Two thirds sky — a vertical gradient, a glow where the sun set, thin cloud of 3 % contrast —
    over a textured strip; (h, w, 3) uint8."""
    hs = h * 2 // 3
    yy, xx = np.mgrid[0:hs, 0:w]
    ramp = np.array([40, 70, 160.0]) + np.array([210, 100, -50.0]) * (yy / hs)[..., None]
    glow = np.exp(-((xx - 0.65 * w) ** 2 + (yy - 0.95 * hs) ** 2) / (2 * (0.2 * w) ** 2))[..., None]
    sky = np.clip((ramp + glow * np.array([60, 50, 10.0])) * (1 + faint_texture(hs, w, 6, 0.03, 1)), 0, 255)
    return np.concatenate([sky, scene("coffee", (h - hs, w))], 0).astype(np.uint8)


def wall_with_object(h: int = 512, w: int = 768) -> np.ndarray:
    """A plain wall (plaster texture of 2 % contrast) with one textured object in the middle."""
    img = np.clip(np.array([200, 188, 168.0]) * (1 + faint_texture(h, w, 1.5, 0.02, 2)), 0, 255).astype(np.uint8)
    oh, ow = h * 5 // 16 // 2 * 2, w * 5 // 16 // 2 * 2  # about a tenth of the frame
    img[(h - oh) // 2 : (h + oh) // 2, (w - ow) // 2 : (w + ow) // 2] = scene("chelsea", (oh, ow))
    return img


@dataclass(frozen=True)
class SynthConfig(JsonConfig):
    """What ``raw2rgb synth`` writes (its options): sample DNGs by default, or one of the datasets."""

    size: tuple[int, int] | None = checked(None, min=64, max=MAX_SIDE, metavar="H W", help=(
        "Sensor size in pixels [default: {} {}; --zrr: {} {}; --shoot: {} {}].".format(*SAMPLE_SIZE, *ZRR_SIZE,
                                                                                        *SHOOT_SIZE)))
    pairs: bool = checked(False, help="A two-camera dataset: every bundled scene and a colour chart, each JPEG "
                          "rendered by another camera with its own look (what the demo trains on).")
    look: str | None = checked(None, choices=LOOKS, help="--pairs, --zrr, --shoot: the other camera's look: plain "
                               "(colour and tone) or dslr (also hue-dependent colour, sharpening, local contrast) "
                               "[default: plain; --shoot: dslr].")
    phone: bool = checked(False, help="--pairs: the RAW from a small-sensor phone (lens blur, vignetting, more "
                          "noise).")
    zrr: bool = checked(False, help="A ZRR-layout dataset: the phone's RAW as 10-bit one-plane PNG mosaics without "
                        "metadata and the other camera's JPEG, cut into aligned crops (train|test/huawei_raw/N.png, "
                        "canon/N.jpg; chelsea in test/).")
    light: str = checked("steady", choices=LIGHTS, help="--zrr: one light for every scene, or each scene under its "
                         "own (the RAW carries its cast; the other camera white-balances on its own).")
    crop: int = checked(ZRR_CROP, min=16, metavar="N", help="--zrr: crop size in sensor pixels.",
                        rule=(lambda c: c % 2 == 0, "an even size (the crops keep the mosaic's RGGB phase)"))
    shoot: bool = checked(False, help="A photographer's shoot: one camera's frame and its own JPEG, rendered with "
                          "--look and made --jpeg-scale times smaller, as an M/S-size or embedded JPEG is.")
    jpeg_scale: float = checked(3.2, min=1.0, max=16.0, metavar="F", help="--shoot: how much smaller the JPEG is "
                                "than the sensor (the A7R III's preview: 3.2).")
    embedded: bool = checked(False, help="--shoot: the JPEG inside each DNG (its preview), none beside it.")
    seed: int = checked(0, min=0, help="Random seed.")


def write(out_dir: os.PathLike | str, cfg: SynthConfig = SynthConfig()) -> list[str]:
    """Write what ``cfg`` asks for into ``out_dir``; returns a line per file written (one line for a
    ZRR dataset's crops).

    Raises:
        InputError: a ZRR crop larger than the frame.
    """
    kw = {"size": cfg.size} if cfg.size else {}
    if cfg.shoot:
        return [str(p) for p in camera_shoot(out_dir, jpeg_scale=cfg.jpeg_scale, embedded=cfg.embedded,
                                             seed=cfg.seed, look=LOOKS[cfg.look or "dslr"], **kw)]
    look = LOOKS[cfg.look or "plain"]
    if cfg.zrr:
        size = cfg.size or ZRR_SIZE
        if cfg.crop > min(size):
            raise InputError(f"--crop {cfg.crop} is larger than the frame {size[0]}×{size[1]}")
        records = zrr_dataset(out_dir, size=size, crop=cfg.crop, seed=cfg.seed, look=look, light=cfg.light)
        return [f"wrote {len(records)} crops to {out_dir} (zrr layout, {cfg.light} light)"]
    made = paired_dngs(out_dir, seed=cfg.seed, look=look, phone=cfg.phone, **kw) if cfg.pairs \
        else sample_dngs(out_dir, seed=cfg.seed, **kw)
    return [str(p) for p in made]
