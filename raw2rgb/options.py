"""Command-line options made from the config dataclasses, so that each option is declared once: the
field's :func:`~raw2rgb.config.checked` declaration holds its default, range, choices and help line,
and :func:`config_options` turns every field of a config (nested configs flattened) into a click
option. A field added to a config is an option at once, with its range in ``--help``; a field that
is deliberately none says so (``checked(..., option=False)``).

Options made here default to None, so that :func:`given` returns only what the user gave: the
library merges it over its own defaults (``config.layered``), and a command run from Python with the
same config gives what the CLI gives. The option's name is the field's (``min_inliers`` →
``--min-inliers``); a nested field's is its own name too (``patch.min_score`` → ``--min-score``),
and the CLI may rename an option (its ``rename``: the CLI's own words, e.g. ``patch.size`` →
``--patch-size``). No torch here: a help page reads configs that import none.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from raw2rgb.config import JsonConfig, accepted, field_option, layered
from raw2rgb.registry import Registry

T = TypeVar("T", bound=JsonConfig)

_SEP = "__"  # joins a field's path into the option's destination: "cfg__patch__size"


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices are read from the library when first needed (``get`` returns
    them: a registry's ``choices()``, a tuple), so an entry registered before the parse or the help
    page is a choice; ``cast`` turns the chosen word into the field's type (``"2"`` → 2)."""

    def __init__(self, get: Callable[[], Any], cast: Callable[[str], Any] = str) -> None:
        self._get, self._cast = get, cast
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        got = self._get()
        return tuple(str(c) for c in (got.choices() if hasattr(got, "choices") else got))

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ sets it; the library's list wins
        pass

    def convert(self, value, param, ctx):
        return self._cast(super().convert(value, param, ctx))


class LazyOption(click.Option):
    """An option whose help line (``lazy_help``, a function) is read from the library when the help
    page is shown."""

    def __init__(self, *args, lazy_help=None, **kwargs) -> None:
        self._lazy_help = lazy_help
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx):
        if self._lazy_help is not None:
            self.help = self._lazy_help()
        return super().get_help_record(ctx)


class FieldOption(LazyOption):
    """An option of a config field: it defaults to None (not given); its help shows the field's
    default as the field declares it (``shown``, without click's parentheses around a text) and
    what the field accepts beyond a range click shows itself (``accepts``: a rule, each of a tuple's
    numbers); a value against the field's rule is refused naming the option, as click refuses one
    out of range."""

    def __init__(self, *args, shown: str | None = None, accepts: str | None = None, rule=None, **kwargs) -> None:
        self.shown, self.accepts, self.rule = shown, accepts, rule
        super().__init__(*args, **kwargs)

    def get_help_extra(self, ctx):
        extra = super().get_help_extra(ctx)
        if self.shown is not None:
            extra["default"] = self.shown
        if self.accepts:
            extra["range"] = "; ".join(w for w in (extra.get("range"), self.accepts) if w)
        return extra

    def process_value(self, ctx, value):
        value = super().process_value(ctx, value)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):  # click's FLOAT takes nan and inf
                raise click.BadParameter(f"{v} is not a finite number", ctx, self)
        if value is not None and self.rule is not None and not self.rule[0](value):
            raise click.BadParameter(f"{','.join(map(str, value)) if isinstance(value, tuple) else value}: "
                                     f"{self.rule[1]} expected", ctx, self)
        return value


class Numbers(click.ParamType):
    """A fixed number of numbers in one word, ``A,B,C`` (a ratio such as ``--split 0.9,0.1,0``),
    each checked against the field's range as click checks one number."""

    def __init__(self, n: int, kind: type, element: click.ParamType) -> None:
        self.n, self.kind, self.element = n, kind, element
        self.name = f"{n} numbers"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        try:
            [self.kind(p) for p in parts]
        except ValueError:
            parts = []
        if len(parts) != self.n:
            self.fail(f"{value!r}: {self.n} comma-separated numbers expected", param, ctx)
        return tuple(self.element.convert(p, param, ctx) for p in parts)


def _number(kind: type, meta: dict[str, Any]) -> click.ParamType:
    lo = meta.get("min", meta.get("above"))
    hi = meta.get("max", meta.get("below"))
    if lo is None and hi is None:
        return click.INT if kind is int else click.FLOAT
    rng = click.IntRange if kind is int else click.FloatRange
    return rng(lo, hi, min_open="above" in meta, max_open="below" in meta)


def _unwrap(hint: Any) -> Any:
    """``int | None`` → int: the option's type without the None a default may be."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    return args[0] if len(args) == 1 else hint


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_options(cls: type[JsonConfig], tag: str, rename: Mapping[str, str] | None = None,
                   skip: tuple[str, ...] = (), default: str = "{}", _path: tuple[str, ...] = ()) -> list[click.Option]:
    """One click option per field of ``cls`` (nested configs flattened), in declaration order.

    Args:
        tag: this config's prefix in the parsed values (a command may take two configs).
        rename: dotted field path → option name without dashes, where the CLI words it otherwise;
            a path ending in ``.*`` names every field under it, ``{}`` standing for the field's name.
        skip: dotted field paths the command takes another way (its arguments).
        default: how a default is shown, ``{}`` standing for the field's (``preset's; paper {}``).
    """
    rename = rename or {}
    hints = typing.get_type_hints(cls)
    out: list[click.Option] = []
    for f in dataclasses.fields(cls):
        path = (*_path, f.name)
        dotted = ".".join(path)
        shown = field_option(f)
        if not shown["option"] or dotted in skip:
            continue
        hint = _unwrap(hints[f.name])
        if isinstance(hint, type) and issubclass(hint, JsonConfig):
            out += config_options(hint, tag, rename, skip, default, path)
            continue
        words = rename.get(".".join((*_path, "*")), "{}").format(f.name)
        name = rename.get(dotted, words.replace("_", "-"))
        out.append(_option(f, hint, shown, tag, path, name, default))
    return out


def _option(f: dataclasses.Field, hint: Any, shown: dict[str, Any], tag: str, path: tuple[str, ...],
            name: str, default_words: str) -> click.Option:
    meta = dict(f.metadata.get("accepts", {}))
    default = _default(f)
    dest = _SEP.join((tag, *path))
    kw: dict[str, Any] = {"default": None, "help": shown["help"], "metavar": shown["metavar"] or (
        None if "choices" in meta else {int: "N", float: "X"}.get(hint))}
    text = shown["help"] if callable(shown["help"]) else (lambda: shown["help"])
    if callable(shown["help"]):  # read from the library when the page is shown
        kw.update(help=None, lazy_help=text)
    if "rule" in meta:
        kw.update(rule=meta["rule"], accepts=meta["rule"][1])
    if _shown(default) is not None:
        kw["shown"] = default_words.format(_shown(default))
    if hint is bool:
        decl = f"--{name}/--no-{name}" if default else f"--{name}"
        return FieldOption([decl, dest], is_flag=True, **kw)
    if "choices" in meta:
        choices = meta["choices"]
        cast = hint if hint in (int, float) else str
        kw["type"] = LazyChoice(lambda: choices, cast)
        if isinstance(choices, Registry):  # the entries registered when the page is shown, each with its help
            kw.update(help=None, lazy_help=lambda: f"{text()} {choices.help()}.".strip())
    elif typing.get_origin(hint) is tuple:
        kinds = typing.get_args(hint)
        each = accepted("each", {k: v for k, v in meta.items() if k != "rule"})
        kw["accepts"] = "; ".join(w for w in (each if each != "a finite number" else "", kw.get("accepts")) if w)
        if kinds[0] is int:  # sizes: --size 512 768
            kw.update(type=tuple(_number(int, meta) for _ in kinds), nargs=len(kinds))
        else:  # ratios: --split 0.9,0.1,0
            kw["type"] = Numbers(len(kinds), kinds[0], _number(kinds[0], meta))
    elif hint in (int, float):
        kw["type"] = _number(hint, meta)
    return FieldOption([f"--{name}", dest], **kw)


def given(values: dict[str, Any], tag: str) -> dict[str, Any]:
    """The options of config ``tag`` the user gave, as a nested JSON-like dict of its fields (taken
    out of ``values``, the command's parsed keyword arguments)."""
    out: dict[str, Any] = {}
    for key in [k for k in values if k.startswith(tag + _SEP)]:
        value = values.pop(key)
        if value is None:
            continue
        *parents, name = key.split(_SEP)[1:]
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = list(value) if isinstance(value, tuple) else value
    return out


def parsed(cls: type[T], values: dict[str, Any], tag: str = "cfg", **fixed: Any) -> T:
    """Config ``cls`` from the options of ``tag`` the user gave (taken out of ``values``) over its own
    defaults, with ``fixed`` fields (a command's arguments); checked as it is made (``config.layered``)."""
    return layered(cls, [(None, {**fixed, **given(values, tag)})])
