"""Pairs of RAW and RGB frames: finding them, aligning them, cutting and scoring patches.

Coordinates are (x, y) with pixel centres on integers, as in scikit-image. A homography maps
*packed* coordinates (the (4, h, w) grid of a unified mosaic) to target-image coordinates. The
target is warped onto the sensor grid (2h, 2w) and patches keep it at that resolution: the
output scale is applied by the shards stage, after any flip (a flip moves the CFA phase by one
sensor pixel, which at packed resolution would be half a target pixel).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

from raw2rgb.config import JsonConfig, checked
from raw2rgb.errors import UserError, one_line
from raw2rgb.files import inside, not_a_file, write_bytes
from raw2rgb.pipeline import bayer, rawio
from raw2rgb.pipeline.align import AlignError, Alignment, align_target, area_resize, warp_target
from raw2rgb.pipeline.develop import area_downsample, linear_to_srgb, luma
from raw2rgb.pipeline.stage import ItemError
from raw2rgb.registry import AUTO, Auto, Registry

log = logging.getLogger(__name__)

RGB_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})

# PIL's own decompression-bomb check refuses above twice its MAX_IMAGE_PIXELS (179 MP by default), which
# would turn away a 180-MP target that rawio.MAX_PIXELS admits: one limit, raw2rgb's (read_rgb checks it).
Image.MAX_IMAGE_PIXELS = rawio.MAX_PIXELS


class PairError(UserError):
    """A pair that cannot be used; the message names the files and the reason."""


@dataclass(frozen=True)
class Pair:
    """One scene: a RAW frame and its RGB target.

    ``scene`` names it in outputs and splits; ``fixed_split`` is set where the source already
    splits (ZRR's test folder); ``aligned`` says the two are pixel-aligned already (ZRR,
    AIM-2019) so no homography is estimated; ``embedded`` that the target is the camera's own JPEG
    stored inside the RAW file.
    """

    scene: str
    raw: str
    rgb: str
    aligned: bool = False
    fixed_split: str | None = None
    embedded: bool = False  # the target is the JPEG inside the RAW file (``rgb`` is the RAW file then)


# -- finding pairs: the layouts ----------------------------------------------------------------------

class _Finder:
    """What every layout's ``find`` uses: files of a folder by stem (refusing links out of SRC),
    matched into pairs, with one line in ``problems`` per file left unpaired."""

    def __init__(self, src: Path) -> None:
        self.src, self.pairs, self.problems = src, [], []  # type: ignore[var-annotated]

    def by_stem(self, folder: Path, suffixes) -> dict[str, Path]:
        if not folder.is_dir():
            return {}
        found = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() not in suffixes or p.name.startswith(".") or p.is_dir():
                continue
            if not p.is_file():  # a broken link, a FIFO: never opened (a FIFO would block)
                self.problems.append(f"{p}: {not_a_file(p)}; skipped")
            elif inside(self.src, p):
                found[p.stem] = p
            else:  # the one path-safety rule: a link out of SRC is refused, not followed
                self.problems.append(f"{p}: leads outside {self.src}; refused")
        return found

    def match(self, raws: dict[str, Path], rgbs: dict[str, Path], prefix: str, aligned: bool,
              split: str | None) -> None:
        for stem in sorted(set(raws) | set(rgbs)):
            if stem not in rgbs:
                self.problems.append(f"{raws[stem]}: no RGB image named {stem}.* beside it")
            elif stem not in raws:
                self.problems.append(f"{rgbs[stem]}: no RAW file named {stem}.* for it")
            else:
                self.pairs.append(Pair(f"{prefix}{stem}", str(raws[stem]), str(rgbs[stem]), aligned, split))


@dataclass(frozen=True)
class Layout:
    """How a source folder is organised: ``detect(src)`` says whether SRC looks like it (checked in
    registration order), ``find(finder, pairs_csv)`` adds its pairs, ``scale`` is prepare's output
    scale by default ("1": at packed resolution, the paper's protocol; "2": full sensor resolution,
    so that a model trained on two-camera data converts to full-resolution photos), ``help`` one line
    (what SRC holds), ``patch`` prepare's patch size by default (packed pixels) and ``stride`` its
    stride, as a fraction of the patch size."""

    detect: Callable[[Path], bool]
    find: Callable[[_Finder, Path | None], None]
    scale: str
    help: str
    patch: int = 224  # the paper's, for datasets of many scenes
    stride: float = 1.0


def detect_layout(src: os.PathLike | str) -> str:
    """The layout of a source folder (the ``auto`` of :data:`LAYOUTS`): the first whose ``detect`` says yes.

    Raises:
        PairError: nothing recognisable.
    """
    src = Path(src)
    for name, layout in LAYOUTS.items():
        if layout.detect(src):
            return name
    raise PairError(f"{src}: no known layout ({'; '.join(f'{n}: {e.help}' for n, e in LAYOUTS.items())}); "
                    "choose one with --layout")


LAYOUTS: Registry[Layout] = Registry("layout", default=AUTO, auto=Auto(
    "the first layout below that SRC looks like", detect_layout))


def _zrr(f: _Finder, pairs_csv: Path | None) -> None:
    for part in ("train", "test", "."):
        base = f.src / part
        f.match(f.by_stem(base / "huawei_raw", {".png"}), f.by_stem(base / "canon", RGB_SUFFIXES),
                "" if part == "." else f"{part}/", True, {"test": "test"}.get(part))


def _aim2019(f: _Finder, pairs_csv: Path | None) -> None:
    for part in ("Training", "Validation"):
        f.match(f.by_stem(f.src / f"{part}PhoneRaw", {".png"}), f.by_stem(f.src / f"{part}CanonRGB", RGB_SUFFIXES),
                f"{part.lower()}/", True, "val" if part == "Validation" else None)


def _raw_jpeg(f: _Finder, pairs_csv: Path | None) -> None:
    """A camera's RAW files and its own JPEGs side by side; a RAW without a JPEG beside it falls back to
    the JPEG embedded in it."""
    raws, jpegs = f.by_stem(f.src, rawio.RAW_SUFFIXES), f.by_stem(f.src, {".jpg", ".jpeg"})
    f.match({s: p for s, p in raws.items() if s in jpegs}, jpegs, "", False, None)
    _embedded(f, {s: p for s, p in raws.items() if s not in jpegs})


def _raw_embedded(f: _Finder, pairs_csv: Path | None) -> None:
    """RAW files alone: each one's target is the camera's JPEG embedded in it."""
    _embedded(f, f.by_stem(f.src, rawio.RAW_SUFFIXES))


def _embedded(f: _Finder, raws: dict[str, Path]) -> None:
    """Pairs of RAW files with the JPEG inside each. A RAW whose embedded image cannot serve (none, a
    bitmap, too small) is skipped, not a failure: they are listed in one warning. One line says which
    files used their embedded JPEG."""
    used, skipped = [], []
    for stem, raw in sorted(raws.items()):
        try:
            width, height = rawio.embedded_size(raw)
        except rawio.RawReadError as e:
            skipped.append(str(e))
            continue
        f.pairs.append(Pair(stem, str(raw), str(raw), embedded=True))
        used.append(f"{raw.name} ({width}×{height})")
    if skipped:
        log.warning("skipped %d RAW file%s without a usable JPEG (none beside %s, none usable inside): %s%s",
                    len(skipped), "s" * (len(skipped) > 1), "them" if len(skipped) > 1 else "it",
                    "; ".join(skipped[:10]), f"; … and {len(skipped) - 10} more" if len(skipped) > 10 else "")
    if used:
        log.info("%d RAW file%s without a JPEG beside %s: using the JPEG embedded in %s: %s%s", len(used),
                 "s" * (len(used) > 1), "them" if len(used) > 1 else "it", "each" if len(used) > 1 else "it",
                 ", ".join(used[:10]), f", … and {len(used) - 10} more" if len(used) > 10 else "")


def _pairs(f: _Finder, pairs_csv: Path | None) -> None:
    if pairs_csv:
        f.pairs += _pairs_of_csv(f.src, Path(pairs_csv), f.problems)
    else:
        f.match(f.by_stem(f.src / "raw", rawio.RAW_SUFFIXES | rawio.PNG_SUFFIXES),
                f.by_stem(f.src / "rgb", RGB_SUFFIXES), "", False, None)


def _has_raw(src: Path) -> bool:
    return src.is_dir() and any(p.is_file() and p.suffix.lower() in rawio.RAW_SUFFIXES for p in src.iterdir())


def _has_raw_beside_rgb(src: Path) -> bool:
    files = [p for p in src.iterdir() if p.is_file()] if src.is_dir() else []
    stems = {p.stem for p in files if p.suffix.lower() in RGB_SUFFIXES}
    return any(p.suffix.lower() in rawio.RAW_SUFFIXES and p.stem in stems for p in files)


LAYOUTS.add("zrr", Layout(
    lambda src: any((src / d / "huawei_raw").is_dir() for d in ("train", "test", ".")), _zrr, scale="1",
    help="Zurich RAW-to-RGB: train|test/huawei_raw/N.png mosaics and canon/N.jpg, aligned"))
LAYOUTS.add("aim2019", Layout(
    lambda src: (src / "TrainingPhoneRaw").is_dir() or (src / "ValidationPhoneRaw").is_dir(), _aim2019, scale="1",
    help="AIM 2019: TrainingPhoneRaw/ + TrainingCanonRGB/ (and Validation*), aligned"))
LAYOUTS.add("pairs", Layout(
    lambda src: (src / "raw").is_dir() and (src / "rgb").is_dir(), _pairs, scale="2",
    help="raw/ + rgb/ with the same stems, or --pairs-csv; aligned by prepare"))
# A photographer's shoot is a few frames, binned to their JPEGs' size (a 1616-pixel preview: 433×648 packed):
# 64-pixel patches, overlapping by half, give each frame some 160 and a held-out band thirty; on the real
# frame the network added 0.28 dB and 0.013 SSIM over its prior with them, nothing with a stride of 64
# (docs/camera-look.md)
CAMERA_PATCH, CAMERA_STRIDE = 64, 0.5
LAYOUTS.add("raw+jpeg", Layout(
    _has_raw_beside_rgb, _raw_jpeg, scale="2", patch=CAMERA_PATCH, stride=CAMERA_STRIDE,
    help="RAW files with same-name JPEGs beside them (a RAW without one: the JPEG embedded in it)"))
LAYOUTS.add("raw+embedded", Layout(
    _has_raw, _raw_embedded, scale="2", patch=CAMERA_PATCH, stride=CAMERA_STRIDE,
    help="RAW files alone: each one's target is the camera's JPEG inside it"))


def find_pairs(src: os.PathLike | str, layout: str, pairs_csv: os.PathLike | str | None = None
               ) -> tuple[list[Pair], list[str]]:
    """The pairs of a source folder in ``layout`` (``auto``: detected), sorted by scene, and one line
    per file left unpaired (or refused: a scene that is not a name, see :func:`scene_problem`).

    Raises:
        UnknownEntry: no such layout.
        PairError: ``auto``, and SRC looks like no layout.
    """
    finder = _Finder(Path(src))
    LAYOUTS[LAYOUTS.resolve(layout, src)].find(finder, Path(pairs_csv) if pairs_csv else None)
    pairs = []
    for p in finder.pairs:  # every layout's scenes, before anything is written under their names
        why = scene_problem(p.scene)
        if why:
            finder.problems.append(f"{p.raw}: {why}; refused")
        else:
            pairs.append(p)
    pairs.sort(key=lambda p: p.scene)
    return pairs, finder.problems


MAX_SCENE_PART = 200  # bytes: a scene's files are named SCENE.png, .SCENE.png.PID.partial… within 255


def scene_problem(scene: str) -> str | None:
    """Why ``scene`` cannot name a scene, or None when it can.

    A scene is a name, not a path: it names ``DATASET/unpack/SCENE.png`` and ``.json``,
    ``DATASET/patches/raw/SCENE/`` (which a rerun empties) and so on, so an absolute name, or a part
    that is empty, ``.``, ``..`` or hidden, would write outside DATASET or over raw2rgb's own files.
    Parts joined by ``/`` are names too (ZRR's ``test/12``).
    """
    if not scene:
        return "an empty scene name"
    if any(ord(c) < 32 for c in scene):
        return f"scene {scene!r} holds a control character"
    if scene.startswith("/"):
        return f"scene {scene!r} is an absolute path, not a name"
    long = next((part for part in scene.split("/") if len(part.encode()) > MAX_SCENE_PART), None)
    if long is not None:  # the file system's limit is 255 bytes a name, and a scene's files add to it
        return f"scene part {long[:20]!r}… is {len(long.encode())} bytes long, over {MAX_SCENE_PART}"
    bad = next((part for part in scene.split("/") if not part or part.startswith(".")), None)  # "", ".", ".."
    if bad is not None:
        return f"scene {scene!r} has a part {bad!r} (a scene is a name: parts joined by /, none empty or hidden)"
    return None


def _pairs_of_csv(src: Path, pairs_csv: Path, problems: list[str]) -> list[Pair]:
    """The pairs a ``pairs.csv`` lists (columns raw, rgb and optionally scene, relative to SRC);
    a line in ``problems`` for each row refused, naming the CSV and the row by its line."""
    pairs = []
    with open(pairs_csv, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            where = f"{pairs_csv}: line {reader.line_num}"
            raw_rel, rgb_rel = row.get("raw") or "", row.get("rgb") or ""  # None: a short row
            raw, rgb = src / raw_rel, src / rgb_rel
            scene = row.get("scene") or Path(raw_rel).stem
            if not raw_rel or not rgb_rel:
                problems.append(f"{where}: no raw and rgb columns: {row}")
            elif not (inside(src, raw) and inside(src, rgb)):
                problems.append(f"{where}: {raw_rel} / {rgb_rel} lies outside {src}; refused")
            elif why := scene_problem(scene):
                problems.append(f"{where}: {why}; refused")
            else:
                pairs.append(Pair(scene, str(raw), str(rgb)))
    return pairs


# -- images -----------------------------------------------------------------------------------------

def read_rgb(path: os.PathLike | str | io.BytesIO, name: str | None = None) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8, in stored orientation (EXIF rotation is not applied, so
    a camera's JPEG keeps the sensor's orientation, like its RAW). ``name`` names it in errors
    (default: ``path``).

    An image above ``rawio.MAX_PIXELS`` is refused from its header, before it is decoded.
    """
    source, path = path, name or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is the one below
            im = Image.open(source)  # reads the header only
        with im:
            why = rawio.too_many_pixels(*im.size)
            if why:
                raise PairError(f"{path}: {why}")
            return np.array(im.convert("RGB"))
    except PairError:
        raise
    except Image.DecompressionBombError:  # beyond PIL's own limit, set to ours (above): the same reason
        raise PairError(f"{path}: more than {rawio.MAX_PIXELS / 1e6:.0f} MP, raw2rgb's limit; not decoded") from None
    except Exception as e:  # noqa: BLE001 - any decoder error is this file's problem
        raise PairError(f"{path}: unreadable image ({one_line(str(e))})") from None


def read_target(path: os.PathLike | str, embedded: bool = False) -> np.ndarray:
    """A pair's target as (H, W, 3) uint8: the image file at ``path``, or the JPEG embedded in the RAW
    file at ``path``."""
    if not embedded:
        return read_rgb(path)
    try:
        data = rawio.embedded_jpeg(path)
    except rawio.RawReadError as e:
        raise PairError(str(e)) from None
    return read_rgb(io.BytesIO(data), name=f"{path} (its embedded JPEG)")


def preview_luma(raw_norm: np.ndarray) -> np.ndarray:
    """The RAW's brightness at packed resolution, for alignment and scoring: (G1 + G2) / 2, exposed
    so its 99th percentile sits at 0.9, sRGB gamma.

    The two greens sit symmetrically about the cell's centre, so this image is sampled exactly
    at packed pixel centres. A luma mixed from R, G and B is not: R sits at the cell's top-left
    and B at its bottom-right, which biased corner positions by a quarter of a pixel.
    """
    g = (raw_norm[1].astype(np.float32) + raw_norm[3].astype(np.float32)) * 0.5
    top = float(np.percentile(g, 99)) or 1.0
    return linear_to_srgb(np.clip(g * (0.9 / top), 0, 1)).astype(np.float32)


# -- patches ----------------------------------------------------------------------------------------

def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two same-shaped arrays (0 where either is flat)."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


@dataclass(frozen=True)
class PatchParams(JsonConfig):
    """How patches are cut and which are kept."""

    # None: the layout's (prepare.resolve); a stage always gets numbers
    size: int | None = checked(None, min=8, metavar="P", help=lambda: (
        "Patch size, packed pixels [default: the layout's: " + ", ".join(f"{n} {e.patch}" for n, e in LAYOUTS.items())
        + "]."))
    stride: int | None = checked(None, min=1, metavar="S", help=lambda: (
        "Patch stride, packed pixels [default: the layout's share of the patch size: "
        + ", ".join(f"{n} {e.stride:g}" for n, e in LAYOUTS.items()) + "]."))
    # NCC of RAW preview luma and target luma (any finite value; above 1 keeps none)
    min_score: float = checked(0.5, metavar="NCC", help="Drop patches scoring below.")
    max_clipped: float = checked(1.0, min=0, max=1, metavar="FRAC",
                                 help="Drop patches with more clipped RAW samples than this fraction.")
    min_mean: float = checked(0.0, min=0, max=1, metavar="LEVEL", help="Drop patches whose mean RAW level is below.")
    max_shift: float | None = checked(2.0, min=0, metavar="PX", help="Drop patches whose local alignment residual "
                                      "(target pixels) is larger: parallax, motion.")  # None: keep all


@dataclass
class Patch:
    """One cut patch, kept or not, with the reason when dropped."""

    id: str
    y: int
    x: int
    score: float
    shift: float | None = None  # local alignment residual, target pixels
    raw: np.ndarray | None = field(default=None, repr=False)  # (4, P, P) as stored
    rgb: np.ndarray | None = field(default=None, repr=False)  # (2P, 2P, 3) uint8, sensor resolution
    reason: str = ""

    @property
    def kept(self) -> bool:
        return not self.reason


def _as_good_unwarped(preview: np.ndarray, plain: np.ndarray, warped: np.ndarray, cover: np.ndarray) -> bool:
    """Whether a target already on the sensor grid (``plain``, float in [0, 1]) matches the RAW's
    preview at least as well as its fitted warp does (normalised cross-correlation of the lumas where
    the warp covers the frame). A camera's own JPEG of the frame, binned to, is the frame: a fitted
    homography only adds its own estimation error (0.1–0.7 px on exact synthetic pairs) and the
    interpolation's blur."""
    inside = area_downsample(cover.astype(np.float32)) >= 0.999
    if inside.sum() < 64:
        return False
    plain = area_downsample(luma(plain))
    fitted = area_downsample(luma(warped))
    return ncc(preview[inside], plain[inside]) >= ncc(preview[inside], fitted[inside])


def cut_patches(packed: np.ndarray, raw_norm: np.ndarray, preview_luma: np.ndarray, target: np.ndarray,
                cover: np.ndarray | None, params: PatchParams, alignment: Alignment | None = None) -> list[Patch]:
    """Cut aligned patches on a grid and score each.

    Args:
        packed: (4, h, w) stored RAW (uint16) to cut from.
        raw_norm: (4, h, w) the same in [0, 1], for the clipped/dark tests.
        preview_luma: (h, w) luma of the RAW preview.
        target: (2h, 2w, 3) float [0, 1], the aligned target at sensor resolution.
        cover: (2h, 2w) fraction of each target pixel inside the source image, or None.
        params: sizes and thresholds.
        alignment: the pair's alignment, whose window residuals give each patch's local residual.
    """
    p, st, s = params.size, params.stride, 2
    _, h, w = packed.shape
    if target.shape[:2] != (s * h, s * w):
        raise PairError(f"target of size {target.shape[:2]} is not twice the RAW's packed size {(h, w)}")
    t_luma = area_downsample(luma(target))
    out = []
    for y in range(0, h - p + 1, st):
        for x in range(0, w - p + 1, st):
            pid = f"y{y:05d}_x{x:05d}"
            score = ncc(preview_luma[y : y + p, x : x + p], t_luma[y : y + p, x : x + p])
            local = alignment.local_residual(y, x, p) if alignment is not None else None
            patch = Patch(pid, y, x, round(score, 6), shift=None if local is None else round(local, 3))
            rn = raw_norm[:, y : y + p, x : x + p]
            if cover is not None and cover[s * y : s * (y + p), s * x : s * (x + p)].min() < 0.999:
                patch.reason = "outside the target"
            elif (rn >= 0.999).mean() > params.max_clipped:
                patch.reason = "clipped"
            elif rn.mean() < params.min_mean:
                patch.reason = "too dark"
            elif params.max_shift is not None and local is not None and local > params.max_shift:
                patch.reason = f"local shift {local:.2f} px > --max-shift {params.max_shift:g}"
            elif score < params.min_score:
                patch.reason = f"score {score:.2f} < {params.min_score}"
            else:
                patch.raw = packed[:, y : y + p, x : x + p]
                rgb = target[s * y : s * (y + p), s * x : s * (x + p)]
                patch.rgb = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
            out.append(patch)
    return out


# -- the patches stage ------------------------------------------------------------------------------

def encode_rgb_png(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as PNG (lossless: patches keep the target's exact values)."""
    return imagecodecs.png_encode(np.ascontiguousarray(rgb), **rawio.PNG_OPTIONS)


def _write_patches(patches: list[Patch], out_dir: Path, key: str) -> list[str]:
    """Write the kept patches (``raw/KEY/ID.png``, ``rgb/KEY/ID.png``); return their paths."""
    outputs, writes = [], []
    for p in patches:
        if p.kept:
            raw_rel, rgb_rel = f"raw/{key}/{p.id}.png", f"rgb/{key}/{p.id}.png"
            writes += [(raw_rel, lambda p=p: rawio.encode_packed_png(np.ascontiguousarray(p.raw))),
                       (rgb_rel, lambda p=p: encode_rgb_png(p.rgb))]
            outputs += [raw_rel, rgb_rel]
    with ThreadPoolExecutor(2) as pool:  # libpng releases the GIL: two encodes at a time
        list(pool.map(lambda w: write_bytes(out_dir / w[0], w[1]()), writes))
    return outputs


def _dropped(patches: list[Patch]) -> dict[str, int]:
    """How many patches were dropped for each kind of reason."""
    dropped: dict[str, int] = {}
    for p in patches:
        if not p.kept:
            key = p.reason.split(" ")[0] if p.reason.startswith(("score", "local")) else p.reason
            key = {"score": "score below threshold", "local": "local shift above --max-shift"}.get(key, key)
            dropped[key] = dropped.get(key, 0) + 1
    return dropped


def bin_to_target(packed: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(packed, target, binning): packed planes binned by the smallest whole factor that makes twice
    their size no larger than the target (``bayer.binning_factor``), and the target area-resampled to
    exactly that grid; both as they are (binning 1) for a target as large as the sensor."""
    _, h, w = packed.shape
    binning = bayer.binning_factor((2 * h, 2 * w), target.shape[:2])
    if binning == 1:
        return packed, target, 1
    packed = bayer.bin_packed(packed, binning)
    _, h, w = packed.shape
    return packed, area_resize(target, (2 * h, 2 * w)), binning


def patch_item(item, ctx):
    """Stage work: align one pair (unless already aligned), cut, score and write its patches.

    Inputs: the packed PNG and sidecar from the unpack stage, and the target image (or the RAW file
    whose embedded JPEG is the target). Outputs: ``raw/SCENE/ID.png`` (packed) and ``rgb/SCENE/ID.png``
    (uint8, at twice the packed resolution) per kept patch.

    A target smaller than the sensor is never enlarged onto it: the frame is binned by the smallest
    whole factor that makes twice its packed size no larger than the target (same-colour sites
    averaged, so it stays a Bayer mosaic), the target is area-resampled to exactly that grid, and
    the pair is aligned there. ``binning`` in the item's record says by how much.
    """
    packed_path, sidecar_path, rgb_path = item.inputs
    params = PatchParams(**ctx.params["patch"])
    try:
        packed = rawio.read_packed_png(packed_path)
        meta = json.loads(Path(sidecar_path).read_text())
        target = read_target(rgb_path, item.payload.get("embedded", False))
        binning = 1
        if not item.payload["aligned"]:  # never enlarge a target: bin the RAW down to it instead
            packed, target, binning = bin_to_target(packed, target)
        _, h, w = packed.shape
        raw_norm = packed.astype(np.float32) / np.float32(np.iinfo(packed.dtype).max)
        preview = preview_luma(raw_norm)
        alignment = None
        if item.payload["aligned"]:
            if target.shape[:2] != (2 * h, 2 * w):
                raise PairError(f"{rgb_path}: size {target.shape[:2]} is not twice the RAW's packed size "
                                f"{(h, w)}, as an aligned pair must be")
            aligned, cover = target.astype(np.float32) / 255.0, None
        else:
            alignment = align_target(preview, target, min_inliers=ctx.params["min_inliers"],
                                     name=f"{meta.get('source', packed_path)} ~ {rgb_path}")
            aligned, cover = warp_target(target, alignment.matrix, (h, w))
            if target.shape[:2] == (2 * h, 2 * w):
                plain = target.astype(np.float32) / 255.0
                if _as_good_unwarped(preview, plain, aligned, cover):
                    aligned, cover, alignment.snapped = plain, None, True
        patches = cut_patches(packed, raw_norm, preview, aligned, cover, params, alignment)
    except (PairError, AlignError) as e:
        raise ItemError(str(e)) from None
    for part in ("raw", "rgb"):  # patches of an earlier run of this scene (other sizes, say)
        shutil.rmtree(ctx.out_dir / part / item.key, ignore_errors=True)
    outputs = _write_patches(patches, ctx.out_dir, item.key)
    info = {
        "binning": binning,
        "packed_size": [h, w],  # the binned frame's, which patch positions are on
        "target_size": list(target.shape[:2]),  # as resampled onto the grid (2h, 2w)
        "alignment": alignment.to_json() if alignment else None,
        "kept": sum(p.kept for p in patches),
        "dropped": _dropped(patches),
        "patches": [{"id": p.id, "y": p.y, "x": p.x, "score": p.score,
                     **({"shift_px": p.shift} if p.shift is not None else {}),
                     **({"reason": p.reason} if p.reason else {})} for p in patches],
    }
    return outputs, info
