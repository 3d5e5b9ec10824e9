"""HDF5 shards: saliency shards (written by the saliency stage) and training shards (the shards
stage: patches + saliency → shards per split), their formats and readers.

A shard ``SPLIT-NNNNN.h5`` holds ``raw`` (N, 4, h, w) uint16, ``rgb`` (N, 3, H, W) uint8,
``saliency`` (N, 1, H, W) uint8 and ``id`` (N,) strings, one sample per chunk, uncompressed; and
each sample's colour, so that a ``shards/`` folder copied alone trains and scores as the dataset
does: ``wb_as_shot`` (N, 3) and ``cam_to_rgb`` (N, 3, 3) float32 from its RAW file (NaN: the file
has none), ``wb_frame`` (N, E, 3) float32, every white-balance estimator's gains of its whole frame
(``whitebalance.ESTIMATORS``), and ``camera`` (N,) strings; and ``thumb`` (N, 4, 32, 32) uint16, its
whole frame area-downsampled (``bayer.thumbnail``, moved with the sample's augmentation), what the
generator's global colour branch sees. Attributes give the format,
normalisation, output scale, saliency method, the cache key of the stage inputs, and the sums the
``dataset`` white-balance rule is fitted from (``grey_sums``, ``grey_cells``: R, G, B plane sums
over the cells of samples without an as-shot white balance). ``index.json`` lists the shards of
each split with their counts.

Uncompressed by measurement (256 samples of 224² packed, random reads on one core): none 4,946
samples/s at 602 kB/sample; lzf 487/s at 567 kB; gzip-1 289/s at 485 kB. Sensor noise leaves
16-bit raw little to compress, and the loader must keep a GPU fed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import imagecodecs
import numpy as np

from raw2rgb.config import JsonConfig, checked
from raw2rgb.dataset import SPLITS_FILE, stage_folder
from raw2rgb.errors import ConfigError, UserError, one_line, writing
from raw2rgb.files import atomic_path, write_json
from raw2rgb.pipeline import augment, bayer, rawio, whitebalance
from raw2rgb.pipeline.bayer import THUMB_SIZE
from raw2rgb.pipeline.stage import Context, Item, ItemError, Manifest, Stage, StageResult, default_jobs, run_stage
from raw2rgb.pipeline.unpack import camera_name
from raw2rgb.pipeline.whitebalance import SampleColour, WhiteBalance

log = logging.getLogger(__name__)

SHARD_FORMAT = 2  # 2: each sample's colour (white balance, matrix, frame estimates, camera) and frame thumbnail
INDEX = "index.json"
MAX_COPIES = 64  # transformed copies per patch: memory and disk grow with each (100000 took 23 GB)
DEFAULT_SHARD_SIZE = 512


class ShardError(UserError):
    """A training shard that cannot be read; the message names the shard and the sample."""


def read_ids(f) -> list[str]:
    """The ``id`` dataset of an open shard as strings (h5py gives bytes for variable-length strings)."""
    return [s.decode() if isinstance(s, bytes) else str(s) for s in f["id"][()]]


def scene_of(sample_id: str) -> str:
    """The scene of a sample id ``SCENE/yY_xX`` (or ``SCENE/yY_xX#k``, a transformed copy)."""
    return sample_id.rsplit("/", 1)[0]


def patch_id(rel: str) -> str:
    """The sample id of a patches-stage output ``rgb/SCENE/yY_xX.png`` (or ``raw/…``): ``SCENE/yY_xX``."""
    return rel.split("/", 1)[1].rsplit(".", 1)[0]


NORMALISATION = f"raw: {bayer.normalisation_formula(16)}; rgb, saliency: 0-255"


COLOUR_DATASETS = ("wb_as_shot", "cam_to_rgb", "wb_frame")


def colour_arrays(colours: list[SampleColour], cameras: list[str]) -> dict[str, Any]:
    """The colour datasets of a shard from each sample's colour (NaN where unknown) and camera."""
    n, e = len(colours), len(whitebalance.ESTIMATORS)
    out = {"wb_as_shot": np.full((n, 3), np.nan, np.float32), "cam_to_rgb": np.full((n, 3, 3), np.nan, np.float32),
           "wb_frame": np.full((n, e, 3), np.nan, np.float32), "camera": list(cameras)}
    for i, c in enumerate(colours):
        for key, value in (("wb_as_shot", c.as_shot), ("cam_to_rgb", c.matrix), ("wb_frame", c.frame)):
            if value is not None:
                out[key][i] = value
    return out


def unknown_colours(raw: np.ndarray) -> dict[str, Any]:
    """Colour datasets for samples that are their own frames and carry no metadata (shards written
    by hand, as tests do): unknown white balance and matrix, each sample's own estimates."""
    planes = raw.astype(np.float32) / 65535.0
    return colour_arrays([SampleColour(frame=whitebalance.frame_estimates(p)) for p in planes], [""] * len(raw))


def _grey_sums(raw: np.ndarray, as_shot: np.ndarray) -> tuple[np.ndarray, int]:
    """R, G, B plane sums over the unclipped cells of the samples without an as-shot white balance,
    and the number of cells: what the ``dataset`` rule's grey world adds up over a split."""
    sums, cells = np.zeros(3), 0
    for r, known in zip(raw, np.isfinite(as_shot).all(axis=1)):
        if known:
            continue
        p = r.astype(np.float64) / 65535.0
        keep = p.max(axis=0) < whitebalance.CLIPPED
        sums += [p[0][keep].sum(), ((p[1] + p[3]) * 0.5)[keep].sum(), p[2][keep].sum()]
        cells += int(keep.sum())
    return sums, cells


def own_thumbnails(raw: np.ndarray) -> np.ndarray:
    """Thumbnails (N, 4, T, T) uint16 of samples that are their own frames (shards written by hand)."""
    return np.stack([frame_thumbnail(r) for r in raw]) if len(raw) else np.zeros((0, 4, THUMB_SIZE, THUMB_SIZE),
                                                                                np.uint16)


def frame_thumbnail(packed: np.ndarray) -> np.ndarray:
    """A frame's packed planes (4, h, w) in uint16 units → its thumbnail (4, T, T) uint16 (``bayer.thumbnail``)."""
    return np.rint(bayer.thumbnail(packed)).astype(np.uint16)


@contextlib.contextmanager
def _h5_created(tmp: Path, **kwargs: Any) -> Iterator[h5py.File]:
    """``h5py.File(tmp, "w")`` for a file whose contents are discarded when the block fails.

    A write that fails (a full disk) leaves HDF5 with data and metadata it must still flush: the
    close fails too, every h5py object then fails again as Python frees it ("Exception ignored in
    ObjectID.__dealloc__", one traceback each), and HDF5 flushes the file once more at exit, where
    it crashed (a segmentation fault). So a failed file is closed by :func:`_discard` instead.
    """
    f = h5py.File(tmp, "w", **kwargs)
    try:  # asked now: after a failed write HDF5's answer is not to be trusted (it crashed)
        fd = f.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - a driver without a descriptor: its close is tried as it is
        fd = None
    try:
        yield f
    except BaseException:
        _discard(f, tmp, fd)
        raise
    try:
        f.close()
    except BaseException:
        _discard(f, tmp, fd)
        raise


def _discard(f: h5py.File, tmp: Path, fd: int | None) -> None:
    """Close ``f`` (being written to ``tmp`` through descriptor ``fd``; the caller deletes it)
    without needing the disk: its space is freed (truncated) and what HDF5 still flushes goes to
    the null device, put in place of ``fd``, so the close, and that of every object in it, succeeds."""
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    if isinstance(fd, int) and fd >= 0 and f.id.valid:
        sink = os.open(os.devnull, os.O_RDWR)  # not a file in memory: an RLIMIT_FSIZE limits that one too
        try:
            os.dup2(sink, fd)
        finally:
            os.close(sink)
    with contextlib.suppress(Exception):
        f.close()


def _put(f: h5py.File, name: str, data: np.ndarray, **kwargs: Any) -> None:
    """Create dataset ``name`` (no timestamps), write ``data`` into it and flush it: in steps, so that
    a write that fails raises here, while the dataset's h5py object is alive in this frame, to be
    closed by :func:`_discard` (``create_dataset(data=…)`` frees it inside h5py, and HDF5 writes
    from its cache when an object is freed: on a full disk each then failed again, one "Exception
    ignored" traceback per object)."""
    dataset = f.create_dataset(name, shape=data.shape, dtype=kwargs.pop("dtype", data.dtype), track_times=False,
                               **kwargs)
    dataset[...] = data
    dataset.flush()  # a write HDF5 kept in its cache fails here, not when the object is freed


def write_shard(path: Path, ids: list[str], raw: np.ndarray, rgb: np.ndarray, saliency: np.ndarray,
                attrs: Mapping[str, Any], colours: Mapping[str, Any] | None = None,
                thumbs: np.ndarray | None = None) -> None:
    """Write one training shard atomically and byte-reproducibly (no timestamps). ``colours``: the
    datasets of :func:`colour_arrays` (default :func:`unknown_colours`); ``thumbs``: each sample's
    frame thumbnail (N, 4, T, T) uint16 (default :func:`own_thumbnails`)."""
    colours = unknown_colours(raw) if colours is None else colours
    thumbs = own_thumbnails(raw) if thumbs is None else thumbs
    sums, cells = _grey_sums(raw, np.asarray(colours["wb_as_shot"]))
    # a full disk is told by h5py in several forms, naming the temporary file: one line naming this one
    with writing(path, "training shard"), atomic_path(path) as tmp, _h5_created(tmp) as f:
        for name, data in (("raw", raw), ("rgb", rgb), ("saliency", saliency), ("thumb", thumbs)):
            _put(f, name, data, chunks=(1, *data.shape[1:]))
        _put(f, "id", np.array(ids, dtype=object), dtype=h5py.string_dtype())
        for name in COLOUR_DATASETS:
            _put(f, name, np.asarray(colours[name], np.float32))
        f["wb_frame"].attrs["estimators"] = ",".join(whitebalance.ESTIMATORS)
        _put(f, "camera", np.array(colours["camera"], dtype=object), dtype=h5py.string_dtype())
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["grey_sums"], f.attrs["grey_cells"] = sums, cells


def read_colours(f) -> tuple[list[SampleColour], list[str]]:
    """Each sample's colour and camera from an open training shard."""
    arrays = {k: f[k][()] for k in COLOUR_DATASETS}
    stored = f["wb_frame"].attrs.get("estimators", "")
    if (stored.decode() if isinstance(stored, bytes) else str(stored)) != ",".join(whitebalance.ESTIMATORS):
        raise ShardError(f"{f.filename}: frame white-balance estimates of {stored}, this raw2rgb reads "
                         f"{','.join(whitebalance.ESTIMATORS)}; rebuild them: raw2rgb prepare SRC -o DATASET "
                         "--force shards")

    def known(a: np.ndarray) -> np.ndarray | None:
        return a if np.isfinite(a).all() else None

    colours = [SampleColour(known(a), known(m), known(e))
               for a, m, e in zip(arrays["wb_as_shot"], arrays["cam_to_rgb"], arrays["wb_frame"])]
    cameras = [s.decode() if isinstance(s, bytes) else str(s) for s in f["camera"][()]]
    return colours, cameras


def read_shard(path: os.PathLike | str) -> dict[str, Any]:
    """A whole shard: arrays, ids, attributes, and each sample's colour (``colour``) and camera."""
    try:
        with h5py.File(path, "r") as f:
            out = {k: f[k][()] for k in ("raw", "rgb", "saliency", "thumb")}
            out["id"] = read_ids(f)
            out["attrs"] = dict(f.attrs)
            out["colour"], out["camera"] = read_colours(f)
            return out
    except (OSError, KeyError) as e:
        raise ShardError(f"{path}: unreadable training shard ({e})") from None


# -- saliency shards (the saliency stage's output) -------------------------------------------------
# Uncompressed: on an H100 the stage makes ~2,000 maps/s, and writing 1,024 maps of 256×192 took
# 1.34 s with gzip-1 and 0.74 s with lzf (for files 29 % and 14 % smaller) against 0.07 s plain.
SALIENCY_FORMAT = 1


def write_saliency_shard(path: Path, ids: list[str], maps: np.ndarray, method: str, weights_sha256: str) -> None:
    """Write one saliency shard atomically (and byte-reproducibly: no timestamps)."""
    n, h, w = maps.shape
    with writing(path, "saliency shard"), atomic_path(path) as tmp, _h5_created(tmp, track_order=False) as f:
        _put(f, "saliency", maps, chunks=(1, h, w))
        _put(f, "id", np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.attrs["format"] = SALIENCY_FORMAT
        f.attrs["method"] = method
        f.attrs["weights_sha256"] = weights_sha256


@dataclass
class SaliencyShard:
    ids: list[str]
    maps: np.ndarray  # (N, H, W) uint8
    method: str
    weights_sha256: str


def read_saliency_shard(path: os.PathLike | str) -> SaliencyShard:
    """Read a whole saliency shard."""
    with h5py.File(path, "r") as f:
        ids = read_ids(f)
        return SaliencyShard(ids, f["saliency"][()], str(f.attrs["method"]),
                             str(f.attrs["weights_sha256"]))



def _sample_seed(seed: int, sample_id: str, copy: int) -> list[int]:
    digest = hashlib.sha256(sample_id.encode()).digest()
    return [seed, int.from_bytes(digest[:8], "big"), copy]


def read_frame(packed_png: str, sidecar: str) -> tuple[SampleColour, str, np.ndarray]:
    """The colour of an unpacked frame (its RAW file's as-shot white balance and matrix, every
    estimator's gains of the whole frame), its camera and its thumbnail, from the unpack stage's PNG
    and sidecar."""
    try:
        frame = json.loads(Path(sidecar).read_text())["frame"]
        packed = rawio.read_packed_png(packed_png)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ItemError(f"{sidecar}: unreadable unpacked frame ({one_line(str(e))})") from None
    planes = packed.astype(np.float32) / np.float32(np.iinfo(packed.dtype).max)
    thumb = frame_thumbnail(planes * 65535.0)
    return (SampleColour.of_frame(planes, frame.get("wb_gains"), frame.get("cam_to_rgb")), camera_name(frame),
            thumb)


def shard_item(item: Item, ctx: Context) -> tuple[list[str], dict]:
    """Stage work: load a group of patches, their saliency and their frames' colour, write ``K``
    copies each."""
    ids: list[str] = item.payload["ids"]
    scenes: list[str] = item.payload["scenes"]
    n, end = len(ids), len(item.inputs) - 2 * len(scenes)
    raw_paths, rgb_paths = item.inputs[:n], item.inputs[n : 2 * n]
    sal_paths, frame_paths = item.inputs[2 * n : end], item.inputs[end:]
    frames = {scene: read_frame(frame_paths[2 * i], frame_paths[2 * i + 1]) for i, scene in enumerate(scenes)}
    p = ctx.params
    maps: dict[str, np.ndarray] = {}
    wanted = set(ids)
    for sp in sal_paths:
        s = read_saliency_shard(sp)
        maps.update((i, m) for i, m in zip(s.ids, s.maps) if i in wanted)
    out_ids, raws, rgbs, sals, colours, cameras, thumbs = [], [], [], [], [], [], []
    for sid, rp, gp in zip(ids, raw_paths, rgb_paths):
        if sid not in maps:
            raise ItemError(f"{gp}: no saliency map for {sid}")
        raw = rawio.read_packed_png(rp)
        rgb = _read_png(gp)
        size = raw.shape[1]
        for k in range(p["copies"]):
            rng = np.random.default_rng(_sample_seed(p["seed"], sid, k))
            if k == 0:  # the patch itself (cropped when copies must share a smaller size)
                crop = p["crop"]
                t = augment.Transform(crop=None if crop == size else
                                      (int(rng.integers(size - crop + 1)), int(rng.integers(size - crop + 1)), crop))
            else:
                t = augment.random_transform(rng, raw.shape[1:], p["crop"])
            r, g, s = augment.apply(raw, rgb, maps[sid], t, p["scale"])
            raws.append(r)
            rgbs.append(np.moveaxis(_to_uint8(g), 2, 0))
            sals.append(_to_uint8(s)[None])
            out_ids.append(sid if p["copies"] == 1 else f"{sid}#{k}")
            colour, camera, thumb = frames[scene_of(sid)]
            colours.append(colour)
            cameras.append(camera)
            thumbs.append(bayer.move_thumbnail(thumb, t.flip_h, t.flip_v, t.transpose))
    name = f"{item.key}.h5"
    attrs = {"format": SHARD_FORMAT, "normalisation": NORMALISATION, "scale": p["scale"],
             "saliency_method": p["saliency_method"], "split": item.payload["split"],
             "inputs_key": hashlib.sha256(json.dumps(sorted(ctx.hashes.values())).encode()).hexdigest()}
    write_shard(ctx.out_dir / name, out_ids, np.stack(raws), np.stack(rgbs), np.stack(sals), attrs,
                colour_arrays(colours, cameras), np.stack(thumbs))
    return [name], {"count": len(out_ids), "split": item.payload["split"]}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.uint8 else np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _read_png(path: str) -> np.ndarray:
    try:
        return imagecodecs.png_decode(Path(path).read_bytes())
    except Exception as e:  # noqa: BLE001
        raise ItemError(f"{path}: unreadable patch ({one_line(str(e))})") from None


SHARDS = Stage("shards", 3, shard_item)  # 2: each sample's colour; 3: its frame's thumbnail


def build(samples: list[tuple[str, str, str, str]], saliency_shards: dict[str, str], out_dir: os.PathLike | str,
          frames: Mapping[str, tuple[str, str]], *, scale: int = 1, copies: int = 1, crop: int | None = None,
          seed: int = 0, saliency_method: str = "", shard_size: int = DEFAULT_SHARD_SIZE, jobs: int = 1,
          force: bool = False, progress=None, binning: int = 1, split_how: str | None = None) -> StageResult:
    """Run the shards stage and write ``index.json``.

    Args:
        samples: (id, split, raw patch path, rgb patch path), sorted or not.
        saliency_shards: id -> the saliency shard holding its map.
        frames: scene -> its unpacked frame (packed PNG, sidecar): each sample's colour comes from
            its RAW file's metadata and from estimates over the whole frame.
        crop: patch size in the shards; default the patch size for ``copies == 1``, else the
            largest multiple of 8 below it (a flip's re-crop costs one packed pixel).
        binning: by how much the RAW frames were binned to meet smaller targets (recorded in the index:
            a model trained on them converts frames binned alike).
        split_how: how the splits were made, for the index (by scene, or a held-out band of each frame).
    """
    out_dir = Path(out_dir)
    if copies < 1:
        raise ShardError("copies must be at least 1")
    samples = sorted(samples, key=lambda s: (s[1], s[0]))
    if not samples:
        raise ShardError(f"{out_dir}: no patches to write (no patch was kept)")
    first = imagecodecs.png_decode(Path(samples[0][2]).read_bytes())
    size = first.shape[0]
    if crop is None:
        crop = size if copies == 1 else (size - 1) // 8 * 8
    if crop > size or (copies > 1 and crop > size - 1):
        raise ShardError(f"crop {crop} does not fit patches of {size} (transformed copies lose one pixel)")
    missing = sorted({scene_of(s[0]) for s in samples} - set(frames))
    if missing:
        raise ShardError(f"{out_dir}: no unpacked frame for {missing[0]}"
                         f"{f' and {len(missing) - 1} other scenes' if len(missing) > 1 else ''} (the shards "
                         "stage reads each sample's colour from DATASET/unpack; run raw2rgb prepare)")
    items = []
    for split in sorted({s[1] for s in samples}):
        group = [s for s in samples if s[1] == split]
        for n, start in enumerate(range(0, len(group), shard_size)):
            chunk = group[start : start + shard_size]
            ids = [s[0] for s in chunk]
            sal = sorted({saliency_shards[i] for i in ids if i in saliency_shards})
            scenes = sorted({scene_of(i) for i in ids})
            frame_files = [f for scene in scenes for f in frames[scene]]
            items.append(Item(f"{split}-{n:05d}",
                              tuple([s[2] for s in chunk] + [s[3] for s in chunk] + sal + frame_files),
                              {"ids": ids, "split": split, "scenes": scenes}))
    params = {"scale": scale, "copies": copies, "crop": crop, "seed": seed, "saliency_method": saliency_method,
              "shard_size": shard_size}
    result = run_stage(SHARDS, items, out_dir, params, jobs=jobs, force=force, progress=progress)
    files: dict[str, list[ShardFile]] = {}
    for r in sorted(result.manifest.ok, key=lambda r: r.key):
        files.setdefault(r.info["split"], []).append(ShardFile(next(iter(r.outputs)), r.info["count"]))
    splits = {name: SplitIndex(sum(s.count for s in shards), tuple(shards)) for name, shards in files.items()}
    write_index(out_dir, ShardIndex(SHARD_FORMAT, scale, splits, crop=crop, copies=copies,
                                    normalisation=NORMALISATION, saliency_method=saliency_method,
                                    binning=binning, split=split_how))
    return result


def frames_of(unpack_dir: os.PathLike | str) -> dict[str, tuple[str, str]]:
    """scene -> (packed PNG, sidecar) of every frame the unpack stage wrote."""
    root = Path(unpack_dir)
    manifest = Manifest.load(root)
    if manifest is None:
        return {}
    return {r.key: (str(root / f"{r.key}.png"), str(root / f"{r.key}.json")) for r in manifest.ok
            if (root / f"{r.key}.png").is_file() and (root / f"{r.key}.json").is_file()}


def samples_from(patches_dir: Path, saliency_dir: Path, splits: Mapping[str, str],
                 patch_splits: Mapping[str, str | None] | None = None
                 ) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    """(id, split, raw path, rgb path) of every kept patch, from the patches stage's manifest, and
    id -> saliency shard, from the saliency shards. A patch's split is its scene's in ``splits``, or
    its own in ``patch_splits`` (a held-out band) where that names it; a patch it maps to None is
    left out. Manifest paths are never followed outside their stage folder."""
    manifest = Manifest.load(patches_dir)
    if manifest is None:
        raise ShardError(f"{patches_dir}: no manifest.json (run the patches stage first)")
    root = patches_dir.resolve()
    samples = []
    for r in manifest.ok:
        for rel in r.outputs:
            if not rel.startswith("rgb/"):
                continue
            rgb, raw = root / rel, root / "raw" / rel.split("/", 1)[1]
            if not (rgb.resolve().is_relative_to(root) and raw.resolve().is_relative_to(root)):
                raise ShardError(f"{patches_dir}/manifest.json: {rel} points outside the folder; refused")
            sid = patch_id(rel)
            if patch_splits and sid in patch_splits:
                if patch_splits[sid] is not None:
                    samples.append((sid, str(patch_splits[sid]), str(raw), str(rgb)))
            else:
                samples.append((sid, splits.get(r.key, "train"), str(raw), str(rgb)))
    owners: dict[str, str] = {}
    for shard in sorted(Path(saliency_dir).glob("saliency-*.h5")):
        for sid in read_saliency_shard(shard).ids:
            owners[sid] = str(shard)
    return samples, owners


# -- reading a shards folder -----------------------------------------------------------------------

def shards_root(path: os.PathLike | str) -> Path:
    """The shards folder of ``path``: ``path`` itself or, for a prepare DATASET, its ``shards/``."""
    folder = stage_folder(path, "shards")
    return folder if (folder / INDEX).is_file() else Path(path)


@dataclass(frozen=True)
class ShardFile:
    """One shard of a split: its file name inside the shards folder and how many samples it holds."""

    file: str
    count: int


@dataclass(frozen=True)
class SplitIndex:
    count: int
    shards: tuple[ShardFile, ...]


@dataclass(frozen=True)
class ShardIndex:
    """``index.json`` of a shards folder, typed: the one reader and writer of that file.

    ``scale``: output pixels per packed pixel; ``crop``: the stored patches' side in packed pixels;
    ``copies``: transformed copies per patch; ``normalisation``: how values are stored (``NORMALISATION``);
    ``saliency_method``: how the saliency maps were made; ``binning``: by how much the frames were
    binned to the targets' resolution; ``split``: how the splits were made. An index from before a
    key holds None.
    """

    format: int
    scale: int
    splits: dict[str, SplitIndex]
    crop: int | None = None
    copies: int | None = None
    normalisation: str | None = None
    saliency_method: str | None = None
    binning: int | None = None  # the RAW frames binned by this to meet smaller targets (None: an older index, 1)
    split: str | None = None  # how the splits were made

    def count(self, split: str) -> int:
        """The samples of ``split`` (0 when the folder has no such split)."""
        entry = self.splits.get(split)
        return entry.count if entry is not None else 0

    def files(self, splits: tuple[str, ...] | None = None) -> list[str]:
        """The shard files of ``splits`` (all by default), split by split in name order."""
        return [s.file for name in sorted(self.splits) if splits is None or name in splits
                for s in self.splits[name].shards]

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``index.json`` (keys absent from the index that was read stay absent)."""
        head = {"format": self.format, "scale": self.scale, "crop": self.crop, "copies": self.copies,
                "normalisation": self.normalisation, "saliency_method": self.saliency_method,
                "binning": self.binning, "split": self.split}
        return {**{k: v for k, v in head.items() if v is not None},
                "splits": {name: {"count": e.count, "shards": [{"file": s.file, "count": s.count} for s in e.shards]}
                           for name, e in self.splits.items()}}

    @classmethod
    def from_json(cls, data: Any, where: os.PathLike | str) -> ShardIndex:
        """Check and type a parsed ``index.json`` (``where`` names it in errors).

        Raises:
            ShardError: another format, or a malformed entry.
        """
        if isinstance(data, dict) and data.get("format") == 1:
            raise ShardError(f"{Path(where).parent}: training shards of format 1 carry no colour (white balance, "
                             "matrix); rebuild them: raw2rgb prepare SRC -o DATASET --force shards")
        if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT or "splits" not in data:
            raise ShardError(f"{where}: shard format {data.get('format') if isinstance(data, dict) else '?'}, "
                             f"this raw2rgb reads format {SHARD_FORMAT}")
        try:
            splits = {str(name): SplitIndex(int(e["count"]), tuple(ShardFile(str(s["file"]), int(s["count"]))
                                                                   for s in e["shards"]))
                      for name, e in data["splits"].items()}
            optional = {k: data.get(k) for k in ("crop", "copies", "binning")}
            return cls(int(data["format"]), int(data["scale"]), splits,
                       **{k: None if v is None else int(v) for k, v in optional.items()},
                       normalisation=data.get("normalisation"), saliency_method=data.get("saliency_method"),
                       split=data.get("split"))
        except KeyError as e:
            raise ShardError(f"{where}: malformed shard index (no {e})") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ShardError(f"{where}: malformed shard index ({one_line(str(e))})") from None


def read_index(root: os.PathLike | str) -> ShardIndex:
    """``index.json`` of a shards folder, checked: format, scale, every shard inside the folder, and
    every shard against the format (:func:`check_shards`, from metadata). The one way a reader
    (``ShardDataset``, inspect, train, evaluate, profile fit, report) opens a shards folder, so that
    none can skip the check: a float ``raw`` or a missing ``wb_frame`` is one line naming the shard
    here, not a TypeError or KeyError deep in the first reader that touches it. Checked once per
    process while the files are unchanged.

    Raises:
        ShardError: missing, unreadable, of another format, naming files outside the folder, or a
            shard that does not hold what the format stores.
    """
    root = Path(root)
    index = _read_index_file(root)
    _checked(root, index)
    return index


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


_CHECKED: dict[tuple, tuple[int, int] | None] = {}  # (folder, stat of its index and shards) → check_shards'
_CHECKED_MAX = 16


def _checked(root: Path, index: ShardIndex) -> tuple[int, int] | None:
    """:func:`check_shards`, once per process while the folder's index and shards keep their stat (train
    and evaluate read the index several times); a refusal is not kept: it is raised again next time."""
    try:
        key = (str(root), tuple((name, *_stat(root / name)) for name in (INDEX, *index.files())))
    except OSError:  # a shard gone or unreadable: the check says which
        return check_shards(root, index)
    if key not in _CHECKED:
        size = check_shards(root, index)
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.pop(next(iter(_CHECKED)))
        _CHECKED[key] = size
    return _CHECKED[key]


def _read_index_file(root: Path) -> ShardIndex:
    """``index.json`` alone, checked (format, files inside the folder); its shards unopened."""
    try:
        data = json.loads((root / INDEX).read_text())
    except FileNotFoundError:
        raise ShardError(f"{root}: no {INDEX} (not a shards folder; build one with raw2rgb prepare)") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ShardError(f"{root / INDEX}: unreadable shard index ({one_line(str(e))})") from None
    index = ShardIndex.from_json(data, root / INDEX)
    for file in index.files():
        if not (root / file).resolve().is_relative_to(root.resolve()):
            raise ShardError(f"{root / INDEX}: {file} lies outside the folder; refused")
    return index


def write_index(root: os.PathLike | str, index: ShardIndex) -> None:
    write_json(Path(root) / INDEX, index.to_json())


STORED_DTYPES = {"raw": np.uint16, "rgb": np.uint8, "saliency": np.uint8, "thumb": np.uint16, "wb_as_shot": np.float32,
                 "cam_to_rgb": np.float32, "wb_frame": np.float32}


def validate(root: os.PathLike | str, index: ShardIndex | None = None) -> tuple[int, int]:
    """:func:`check_shards` of a folder that must hold samples; returns (h, w) of its samples.

    Raises:
        ShardError: naming the shard and what is wrong, or a folder without shards.
    """
    root = Path(root)
    size = _checked(root, index if index is not None else _read_index_file(root))
    if size is None:
        raise ShardError(f"{root}: no shards")
    return size


REQUIRED = ("raw", "rgb", "saliency", "thumb", "id", *COLOUR_DATASETS, "camera")  # the datasets of a shard


def check_shards(root: os.PathLike | str, index: ShardIndex) -> tuple[int, int] | None:
    """Check every training shard of a shards folder against the format, from its metadata (no sample
    is read): the datasets, their dtypes, shapes (raw (N, 4, h, w), rgb (N, 3, s·h, s·w), saliency
    (N, 1, s·h, s·w), one h, w across shards) and the counts of ``index.json``. :func:`read_index`
    runs it for every reader; returns (h, w), None for a folder without shards (each reader says
    which split it needed).

    Raises:
        ShardError: naming the shard and what is wrong.
    """
    root = Path(root)
    scale = index.scale
    size: tuple[int, int] | None = None
    for split in sorted(index.splits):
        for entry in index.splits[split].shards:
            path = root / entry.file
            try:
                with h5py.File(path, "r") as f:
                    if "thumb" not in f:
                        raise ShardError(f"{path}: no frame thumbnails (shards of an earlier development version of "
                                         "format 2); rebuild them: raw2rgb prepare SRC -o DATASET --force shards")
                    missing = [k for k in REQUIRED if not isinstance(f.get(k), h5py.Dataset)]
                    if missing:
                        raise ShardError(f"{path}: no {', '.join(missing)} dataset, the format stores it; rebuild "
                                         "the shards: raw2rgb prepare SRC -o DATASET --force shards")
                    shapes = {k: tuple(f[k].shape) for k in REQUIRED}
                    dtypes = {k: f[k].dtype for k in STORED_DTYPES}
            except (OSError, KeyError) as e:
                raise ShardError(f"{path}: unreadable training shard ({one_line(str(e))})") from None
            for k, want in STORED_DTYPES.items():
                if dtypes[k] != want:
                    raise ShardError(f"{path}: {k} is {dtypes[k]}, the format stores {np.dtype(want).name}")
            n, c, h, w = shapes["raw"] if len(shapes["raw"]) == 4 else (None, None, None, None)
            if c != 4:
                raise ShardError(f"{path}: raw has shape {shapes['raw']}, the format stores (N, 4, h, w)")
            for k, ch in (("rgb", 3), ("saliency", 1)):
                if shapes[k] != (n, ch, scale * h, scale * w):
                    raise ShardError(f"{path}: {k} has shape {shapes[k]}, the raw {shapes['raw']} at scale {scale} "
                                     f"needs {(n, ch, scale * h, scale * w)}")
            e = len(whitebalance.ESTIMATORS)
            for k, want in (("wb_as_shot", (n, 3)), ("cam_to_rgb", (n, 3, 3)), ("wb_frame", (n, e, 3)),
                            ("camera", (n,)), ("thumb", (n, 4, THUMB_SIZE, THUMB_SIZE))):
                if shapes[k] != want:
                    raise ShardError(f"{path}: {k} has shape {shapes[k]}, the format stores {want}")
            if shapes["id"] != (n,) or n != entry.count:
                raise ShardError(f"{path}: {n} samples and {shapes['id'][0]} ids, index.json says {entry.count}")
            if size is not None and (h, w) != size:
                raise ShardError(f"{path}: samples of {h}×{w}, other shards hold {size[0]}×{size[1]}")
            size = (h, w)
    return size


def dataset_key(root: os.PathLike | str) -> str:
    """A fingerprint of a shards folder from what its shards record (each shard's ``inputs_key``
    and ``index.json``), never re-hashing the shards' bytes."""
    root = Path(root)
    keys = []
    for file in read_index(root).files():
        try:
            with h5py.File(root / file, "r") as f:
                keys.append(f"{file}:{f.attrs.get('inputs_key', '')}:{f['raw'].shape[0]}")
        except (OSError, KeyError) as e:
            raise ShardError(f"{root / file}: unreadable training shard ({e})") from None
    # the index as it is on disk, so that a dataset keeps its key across raw2rgb versions
    blob = json.dumps({"index": json.loads((root / INDEX).read_text()), "shards": keys}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class ShardsConfig(JsonConfig):
    """How ``raw2rgb shards`` writes the training shards (its options; ``prepare`` sets the same from
    its own config)."""

    scale: int = checked(1, choices=(1, 2), help="Target at packed (1) or sensor (2) size.")
    copies: int = checked(1, min=1, max=MAX_COPIES, metavar="K", help="Transformed copies per patch.")
    crop: int | None = checked(None, min=8, metavar="C", help="Patch size in the shards [default: the patch size; "
                               "with --copies > 1 the largest multiple of 8 below it].")
    seed: int = checked(0, min=0, help="Random seed (the transformed copies).")
    shard_size: int = checked(DEFAULT_SHARD_SIZE, min=1, metavar="N", help="Patches per shard.")


def build_from_stages(patches_dir: os.PathLike | str, saliency_dir: os.PathLike | str, out_dir: os.PathLike | str,
                      splits_file: os.PathLike | str | None = None, unpack_dir: os.PathLike | str | None = None,
                      cfg: ShardsConfig = ShardsConfig(), **kwargs: Any) -> StageResult:
    """The shards stage on its own (``raw2rgb shards``): patches, saliency and unpack folders of
    ``prepare`` → training shards, written as ``cfg`` says.

    ``splits_file`` defaults to ``splits.json`` beside the patches folder; without one every
    patch goes to ``train``. ``unpack_dir`` defaults to ``unpack/`` beside the patches folder.
    Other arguments (jobs — None: min(4, cores) —, force, progress) as :func:`build`."""
    kwargs["jobs"] = kwargs.get("jobs") or default_jobs()
    patches_dir, saliency_dir = Path(patches_dir), Path(saliency_dir)
    dataset = patches_dir.parent  # the stages' folders lie side by side in a prepare DATASET
    splits_path = Path(splits_file) if splits_file else dataset / SPLITS_FILE
    recorded = json.loads(splits_path.read_text()) if splits_path.is_file() else {}
    splits = recorded.get("scenes", {})
    sal = Manifest.load(saliency_dir)
    samples, owners = samples_from(patches_dir, saliency_dir, splits, recorded.get("patches"))
    method = sal.params.get("method", "") if sal else ""
    frames = frames_of(unpack_dir if unpack_dir is not None else stage_folder(dataset, "unpack"))
    return build(samples, owners, out_dir, frames, saliency_method=method, **dataclasses.asdict(cfg), **kwargs)


# -- colour of a shards folder ---------------------------------------------------------------------

def _shard_files(root: Path, index: ShardIndex, splits: tuple[str, ...] | None = None) -> list[Path]:
    return [root / file for file in index.files(splits)]


def white_balance(root: os.PathLike | str, rule: str | WhiteBalance = whitebalance.DEFAULT_RULE,
                  index: ShardIndex | None = None) -> WhiteBalance:
    """A white-balance rule made usable on a shards folder: for ``dataset``, its gains — grey world
    over the train split's samples without metadata (over every split when train has none), from
    the sums each shard records. A :class:`WhiteBalance` that has its gains is returned as it is
    (a profile's or a model's: fitted elsewhere, applied here).

    Raises:
        ConfigError: an unknown rule.
        ShardError: an unreadable shard.
    """
    wb = rule if isinstance(rule, WhiteBalance) else WhiteBalance(whitebalance.check_rule(rule))
    whitebalance.check_rule(wb.rule)
    if wb.rule != "dataset" or wb.gains is not None:
        return wb
    root = Path(root)
    index = index if index is not None else read_index(root)
    for splits in (("train",), None):
        sums, cells = np.zeros(3), 0
        for path in _shard_files(root, index, splits):
            try:
                with h5py.File(path, "r") as f:
                    sums += np.asarray(f.attrs["grey_sums"], np.float64)
                    cells += int(f.attrs["grey_cells"])
            except (OSError, KeyError) as e:
                raise ShardError(f"{path}: unreadable training shard ({one_line(str(e))})") from None
        if cells:
            gains = whitebalance.grey_world_gains(sums, cells)
            try:
                return WhiteBalance("dataset", gains)
            except ConfigError as e:  # a grey world this far from grey is no white balance: say so, and what to use
                raise ShardError(f"{root}: the dataset white-balance rule's grey world gives gains "
                                 f"{', '.join(f'{g:.3g}' for g in gains)} ({e}); use a frame-* rule") from None
    return wb


def colour_source(root: os.PathLike | str, index: ShardIndex | None = None) -> dict[str, Any]:
    """Where a shards folder's colour comes from, as a run records it in its identity: the shards
    themselves (format), how many samples carry an as-shot white balance, and the ``dataset``
    rule's gains. In words: ``model/run.py``'s ``colour_words``."""
    root = Path(root)
    index = index if index is not None else read_index(root)
    known = total = 0
    for path in _shard_files(root, index):
        try:
            with h5py.File(path, "r") as f:
                known += int(np.isfinite(f["wb_as_shot"][()]).all(axis=1).sum())
                total += int(f["wb_as_shot"].shape[0])
        except (OSError, KeyError) as e:
            raise ShardError(f"{path}: unreadable training shard ({one_line(str(e))})") from None
    gains = white_balance(root, "dataset", index).gains
    return {"stored": f"shards (format {SHARD_FORMAT})", "samples": total, "as_shot": known,
            "dataset_gains": None if gains is None else [round(g, 6) for g in gains]}


def cameras(root: os.PathLike | str, index: ShardIndex | None = None) -> list[str]:
    """The cameras ("make model") of a shards folder's samples (none where unknown)."""
    root = Path(root)
    index = index if index is not None else read_index(root)
    names: set[str] = set()
    for path in _shard_files(root, index):
        try:
            with h5py.File(path, "r") as f:
                names.update(s.decode() if isinstance(s, bytes) else str(s) for s in f["camera"][()])
        except (OSError, KeyError) as e:
            raise ShardError(f"{path}: unreadable training shard ({one_line(str(e))})") from None
    return sorted(names - {""})
