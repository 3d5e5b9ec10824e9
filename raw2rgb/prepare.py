"""`raw2rgb prepare`: a paired dataset from a source folder, as a chain of cached stages.

    SRC ──unpack──▶ DATASET/unpack ──patches──▶ DATASET/patches ──saliency──▶ DATASET/saliency
                                                       └──────────────────┴──shards──▶ DATASET/shards

Each stage is a folder with its manifest (see ``pipeline/stage.py``); a rerun redoes only what
changed, so changing one stage's params redoes that stage and, through their inputs, the stages
after it. Splits are by scene (no scene is in two splits), as near the ratios asked for as whole
scenes allow, placed by a hash of the seed and the scene name; a rerun keeps each scene's split
(``assign_splits``). ``prepare.json``, ``source.json``, ``splits.json`` and
``summary.json`` in DATASET say what was done; a DATASET is built from one SRC (another is refused
unless asked to replace it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raw2rgb.config import JsonConfig, checked
from raw2rgb.dataset import PREPARE, SOURCE, SPLITS, SPLITS_FILE, STAGES, SUMMARY, stage_folder
from raw2rgb.device import device_field, resolve_device
from raw2rgb.errors import InputError
from raw2rgb.files import FolderLock, write_json
from raw2rgb.pipeline import pairs as pairs_mod
from raw2rgb.pipeline import rawio, shards
from raw2rgb.pipeline import unpack as unpack_stage
from raw2rgb.pipeline.pairs import PairError
from raw2rgb.pipeline.shards import patch_id
from raw2rgb.pipeline.stage import Item, Stage, StageResult, default_jobs, distributed, remove_outputs, run_stage
from raw2rgb.salgan.methods import SALIENCY_METHODS, resolve_method

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig(JsonConfig):
    """Everything ``prepare`` does; saved resolved (:func:`resolve`) as DATASET/prepare.json. Its
    fields are ``raw2rgb prepare``'s options."""

    src: str = checked(option=False)  # prepare's arguments
    out: str = checked(option=False)
    # Source
    layout: str = checked("auto", choices=pairs_mod.LAYOUTS,
                          help="How SRC is organised (docs/data.md: layouts):")
    pairs_csv: str | None = checked(None, metavar="CSV",
                                    help="pairs layout: a CSV with columns raw,rgb[,scene], paths inside SRC.")
    zrr_levels: str = rawio.zrr_levels_field()
    # Patches
    patch: pairs_mod.PatchParams = field(default_factory=pairs_mod.PatchParams)
    min_inliers: int = checked(25, min=4, metavar="N", help="Feature matches that must agree on a homography.")
    # Shards
    scale: int | None = checked(None, choices=(1, 2), help="Shards: target at packed resolution (1, the paper) or "
                                "full sensor resolution (2) [default: the layout's; convert writes full-resolution "
                                "photos].")
    # memory and disk grow with each copy (100000 took 23 GB before writing anything)
    copies: int = checked(1, min=1, max=shards.MAX_COPIES, metavar="K",
                          help="Shards: K Bayer-safe transformed copies per patch (1: none; 8 holds every flip and "
                               "transpose).")
    crop: int | None = checked(None, min=8, metavar="C", help="Shards: patch size [default: the patch size; with "
                               "--copies > 1 the largest multiple of 8 below it].")
    # Splits
    split: tuple[float, float, float] = checked((0.9, 0.1, 0.0), min=0, rule=(lambda r: sum(r) > 0, "a sum above 0"),
                                                metavar="TR,VA,TE", help="Split ratios by scene.")
    seed: int = checked(0, min=0, help="Random seed (splits, augmentation).")
    # Saliency
    saliency_method: str = checked("auto", choices=SALIENCY_METHODS, help="How to compute the maps:")
    weights: str | None = checked(None, metavar="PT", help="SalGAN weights (see raw2rgb saliency --help).")
    device: str = device_field()
    batch_size: int = checked(8, min=1, metavar="N", help="Saliency batch size.")
    jobs: int | None = checked(None, min=1, option=False)  # the CLI's -j; None: min(4, cores)


def _hash_position(scene: str, seed: int) -> float:
    """A scene's place in [0, 1): a hash of (seed, scene)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{scene}".encode()).digest()[:8], "big") / 2**64


def _quotas(n: int, ratios: tuple[float, float, float]) -> dict[str, int]:
    """Whole scenes per split, as near the ratios as whole scenes allow (largest remainders)."""
    exact = [n * r / sum(ratios) for r in ratios]
    counts = [int(e) for e in exact]
    for i in sorted(range(3), key=lambda i: exact[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(SPLITS, counts))


def assign_splits(scenes: dict[str, str | None], seed: int, ratios: tuple[float, float, float],
                  previous: dict[str, str] | None = None) -> dict[str, str]:
    """scene → split, by scene (never by patch). A scene the source places (ZRR's test folder) keeps
    its split; the others get the fractions asked for as near as whole scenes allow. Each scene's
    place comes from a hash of (seed, scene); scenes recorded in ``previous`` (the last run's
    splits, same seed and ratios) keep their split while its share has room, so adding scenes moves
    none of the others unless a share shrinks by the rounding (one scene at most)."""
    out = {s: f for s, f in scenes.items() if f}
    free = sorted((s for s, f in scenes.items() if not f), key=lambda s: _hash_position(s, seed))
    room = _quotas(len(free), ratios)
    rest = []
    for s in free:
        kept = (previous or {}).get(s)
        if kept in room and room[kept] > 0:
            out[s] = kept
            room[kept] -= 1
        else:
            rest.append(s)
    edges = np.cumsum(ratios) / sum(ratios)
    for s in rest:  # the split whose share of [0, 1) holds the scene, if it has room; else the roomiest
        wanted = SPLITS[min(int(np.searchsorted(edges, _hash_position(s, seed), side="right")), 2)]
        chosen = wanted if room[wanted] > 0 else max(SPLITS, key=lambda k: room[k])
        out[s] = chosen
        room[chosen] -= 1
    return out


# -- a held-out band, for shoots of too few frames to split by scene ------------------------------------

BAND = (0.25, 0.5)  # the held-out band's share of each frame's width: at least, at most


def needs_band(scenes: dict[str, str | None], ratios: tuple[float, float, float]) -> bool:
    """Whether the scenes are too few to split by scene: a split asked for (its ratio above 0), or
    train, would get no scene. A photographer's first try is one to five frames."""
    free = [s for s, f in scenes.items() if not f]
    if not free:
        return False
    room = _quotas(len(free), ratios)
    return room["train"] == 0 or any(r > 0 and room[k] == 0 for k, r in zip(SPLITS, ratios))


def _bandable(records, size: int) -> bool:
    """Whether some frame is wide enough for train patches, a gap of one patch and a held-out band (a
    dataset of single-patch crops, ZRR's, is not: its splits stay by scene)."""
    return any(r.info.get("packed_size") and r.info["packed_size"][1] >= 4 * size for r in records)


def band_splits(records, size: int, ratios: tuple[float, float, float]) -> tuple[dict[str, str | None], str]:
    """patch id → split when frames are held out in part: the right-hand band of each frame (the
    share of val + test, between 25 and 50 % of its width, starting on the patch grid) is held out,
    its top half for val and its bottom half for test; the column of patches just left of it is
    left out (None), so that no train patch comes within one patch of a held-out one. Also a line
    saying how the split was made.

    Args:
        records: the patches stage's records (kept patches' ids and positions, the binned frame's size).
        size: the patches' side, packed pixels.
    """
    share = min(BAND[1], max(BAND[0], (ratios[1] + ratios[2]) / sum(ratios)))
    out: dict[str, str | None] = {}
    for r in records:
        h, w = r.info["packed_size"]
        cut = w * (1 - share)
        starts = sorted({p["x"] for p in r.info["patches"]})
        band = next((x for x in starts if x >= cut), None)
        if band is None or band - 2 * size < 0:  # too narrow for a patch, a gap and a band: all of it trains
            band = w + 2 * size
        middle = h / 2
        for p in r.info["patches"]:
            if p.get("reason"):
                continue
            pid = f"{r.key}/{p['id']}"
            if p["x"] >= band:
                out[pid] = "val" if p["y"] + size / 2 <= middle else "test"
            elif p["x"] + size <= band - size:
                out[pid] = "train"
            else:
                out[pid] = None  # within one patch of the band
    line = (f"held-out band: too few scenes to split by scene, so the right-hand {share:.0%} of each frame is held "
            "out (its top half val, its bottom half test), one patch apart from any train patch")
    return out, line


@dataclass
class PrepareResult:
    stages: dict[str, StageResult]
    summary: dict[str, Any]

    def problems(self) -> list[str]:
        out = list(self.summary["unpaired"])
        for r in self.stages.values():
            out += r.problems()
        return out


# 3: OpenCV alignment with directional refinement; 4: a target smaller than the sensor is never enlarged (binning)
PATCHES = Stage("patches", 4, pairs_mod.patch_item)


def check(cfg: PrepareConfig) -> None:
    """Refuse, before any work, options whose shards training could not use, a pairs CSV that is not
    there, and a device that is not there (the saliency stage needs it only after unpack and patches
    ran). ``run`` and ``--dry-run`` (:func:`plan`) both call it on the :func:`resolve`-d config, so a
    plan that is printed is one the run accepts.

    Raises:
        InputError: a shard size the generator cannot take (a multiple of 8 is needed); no such CSV.
        DeviceError: an unknown device, or CUDA where there is none.
    """
    if cfg.patch.size is None:
        raise ValueError("prepare.check takes a resolved config (prepare.resolve)")
    if not (distributed() and cfg.device.startswith("cuda")):  # a cluster's workers pick their own GPUs
        resolve_device(cfg.device)
    if cfg.pairs_csv is not None and not Path(cfg.pairs_csv).is_file():
        raise InputError(f"{cfg.pairs_csv}: no such CSV file (--pairs-csv)")
    size = cfg.crop or (cfg.patch.size if cfg.copies == 1 else (cfg.patch.size - 1) // 8 * 8)
    if size % 8 or size < 8:
        hint = f", e.g. --crop {size // 8 * 8}" if size > 8 else ""
        raise InputError(f"shard patches of {size} packed pixels: the generator needs a multiple of 8 (choose "
                         f"--patch-size or --crop accordingly{hint})")
    if cfg.crop and cfg.crop > cfg.patch.size - (cfg.copies > 1):
        raise InputError(f"--crop {cfg.crop} does not fit patches of {cfg.patch.size}"
                         + (" (transformed copies lose one pixel)" if cfg.copies > 1 else ""))


def resolve(cfg: PrepareConfig) -> PrepareConfig:
    """The config a run uses: paths absolute, the layout detected when ``auto``, and where the config
    leaves them to the layout, its output scale, patch size and stride; jobs ``min(4, cores)``.

    Raises:
        PairError: ``auto`` and SRC looks like no layout.
    """
    src, out = Path(cfg.src).resolve(), Path(cfg.out).resolve()
    layout = pairs_mod.LAYOUTS.resolve(cfg.layout, src)
    entry = pairs_mod.LAYOUTS[layout]
    size = cfg.patch.size or entry.patch
    patch = dataclasses.replace(cfg.patch, size=size, stride=cfg.patch.stride or max(1, round(size * entry.stride)))
    return dataclasses.replace(cfg, src=str(src), out=str(out), layout=layout, patch=patch,
                               scale=cfg.scale or int(entry.scale), jobs=cfg.jobs or default_jobs())


@dataclass
class Plan:
    """What a run of ``prepare`` would do (``prepare --dry-run`` prints it): the resolved config, the
    pairs found, the files without a partner, the stages to run and those forced."""

    config: PrepareConfig
    pairs: list[pairs_mod.Pair]
    unpaired: list[str]
    stages: tuple[str, ...]
    force: frozenset[str] = frozenset()
    source: dict[str, Any] = field(default_factory=dict)  # what DATASET/source.json will record (source_record)
    replaces: bool = False  # DATASET holds another SRC's data, to be removed first (--replace-source)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_json(), "pairs": len(self.pairs), "unpaired": self.unpaired,
                "stages": list(self.stages), "force": sorted(self.force)}


def plan(cfg: PrepareConfig, until: str = "shards", force: frozenset[str] = frozenset(),
         replace_source: bool = False) -> Plan:
    """The run's own checks, in its order, and what it would do; nothing is written, so a plan that is
    returned is one :func:`run` accepts.

    Raises:
        InputError, PairError, DeviceError: what :func:`run` would refuse.
    """
    cfg = resolve(cfg)
    check(cfg)
    return _planned(cfg, until, force, replace_source)


def _planned(cfg: PrepareConfig, until: str, force: frozenset[str], replace_source: bool) -> Plan:
    """:func:`plan` of a resolved and checked config."""
    found, unpaired = pairs_mod.find_pairs(cfg.src, cfg.layout, cfg.pairs_csv)
    source = source_record(cfg, found)
    replaces = check_source(Path(cfg.out), source, replace_source)
    return Plan(cfg, found, unpaired, STAGES[: STAGES.index(until) + 1], frozenset(force), source, replaces)


def run(cfg: PrepareConfig, until: str = "shards", force: frozenset[str] = frozenset(),
        progress=None, replace_source: bool = False) -> PrepareResult:
    """Run the stages up to ``until``; ``force`` names stages to redo even when up to date. DATASET is
    locked for the run (a second prepare into it is refused). A DATASET built from another SRC is
    refused, untouched, unless ``replace_source`` (:func:`check_source`).

    Raises:
        PairError: no pairs for the layout, or no patch kept (nothing to train on).
        InputError: options whose shards could not be trained on; DATASET built from another SRC.
    """
    cfg = resolve(cfg)
    check(cfg)  # before DATASET is locked (made): a refused start leaves nothing behind
    with FolderLock(Path(cfg.out), "raw2rgb prepare"):
        return _run(_planned(cfg, until, force, replace_source), progress)


def _run(planned: Plan, progress) -> PrepareResult:
    cfg, out, force, wanted = planned.config, Path(planned.config.out), planned.force, set(planned.stages)
    _claim(planned)
    found, unpaired = planned.pairs, planned.unpaired
    stages: dict[str, StageResult] = {}

    # unpack: one packed PNG per RAW, keyed by scene
    items = [Item(p.scene, (str(Path(p.raw).resolve()),)) for p in found]
    stages["unpack"] = unpack_stage.unpack(
        items, stage_folder(out, "unpack"), zrr_levels=rawio.ZRR_LEVELS[cfg.zrr_levels], jobs=cfg.jobs,
        force="unpack" in force, progress=progress)
    unpacked = {r.key for r in stages["unpack"].manifest.ok}

    if "patches" in wanted:  # align (where needed), cut, score
        packed = stage_folder(out, "unpack")
        items = [Item(p.scene, (str(packed / f"{p.scene}.png"), str(packed / f"{p.scene}.json"),
                                str(Path(p.rgb).resolve())), {"aligned": p.aligned, "embedded": p.embedded})
                 for p in found if p.scene in unpacked]
        params = {"patch": dataclasses.asdict(cfg.patch), "min_inliers": cfg.min_inliers}
        stages["patches"] = run_stage(PATCHES, items, stage_folder(out, "patches"), params, jobs=cfg.jobs,
                                      force="patches" in force, progress=progress)

    if "saliency" in wanted:  # saliency of every kept target patch
        images = [(patch_id(rel), str(stage_folder(out, "patches") / rel))
                  for r in stages["patches"].manifest.ok for rel in r.outputs if rel.startswith("rgb/")]
        from raw2rgb.salgan import label  # torch: imported when the saliency stage runs

        method = resolve_method(cfg.saliency_method, cfg.weights)
        if images:
            stages["saliency"] = label.label(images, stage_folder(out, "saliency"), method, batch_size=cfg.batch_size,
                                             device=cfg.device, force="saliency" in force, progress=progress)
        else:
            log.warning("saliency and shards skipped: no patch was kept (see the patches stage's failures)")

    splits, patch_splits, how = _splits(cfg, out, found, stages.get("patches"))
    if "shards" in wanted and "saliency" in stages:  # training shards per split, with offline augmentation
        samples, owners = shards.samples_from(stage_folder(out, "patches"), stage_folder(out, "saliency"), splits,
                                              patch_splits)
        stages["shards"] = shards.build(
            samples, owners, stage_folder(out, "shards"), shards.frames_of(stage_folder(out, "unpack")),
            scale=cfg.scale, copies=cfg.copies,
            crop=cfg.crop, seed=cfg.seed,
            saliency_method=stages["saliency"].manifest.params["method"], jobs=cfg.jobs,
            force="shards" in force, progress=progress, binning=_binning(stages["patches"].manifest.ok), split_how=how)

    summary = _summary(cfg, found, unpaired, stages, splits, patch_splits, how)
    write_json(out / SPLITS_FILE, {"seed": cfg.seed, "ratios": list(cfg.split), "scenes": splits, "how": how,
                                   **({"patches": patch_splits} if patch_splits else {})})
    write_json(out / SUMMARY, summary)
    if "patches" in stages and not summary["patches_kept"]:
        raise PairError(f"{out}: no patch was kept ({summary['patches_dropped'] or 'no pair aligned'}); see "
                        f"{out}/summary.json and docs/data.md (--patch-size, --min-score, --layout)")
    return PrepareResult(stages, summary)


def _claim(planned: Plan) -> None:
    """DATASET claimed for the plan's pairs: another SRC's data removed (``--replace-source``), then
    ``source.json`` and ``prepare.json`` written.

    Raises:
        PairError: no pairs for the layout.
    """
    cfg, out = planned.config, Path(planned.config.out)
    if not planned.pairs:
        unpaired = planned.unpaired  # a CSV whose every row was refused says why
        first = f", e.g. {unpaired[0]}" if unpaired else ""
        raise PairError(f"{cfg.src}: no pairs found for layout {cfg.layout} ({len(unpaired)} files without a "
                        f"partner or refused{first}); check --layout (docs/data.md)")
    if planned.replaces:  # checked before anything is written: a refusal destroys nothing
        remove_old_source(out)
    write_json(out / SOURCE, planned.source)
    write_json(out / PREPARE, cfg.to_json())


def _splits(cfg: PrepareConfig, out: Path, found: list[pairs_mod.Pair], patches: StageResult | None
            ) -> tuple[dict[str, str], dict[str, str | None], str]:
    """(scene → split, patch id → split for a held-out band, how the split was made): by scene, unless
    the scenes are too few and the frames wide enough for a band (:func:`needs_band`)."""
    scenes = {p.scene: p.fixed_split for p in found}
    if patches is not None and needs_band(scenes, cfg.split) and _bandable(patches.manifest.ok, cfg.patch.size):
        patch_splits, how = band_splits(patches.manifest.ok, cfg.patch.size, cfg.split)
        return {s: "band" for s in scenes}, patch_splits, how
    return assign_splits(scenes, cfg.seed, cfg.split, _previous_splits(out, cfg)), {}, \
        "by scene: no scene is in two splits"


def source_record(cfg: PrepareConfig, found: list[pairs_mod.Pair]) -> dict[str, Any]:
    """What DATASET/source.json records of SRC: its path, and a fingerprint of its pairs (names
    inside SRC and sizes), by which a moved SRC is told from another one."""
    def entry(path: str) -> tuple[str, int]:
        try:
            return os.path.relpath(path, cfg.src), os.path.getsize(path)
        except (OSError, ValueError):
            return path, -1

    files = sorted((p.scene, *entry(p.raw), *entry(p.rgb)) for p in found)
    return {"src": cfg.src, "layout": cfg.layout, "pairs": len(found),
            "fingerprint": hashlib.sha256(json.dumps(files).encode()).hexdigest()}


def check_source(out: Path, source: dict[str, Any], replace: bool = False) -> bool:
    """Refuse to build DATASET from another SRC than the one it was built from: its shards, splits
    and caches would be replaced by the other source's (and going back would recompute them all).
    The same SRC moved (another path, the same pairs) is accepted. Returns whether DATASET holds
    another SRC's data that ``replace`` lets this run replace (:func:`remove_old_source`).

    Raises:
        InputError: DATASET holds another SRC's data and ``replace`` is not set; names both.
    """
    previous = _read_json(out / SOURCE) or {}
    old = previous.get("src") or (_read_json(out / PREPARE) or {}).get("src")
    if not old or old == source["src"]:
        return False
    if previous.get("fingerprint") == source["fingerprint"]:
        log.info("%s: SRC moved from %s to %s (the same pairs)", out, old, source["src"])
        return False
    if replace:
        return True
    raise InputError(f"{out} was prepared from {old}, not {source['src']}: refused, since its shards, splits and "
                     "caches would be replaced; use another -o for the new source, or --replace-source to rebuild "
                     f"{out} from it")


def remove_old_source(out: Path) -> None:
    """Delete what prepare wrote into DATASET from its last SRC before it is rebuilt from another: every
    stage's recorded outputs, manifest and journal, the shard index and the side files (its scenes'
    splits would otherwise be kept for scenes of the same name). A file raw2rgb did not write stays.
    """
    n = sum(remove_outputs(stage_folder(out, stage)) for stage in STAGES)
    for path in (stage_folder(out, "shards") / shards.INDEX, out / SPLITS_FILE, out / SUMMARY):
        if path.is_file() or path.is_symlink():
            path.unlink()
    log.info("%s: removed %d files of the previous source (--replace-source)", out, n)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _previous_splits(out: Path, cfg: PrepareConfig) -> dict[str, str] | None:
    """The scenes' splits of the last run into ``out``, when it used the same seed and ratios."""
    try:
        data = json.loads((out / SPLITS_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    same = data.get("seed") == cfg.seed and [float(r) for r in data.get("ratios", [])] == [float(r) for r in cfg.split]
    return data.get("scenes") if same else None


def _binning(records) -> int:
    """The binning of every pair of a dataset (one for all: a model learns one resolution).

    Raises:
        PairError: pairs binned by different factors, naming one of each.
    """
    by = {}
    for r in records:
        by.setdefault(int(r.info.get("binning", 1)), r.key)
    if len(by) > 1:
        (a, sa), (b, sb) = sorted(by.items())[:2]
        raise PairError(f"{sa} is binned by {a} and {sb} by {b} (their targets are of different sizes against the "
                        "sensor): a dataset learns one resolution; prepare them separately, or give JPEGs of one size")
    return next(iter(by), 1)


def _summary(cfg: PrepareConfig, found, unpaired, stages, split: dict[str, str],
             patch_splits: dict[str, str | None] | None = None, how: str = "") -> dict[str, Any]:
    s: dict[str, Any] = {"layout": cfg.layout, "pairs_found": len(found), "unpaired": unpaired,
                         "unpack_failed": [r.reason for r in stages["unpack"].failed]}
    if "patches" in stages:
        ok = stages["patches"].manifest.ok
        s["aligned"] = len(ok)
        s["align_failed"] = [r.reason for r in stages["patches"].failed]
        dropped: dict[str, int] = {}
        per_split = {name: {"scenes": 0, "patches": 0} for name in SPLITS}
        for r in ok:
            for reason, n in r.info.get("dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + n
            if split[r.key] == "band":
                mine = [v for k, v in (patch_splits or {}).items() if k.rsplit("/", 1)[0] == r.key]
                for name in SPLITS:
                    per_split[name]["scenes"] += name in mine
                    per_split[name]["patches"] += mine.count(name)
                if None in mine:
                    dropped["between train and the held-out band"] = dropped.get(
                        "between train and the held-out band", 0) + mine.count(None)
            else:
                per_split[split[r.key]]["scenes"] += 1
                per_split[split[r.key]]["patches"] += r.info.get("kept", 0)
        s["binning"] = sorted({int(r.info.get("binning", 1)) for r in ok})
        s["split_how"] = how
        s["patches_kept"] = sum(r.info.get("kept", 0) for r in ok)
        s["patches_dropped"] = dropped
        s["splits"] = per_split
    if "saliency" in stages:
        s["saliency_method"] = stages["saliency"].manifest.params["method"]
    if "shards" in stages:
        root = stage_folder(cfg.out, "shards")
        s["shards"] = shards.read_index(root).to_json()["splits"] if (root / shards.INDEX).exists() else {}
    return s


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a few lines for the terminal."""
    lines = [f"layout {summary['layout']}: {summary['pairs_found']} pairs found, "
             f"{len(summary['unpaired'])} files without a partner, {len(summary['unpack_failed'])} RAW unreadable"]
    if "aligned" in summary:
        lines.append(f"{summary['aligned']} pairs aligned and cut, {len(summary['align_failed'])} rejected")
        dropped = ", ".join(f"{n} {k}" for k, n in sorted(summary["patches_dropped"].items())) or "none"
        lines.append(f"{summary['patches_kept']} patches kept; dropped: {dropped}")
        lines.append("splits: " + ", ".join(f"{k} {v['scenes']} scenes / {v['patches']} patches"
                                            for k, v in summary["splits"].items()))
        if summary.get("split_how"):
            lines.append(f"split {summary['split_how']}")
        if any(b > 1 for b in summary.get("binning", [])):
            lines.append(f"binned by {'/'.join(map(str, summary['binning']))}: the targets are smaller than the "
                         "sensor, so the RAW is binned to them (a model converts at the targets' resolution)")
    if "saliency_method" in summary:
        lines.append(f"saliency: {summary['saliency_method']}")
    if "shards" in summary:
        lines.append("shards: " + ", ".join(f"{k} {v['count']} samples in {len(v['shards'])} shards"
                                            for k, v in summary["shards"].items()))
    return lines

