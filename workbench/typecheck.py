"""Check that a config dataclass's fields hold the types their annotations name, with messages that name the field.

Config values arrive from strings and JSON (CLI flags, notebook parameters, papermill, config.json, checkpoints): a
"False" that is truthy, a 1.5 where layers are counted, or a None where a number is needed would otherwise fail far
from where it was given, or not at all. ``ModelConfig`` and ``TrainConfig`` call ``field_type_problems`` first in
``__post_init__``. It reads the annotations as text (``from __future__ import annotations``) and knows the kinds
the configs use: int, float (an int is fine), bool, str, dict, tuple of str, each optionally ``| None``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _kind_ok(value: Any, kind: str) -> tuple[bool, str] | None:
    """(whether ``value`` fits ``kind``, how to say the kind), or None for a kind not checked here."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if kind == "bool":
        return isinstance(value, bool), "true or false"
    if kind == "str":
        return isinstance(value, str), "a string"
    if kind.startswith("dict"):
        return isinstance(value, dict), "a dict"
    if kind.startswith("tuple[str"):
        return isinstance(value, tuple) and all(isinstance(v, str) for v in value), "a list of strings"
    return None


def field_type_problems(instance: Any) -> list[str]:
    """One message per field of the dataclass ``instance`` whose value does not have its annotated type."""
    problems = []
    for f in dataclasses.fields(instance):
        value, kind = getattr(instance, f.name), str(f.type)
        optional = kind.endswith(" | None")
        kind = kind.removesuffix(" | None")
        if value is None and optional:
            continue
        checked = _kind_ok(value, kind)
        if checked is not None and not checked[0]:
            problems.append(f"{f.name} must be {checked[1]}{' or None' if optional else ''} (got {value!r})")
    return problems
