"""Reading RAW files of every kind into a RawFrame, and the packed-PNG format.

This is the only module that calls rawpy. ``read_raw`` understands every Bayer format LibRaw
opens (DNG, CR2, NEF, ARW, RW2, ORF, KDC, …), the ZRR one-plane mosaic PNG and the AIM-2019
packed 4-channel PNG. Non-Bayer sensors are refused with a message that says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import rawpy
import tifffile
from PIL import Image

from raw2rgb.config import checked
from raw2rgb.errors import UserError, one_line
from raw2rgb.pipeline import bayer, develop

RAW_SUFFIXES = frozenset(
    ".dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .rw2 .raw .orf .pef .ptx .kdc .dcr .k25 .mos "
    ".mrw .3fr .fff .iiq .erf .mef .srw .x3f .raf .rwl .gpr".split()
)
PNG_SUFFIXES = frozenset({".png"})

# ZRR stores the Huawei P20's 10-bit values with no black level (docs/architecture.md: input formats). The presets are
# those of the peer projects, so a dataset built here matches the one a model was trained on.
ZRR_LEVELS = {
    "liteisp": (63.0, 1020.0),  # LiteISPNet / MW-ISPNet: (x - 63) / (1020 - 63)
    "pynet": (0.0, 1020.0),  # PyNET: x / 1020
}
ZRR_DEFAULT_LEVELS = "liteisp"


def zrr_levels_field() -> Any:
    """A config's ``zrr_levels`` field: which black/white level ZRR's mosaic PNGs are read with (they
    carry none), declared once for every command that reads them."""
    return checked(ZRR_DEFAULT_LEVELS, choices=ZRR_LEVELS, help="Black/white level of ZRR mosaic PNGs: "
                   + ", ".join(f"{k} = {lo:g}/{hi:g}" for k, (lo, hi) in ZRR_LEVELS.items()) + ".")

# The most pixels raw2rgb decodes from one image (a RAW PNG counts its sensor pixels), checked from the
# header before anything is allocated: above any camera's frame (150-MP medium format passes), far below
# what a few hundred kilobytes of constant-colour PNG can claim (30000 × 30000 took 3.2 GB to fail).
MAX_PIXELS = 200_000_000


def too_many_pixels(width: int, height: int, per_pixel: int = 1) -> str | None:
    """Why an image of ``width`` × ``height`` (each pixel ``per_pixel`` sensor pixels: 4 in a packed
    PNG) is not decoded, or None when it is within :data:`MAX_PIXELS`."""
    n = int(width) * int(height) * per_pixel
    if n <= MAX_PIXELS:
        return None
    return (f"{width}×{height} pixels ({n / 1e6:.0f} MP) is above raw2rgb's limit of {MAX_PIXELS / 1e6:.0f} MP "
            "(no camera makes such a frame: a damaged or hostile file?); not decoded")

# DNG / TIFF tags read for metadata. Codes from the DNG 1.4 specification.
_TAG_MAKE, _TAG_MODEL, _TAG_UNIQUE_MODEL = 271, 272, 50708
_TAG_COLOR_MATRIX = (50721, 50722)
_TAG_ILLUMINANT = (50778, 50779)
_TAG_AS_SHOT_NEUTRAL = 50728
_ILLUMINANT_D65 = 21


class RawReadError(UserError):
    """A file that cannot be read as a Bayer RAW; the message names the file and the reason."""

    def __init__(self, path: os.PathLike | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class RawFrame:
    """One Bayer RAW frame and the metadata needed to interpret it.

    Attributes:
        mosaic: (H, W) uint16 samples of the visible area, copied out of the decoder.
        pattern: CFA pattern of ``mosaic`` (``RGGB``, ``BGGR``, ``GRBG`` or ``GBRG``).
        black_level: per channel, in packed order R, G1, B, G2.
        white_level: the saturation value.
        wb_gains: as-shot white-balance gains (R, G, B) with G = 1, or None when unknown.
        cam_to_rgb: 3×3 matrix from white-balanced camera RGB to linear sRGB, or None.
        color_source: where ``cam_to_rgb`` came from (``dng:ColorMatrix2``, ``libraw``, …).
        orientation: LibRaw's flip code (0 none, 3 180°, 5 90° CCW, 6 90° CW).
        make, model: camera make and model when the file says.
        source_format: ``libraw``, ``zrr-png`` or ``aim2019-png``.
    """

    mosaic: np.ndarray
    pattern: str
    black_level: tuple[float, float, float, float]
    white_level: float
    wb_gains: tuple[float, float, float] | None = None
    cam_to_rgb: tuple[tuple[float, ...], ...] | None = None
    color_source: str | None = None
    orientation: int = 0
    make: str | None = None
    model: str | None = None
    source_format: str = "libraw"

    def metadata(self) -> dict[str, Any]:
        """Everything but the samples, as JSON-ready values."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "mosaic"}
        d["height"], d["width"] = (int(s) for s in self.mosaic.shape)
        return json.loads(json.dumps(d))

    def packed(self, dtype: type = np.uint16, channels_last: bool = False) -> np.ndarray:
        """Unify to RGGB, pack to (4, H/2, W/2) R, G1, B, G2 and normalise to ``dtype``
        (``channels_last``: (H/2, W/2, 4), as a PNG stores it)."""
        return bayer.normalize_packed(bayer.planes(self.mosaic, self.pattern), self.black_level,
                                      self.white_level, dtype, channels_last)


def is_raw_path(path: os.PathLike | str) -> bool:
    """True when ``path`` is a file ``read_raw`` handles: a RAW format's suffix, or a PNG that can
    hold RAW data — one plane (a ZRR mosaic) or four (packed R, G1, B, G2) — read from its header.
    An ordinary RGB PNG beside RAW files (a photo, a converted output) is not a RAW file."""
    suffix = Path(path).suffix.lower()
    if suffix in RAW_SUFFIXES:
        return True
    if suffix not in PNG_SUFFIXES:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return True  # let reading it say what is wrong
    # IHDR colour type (byte 25): 0 grey, 4 grey + alpha, 6 RGBA; 2 RGB and 3 palette are pictures
    return len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[25] in (0, 6)


def read_raw(path: os.PathLike | str, zrr_levels: tuple[float, float] | None = None) -> RawFrame:
    """Read a Bayer RAW file, a ZRR mosaic PNG or an AIM-2019 packed PNG.

    Args:
        path: the file.
        zrr_levels: (black, white) for ZRR mosaic PNGs, which store none; defaults to the
            ``liteisp`` preset (63, 1020).

    Raises:
        RawReadError: the file is missing, unreadable, corrupt, or not a Bayer sensor.
    """
    path = Path(path)
    if not path.is_file():
        raise RawReadError(path, "no such file")
    if path.suffix.lower() in PNG_SUFFIXES:
        return _read_png_raw(path, zrr_levels or ZRR_LEVELS[ZRR_DEFAULT_LEVELS])
    return _read_libraw(path)


@contextlib.contextmanager
def _libraw_stderr(notes: list[str]):
    """Collect what LibRaw prints to the process's stderr (it reports data errors there itself),
    so that it ends up in the file's one-line reason instead of on the terminal."""
    fd = 2  # C's stderr, where LibRaw writes, whatever Python's sys.stderr is
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except OSError:  # no stderr at all
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            notes += [one_line(line) for line in text.splitlines() if line.strip()]


def _read_libraw(path: Path) -> RawFrame:
    notes: list[str] = []
    with _libraw_stderr(notes):
        try:
            return _decode_libraw(path)
        except RawReadError as e:
            error = e
    detail = "; ".join(n.replace(f"{path}: ", "") for n in notes[:2])
    raise RawReadError(path, f"{error.reason} [LibRaw: {detail}]" if detail else error.reason)


def _decode_libraw(path: Path) -> RawFrame:
    try:
        raw = rawpy.imread(str(path))
    except rawpy.LibRawError as e:
        raise RawReadError(path, f"LibRaw cannot read it ({_libraw_reason(e)})") from None
    with raw:  # raw_image_visible is a view into LibRaw's buffer, valid only while the file is open
        try:
            pattern, colors = _bayer_pattern(path, raw)
            mosaic = np.array(raw.raw_image_visible, dtype=np.uint16, copy=True)
            per_index = list(raw.black_level_per_channel)
            black = tuple(float(per_index[int(colors[dy, dx])]) for dy, dx in bayer.channel_offsets(pattern).values())
            white = float(raw.white_level)
            wb = _gains(raw.camera_whitebalance[:3])
            libraw_matrix = np.array(raw.color_matrix, dtype=np.float64)[:3, :3]
            xyz_to_cam = np.array(raw.rgb_xyz_matrix, dtype=np.float64)[:3, :3]
            orientation = int(raw.sizes.flip)
        except rawpy.LibRawError as e:
            raise RawReadError(path, f"LibRaw cannot decode it ({_libraw_reason(e)})") from None
    if mosaic.size == 0:
        raise RawReadError(path, "the file holds no image data")
    tags = _tiff_tags(path)
    cam_to_rgb, source = _dng_color(tags)
    if cam_to_rgb is None and np.any(libraw_matrix):
        cam_to_rgb, source = libraw_matrix, "libraw:color_matrix"
    if cam_to_rgb is None:
        # LibRaw fills color_matrix only for some formats (all zeros for a Sony ARW); as LibRaw's own
        # rendering does, build camera → sRGB from its XYZ → camera table (its adobe_coeff or the file's).
        cam_to_rgb, source = _xyz_color(xyz_to_cam), "libraw:rgb_xyz_matrix"
        source = source if cam_to_rgb is not None else None
    if _TAG_AS_SHOT_NEUTRAL in tags:
        neutral = _tag_floats(tags[_TAG_AS_SHOT_NEUTRAL], 3)
        if neutral and all(n > 0 for n in neutral):
            wb = _gains([1.0 / n for n in neutral])
    return RawFrame(mosaic=mosaic, pattern=pattern, black_level=black, white_level=white,  # type: ignore[arg-type]
                    wb_gains=wb, cam_to_rgb=_matrix_tuple(cam_to_rgb), color_source=source, orientation=orientation,
                    make=_text(tags.get(_TAG_MAKE)),
                    model=_text(tags.get(_TAG_MODEL)) or _text(tags.get(_TAG_UNIQUE_MODEL)), source_format="libraw")


def _bayer_pattern(path: Path, raw) -> tuple[str, np.ndarray]:
    """The CFA pattern of an open rawpy file and its 2×2 colour indices; refuses what is not Bayer."""
    if raw.raw_type != rawpy.RawType.Flat:
        raise RawReadError(path, "not a Bayer mosaic: it holds full colour per pixel (linear DNG or Foveon); "
                                 "raw2rgb learns from Bayer RAW only")
    shape = raw.raw_pattern.shape if raw.raw_pattern is not None else None
    if shape == (6, 6):
        raise RawReadError(path, "X-Trans sensor (6×6 CFA); raw2rgb handles Bayer 2×2 only")
    if shape != (2, 2) or raw.num_colors < 3:
        raise RawReadError(path, f"not a Bayer sensor (CFA {shape}, {raw.num_colors} colours); raw2rgb "
                                 "handles Bayer 2×2 only")
    desc = raw.color_desc.decode()
    colors = np.array(raw.raw_colors_visible[:2, :2])
    try:
        return bayer.pattern_from_colors(colors, desc), colors
    except ValueError:
        raise RawReadError(path, f"unsupported CFA colours {desc!r}") from None


def _libraw_reason(e: Exception) -> str:
    text = str(e).strip()
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return text or type(e).__name__


def _gains(values) -> tuple[float, float, float] | None:
    r, g, b = (float(v) for v in values)
    if min(r, g, b) <= 0 or not np.isfinite([r, g, b]).all():
        return None
    return (r / g, 1.0, b / g)


def _matrix_tuple(m: np.ndarray | None) -> tuple[tuple[float, ...], ...] | None:
    if m is None:
        return None
    return tuple(tuple(round(float(v), 8) for v in row) for row in m)


def _tiff_tags(path: Path) -> dict[int, Any]:
    """IFD0 tags of a TIFF-based RAW (DNG, CR2, NEF, ARW, …); empty for any other container."""
    try:
        with open(path, "rb") as f:
            if f.read(2) not in (b"II", b"MM"):
                return {}
        with warnings.catch_warnings(), tifffile.TiffFile(path) as tif:
            warnings.simplefilter("ignore")
            return {tag.code: tag.value for tag in tif.pages.first.tags.values()}
    except Exception:  # noqa: BLE001 - metadata is optional; LibRaw already read the pixels
        return {}


def _tag_floats(value, n: int) -> list[float] | None:
    """A TIFF numeric or (S)RATIONAL tag of ``n`` values as floats; tifffile flattens rationals
    into (numerator, denominator) pairs."""
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size == 2 * n:
        num, den = arr[0::2], arr[1::2]
        if np.any(den == 0):
            return None
        arr = num / den
    return list(arr) if arr.size == n else None


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = str(value).strip("\x00 ").strip()
    return value or None


def _dng_color(tags: dict[int, Any]) -> tuple[np.ndarray | None, str | None]:
    """camera → sRGB from the DNG ColorMatrix closest to D65, normalised so white stays white."""
    best = None
    for i, code in enumerate(_TAG_COLOR_MATRIX):
        if code not in tags:
            continue
        values = _tag_matrix(tags[code])
        if values is None:
            continue
        illuminant = tags.get(_TAG_ILLUMINANT[i])
        score = 1 if illuminant == _ILLUMINANT_D65 else 0
        if best is None or score >= best[0]:
            best = (score, values, f"dng:ColorMatrix{i + 1}")
    if best is None:
        return None, None
    xyz_to_cam = best[1]
    return develop.cam_to_srgb(xyz_to_cam), best[2]


def _xyz_color(xyz_to_cam: np.ndarray) -> np.ndarray | None:
    """camera → sRGB from an XYZ → camera matrix, or None where it is empty or singular."""
    if not np.all(np.isfinite(xyz_to_cam)) or np.any(np.abs(xyz_to_cam.sum(axis=1)) < 1e-6):
        return None
    with np.errstate(all="ignore"):
        try:
            m = develop.cam_to_srgb(xyz_to_cam)
        except np.linalg.LinAlgError:
            return None
    return m if np.all(np.isfinite(m)) else None


def _tag_matrix(value) -> np.ndarray | None:
    values = _tag_floats(value, 9)
    return None if values is None else np.array(values).reshape(3, 3)


def _png_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour type) from a PNG's IHDR, or None when ``data`` does not start like a PNG
    (the decoder then says what is wrong)."""
    if len(data) < 26 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), data[25]


def _read_png_raw(path: Path, zrr_levels: tuple[float, float]) -> RawFrame:
    data = path.read_bytes()
    header = _png_header(data)
    if header is not None:  # before the decoder allocates what the header claims
        width, height, colour = header
        why = too_many_pixels(width, height, 4 if colour == 6 else 1)  # 6: RGBA, a packed frame
        if why:
            raise RawReadError(path, why)
    try:
        img = imagecodecs.png_decode(data)
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem
        raise RawReadError(path, f"not a readable PNG ({e})") from None
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        # ZRR: one-plane RGGB mosaic of 10-bit values, 8-bit when a crop's max is ≤ 255.
        mosaic = np.ascontiguousarray(img.reshape(img.shape[:2]), dtype=np.uint16)
        black, white = zrr_levels
        if mosaic.shape[0] < 2 or mosaic.shape[1] < 2:
            raise RawReadError(path, f"mosaic of shape {mosaic.shape} is too small")
        return RawFrame(mosaic=mosaic, pattern="RGGB", black_level=(black,) * 4,
                        white_level=white, source_format="zrr-png")
    if img.ndim == 3 and img.shape[2] == 4:
        # AIM 2019: packed planes R, G, B, G as the four channels of one PNG.
        white = 255.0 if img.dtype == np.uint8 else 65535.0
        packed = np.moveaxis(img, 2, 0).astype(np.uint16)
        return RawFrame(mosaic=bayer.unpack(packed), pattern="RGGB", black_level=(0.0,) * 4,
                        white_level=white, source_format="aim2019-png")
    raise RawReadError(
        path, f"a PNG with {img.shape[2] if img.ndim == 3 else 1} channels is neither a one-plane "
        "ZRR mosaic nor a 4-channel packed raw")


# -- packed PNG -----------------------------------------------------------------------------------
# Pillow cannot write a 16-bit 4-channel PNG and reads one back as 8-bit; OpenCV stores BGRA. The
# packed raw goes through libpng (imagecodecs) as RGBA: R, G1, B, G2, so G2 shows as alpha.

# zlib level 1, RLE strategy, SUB filter (OpenCV's fast settings). Measured on packed frames:
# 12 MP in 0.38 s (level 6: 1.57 s; level 1 alone: 0.94 s), a 224² patch in 5.3 ms (14.2 ms), and
# files 3 % smaller than level 1 alone, since the SUB filter suits smooth, noisy 16-bit samples.
PNG_OPTIONS = {"level": 1, "strategy": 3, "filter": 16}


def encode_packed_png(packed: np.ndarray, channels_last: bool = False) -> bytes:
    """Encode packed planes (4, h, w) — or (h, w, 4) with ``channels_last`` — uint16 or uint8 as
    an RGBA PNG of the same bit depth."""
    hwc = packed if channels_last else np.moveaxis(packed, 0, 2)
    if hwc.ndim != 3 or hwc.shape[2] != 4:
        raise ValueError(f"packed raw is (4, h, w), got shape {packed.shape}")
    if hwc.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"packed PNG holds uint8 or uint16, got {hwc.dtype}")
    return imagecodecs.png_encode(np.ascontiguousarray(hwc), **PNG_OPTIONS)


def decode_packed_png(data: bytes) -> np.ndarray:
    """Decode an RGBA PNG to packed planes (4, h, w) of its stored dtype."""
    img = imagecodecs.png_decode(data)
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError(f"a packed PNG has 4 channels, got shape {img.shape}")
    return np.ascontiguousarray(np.moveaxis(img, 2, 0))


def read_packed_png(path: os.PathLike | str) -> np.ndarray:
    """Read a packed PNG written by ``raw2rgb unpack``: (4, h, w) R, G1, B, G2."""
    return decode_packed_png(Path(path).read_bytes())


# -- the camera's own JPEG inside a RAW ----------------------------------------------------------------

EMBEDDED_MIN_WIDTH = 640  # pixels: a smaller embedded image (an EXIF thumbnail) holds too little of the look to learn


def embedded_size(path: os.PathLike | str) -> tuple[int, int]:
    """(width, height) of the JPEG embedded in a RAW file (see :func:`embedded_jpeg`)."""
    return _jpeg_size(embedded_jpeg(path))  # type: ignore[return-value]


def embedded_jpeg(path: os.PathLike | str) -> bytes:
    """The JPEG a camera rendered of the shot and stored inside the RAW file (LibRaw's thumbnail: a
    Canon's JpgFromRaw, a Sony's or Nikon's preview), as its bytes.

    Raises:
        RawReadError: the file holds none, holds a bitmap rather than a JPEG, or one narrower than
            :data:`EMBEDDED_MIN_WIDTH` pixels.
    """
    path = Path(path)
    try:
        with rawpy.imread(str(path)) as raw:
            thumb = raw.extract_thumb()
            sensor = (int(raw.sizes.width), int(raw.sizes.height))
    except rawpy.LibRawNoThumbnailError:
        raise RawReadError(path, "holds no embedded JPEG") from None
    except (rawpy.LibRawError, OSError) as e:
        raise RawReadError(path, f"its embedded JPEG cannot be read ({_libraw_reason(e)})") from None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        raise RawReadError(path, f"its embedded image is a {thumb.data.shape[1]}×{thumb.data.shape[0]} bitmap, "
                                 "not a JPEG")
    data = bytes(thumb.data)
    size = _jpeg_size(data)
    if size is None:
        raise RawReadError(path, "its embedded JPEG cannot be decoded")
    width = max(size)  # a portrait preview is as useful as a landscape one
    shape, frame = max(size) / max(1, min(size)), max(sensor) / max(1, min(sensor))
    if abs(np.log(shape / frame)) > 0.1:  # not an image of the frame (a strip of it, a crop, another aspect)
        raise RawReadError(path, f"its embedded JPEG is {size[0]}×{size[1]}, not of the frame's shape "
                                 f"({sensor[0]}×{sensor[1]})")
    if width < EMBEDDED_MIN_WIDTH:
        raise RawReadError(path, f"its embedded JPEG is {width} pixels wide, under the {EMBEDDED_MIN_WIDTH} that "
                                 "hold enough of the camera's look")
    return data


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's header (PIL opens lazily: nothing is decoded), or None."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - any decoder error means no usable JPEG
        return None
