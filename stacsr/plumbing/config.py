"""Typed configuration files: a dataclass from a YAML-shaped mapping, checked key by key, so that every
YAML file stacsr reads (training configurations, batch job specs) fails the same way: one line naming the key.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, Mapping


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (str annotations resolved), or a ValueError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ValueError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key} must be a list, not {value!r}")
        (arg,) = typing.get_args(tp)
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"config key {key} must be a list of {len(args)} numbers, not {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key} must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key} must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key} must be a string, not {value!r}")
        return value
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return _dataclass(tp, value, key)
    raise ValueError(f"config key {key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    where = prefix or "the configuration"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"config key {where} must be a mapping of keys to values, not {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = [str(k) for k in data if k not in known]
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ValueError(
            f"unknown config key {name} (known{' in ' + prefix if prefix else ''}: {', '.join(sorted(known))})"
        )
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - all fields have defaults
        raise ValueError(f"config {where}: {e}") from None


def parse_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """``cls`` (a dataclass, nested ones and lists of them included) from a YAML-shaped mapping: unknown keys
    and wrong types raise a ValueError naming the key."""
    return _dataclass(cls, data, prefix)
