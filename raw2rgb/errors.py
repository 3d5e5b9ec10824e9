"""Errors a user can cause, and how they are told: one line that names the file and the reason.

Every such error derives from :class:`UserError`; the CLI catches that base alone and prints the
message. Anything else is a bug and keeps its traceback. Errors of one domain (a RAW file that
cannot be read, a shard, a checkpoint) are subclasses defined beside the code that raises them.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """A mistake in the input, the options or the environment that the user can fix; the message
    is one line for them."""


class InputError(UserError):
    """Inputs or options a command cannot turn into work (no files, clashing names, a bad value)."""


class ConfigError(UserError):
    """A configuration (JSON file, option set) that does not describe a valid run."""


class FolderLocked(UserError):
    """Another raw2rgb process is writing into the same output folder."""


# OS errors that describe the machine, not a bug: disk full, no permission, read-only file system.
ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                      errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                      errno.EROFS: "read-only file system"}


def environment_message(e: BaseException) -> str | None:
    """A one-line message for an OS error that the machine causes (disk full, no permission), else
    None. Looks through ``__cause__``/``__context__`` too: torch wraps a disk-full write in a
    RuntimeError ("enforce fail at inline_container.cc")."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            where = e.filename if e.filename else None
            return f"{where}: {ENVIRONMENT_ERRNOS[e.errno]}" if where else ENVIRONMENT_ERRNOS[e.errno]
        if isinstance(e, RuntimeError) and "No space left on device" in str(e):
            return ENVIRONMENT_ERRNOS[errno.ENOSPC]
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None


def one_line(text: str) -> str:
    """``text`` with every run of white space (newlines included) folded into one space."""
    return " ".join(str(text).split())
