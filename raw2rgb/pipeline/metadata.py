"""What a photograph keeps through ``convert``: the RAW's EXIF (read with exifread), and the EXIF and
sRGB ICC profile written into the JPEG, TIFF and PNG outputs (with Pillow and tifffile).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import exifread
from PIL import ExifTags, Image, ImageCms, TiffImagePlugin

from raw2rgb import __version__

log = logging.getLogger(__name__)

SOFTWARE = f"raw2rgb {__version__}"
UPRIGHT = 1  # EXIF Orientation: the pixels are stored as they are seen (convert applies the RAW's)
SRGB = 1  # EXIF ColorSpace

# Tag codes of TIFF 6.0 and EXIF 2.32; TIFF/EP (and DNG after it) allows the exposure tags in IFD0 too.
MAKE, MODEL, ORIENTATION, SOFTWARE_TAG = 271, 272, 274, 305
EXPOSURE_TIME, F_NUMBER, ISO, DATE_TIME_ORIGINAL, FOCAL_LENGTH = 33434, 33437, 34855, 36867, 37386
COLOR_SPACE, PIXEL_X, PIXEL_Y, LENS_MODEL = 40961, 40962, 40963, 42036


@dataclass(frozen=True)
class Exif:
    """The RAW's EXIF fields that an output keeps; None where the file has none."""

    make: str | None = None
    model: str | None = None
    date_time_original: str | None = None  # "YYYY:MM:DD HH:MM:SS", as EXIF writes it
    exposure_time: Fraction | None = None  # seconds
    f_number: Fraction | None = None
    iso: int | None = None
    focal_length: Fraction | None = None  # millimetres
    lens_model: str | None = None
    orientation: int | None = None  # the RAW's (1 to 8); the pixels are turned upright and outputs record 1


# exifread's names: the Exif IFD's (EXIF ...) where cameras write them, IFD0's (Image ...) where TIFF/EP allows them
_READ = {
    "make": ("Image Make",),
    "model": ("Image Model",),
    "date_time_original": ("EXIF DateTimeOriginal", "Image DateTimeOriginal"),
    "exposure_time": ("EXIF ExposureTime", "Image ExposureTime"),
    "f_number": ("EXIF FNumber", "Image FNumber"),
    "iso": ("EXIF ISOSpeedRatings", "Image ISOSpeedRatings"),
    "focal_length": ("EXIF FocalLength", "Image FocalLength"),
    "lens_model": ("EXIF LensModel", "Image LensModel"),
    "orientation": ("Image Orientation",),
}


_TEXT = ("make", "model", "date_time_original", "lens_model")


def _value(field: str, values: Any) -> str | Fraction | int | None:
    """An exifread tag's values as the field's type; None for an empty or malformed one."""
    if field in _TEXT:
        text = values.strip().strip("\x00").strip() if isinstance(values, str) else ""
        return text or None
    first = values[0] if isinstance(values, list) and values else None
    if field in ("iso", "orientation"):
        return int(first) if isinstance(first, int) else None
    if isinstance(first, Fraction) and first.denominator and first > 0:  # exifread's Ratio is a Fraction
        return Fraction(first.numerator, first.denominator)
    if isinstance(first, int) and first > 0:
        return Fraction(first)
    return None


def read_exif(path: os.PathLike | str) -> Exif:
    """The EXIF fields of a RAW file (any format exifread reads: DNG, ARW, NEF, RW2, KDC were tried).
    A file with none, or one exifread cannot parse (a RAF), gives an empty :class:`Exif`: the
    photograph is still converted, and a debug line says so."""
    try:
        with open(path, "rb") as f:
            tags = exifread.process_file(f, details=False, extract_thumbnail=False)
    except Exception as e:  # exifread meets a damaged file with whatever its parser raises: metadata is optional
        log.debug("%s: no EXIF read (%s: %s)", path, type(e).__name__, e)
        return Exif()
    fields = {}
    for field, names in _READ.items():
        tag = next((tags[n] for n in names if n in tags), None)
        fields[field] = None if tag is None else _value(field, tag.values)
    exif = Exif(**fields)
    if exif == Exif():
        log.debug("%s: no EXIF fields", path)
    return exif


ICC_DATE = (2026, 1, 1, 0, 0, 0)  # the profile's creation date, fixed: the same RAW converts to the same bytes


@functools.cache
def srgb_icc() -> bytes:
    """The ICC profile that every output carries: LittleCMS's sRGB, through Pillow, with a fixed creation
    date (LittleCMS stamps the time it is made, which made every conversion's bytes differ) and no
    profile ID (all zeros: "not computed", as the ICC specification allows; the ID would hash the date)."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = b"".join(v.to_bytes(2, "big") for v in ICC_DATE)  # dateTimeNumber: six big-endian uint16
    icc[84:100] = bytes(16)  # profile ID
    return bytes(icc)


def _entries(exif: Exif) -> list[tuple[int, str, bool, Any]]:
    """(tag, TIFF type, whether it belongs in the Exif IFD, value) of an output's EXIF: the RAW's
    fields that it has, Orientation 1 (upright), raw2rgb as the software, sRGB."""
    iso = None if exif.iso is None else min(exif.iso, 65535)  # a SHORT; EXIF records higher speeds elsewhere
    entries = [(MAKE, "s", False, exif.make), (MODEL, "s", False, exif.model), (ORIENTATION, "H", False, UPRIGHT),
               (SOFTWARE_TAG, "s", False, SOFTWARE), (EXPOSURE_TIME, "2I", True, exif.exposure_time),
               (F_NUMBER, "2I", True, exif.f_number), (ISO, "H", True, iso),
               (DATE_TIME_ORIGINAL, "s", True, exif.date_time_original),
               (FOCAL_LENGTH, "2I", True, exif.focal_length), (LENS_MODEL, "s", True, exif.lens_model),
               (COLOR_SPACE, "H", True, SRGB)]
    # EXIF's ASCII is 7-bit: tifffile refuses anything else, Pillow writes "?" for it; both get "?"
    return [(tag, kind, in_exif, value.encode("ascii", "replace").decode() if isinstance(value, str) else value)
            for tag, kind, in_exif, value in entries if value is not None]


def pillow_exif(exif: Exif, width: int, height: int) -> Image.Exif:
    """The EXIF block of a JPEG or PNG output (Pillow's ``exif=``): IFD0 and its Exif IFD, as cameras
    write them, with the output's pixel size."""
    out = Image.Exif()
    sub = out.get_ifd(ExifTags.IFD.Exif)
    for tag, _, in_exif, value in _entries(exif):
        if isinstance(value, Fraction):
            value = TiffImagePlugin.IFDRational(value.numerator, value.denominator)
        (sub if in_exif else out)[tag] = value
    sub[PIXEL_X], sub[PIXEL_Y] = width, height
    return out


def tiff_tags(exif: Exif) -> list[tuple[int, str, int, Any, bool]]:
    """The EXIF fields of a TIFF output as tifffile ``extratags``, all in IFD0 as TIFF/EP places them
    (tifffile writes no Exif IFD; exiftool, Pillow and exifread read them there)."""
    tags = []
    for tag, kind, _, value in _entries(exif):
        if tag in (SOFTWARE_TAG, COLOR_SPACE):
            continue  # tifffile's own ``software=``; the ICC profile says sRGB
        if isinstance(value, Fraction):
            value = (value.numerator, value.denominator)
        tags.append((tag, kind, 0 if kind == "s" else 1, value, True))
    return tags
