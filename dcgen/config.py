"""Configs as JSON: the one conversion from a JSON-able dict back to any of dcgen's frozen config dataclasses.

Checkpoints, run files and latent stores save their configs with ``dataclasses.asdict``; reading them back needs
lists turned into tuples and nested dataclasses rebuilt, read from the dataclass's own annotations; the dataclass's
``__post_init__`` checks the values (nothing is coerced behind its back: a ``"yes"`` stays a string and is refused
there). (pydantic's ``TypeAdapter`` would coerce ``"yes"`` to ``True``, so it is not used here.) An unknown key is an error naming the class and the keys it takes; a key
an older file lacks takes the class's ``LEGACY_DEFAULTS`` (what files written before the field existed meant)
before its ordinary default.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _convert(tp, value):
    """``value`` as annotation ``tp`` wants it: tuples from lists, nested dataclasses from dicts, else as is (the
    dataclass's own ``__post_init__`` checks values; nothing is coerced behind its back)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if (origin is tuple or tp is tuple) and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_convert(a, v) for a, v in zip(args, value))
        return tuple(value)
    return value


def from_dict(cls: type[T], d: dict, *, what: str | None = None) -> T:
    """``cls`` rebuilt from ``d`` (as ``asdict`` or JSON left it); a ``ValueError`` naming the bad key otherwise."""
    name = what or cls.__name__
    if not isinstance(d, dict):
        raise ValueError(f"{name}: expected a mapping of its fields, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; expected a subset of {sorted(known)}")
    hints = _hints(cls)
    values = {**{k: v for k, v in getattr(cls, "LEGACY_DEFAULTS", {}).items() if k not in d}, **d}
    try:
        return cls(**{k: _convert(hints[k], v) for k, v in values.items()})
    except TypeError as e:  # a required field missing
        raise ValueError(f"{name}: {e}") from None


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def read_json(cls: type[T], path: str | Path) -> T:
    """A config of ``cls`` from a JSON file, the error naming the file."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    try:
        return from_dict(cls, d)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def schema_errors(schema_file: Path, data, what: str, kind: str) -> list:
    """The JSON Schema violations of ``data`` against ``schema_file`` (Draft 2020-12), deepest path first per
    position, so a caller can name the first; raises naming ``what`` when the schema file is missing."""
    import jsonschema

    if not schema_file.is_file():
        raise ValueError(f"{what}: the {kind} schema {schema_file} is missing; dcgen reads it from its source "
                         "checkout (install with 'pip install -e .')")
    schema = json.loads(schema_file.read_text())
    return sorted(jsonschema.Draft202012Validator(schema).iter_errors(data),
                  key=lambda e: (list(map(str, e.absolute_path)), e.validator))
