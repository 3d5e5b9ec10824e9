"""The RUN folder of a training run: its file names, its identity, its statistics and its lock.

    RUN/config.json        the TrainConfig, the dataset's key and its colour source: what the run is
    RUN/stats.jsonl        one JSON object per logged step, per epoch (validation) and per event
    RUN/log.txt            the log
    RUN/checkpoints/       latest.pt (resume), stage1.pt, final.pt (the model to use)
    RUN/samples/           a grid of held-out samples per epoch
    RUN/tensorboard/       the same scalars for TensorBoard
    RUN/profile.json       the colour prior's profile, fitted on the train split (recommended presets)

A run is keyed on its config, its dataset's key and where its data's colour comes from: the same
command on a finished run does nothing, on an interrupted one resumes; another config, changed
shards or another colour source are refused unless the run is started over (``force``), which
removes only what a run writes, and only in a folder that holds a run. A run that never saved a
checkpoint has nothing to resume: another command simply starts it over, and a start that is
refused while setting up removes what it wrote (:func:`discard`), so a mistake never sticks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raw2rgb.errors import UserError
from raw2rgb.files import LOCK_FILE, write_bytes, write_json

log = logging.getLogger(__name__)

CONFIG = "config.json"
STATS = "stats.jsonl"
LOG = "log.txt"
CHECKPOINTS = "checkpoints"
LATEST, STAGE1, FINAL = "latest.pt", "stage1.pt", "final.pt"
SAMPLES = "samples"
TENSORBOARD = "tensorboard"
PROFILE = "profile.json"  # the colour prior's fitted profile (convert --method profile takes it too)
WRITES = (CONFIG, STATS, LOG, CHECKPOINTS, SAMPLES, TENSORBOARD, PROFILE)  # everything a run writes


class RunError(UserError):
    """A RUN folder that cannot be used for this run; the message says why and what to do."""


def checkpoint(run_dir: os.PathLike | str, name: str = LATEST) -> Path:
    return Path(run_dir) / CHECKPOINTS / name


def checkpoint_file(path: os.PathLike | str) -> Path:
    """A checkpoint file, or a RUN folder's final checkpoint (its latest, with a warning, when the
    run has not finished).

    Raises:
        RunError: neither.
    """
    path = Path(path)
    if path.is_dir():
        for name, note in ((FINAL, None), (LATEST, "the run has not finished; using its latest")):
            candidate = checkpoint(path, name)
            if candidate.is_file():
                if note:
                    log.warning("%s: %s checkpoint (%s)", path, note, candidate)
                return candidate
        raise RunError(f"{path}: no {CHECKPOINTS}/{FINAL} or {LATEST} (not a raw2rgb run folder)")
    if not path.is_file():
        raise RunError(f"{path}: no such checkpoint")
    return path


def read_identity(run_dir: os.PathLike | str) -> dict[str, Any]:
    """``config.json`` of a RUN: ``config`` (the TrainConfig as JSON), ``dataset``, ``dataset_key``."""
    path = Path(run_dir) / CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir}: no {CONFIG} (not a raw2rgb run folder)") from None
    except (ValueError, RecursionError):
        raise RunError(f"{path}: unreadable; use --force to start this run over") from None


def holds_run(run_dir: Path) -> bool:
    """Whether RUN holds a raw2rgb run: a ``config.json`` that raw2rgb wrote (its ``config`` and
    ``dataset_key``). A user's own ``config.json`` there is no run, so it is never replaced."""
    path = run_dir / CONFIG
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return True  # unreadable: read_identity says so in one line
    return isinstance(data, dict) and "config" in data and "dataset_key" in data


def took_a_step(run_dir: Path) -> bool:
    """Whether a run has anything to resume: a checkpoint (every one is saved after a step)."""
    return any(checkpoint(run_dir, name).is_file() for name in (LATEST, STAGE1, FINAL))


def colour_words(colour: dict[str, Any] | None) -> str:
    """A run identity's ``colour`` (``pipeline/shards.py``'s ``colour_source``: where its data's colour
    comes from) in words; None: a run of before it."""
    if not isinstance(colour, dict):
        return "the unpack sidecars beside the shards (an older raw2rgb)"
    gains = colour.get("dataset_gains")
    return (f"{colour.get('stored')}, {colour.get('as_shot')} of {colour.get('samples')} samples with an as-shot white "
            f"balance" + ("" if gains is None else ", dataset gains " + ", ".join(f"{g:.3f}" for g in gains)))


def open_run(run_dir: Path, identity: dict[str, Any], force: bool) -> bool:
    """Create RUN for this identity, or check that it holds this run (the caller resumes it); True
    when this call wrote ``config.json`` (a new run, or one started over).

    With ``force`` an existing run is started over: only what a run writes is removed, and only
    where ``config.json`` says a run lives; a folder with other files and no run is refused. A run
    without a checkpoint is started over without ``force`` when the identity changed: it has no
    step to lose, and refusing it would make a refused start (a batch too large) stick.

    Raises:
        RunError: another config or dataset without ``force`` where a checkpoint holds the run's
            steps, or a folder that holds no run.
    """
    path = run_dir / CONFIG
    held = holds_run(run_dir)
    if run_dir.exists() and not held:
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
        if others:
            raise RunError(f"{run_dir} is not empty and holds no run ({', '.join(others[:3])}"
                           f"{', …' if len(others) > 3 else ''}); choose an empty or new folder")
    elif held and not force and not took_a_step(run_dir):
        if _saved_identity(run_dir) == identity:
            return False  # the same run, not one step taken yet: it starts from its beginning
        log.info("%s: its run took no step yet; started over with the new options", run_dir)
        discard(run_dir)
    elif held and not force:
        saved = read_identity(run_dir)
        if saved.get("config") != identity["config"]:
            old, new = saved.get("config", {}), identity["config"]
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise RunError(f"{run_dir} holds a run with another config (differs in {', '.join(diff)}); "
                           "use --force to start over, or another -o")
        if saved.get("dataset_key") != identity["dataset_key"]:
            raise RunError(f"{run_dir} was trained on other shards (the dataset changed since); use --force "
                           "to start over, or another -o")
        if saved.get("colour") != identity.get("colour"):
            raise RunError(f"{run_dir} was trained on colour from {colour_words(saved.get('colour'))}, this data's "
                           f"comes from {colour_words(identity.get('colour'))}; resume on the data it was trained on, "
                           "or use --force to start over")
        return False
    elif force:
        discard(run_dir)
    write_json(path, identity)
    return True


def _saved_identity(run_dir: Path) -> dict[str, Any] | None:
    """RUN/config.json, or None when it cannot be read (a run without steps is started over then)."""
    try:
        return read_identity(run_dir)
    except RunError:
        return None


def discard(run_dir: Path) -> None:
    """Remove what a run writes (and nothing else) from RUN: ``--force``, a run started over before
    its first checkpoint, or a start refused while setting up."""
    for name in WRITES:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()


def remove_if_unused(run_dir: Path) -> None:
    """Remove RUN when a refused start created it and it holds nothing but the lock file."""
    with contextlib.suppress(OSError):
        if {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            run_dir.rmdir()


# -- statistics ---------------------------------------------------------------------------------------

def progress_record(event: str, step: int, stage: int, epoch: int, terms: dict[str, Any], **more: Any
                    ) -> dict[str, Any]:
    """A stats.jsonl record of the loop (``event``: ``step`` or ``epoch``): where the run is (the
    global step, the stage, the epoch from 1), the loss terms (numbers or 0-d tensors, rounded to 6
    places), then ``more`` (learning rates and the rate for a step, validation for an epoch)."""
    return {"step": step, "event": event, "stage": stage, "epoch": epoch,
            **{k: round(float(v), 6) for k, v in terms.items()}, **more}


def truncate_stats(run_dir: Path, lines: int) -> None:
    """Keep the first ``lines`` lines of stats.jsonl: what was logged after the checkpoint is redone."""
    path = run_dir / STATS
    if path.is_file():
        kept = path.read_text().splitlines(keepends=True)[:lines]
        write_bytes(path, "".join(kept).encode())


class Stats:
    """stats.jsonl and TensorBoard scalars (rank 0 only; other ranks write nothing)."""

    def __init__(self, run_dir: Path, lines: int, enabled: bool) -> None:
        self.path, self.lines, self.enabled, self.tb = run_dir / STATS, lines, enabled, None
        if enabled:
            truncate_stats(run_dir, lines)
            try:  # optional: training runs without TensorBoard (and its import takes a second)
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / TENSORBOARD))
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.lines += 1
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "stage", "epoch"):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def iter_stats(run_dir: os.PathLike | str) -> Iterator[dict[str, Any]]:
    """The records of a run's stats.jsonl, in order."""
    path = Path(run_dir) / STATS
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def log_to_file(run_dir: Path) -> logging.Handler | None:
    """Copy raw2rgb's log lines into RUN/log.txt (once per process, until :func:`close_log`)."""
    path = run_dir / LOG
    root = logging.getLogger("raw2rgb")
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == str(path.resolve()) for h in root.handlers):
        return None
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def close_log(run_dir: Path) -> None:
    """Stop copying log lines into RUN/log.txt: a later run in the same process (a benchmark, a
    notebook) logs into its own folder only."""
    path = str((run_dir / LOG).resolve())
    root = logging.getLogger("raw2rgb")
    for h in [h for h in root.handlers if isinstance(h, logging.FileHandler) and h.baseFilename == path]:
        root.removeHandler(h)
        h.close()
