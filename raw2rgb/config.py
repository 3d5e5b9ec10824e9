"""JSON round trips for the frozen config dataclasses, so that every saved config rebuilds what made it.

``JsonConfig.to_json()`` gives plain JSON values; ``Cls.from_json(d)`` rebuilds the dataclass,
nested configs and tuples included, and refuses keys it does not know (a config from a newer or
different tool says so instead of being half-read).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from raw2rgb.errors import ConfigError

T = TypeVar("T", bound="JsonConfig")


class JsonConfig:
    """Mixin for frozen dataclasses whose fields are JSON values, tuples or other JsonConfigs."""

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown fields {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        out = {}
        for k, v in d.items():
            try:
                out[k] = _value(hints[k], v)
            except ConfigError as e:
                raise ConfigError(f"{cls.__name__}.{k}: {e}") from None
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
            return float(v) if option is float else v
        if option is Any or origin is dict and isinstance(v, dict):
            return v
    names = ", ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise ConfigError(f"{json.dumps(v)[:40]} is not {names}")


def _options(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
