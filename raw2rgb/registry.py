"""Registries: the one place each extension point's entries are declared (presets, dataset layouts,
saliency methods, rendering methods, loss terms). The CLI's choices, defaults and help read from
them, so an entry added here, in a plugin or in a test is a choice everywhere at once.

Every entry has a ``help`` line. A registry keeps the order entries were added in. Its default is
one of its names, or ``auto`` where the registry declares an :class:`Auto` rule: a help line and a
resolver that picks a real entry from what the call has at hand (the layout that a source folder
looks like; SalGAN when its weights are found). ``"auto" in reg`` is then true, ``reg.choices()``
starts with it and ``reg.help()`` lists it first; ``reg.resolve(name, …)`` turns ``auto`` into an
entry's name and checks any other name, so code past the resolution only ever meets real entries
(``reg["auto"]`` is a bug, and raises). No entry may be named ``auto``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from raw2rgb.errors import UserError

AUTO = "auto"


class Entry(Protocol):
    help: str


E = TypeVar("E", bound=Entry)


class UnknownEntry(UserError, KeyError):
    """A name no entry of the registry has; the message lists the ones it has."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Auto:
    """A registry's ``auto``: ``help`` says what it picks (a string, or a function giving one from
    the entries registered when the help is shown); ``resolve(*context)`` returns the name of a
    registered entry (it may raise a :class:`~raw2rgb.errors.UserError` when nothing fits)."""

    help: str | Callable[[], str]
    resolve: Callable[..., str]


class Registry(Generic[E]):
    """Named entries of one extension point.

    Args:
        what: what an entry is, in words (``"preset"``), for errors and help.
        default: the name used when none is given: an entry's (added before it is read), or ``auto``
            with ``auto`` declared.
        auto: the registry's ``auto`` rule, when it has one.
    """

    def __init__(self, what: str, default: str | None = None, auto: Auto | None = None) -> None:
        if default == AUTO and auto is None:
            raise ValueError(f"{what}: the default {AUTO!r} needs an auto rule")
        self.what, self.default, self.auto = what, default, auto
        self._entries: dict[str, E] = {}

    def add(self, name: str, entry: E) -> E:
        """Declare ``entry`` under ``name``; a name already taken (or ``auto``) is refused."""
        if name in self._entries or name == AUTO:
            raise ValueError(f"{self.what} {name!r} is already registered" if name != AUTO else
                             f"{self.what} {AUTO!r} names the registry's auto rule, not an entry")
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
            if name == AUTO and self.auto is not None:  # a caller that skipped resolve(): a bug, not a choice
                raise KeyError(f"{self.what} {AUTO!r} is a rule, not an entry: resolve it first "
                               "(Registry.resolve)") from None
            raise UnknownEntry(f"unknown {self.what} {name!r} (one of {', '.join(self.choices())})") from None

    def __contains__(self, name: object) -> bool:
        """``name`` is a choice: an entry's name, or ``auto`` where the registry has the rule."""
        return name in self._entries or (name == AUTO and self.auto is not None)

    def __iter__(self) -> Iterator[str]:
        """The entries' names (``auto`` is no entry: see :meth:`choices`)."""
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, E]]:
        return list(self._entries.items())

    def choices(self) -> tuple[str, ...]:
        """What an option naming an entry accepts: ``auto`` first where the registry has the rule,
        then every entry's name."""
        return ((AUTO,) if self.auto is not None else ()) + tuple(self._entries)

    def resolve(self, name: str, *context: Any, **kw: Any) -> str:
        """The entry ``name`` stands for: ``auto`` resolved by the rule from ``context`` (what it
        picks from: a source folder, a weights path), any other name checked and returned.

        Raises:
            UnknownEntry: a name that is no choice.
        """
        if name == AUTO and self.auto is not None:
            picked = self.auto.resolve(*context, **kw)
            if picked not in self._entries:
                raise ValueError(f"{self.what} {AUTO!r} resolved to {picked!r}, which is not registered")
            return picked
        self[name]  # noqa: B018 - refuses an unknown name, listing the choices
        return name

    def help(self) -> str:
        """One line per choice, ``name: help`` (``auto`` first), joined for an option's help text."""
        lines = [f"{name}: {entry.help}" for name, entry in self._entries.items()]
        if self.auto is not None:
            lines.insert(0, f"{AUTO}: {self.auto.help() if callable(self.auto.help) else self.auto.help}")
        return "; ".join(lines)
