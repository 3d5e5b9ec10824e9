"""Files: atomic writes, hashing, collecting input files, path safety and output-folder locks.

Everything that writes a result goes through :func:`atomic_path`: a temporary name beside the
target, flushed to disk, then renamed, so a killed process or a full disk never leaves a file
that looks finished. Paths read from a folder or from a file inside it (a manifest, a CSV, an
index) are followed only while they stay inside that folder (:func:`inside`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from raw2rgb.errors import FolderLocked, InputError

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
LOCK_FILE = ".raw2rgb.lock"


# -- atomic files ---------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, flush it to disk and
    rename it onto ``path`` (then flush the folder, so the rename survives a power cut too).

    The temporary name starts with a dot and ends in ``.partial``; a killed process leaves at
    most such a file, which :func:`remove_partials` deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented, key-sorted JSON (the form every raw2rgb JSON file takes)."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_json(path: os.PathLike | str, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    write_bytes(path, json_bytes(obj))


def remove_partials(folder: os.PathLike | str) -> int:
    """Delete temporary files left by a killed run under ``folder``; return how many."""
    n = 0
    for p in Path(folder).rglob(f".*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def file_sha256(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/raw2rgb``, by default ``~/.cache/raw2rgb``: weights, measured model facts."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "raw2rgb"


# -- path safety ----------------------------------------------------------------------------------

def inside(root: os.PathLike | str, path: os.PathLike | str) -> bool:
    """Whether ``path``, with every symbolic link resolved, lies inside ``root``: the one rule for
    any path read from a folder or from a file in it."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def check_output(path: os.PathLike | str, folder: bool) -> Path:
    """Refuse, before any work, an output path that cannot be made: one under a file (``-o
    photo.jpg/out``), a folder where a file is wanted or a file where a folder is. The one check
    behind every command's ``-o``.

    Raises:
        InputError: the path and what is wrong with it.
    """
    path = Path(path)
    for parent in path.parents:  # the nearest ancestor that exists must be a folder
        if parent.is_symlink() and not parent.exists():
            raise InputError(f"{path}: {parent} is a broken symbolic link, not a folder")
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{path}: {parent} is a file, not a folder")
            break
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not a folder; give a folder (or a new name) for this output")
    if not folder and path.is_dir():
        raise InputError(f"{path} is a folder, not a file; give a file name for this output")
    if path.is_symlink() and not path.exists():
        raise InputError(f"{path} is a broken symbolic link")
    return path


def _within(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


# -- inputs ---------------------------------------------------------------------------------------

def collect_files(args: Iterable[str], accept: Callable[[Path], bool],
                  exclude: Iterable[os.PathLike | str] = (), skip: set[Path] = frozenset()) -> list[tuple[str, str]]:
    """Turn files, folders and glob patterns into (key, path) pairs, in a stable order.

    A folder contributes every accepted file below it (hidden ones skipped), keyed by its path
    relative to the folder without suffix, so ``a/x.dng`` and ``b/x.dng`` stay apart; a file found
    in a folder through a symbolic link that leads out of the folder is skipped; a file is keyed
    by its stem. Nothing under an ``exclude`` folder is taken (a command's own output folder,
    when it lies inside its input), nor a file of ``skip`` (resolved paths: the outputs a command
    recorded in a folder that is also its input). A path that does not exist is kept (its item
    fails with "no such file", so the rest still run). What a folder holds that cannot be read as a
    file (a broken link, a FIFO, a socket) or leads out of it is skipped and listed in one warning,
    as is a named path that is neither a file nor a folder.

    Raises:
        InputError: two inputs get the same key, or nothing was named.
    """
    found: dict[str, str] = {}
    folders = [Path(p).resolve() for p in exclude]
    skipped: list[str] = []

    def add(key: str, path: Path) -> None:
        key = key.replace(os.sep, "/")
        if key in found and found[key] != str(path):
            raise InputError(f"{found[key]} and {path} would both be named {key!r} in the "
                             "output; give them in separate runs or folders")
        found[key] = str(path)

    for arg in args:
        path = Path(arg)
        if path.is_dir():
            if not _within(path.resolve(), folders):
                for key, p in _folder_files(path, accept, folders, skip, skipped):
                    add(key, p)
        elif path.is_file():
            add(path.stem, path.resolve())
        elif path.exists():  # a FIFO, a socket, a device
            skipped.append(f"{path} ({not_a_file(path)})")
        elif glob.has_magic(arg):
            files = [Path(m) for m in sorted(glob.glob(arg, recursive=True))
                     if Path(m).is_file() and not _within(Path(m).resolve(), folders) and Path(m).resolve() not in skip]
            for m in files:
                add(m.stem, m.resolve())
            if not files:
                add(path.stem or arg, path)
        else:
            add(path.stem or arg, path)
    if skipped:
        log.warning("skipped %d input%s that cannot be read as files: %s%s", len(skipped), "s" * (len(skipped) > 1),
                    "; ".join(skipped[:20]), f"; … and {len(skipped) - 20} more" if len(skipped) > 20 else "")
    if not found:
        raise InputError("no input files" + (" (besides the command's own outputs)" if folders or skip else ""))
    return list(found.items())


def _folder_files(folder: Path, accept: Callable[[Path], bool], exclude: list[Path], skip: set[Path],
                  skipped: list[str]) -> Iterator[tuple[str, Path]]:
    """(key, resolved path) of the accepted files below ``folder`` (see :func:`collect_files`); what
    cannot be read as a file, or leads out of the folder, goes to ``skipped``."""
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(s.startswith(".") for s in rel.parts) or p.is_dir():
            continue
        if not p.is_file():  # never opened: reading a FIFO would wait for ever
            skipped.append(f"{p} ({not_a_file(p)})")
            continue
        resolved = p.resolve()
        if _within(resolved, exclude) or resolved in skip:
            continue
        if not inside(folder, p):
            skipped.append(f"{p} (a link that leads outside {folder})")
            continue
        if accept(p):
            yield str(rel.with_suffix("")), resolved


def not_a_file(path: Path) -> str:
    """What a path that is neither a regular file nor a folder is, for a message."""
    if path.is_symlink() and not path.exists():
        return f"a broken symbolic link to {os.readlink(path)}"
    mode = path.stat().st_mode
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


# -- one writer per output folder -----------------------------------------------------------------

class FolderLock:
    """An exclusive lock on an output folder for the life of one command (``flock`` on
    ``FOLDER/.raw2rgb.lock``, released by the kernel when the process ends, even by SIGKILL).

    A second raw2rgb writing into the same folder is refused with a line naming the holder.
    Within one process the lock is re-entrant (``prepare`` locks DATASET, then its stages lock
    their own folders inside it).
    """

    _held: dict[str, int] = {}

    def __init__(self, folder: os.PathLike | str, what: str = "raw2rgb") -> None:
        self.folder, self.what, self.fd = Path(folder), what, None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = str(self.folder.resolve())
        if key in self._held:
            self._held[key] += 1
            self.key = key
            return self
        path = self.folder / LOCK_FILE
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderLocked(f"{self.folder}: in use by {holder}; wait for it to finish, or use another "
                               "output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({self.what}: {' '.join(sys.argv[:1] + sys.argv[1:4])})".encode(), 0)
        self.fd, self.key = fd, key
        self._held[key] = 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._held[self.key] -= 1
        if self._held[self.key] == 0:
            del self._held[self.key]
            if self.fd is not None:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)


def _open_lock_file(path: Path) -> int:
    """Open (or create) a lock file: a regular file and nothing else. The lock truncates and writes
    it, so a symbolic link (to a user's file) is not followed, and a folder, a FIFO or a device in its
    place is refused with one line.

    Raises:
        InputError: something other than a regular file holds the name.
    """
    why = "it is not a regular file"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except IsADirectoryError:
        why = "it is a folder"
    except OSError as e:
        if path.is_symlink():
            why = "it is a symbolic link"
        elif e.errno not in (errno.ENXIO, errno.ELOOP):  # a socket or a FIFO without a reader; a link
            raise
    else:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
    raise InputError(f"{path}: {why}, not raw2rgb's lock file; remove it (raw2rgb keeps a lock file of that name "
                     "in each output folder)")
