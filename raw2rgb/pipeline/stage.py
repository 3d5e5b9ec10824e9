"""The stage machinery: items, cache keys, manifests, journal, resume and parallel jobs (joblib, Dask).

A stage turns a list of items (each naming its input files) into files under one folder and a
``manifest.json`` there that records, per item, its input fingerprints, the outputs it wrote,
its status and, when it failed, a one-line reason. Running a stage again with the same inputs
and params does no work; a changed param or input redoes only what it touches; a killed run
resumes; outputs are written under a temporary name and renamed, so a half-written file is never
taken as done; each finished item is journalled at once (``.journal/``), so even a SIGKILL loses
no finished work. This is the only module that writes manifests.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from joblib import Parallel, delayed, parallel_config

from raw2rgb.errors import (
    InputError,
    Interrupted,
    OutOfResources,
    UserError,
    environment_message,
    one_line,
    out_of_memory,
    out_of_space,
)
from raw2rgb.files import FolderLock, file_sha256, inside, json_bytes, remove_partials, write_bytes, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class ItemError(UserError):
    """A failure of one item, with a one-line reason meant for the user."""


@dataclass(frozen=True)
class Item:
    """One unit of work: a key unique within the stage, its input files, any extra argument."""

    key: str
    inputs: tuple[str, ...]
    payload: Any = None


@dataclass(frozen=True)
class Context:
    """What a stage's work function gets besides its item.

    Attributes:
        out_dir: the stage folder.
        params: what the outputs depend on; part of every item's cache key.
        options: how to run (device, batch size, workers); not part of the cache key.
        hashes: sha256 of each of the item's input files.
    """

    out_dir: Path
    params: Mapping[str, Any]
    options: Mapping[str, Any]
    hashes: Mapping[str, str]


@dataclass(frozen=True)
class Deferred:
    """Returned by a work function whose last part (a write) may finish while the next item runs.

    ``finish()`` completes the item and returns ``(outputs, info)``. In-process runs call it on a
    writer thread; worker processes call it at once. The item counts as done, and is journalled,
    only when ``finish`` has returned.
    """

    finish: Callable[[], tuple[list[str], dict]]


@dataclass(frozen=True)
class Stage:
    """A named, versioned step. ``work`` must be a module-level function (it is pickled).

    ``work(item, ctx)`` writes its files with :func:`atomic_path` and returns ``(outputs, info)``:
    output paths relative to ``ctx.out_dir`` and a JSON-ready dict — or a :class:`Deferred`.
    ``info["failed"]``, a dict of sub-item → reason, reports parts of an item that failed while
    the rest was written (one bad image in a shard). Bump ``version`` when the outputs change for
    the same inputs and params, so that caches built by older code are redone.
    """

    name: str
    version: int
    work: Callable[[Item, Context], tuple[list[str], dict] | Deferred]
    deferred: bool = False  # work returns a Deferred: in-process runs finish it on a writer thread
    keeps_others: bool = False  # items are independent files: a run keeps the records of items it was not given
    # names(item, params): the files an item writes, known before it runs (convert, unpack: named after the
    # user's files, in a folder the user chose): an item whose file is one the stage did not write is refused
    names: Callable[[Item, Mapping[str, Any]], list[str]] | None = None


@dataclass
class Record:
    """What the manifest says of one item."""

    key: str
    status: str  # "ok" | "failed"
    cache_key: str = ""
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> size, mtime, sha256
    outputs: dict[str, int] = field(default_factory=dict)  # relative path -> size in bytes
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.reason:
            d.pop("reason")
        return d


@dataclass
class Manifest:
    """The record of one stage folder."""

    stage: str
    version: int
    params: dict[str, Any]
    records: dict[str, Record] = field(default_factory=dict)

    @property
    def ok(self) -> list[Record]:
        return [r for r in self.records.values() if r.status == "ok"]

    @property
    def failed(self) -> list[Record]:
        return [r for r in self.records.values() if r.status != "ok"]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "stage": self.stage,
            "version": self.version,
            "params": self.params,
            "items": [self.records[k].to_json() for k in sorted(self.records)],
        }

    def save(self, out_dir: Path) -> None:
        """Write ``manifest.json`` atomically; an unchanged manifest is left untouched."""
        path = Path(out_dir) / MANIFEST
        data = json_bytes(self.to_json())
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        write_bytes(path, data)

    @classmethod
    def load(cls, out_dir: Path) -> Manifest | None:
        """The manifest in ``out_dir``, or None when there is none or it is unreadable."""
        path = Path(out_dir) / MANIFEST
        try:
            data = json.loads(path.read_text())
            records = {}
            for r in data["items"]:
                rec = Record(**{k: v for k, v in r.items() if k in Record.__dataclass_fields__})
                records[rec.key] = rec
            manifest = cls(data["stage"], int(data["version"]), dict(data["params"]), records)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            # raw2rgb writes its manifests atomically: one it cannot read is not its own (a user's
            # manifest.json in the output folder), and is never replaced
            raise InputError(f"{path}: not a manifest raw2rgb wrote ({type(e).__name__}); refused, so as not to "
                             "replace it: move it away or choose another output folder") from None
        for rec in manifest.records.values():  # the one path-safety rule: nothing is read outside the folder
            for rel in rec.outputs:
                if not inside(out_dir, Path(out_dir) / rel):
                    raise InputError(f"{path}: output {rel} of {rec.key} lies outside the folder; refused")
        return manifest


@dataclass
class StageResult:
    """What one run of a stage did."""

    manifest: Manifest
    done: int = 0
    cached: int = 0

    @property
    def failed(self) -> list[Record]:
        return self.manifest.failed

    def problems(self) -> list[str]:
        """One line per failed item, and per failed part of an item that otherwise completed."""
        out = [r.reason for r in self.failed]
        for r in self.manifest.ok:
            out += list(r.info.get("failed", {}).values())
        return out

    def summary(self) -> str:
        parts = sum(len(r.info.get("failed", {})) for r in self.manifest.ok)
        text = (f"{self.manifest.stage}: {self.done} done, {self.cached} cached, "
                f"{len(self.failed)} failed")
        return text + (f" ({parts} parts of completed items failed)" if parts else "")


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def outputs_of(out_dir: os.PathLike | str) -> set[Path]:
    """The files a stage recorded writing into ``out_dir`` (its manifest's outputs)."""
    manifest = Manifest.load(Path(out_dir))
    return {(Path(out_dir) / rel).resolve() for r in manifest.records.values() for rel in r.outputs} \
        if manifest else set()


def own_outputs(args: Iterable[str], out_dir: os.PathLike | str | None) -> dict:
    """``collect_files`` arguments that keep a command from reading what it wrote: the output folder
    when it lies inside an input folder, the files its manifest records when it is one."""
    if out_dir is None:
        return {}
    out = Path(out_dir).resolve()
    inputs = [Path(a).resolve() for a in args if Path(a).is_dir()]
    nested = [out] if any(out != i and i in out.parents for i in inputs) else []
    return {"exclude": nested, "skip": outputs_of(out) if out.is_dir() else set()}


def remove_outputs(out_dir: os.PathLike | str) -> int:
    """Delete what stages recorded writing into ``out_dir`` (the outputs of its manifest and journal,
    then the manifest and journal themselves, and the folders this leaves empty); return how many
    files went. Nothing else there is touched: a file raw2rgb did not write is the user's.

    Raises:
        InputError: the manifest records an output outside the folder (nothing is deleted then).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    with FolderLock(out_dir, "raw2rgb prepare"):
        manifest = Manifest.load(out_dir)
        records = list(manifest.records.values()) if manifest else []
        rels = {rel for r in [*records, *_read_journal(out_dir).values()] for rel in r.outputs}
        rels |= _read_planned(out_dir)
        n = 0
        for rel in sorted(rels):
            path = out_dir / rel
            if not inside(out_dir, path) or not (path.is_file() or path.is_symlink()):
                continue  # a journal is not checked on reading: the same rule as the manifest's
            path.unlink()
            n += 1
            for parent in path.parents:  # the scene folders this empties (patches/raw/SCENE/)
                if parent == out_dir or not inside(out_dir, parent):
                    break
                try:
                    parent.rmdir()
                except OSError:  # not empty: something else is there
                    break
        (out_dir / MANIFEST).unlink(missing_ok=True)
        _clear_journal(out_dir)
        remove_partials(out_dir)
    return n


JOURNAL = ".journal"


def _journal_path(out_dir: Path, key: str) -> Path:
    return out_dir / JOURNAL / (hashlib.sha1(key.encode()).hexdigest() + ".json")


def _read_journal(out_dir: Path) -> dict[str, Record]:
    """Records of items finished by a run that was killed before it saved its manifest."""
    out = {}
    for p in sorted((out_dir / JOURNAL).glob("*.json")):
        try:
            data = json.loads(p.read_text())
            rec = Record(**{k: v for k, v in data.items() if k in Record.__dataclass_fields__})
        except (OSError, ValueError, TypeError, RecursionError):
            continue
        out[rec.key] = rec
    return out


def _clear_journal(out_dir: Path) -> None:
    journal = out_dir / JOURNAL
    if journal.is_dir():
        for p in journal.iterdir():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        with contextlib.suppress(OSError):
            journal.rmdir()


# -- fingerprints and cache keys -------------------------------------------------------------------

def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _input_records(paths: Iterable[str], hashes: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
    """What a record keeps of its inputs: size and mtime (to trust the sha256 next time) and sha256."""
    records = {}
    for p in paths:
        size, mtime_ns = _stat(p) or (None, None)
        records[p] = {"size": size, "mtime_ns": mtime_ns, "sha256": hashes[p]}
    return records


def _known_hashes(item: Item, previous: Record | None) -> dict[str, str | None]:
    """sha256 of each input taken from the previous record where size and mtime are unchanged.

    Inputs are matched by position, not by path: a folder moved, renamed or copied with its
    times (``mv``, ``cp -a``) keeps its cached work without being hashed again."""
    out: dict[str, str | None] = {p: None for p in item.inputs}
    if previous is None:
        return out
    old = list(previous.inputs.values())
    if len(old) != len(item.inputs):
        return out
    for p, rec in zip(item.inputs, old):
        st = _stat(p)
        if st and (rec.get("size"), rec.get("mtime_ns")) == st:
            out[p] = rec.get("sha256")
    return out


def cache_key(stage: Stage, item: Item, params: Mapping[str, Any], hashes: Mapping[str, str]) -> str:
    """Key of an item's outputs: stage name and version, params, the item, its inputs' content."""
    blob = json.dumps(
        {"stage": stage.name, "version": stage.version, "params": params, "key": item.key,
         "payload": item.payload, "inputs": [hashes[p] for p in item.inputs]},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _outputs_intact(out_dir: Path, record: Record) -> bool:
    for rel, size in record.outputs.items():
        try:
            if (out_dir / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


# -- running ---------------------------------------------------------------------------------------

def _hash_inputs(paths: tuple[str, ...], known: Mapping[str, str | None]) -> dict[str, str]:
    """sha256 of each input not known already.

    Raises:
        ItemError: an input is missing or unreadable.
    """
    out = {}
    for p in paths:
        if _stat(p) is None:
            raise ItemError(f"{p}: no such file")
        try:
            out[p] = known.get(p) or file_sha256(p)
        except OSError as e:
            raise ItemError(f"{p}: cannot read ({e.strerror or e})") from None
    return out


def _run_item(stage: Stage, item: Item, out_dir: Path, params: Mapping[str, Any],
              options: Mapping[str, Any], known: Mapping[str, str | None],
              hashing: Future | None = None) -> Record:
    """Run one item (in a worker process or in-process), journal its record and return it.

    ``hashing``, when given, is the item's input hashes being computed in a thread. A
    :class:`Deferred` result is finished here; in-process runs of deferred stages use
    :func:`_start_item` and :func:`_finish_item` instead, to finish it on a writer thread.
    """
    started = _start_item(stage, item, out_dir, params, options, known, hashing)
    return started if isinstance(started, Record) else _finish_item(item, out_dir, *started)


def _failed(item: Item, inputs: dict, e: BaseException) -> Record:
    if isinstance(e, (ItemError, OutOfResources)):
        return Record(item.key, "failed", inputs=inputs, reason=one_line(str(e)))
    log.debug("item %s failed:\n%s", item.key, "".join(traceback.format_exception(e)))
    what = item.inputs[0] if item.inputs else item.key
    memory = out_of_memory(e)  # an item's size decides its memory: that item fails, the smaller ones run
    return Record(item.key, "failed", inputs=inputs,
                  reason=one_line(f"{what}: {memory}" if memory else f"{what}: {type(e).__name__}: {e}"))


def _not_the_items(item: Item, out_dir: Path, e: Exception) -> None:
    """Raise, instead of recording a failure of ``item``, when the failure is not the item's.

    A stop requested while it ran: a library that gets the same Ctrl-C (a DataLoader whose workers
    died of it) answers with its own error, which must not be taken for the item's. A full disk
    or quota: every item left would fail the same way, so the stage stops at once with one line.

    Raises:
        Interrupted: a stop signal arrived while the item ran.
        OutOfResources: no space left (or over quota) while the item wrote.
    """
    if _stop_signal is not None:
        _raise_stop(e)
    if out_of_space(e):
        if isinstance(e, OutOfResources):  # a writer's own, naming its file and what it wrote
            raise e
        raise OutOfResources(f"{environment_message(e)} (writing {item.key} into {out_dir})") from e


def _journalled(out_dir: Path, record: Record) -> Record:
    write_json(_journal_path(out_dir, record.key), record.to_json())
    return record


def _start_item(stage: Stage, item: Item, out_dir: Path, params: Mapping[str, Any], options: Mapping[str, Any],
                known: Mapping[str, str | None], hashing: Future | None = None
                ) -> Record | tuple[str, dict, tuple[list[str], dict] | Deferred]:
    """Hash, key and run an item's work: its failed record, or (cache key, inputs, work result)."""
    inputs: dict[str, dict[str, Any]] = {}
    try:
        hashes = hashing.result() if hashing is not None else _hash_inputs(item.inputs, known)
        inputs = _input_records(item.inputs, hashes)
        key = cache_key(stage, item, params, hashes)
        return key, inputs, stage.work(item, Context(out_dir, params, options, hashes))
    except Exception as e:  # noqa: BLE001 - one item's failure must not stop the others
        _not_the_items(item, out_dir, e)
        return _journalled(out_dir, _failed(item, inputs, e))


def _finish_item(item: Item, out_dir: Path, key: str, inputs: dict, result) -> Record:
    """Finish a Deferred result if it is one, check the outputs and journal the record."""
    try:
        outputs, info = result.finish() if isinstance(result, Deferred) else result
        sizes = {rel: (out_dir / rel).stat().st_size for rel in outputs}
        record = Record(item.key, "ok", key, inputs, sizes, info=info)
    except Exception as e:  # noqa: BLE001
        _not_the_items(item, out_dir, e)
        record = _failed(item, inputs, e)
    return _journalled(out_dir, record)


def default_jobs() -> int:
    """Worker processes when none are asked for: min(4, cores) (each takes a core and its memory)."""
    return max(1, min(4, os.cpu_count() or 1))


def run_stage(
    stage: Stage,
    items: Iterable[Item],
    out_dir: os.PathLike | str,
    params: Mapping[str, Any],
    jobs: int = 1,
    force: bool = False,
    progress: Callable[..., Progress] | None = None,
    options: Mapping[str, Any] | None = None,
    on_plan: Callable[[list[Item]], None] | None = None,
    overwrite: bool = False,
) -> StageResult:
    """Bring ``out_dir`` up to date for ``items``; return what was done.

    Args:
        stage: the step to run.
        items: the work; keys must be unique.
        out_dir: the stage folder; created when missing.
        params: JSON-ready parameters; part of every item's cache key.
        jobs: worker processes (joblib); 1 runs in this process.
        force: redo every item even when its outputs are up to date.
        progress: a tqdm-like factory ``progress(total=, desc=, unit=)``; nothing when None.
        options: how to run (device, batch size); passed to ``work``, not part of cache keys.
        on_plan: called with the items that will run, in order, before the first one starts
            (lets a stage prefetch across items).
        overwrite: replace files in the way of a stage's ``names`` that it did not write (else such
            an item fails, naming the file, and the others run).

    Returns:
        The new manifest (saved in ``out_dir``) with counts of done and cached items. Failed
        items are in ``result.failed`` with their reasons; the others completed.
    """
    out_dir = Path(out_dir)
    with FolderLock(out_dir, f"raw2rgb {stage.name}"), _stop_signals(stage.name):
        return _run_stage(stage, list(items), out_dir, json.loads(json.dumps(dict(params))), jobs, force, progress,
                          options, on_plan, overwrite)


def _run_stage(stage: Stage, items: list[Item], out_dir: Path, params: dict[str, Any], jobs: int, force: bool,
               progress: Callable[..., Progress] | None, options: Mapping[str, Any] | None,
               on_plan: Callable[[list[Item]], None] | None, overwrite: bool = False) -> StageResult:
    old = _previous_records(stage, items, out_dir)
    manifest = Manifest(stage.name, stage.version, params)
    result = StageResult(manifest)
    todo = _refuse_unsafe(stage, _plan(stage, items, out_dir, params, old, force, result), out_dir, params, old,
                          overwrite, manifest)
    bar = (progress or (lambda **kw: _NoProgress()))(total=len(items), desc=stage.name, unit="item")
    bar.update(result.cached)
    log.debug("%s: %d items, %d cached, %d to run", stage.name, len(items), result.cached, len(todo))
    records: Iterator[Record] = iter(())
    try:
        if on_plan is not None:  # inside: a stop while it starts (a DataLoader's workers) is the stage's
            on_plan([item for item, _ in todo])
        records = _execute(stage, todo, out_dir, params, dict(options or {}), jobs)
        for record in records:
            manifest.records[record.key] = record
            if record.status == "ok":
                result.done += 1
            else:
                log.debug("failed: %s", record.reason)
            bar.update(1)
            check_stop()  # a Ctrl-C that a finaliser swallowed ("Exception ignored in …") stops here
        check_stop()
    except OutOfResources as e:
        raise OutOfResources(f"{e}; {stage.name} stopped, {_kept(manifest)}: a rerun resumes") from e
    except KeyboardInterrupt as e:
        sig = getattr(e, "signal", None) or _stop_signal or signal.SIGINT
        raise Interrupted(sig, f"{stage.name}: interrupted ({signal.Signals(sig).name}), {_kept(manifest)}: a "
                               "rerun resumes") from None
    finally:
        if hasattr(records, "close"):  # a pool's results closed unread: joblib kills its workers, queued items
            records.close()  # never start
        bar.close()
    if stage.keeps_others:  # another shoot converted into the same folder earlier stays on record
        given = {it.key for it in items}
        for key, rec in old.items():
            if key not in given and rec.status == "ok" and _outputs_intact(out_dir, rec):
                manifest.records[key] = rec
    # Every finished item is in the journal; once the manifest holds them all, drop it. An
    # interrupted loop (an exception, ^C) leaves the journal for the next run instead.
    manifest.save(out_dir)
    _clear_journal(out_dir)
    return result


def _kept(manifest: Manifest) -> str:
    n = len(manifest.ok)
    return f"{n} finished item{'' if n == 1 else 's'} kept"


def _previous_records(stage: Stage, items: list[Item], out_dir: Path) -> dict[str, Record]:
    """Prepare the folder (partial files of a killed run removed) and return what earlier runs
    recorded there: the manifest and the journal of items finished after its last save."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_partials(out_dir)
    if stale:
        log.info("%s: removed %d partial files left by an interrupted run", out_dir, stale)
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise InputError(f"duplicate item keys: {', '.join(dup[:5])}")
    previous = Manifest.load(out_dir)
    if previous and previous.stage != stage.name:
        raise InputError(f"{out_dir} holds the output of stage {previous.stage!r}, not {stage.name!r}; "
                         "choose another output folder")
    old = dict(previous.records) if previous else {}
    old.update(_read_journal(out_dir))
    return old


def _plan(stage: Stage, items: list[Item], out_dir: Path, params: Mapping[str, Any], old: Mapping[str, Record],
          force: bool, result: StageResult) -> list[tuple[Item, dict[str, str | None]]]:
    """Put the items that are up to date into the manifest (counted as cached); return the others
    with the input hashes already known."""
    todo: list[tuple[Item, dict[str, str | None]]] = []
    for item in items:
        prev = old.get(item.key)
        known = _known_hashes(item, prev)
        if not force and prev is not None and prev.status == "ok":
            if any(h is None for h in known.values()):
                # Touched or moved since: hash now, so unchanged content stays cached.
                known = {p: h or (file_sha256(p) if _stat(p) else None) for p, h in known.items()}
            if all(known.values()):
                key = cache_key(stage, item, params, known)  # type: ignore[arg-type]
                if key == prev.cache_key and _outputs_intact(out_dir, prev):
                    # the inputs as they are now: their paths (moved?) and stat data (touched?)
                    prev.inputs = _input_records(item.inputs, known)
                    result.manifest.records[item.key] = prev
                    result.cached += 1
                    continue
        todo.append((item, known))
    return todo


PLANNED = "planned"  # in JOURNAL: the files a run set out to write, its own should it be killed before recording them


def _refuse_unsafe(stage: Stage, todo: list[tuple[Item, dict[str, str | None]]], out_dir: Path,
                   params: Mapping[str, Any], old: Mapping[str, Record], overwrite: bool, manifest: Manifest
                   ) -> list[tuple[Item, dict[str, str | None]]]:
    """The items that may run; each refused one gets a failed record naming the file and the reason.

    An item's key names its files, so one that is absolute or climbs out with ``..`` is refused in
    every stage. Where the stage knows an item's files in advance (``Stage.names``), a file already
    there is replaced only when it is the stage's own: recorded by an earlier run (its manifest or
    journal) or planned by a run killed before it could record it. Anything else is the user's (a
    camera's JPEG beside its RAW, a photo of the same name) and is never replaced unless ``overwrite``.
    """
    earlier = _read_planned(out_dir)
    own = {rel for rec in old.values() for rel in rec.outputs} | earlier
    free, planned = [], set()
    for item, known in todo:
        names = stage.names(item, params) if stage.names is not None else []
        if Path(item.key).is_absolute() or ".." in Path(item.key).parts:
            reason = f"{item.key}: an item name that leads outside {out_dir}; refused"
        elif bad := next((n for n in names if n == MANIFEST or not inside(out_dir, out_dir / n)), None):
            reason = f"{out_dir / bad}: {'the stage manifest' if bad == MANIFEST else 'outside the folder'}; refused"
        elif not overwrite and (clash := next((n for n in names if n not in own and os.path.lexists(out_dir / n)),
                                             None)):
            reason = (f"{out_dir / clash}: already there and not written by raw2rgb {stage.name}, so not replaced "
                      "(--overwrite replaces it; or choose another output folder)")
        else:
            free.append((item, known))
            planned.update(names)
            continue
        manifest.records[item.key] = Record(item.key, "failed", reason=reason)
    if planned:  # before the first write: a run killed after writing but before journalling owns the file
        write_json(out_dir / JOURNAL / PLANNED, sorted(planned | earlier))
    return free


def _read_planned(out_dir: Path) -> set[str]:
    try:
        return set(json.loads((out_dir / JOURNAL / PLANNED).read_text()))
    except (OSError, ValueError, TypeError, RecursionError):
        return set()


# -- past one machine ---------------------------------------------------------------------------------
# Inside ``dask_cluster(address)`` every stage runs its items on that Dask cluster through joblib's
# dask backend. The driver still journals each finished item and writes the manifest, so resume
# and caching work as locally; the workers must see the same file system (a shared one).
_SCHEDULER: contextvars.ContextVar[str | None] = contextvars.ContextVar("raw2rgb_dask_scheduler", default=None)


@contextlib.contextmanager
def dask_cluster(address: str, timeout: str = "20s") -> Iterator[Any]:
    """Run the stages started inside the block on the Dask cluster whose scheduler is at ``address``.

    Raises:
        InputError: dask's distributed scheduler is not installed, or the scheduler cannot be reached.
    """
    try:
        from dask.distributed import Client
    except ImportError:
        raise InputError("--backend dask needs dask's distributed scheduler: pip install 'raw2rgb[dist]'") from None
    try:
        client = Client(address, timeout=timeout)
    except (OSError, ValueError, TimeoutError) as e:
        raise InputError(f"cannot reach the Dask scheduler at {address} ({one_line(str(e))})") from None
    token = _SCHEDULER.set(address)
    try:
        yield client
    finally:
        _SCHEDULER.reset(token)
        client.close()


def distributed() -> str | None:
    """The Dask scheduler the stages run on, or None (local processes)."""
    return _SCHEDULER.get()


def _execute(stage: Stage, todo: list[tuple[Item, dict[str, str | None]]], out_dir: Path,
             params: Mapping[str, Any], options: Mapping[str, Any], jobs: int) -> Iterator[Record]:
    if todo and (distributed() or (jobs > 1 and len(todo) > 1)):
        with parallel_config(backend="dask") if distributed() else contextlib.nullcontext():
            parent = None if distributed() else os.getpid()  # a Dask worker is the cluster's, not ours
            # each worker watches its parent from its start (loky's initializer), not from its first item:
            # a parent killed while its workers still start (imports: seconds) left them idle for good
            parallel = Parallel(n_jobs=-1 if distributed() else jobs, return_as="generator_unordered",
                                **({} if parent is None else {"initializer": _watch_parent, "initargs": (parent,)}))
            yield from parallel(delayed(_run_in_worker)(parent, stage, item, out_dir, params, options, known)
                                for item, known in todo)
        return
    if len(todo) <= 1:
        for item, known in todo:
            check_stop()  # no item starts after a stop signal, even one not yet raised
            yield _run_item(stage, item, out_dir, params, options, known)
        return
    # In-process runs: inputs are hashed ahead in threads while earlier items run; a deferred
    # stage's writes (the GPU ones) also finish on a writer thread while the next item starts.
    with ThreadPoolExecutor(4) as pool:
        hashing = [pool.submit(_hash_inputs, item.inputs, known) for item, known in todo]
        try:
            if stage.deferred:
                yield from _run_deferred(stage, todo, hashing, out_dir, params, options)
            else:
                for (item, known), future in zip(todo, hashing):
                    check_stop()
                    yield _run_item(stage, item, out_dir, params, options, known, future)
        finally:
            for f in hashing:
                f.cancel()


def _run_deferred(stage: Stage, todo: list[tuple[Item, dict[str, str | None]]], hashing: list[Future],
                  out_dir: Path, params: Mapping[str, Any], options: Mapping[str, Any]) -> Iterator[Record]:
    with ThreadPoolExecutor(1) as writer:
        pending: list[Future] = []
        for (item, known), future in zip(todo, hashing):
            check_stop()
            started = _start_item(stage, item, out_dir, params, options, known, future)
            if isinstance(started, Record):
                yield started
            else:
                pending.append(writer.submit(_finish_item, item, out_dir, *started))
            while pending and pending[0].done():
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()


# -- stop signals and orphans ------------------------------------------------------------------------
# Ctrl-C is Python's KeyboardInterrupt, raised wherever the main thread happens to be, and there it
# can be lost: raised inside a finaliser it is printed ("Exception ignored in …") and dropped; raised
# inside a library that got the same Ctrl-C (a DataLoader whose workers died of it) it comes back as
# that library's error, which a stage would record as a failed item before going on. So while a
# stage runs, the signal is also noted, and the stage checks the note after every item and before it
# records any failure. SIGTERM (a scheduler, kill) takes the same path, so that the pools are shut
# down instead of the process dying under them.
#
# The handler raises only where that is safe: not inside a finaliser, an at-fork hook (logging's
# lock release: the Ctrl-C was printed and lost), a constructor (a DataLoader's iterator, half built,
# then failed in its own finaliser), an import, the sharing of a tensor with a worker, or a pool's or
# process's start and shutdown. There it only notes the signal and wakes the main thread again every
# STOP_RETRY seconds (SIGWINCH, ignored by default: a late one is harmless) until it is somewhere
# safe; meanwhile the stage starts no further item (``check_stop`` before each, and per batch).
_stop_signal: int | None = None  # the stop signal received while a stage ran in this process
WATCH_INTERVAL = 0.2  # seconds between a pool worker's looks at its parent
STOP_RETRY = 0.02  # seconds between looks for a safe place to raise a noted stop signal
_WAKE = getattr(signal, "SIGWINCH", None)
_UNSAFE_MODULES = ("logging", "importlib", "weakref", "multiprocessing.util", "multiprocessing.process",
                   "multiprocessing.popen_", "multiprocessing.context", "multiprocessing.resource_sharer",
                   "multiprocessing.resource_tracker", "multiprocessing.reduction", "torch.multiprocessing",
                   "joblib.externals.loky.backend")
_UNSAFE_NAMES = ("__del__", "__init__", "__new__", "__enter__", "__exit__", "_releaseLock", "_acquireLock",
                 "shutdown", "terminate", "abort", "close", "cleanup", "finali", "at_fork", "after_fork")


def _safe_to_raise(frame: Any) -> bool:
    """Whether an exception raised in ``frame`` (the one a signal interrupted) reaches the stage
    whole, leaving no library half done: no frame on the stack is one of the places named above."""
    while frame is not None:
        name = frame.f_code.co_name
        if any(unsafe in name for unsafe in _UNSAFE_NAMES) or \
                str(frame.f_globals.get("__name__", "")).startswith(_UNSAFE_MODULES):
            return False
        frame = frame.f_back
    return True


@dataclass
class _StopState:
    """The stop signals of one stage run: the handler's process, and whether the stop was raised."""

    pid: int
    raised: bool = False
    closing: bool = False
    waking: threading.Thread | None = None

    def wake_until_raised(self) -> None:
        """Wake the main thread every STOP_RETRY seconds until the noted stop is raised."""
        if _WAKE is None or (self.waking is not None and self.waking.is_alive()):
            return
        main = threading.main_thread().ident

        def wake() -> None:
            while not (self.raised or self.closing):
                time.sleep(STOP_RETRY)
                if not (self.raised or self.closing):
                    signal.pthread_kill(main, _WAKE)

        self.waking = threading.Thread(target=wake, name="raw2rgb-stop", daemon=True)
        self.waking.start()


_stop: _StopState | None = None  # the running stage's


@contextlib.contextmanager
def _stop_signals(name: str = "stage") -> Iterator[None]:
    """Note Ctrl-C and SIGTERM while the block runs, and raise them (as :class:`Interrupted`) where
    that is safe; the handlers before it are put back after. A signal noted but not yet raised when
    the block ends (it came as the stage finished) is raised then. Outside the main thread (where
    no handler can be set) it does nothing."""
    global _stop_signal, _stop
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = _StopState(os.getpid())

    def handle(signum: int, frame: Any) -> None:
        global _stop_signal
        if os.getpid() != state.pid:  # a forked helper (a DataLoader's worker) before its own handlers: the
            return  # stage decides, and stops it
        if signum != _WAKE and _stop_signal is None:
            _stop_signal = signum
        if _stop_signal is None or state.raised or state.closing:
            return  # nothing to stop, or the stop is under way
        if _safe_to_raise(frame):
            state.raised = True
            raise Interrupted(_stop_signal)
        state.wake_until_raised()

    old: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM, *([_WAKE] if _WAKE is not None else [])):
        old[sig] = signal.signal(sig, handle)
    _stop_signal, _stop = None, state
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        state.closing = True
        for sig, previous in old.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        noted, _stop_signal, _stop = _stop_signal, None, None
    if noted is not None and not state.raised and not failed:  # it came as the stage finished: its work is kept
        raise Interrupted(noted, f"{name}: interrupted ({signal.Signals(noted).name}) as it finished, its work "
                                 "kept: a rerun goes on from there")


def quit_on_stop_signals(worker_id: int | None = None, parent: int | None = None) -> None:
    """For a stage's helper processes (a DataLoader's workers; ``worker_id`` is unused): the stage
    decides. Ctrl-C, which a terminal sends to them too, is ignored: the stage, stopping, shuts them
    down. SIGTERM (what that shutdown sends to a worker slow to go, or ``kill``) ends one at once and
    quietly, with status 0: torch takes any other end of a worker for a failure ("DataLoader worker …
    is killed by signal"), raised in the stage in the middle of its shutdown. A connection to the
    stage that breaks as it stops (a tensor handed over) is no error of the worker's to print.

    ``parent``: the stage's process (bound with ``functools.partial``), watched as a pool worker
    watches it: torch's own watch takes the parent at the worker's start, so a worker forked as its
    parent was killed took its adopter for its parent and waited for work for good."""
    if parent is not None:
        _watch_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    hook = sys.excepthook

    def quiet(kind, value, tb) -> None:
        if not issubclass(kind, (OSError, EOFError)):
            hook(kind, value, tb)

    sys.excepthook = quiet


def _raise_stop(cause: BaseException | None = None) -> None:
    if _stop is not None:
        _stop.raised = True
    raise Interrupted(_stop_signal) from cause


def check_stop() -> None:
    """Raise :class:`Interrupted` when a stop signal arrived during the stage, even one whose
    KeyboardInterrupt was swallowed, or not yet raised (it came where raising was not safe). Item
    stages call it where they may stop: the machinery before each item, the saliency stage per batch."""
    if _stop_signal is not None:
        _raise_stop()



def stop_noted() -> bool:
    """Whether the running stage got a stop signal (raised or not yet)."""
    return _stop_signal is not None


def _run_in_worker(parent: int | None, *args: Any) -> Record:
    """:func:`_run_item` in a pool worker that must not outlive ``parent``, the process running the
    stage (None: a Dask worker, which the cluster owns)."""
    if parent is not None:
        _watch_parent(parent)
    return _run_item(*args)


_watched: int | None = None  # the parent this worker process watches


def _watch_parent(parent: int) -> None:
    """Make this worker exit as soon as ``parent`` is gone.

    A pool worker (loky) outlives a parent killed with SIGKILL: it finishes its item and then those
    already queued, for minutes, writing into a folder whose lock went with the parent. Linux's
    PR_SET_PDEATHSIG is no cure: it fires when the *thread* that spawned the worker ends, and loky
    spawns workers from whichever thread needs one (its manager thread among them). So a daemon
    thread looks at the parent every WATCH_INTERVAL seconds; a killed item leaves only a partial
    file, which the next run removes.
    """
    global _watched
    if os.getppid() != parent:  # orphaned already: start no queued item
        os._exit(1)
    if _watched == parent:
        return
    _watched = parent
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="raw2rgb-parent-watch", daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL)
    os._exit(1)
