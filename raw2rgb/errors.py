"""Errors a user can cause, and how they are told: one line that names the file and the reason.

Every such error derives from :class:`UserError`; the CLI catches that base alone and prints the
message. Anything else is a bug and keeps its traceback. Errors of one domain (a RAW file that
cannot be read, a shard, a checkpoint) are subclasses defined beside the code that raises them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
from collections.abc import Iterator


class UserError(Exception):
    """A mistake in the input, the options or the environment that the user can fix; the message
    is one line for them."""


class InputError(UserError):
    """Inputs or options a command cannot turn into work (no files, clashing names, a bad value)."""


class ConfigError(UserError):
    """A configuration (JSON file, option set) that does not describe a valid run."""


class FolderLocked(UserError):
    """Another raw2rgb process is writing into the same output folder."""


class Interrupted(KeyboardInterrupt):
    """A stop signal obeyed (Ctrl-C, SIGTERM): what was finished is kept, and the command exits with
    128 + the signal (130, 143), as a shell reports a process that a signal stopped. A
    KeyboardInterrupt, so that every library that cleans up after Ctrl-C (joblib's pools, torch's
    loaders) does so for SIGTERM too."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(signum, message)
        self.signal = int(signum)
        self.message = message or f"interrupted ({signal.Signals(self.signal).name})"

    def __str__(self) -> str:
        return self.message


class OutOfResources(UserError):
    """The machine ran out of disk space, quota or memory: not the fault of the item in hand, so an
    item stage stops at once instead of failing every item left the same way (a rerun resumes). The
    message names the file and what was being written."""


# -- the machine, not a bug: one place that tells its errors in all their forms ------------------------

OUT_OF_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# OS errors that describe the machine, not a bug: disk full, no permission, read-only file system.
ENVIRONMENT_ERRNOS = {**OUT_OF_SPACE, errno.ENOMEM: "out of memory",
                      errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                      errno.EROFS: "read-only file system"}
# HDF5 (through h5py) puts the OS error in its text, and leaves ``errno`` unset on some paths (a
# flush at close comes back as a RuntimeError): "Can't write data (file write failed: time = …,
# filename = '….h5', file descriptor = 5, errno = 28, error message = 'No space left on device', …)".
_ERRNO_IN_TEXT = re.compile(r"\berrno = (\d+)")
_FILENAME_IN_TEXT = re.compile(r"\bfilename = '([^']+)'")
_SPACE_TEXTS = {"no space left on device": OUT_OF_SPACE[errno.ENOSPC],  # matched in lower case
                "disk quota exceeded": OUT_OF_SPACE[errno.EDQUOT]}
# torch's zip writer (caffe2's inline_container.cc) reports a short write without the OS error:
# "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file
# write failed", then, while closing the file, "… unexpected pos 16192 vs 16088".
_TORCH_SHORT_WRITE = ("file write failed", "unexpected pos")
TORCH_SHORT_WRITE = "no space left on device or disk quota exceeded"  # the usual causes; torch does not say
# torch's CPU allocator: "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough
# memory: you tried to allocate 1048576 bytes" (older: "can't allocate memory: …").
_CPU_ALLOCATOR = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    """``e`` and the exceptions it was raised from or while handling (torch and h5py chain theirs)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def out_of_space(e: BaseException) -> str | None:
    """"no space left on device" or "disk quota exceeded" when ``e`` (or an exception in its chain)
    is a write that the disk refused, in any of the forms the writers report it: an OSError's errno,
    h5py's text, torch's zip writer (whose words are a guess: an errno anywhere in the chain wins).
    Else None."""
    guess = None
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in OUT_OF_SPACE:
            return OUT_OF_SPACE[x.errno]
        text = str(x)
        found = _ERRNO_IN_TEXT.search(text)
        if found and int(found.group(1)) in OUT_OF_SPACE:
            return OUT_OF_SPACE[int(found.group(1))]
        for words, why in _SPACE_TEXTS.items():
            if words in text.lower():
                return why
        if isinstance(x, RuntimeError) and "inline_container.cc" in text and any(w in text for w in _TORCH_SHORT_WRITE):
            guess = TORCH_SHORT_WRITE
    return guess


def out_of_memory(e: BaseException) -> str | None:
    """"out of memory" or "out of GPU memory" when ``e`` (or an exception in its chain) is an
    allocation that failed: MemoryError, torch's OutOfMemoryError (told by name: this module imports
    no torch), its CPU allocator's RuntimeError, ENOMEM. Else None."""
    for x in _chain(e):
        if type(x).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(x):
            return "out of GPU memory"
        if isinstance(x, MemoryError) or (isinstance(x, OSError) and x.errno == errno.ENOMEM) \
                or any(w in str(x) for w in _CPU_ALLOCATOR):
            return "out of memory"
    return None


def machine_reason(e: BaseException) -> str | None:
    """Why the machine, not the input, stopped an operation, in a few words ("no space left on
    device", "out of memory", "permission denied", …), or None when ``e`` is something else."""
    why = out_of_space(e) or out_of_memory(e)
    if why:
        return why
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in ENVIRONMENT_ERRNOS:
            return ENVIRONMENT_ERRNOS[x.errno]
    return None


def _filename(e: BaseException) -> str | None:
    for x in _chain(e):
        if isinstance(x, OSError) and x.filename:
            return str(x.filename)
        found = _FILENAME_IN_TEXT.search(str(x))
        if found:
            return found.group(1)
    return None


def environment_message(e: BaseException) -> str | None:
    """A one-line message for an error that the machine causes (disk full, out of memory, no
    permission), naming the file when the error does, else None."""
    why = machine_reason(e)
    if why is None:
        return None
    where = _filename(e)
    return f"{where}: {why}" if where else why


@contextlib.contextmanager
def writing(path: os.PathLike | str, what: str) -> Iterator[None]:
    """Name ``path`` and ``what`` in the error of a write in the block that the machine stops: the
    writers' own errors (h5py's, torch's) name a temporary file, or nothing. Other errors pass
    unchanged.

    Raises:
        OutOfResources: a full disk, a quota or out of memory while the block ran.
    """
    try:
        yield
    except OutOfResources:
        raise
    except Exception as e:
        why = out_of_space(e) or out_of_memory(e)
        if why is None:
            raise
        raise OutOfResources(f"{path}: cannot write the {what} ({why})") from e


def one_line(text: str) -> str:
    """``text`` with every run of white space (newlines included) folded into one space, and every other
    character that does not print (a terminal escape in a file's name) written as its escape."""
    return printable(" ".join(str(text).split()))


def printable(text: str) -> str:
    """``text`` with the characters that do not print (ESC, BEL, …; newlines kept) written as Python
    escapes: a file named to drive the terminal (``ESC]0;…BEL``) is shown, never obeyed."""
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in str(text))
