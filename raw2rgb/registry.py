"""Registries: the one place each extension point's entries are declared (presets, dataset layouts,
saliency methods, rendering methods). The CLI's choices, defaults and help read from them, so an
entry added here, in a plugin or in a test is a choice everywhere at once.

Every entry has a ``help`` line. A registry keeps the order entries were added in; its default is
one of its names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from raw2rgb.errors import UserError


class Entry(Protocol):
    help: str


E = TypeVar("E", bound=Entry)


class UnknownEntry(UserError, KeyError):
    """A name no entry of the registry has; the message lists the ones it has."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[E]):
    """Named entries of one extension point.

    Args:
        what: what an entry is, in words (``"preset"``), for errors and help.
        default: the name used when none is given (must be added before it is read).
    """

    def __init__(self, what: str, default: str | None = None) -> None:
        self.what, self.default = what, default
        self._entries: dict[str, E] = {}

    def add(self, name: str, entry: E) -> E:
        """Declare ``entry`` under ``name``; a name already taken is refused."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        if not getattr(entry, "help", ""):
            raise ValueError(f"{self.what} {name!r} has no help line")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> E:
        """Take an entry out again (a test's toy entry)."""
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownEntry(f"unknown {self.what} {name!r} (one of {', '.join(self)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, E]]:
        return list(self._entries.items())

    def help(self) -> str:
        """One line per entry, ``name: help``, joined for an option's help text."""
        return "; ".join(f"{name}: {entry.help}" for name, entry in self._entries.items())
