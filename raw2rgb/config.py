"""JSON round trips for the frozen config dataclasses, so that every saved config rebuilds what made it,
and the values each field accepts, checked whenever a config is made.

``JsonConfig.to_json()`` gives plain JSON values; ``Cls.from_json(d)`` rebuilds the dataclass,
nested configs and tuples included, and refuses keys it does not know (a config from a newer or
different tool says so instead of being half-read). A field declares what it accepts with
:func:`checked` (a range, a set of choices, a rule); every number must be finite and every integer
fit in 64 bits (torch and numpy take it). The check runs on every construction, from a JSON file, a
command's options or code alike, so a config that exists is one a run can use. :func:`layered`
builds a config from a preset, a file and options, checking each in turn so that an error names where
the bad value came from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from raw2rgb.errors import ConfigError, one_line
from raw2rgb.registry import Registry

T = TypeVar("T", bound="JsonConfig")


class FieldError(ConfigError):
    """A field that holds a value it does not accept: ``Owner.path.to.field: problem``."""

    def __init__(self, owner: str, path: tuple[str, ...], problem: str) -> None:
        self.owner, self.path, self.problem = owner, path, problem
        super().__init__(f"{'.'.join((owner, *path))}: {problem}")


def checked(default: Any = dataclasses.MISSING, *, min: float | None = None, max: float | None = None,
            above: float | None = None, below: float | None = None, choices: Iterable[Any] | None = None,
            rule: tuple[Callable[[Any], bool], str] | None = None, help: str | Callable[[], str] | None = None,
            metavar: str | None = None, option: bool = True, **kw: Any) -> Any:
    """A dataclass field with the values it accepts: ``min``/``max`` inclusive, ``above``/``below``
    exclusive (each element of a tuple), ``choices``, or ``rule`` (a predicate on the whole value
    and what it asks for in words). ``None`` is always accepted where the type allows it.

    The same declaration is the field's command-line option (``options.py`` makes it): ``help``
    is its help line (without the default and range, which are added from the field; a function
    giving it where it names what the library holds when the page is shown), ``metavar``
    the placeholder shown for its value, and ``option=False`` marks a field that is deliberately no
    option (resolved by the library, or set only through a preset or a config file)."""
    meta = {k: v for k, v in (("min", min), ("max", max), ("above", above), ("below", below),
                              ("rule", rule)) if v is not None}
    if choices is not None:  # a registry stays live: an entry added later is accepted
        meta["choices"] = choices if isinstance(choices, Registry) else tuple(choices)
    shown = {"help": help or "", "metavar": metavar, "option": option}
    return dataclasses.field(default=default, metadata={"accepts": meta, "option": shown}, **kw)


def field_option(f: dataclasses.Field) -> dict[str, Any]:
    """How a field is shown as an option: ``help``, ``metavar``, ``option`` (see :func:`checked`); a
    field declared without :func:`checked` is an option with no help line."""
    return dict(f.metadata.get("option", {"help": "", "metavar": None, "option": True}))


def accepted(name: str, meta: dict[str, Any]) -> str:
    """What a field accepts, in words: ``batch_size >= 1``, ``0 <= ema < 1``, ``one of step, cosine``."""
    if "choices" in meta:
        choices = meta["choices"]
        return "one of " + ", ".join(str(c) for c in (choices.choices() if isinstance(choices, Registry) else choices))
    lo = f"{meta['min']:g} <= " if "min" in meta else f"{meta['above']:g} < " if "above" in meta else ""
    hi = f" <= {meta['max']:g}" if "max" in meta else f" < {meta['below']:g}" if "below" in meta else ""
    if lo and not hi:  # one bound reads better with the name first: batch_size >= 1
        lo, hi = "", f" {'>=' if 'min' in meta else '>'} {meta['min'] if 'min' in meta else meta['above']:g}"
    words = f"{lo}{name}{hi}" if lo or hi else "a finite number"
    if "rule" in meta:
        words = meta["rule"][1] if not (lo or hi) else f"{words}, {meta['rule'][1]}"
    return words


def _shown(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


# Integers a run can use: torch and numpy take counts, sizes and seeds as 64-bit integers, and a
# float field's value must convert to a float (a 400-digit integer raises OverflowError there).
INT_LIMIT = 2**63


def _digits(v: int) -> str:
    """A huge integer shown in a one-line message: its first digits and how many there are."""
    text = str(v)
    return text if len(text) <= 24 else f"{text[:12]}… ({len(text.lstrip('-'))} digits)"


def _problem(name: str, value: Any, meta: dict[str, Any]) -> str | None:
    """Why ``value`` is not accepted by a field with ``meta`` (None when it is)."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    for v in items:
        if isinstance(v, (tuple, list)):
            why = _problem(name, v, {k: m for k, m in meta.items() if k != "rule"})
            if why:
                return why
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return f"{v} is not a finite number" + (f" (accepted: {accepted(name, meta)})" if meta else "")
        if isinstance(v, int) and not isinstance(v, bool) and not -INT_LIMIT <= v < INT_LIMIT:
            return f"{_digits(v)} is not a representable number" + \
                (f" (accepted: {accepted(name, meta)})" if meta else "")
        if "choices" in meta and v not in meta["choices"]:
            return f"{_shown(v)} is not {accepted(name, meta)}"
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (
                ("min" in meta and v < meta["min"]) or ("max" in meta and v > meta["max"])
                or ("above" in meta and v <= meta["above"]) or ("below" in meta and v >= meta["below"])):
            return f"{_shown(v)} is out of range (accepted: {accepted(name, meta)})"
    if "rule" in meta and not meta["rule"][0](value):
        return f"{_shown(list(value) if isinstance(value, tuple) else value)} is not accepted " \
               f"({accepted(name, meta)})"
    return None


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((f.name, dict(f.metadata.get("accepts", {}))) for f in dataclasses.fields(cls))


class JsonConfig:
    """Mixin for frozen dataclasses whose fields are JSON values, tuples or other JsonConfigs.

    Every construction checks each field against what it accepts (:func:`checked`; numbers
    finite), so an out-of-range value is refused before any work.

    Raises:
        FieldError: on construction, a value the field does not accept.
    """

    def __post_init__(self) -> None:
        for name, meta in _fields(type(self)):
            why = _problem(name, getattr(self, name), meta)
            if why:
                raise FieldError(type(self).__name__, (name,), why)
        self._check_together()

    def _check_together(self) -> None:
        """Rules that take more than one field (a subclass's; raise :class:`FieldError`)."""

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], d: dict[str, Any]) -> T:
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: {json.dumps(d)[:40]} is not a JSON object of its fields")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise FieldError(cls.__name__, (), f"unknown fields {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        out = {}
        for k, v in d.items():
            try:
                out[k] = _value(hints[k], v)
            except FieldError as e:  # a nested config's field: one dotted path from the outermost
                raise FieldError(cls.__name__, (k, *e.path), e.problem) from None
            except ConfigError as e:
                raise FieldError(cls.__name__, (k,), str(e)) from None
        return cls(**out)


_SCALARS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _value(hint: Any, v: Any) -> Any:
    """``v`` as the field's type (nested configs and tuples rebuilt); a value of another type is refused."""
    options = _options(hint)
    if v is None:
        if type(None) in options or hint is Any:
            return None
        raise ConfigError("null is not allowed here")
    for option in options:
        if isinstance(option, type) and issubclass(option, JsonConfig) and isinstance(v, dict):
            return option.from_json(v)
        origin = typing.get_origin(option)
        if (option is tuple or origin is tuple) and isinstance(v, (list, tuple)):
            args = typing.get_args(option)
            if args and args[-1] is not Ellipsis:
                if len(args) != len(v):
                    raise ConfigError(f"{len(args)} values expected, got {len(v)}")
                return tuple(_value(a, x) for a, x in zip(args, v))
            return tuple(_value(args[0], x) if args else x for x in v)
        if option in _SCALARS and isinstance(v, _SCALARS[option]) and not (option is not bool and isinstance(v, bool)):
            if option is float and isinstance(v, int) and not -INT_LIMIT <= v < INT_LIMIT:
                return v  # float() may overflow: the field's check refuses it, naming the field
            return float(v) if option is float else v
        if option is Any or origin is dict and isinstance(v, dict):
            return v
    names = ", ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise ConfigError(f"{json.dumps(v)[:40]} is not {names}")


def _options(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


# -- configs from layers: a preset, a file, options -------------------------------------------------

def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` over ``base``, nested configs merged field by field; a value that is not an
    object replaces the nested config whole (and is then refused by its type)."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_json_object(path: os.PathLike | str, what: str) -> dict[str, Any]:
    """A JSON file holding one object (``what`` names its contents for the error).

    Raises:
        ConfigError: unreadable, not JSON, or not an object, naming the file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise ConfigError(f"{path}: not a readable JSON file ({one_line(str(e))})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a JSON object of {what} expected")
    return loaded


def layered(cls: type[T], layers: Iterable[tuple[str | None, dict[str, Any]]]) -> T:
    """``cls`` from JSON layers merged in order (a preset, then a file, then the options given),
    each checked as soon as it is merged, so that an error names the layer (the file) whose value
    is wrong, and a value of the wrong type is refused before a later layer could hide it.

    Raises:
        ConfigError: a field of the wrong type, unknown or out of range, prefixed with the layer's
            name (a file's path) when it has one.
    """
    data: dict[str, Any] = {}
    cfg = None
    for source, layer in layers:
        data = merge(data, layer)
        try:
            cfg = cls.from_json(data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}" if source else str(e)) from None
    if cfg is None:
        raise ValueError("layered() needs at least one layer")
    return cfg
