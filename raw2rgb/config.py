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
            raise ValueError(f"{cls.__name__}: unknown fields {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _value(hints[k], v) for k, v in d.items()})


def _value(hint: Any, v: Any) -> Any:
    if v is None:
        return None
    for option in _options(hint):
        if isinstance(option, type) and issubclass(option, JsonConfig) and isinstance(v, dict):
            return option.from_json(v)
        origin = typing.get_origin(option)
        if (option is tuple or origin is tuple) and isinstance(v, list):
            args = typing.get_args(option)
            if args and args[-1] is not Ellipsis and len(args) == len(v):
                return tuple(_value(a, x) for a, x in zip(args, v))
            return tuple(_value(args[0], x) if args else x for x in v)
    return v


def _options(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
