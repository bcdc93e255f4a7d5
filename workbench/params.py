"""Validate notebook (and CLI) parameters up front, with one clear message per problem.

papermill injects ``-p name value`` values as strings ("10", "true", "1e-3", "None"), and JupyterLab users type
anything. Every notebook's second cell calls ``validate_params`` with a small schema; the values come back with
the right types or a ``WorkbenchError`` lists what is wrong and what would be right. Used by every notebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from workbench.errors import WorkbenchError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null", ""}


@dataclass(frozen=True)
class Param:
    """What one parameter may be: its type, bounds, allowed choices, and whether None is allowed."""

    type: type = str
    min: float | None = None
    max: float | None = None
    choices: Sequence[Any] | None = None
    allow_none: bool = False
    help: str = ""

    def coerce(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _NONE and self.allow_none:
            return None
        if value is None:
            if self.allow_none:
                return None
            raise WorkbenchError(f"parameter {name!r} must not be None{self._hint()}")
        value = self._to_type(name, value)
        if self.min is not None and value < self.min:
            raise WorkbenchError(f"parameter {name!r} = {value!r} is below its minimum {self.min}{self._hint()}")
        if self.max is not None and value > self.max:
            raise WorkbenchError(f"parameter {name!r} = {value!r} is above its maximum {self.max}{self._hint()}")
        if self.choices is not None:
            items = value if isinstance(value, list) else [value]
            bad = [v for v in items if v not in self.choices]
            if bad:
                raise WorkbenchError(f"parameter {name!r}: {bad[0]!r} is not one of {list(self.choices)}")
        return value

    def _hint(self) -> str:
        return f" ({self.help})" if self.help else ""

    def _to_type(self, name: str, value: Any) -> Any:
        kind = self.type
        try:
            if kind is bool:
                if isinstance(value, bool):
                    return value
                text = str(value).strip().lower()
                if text in _TRUE:
                    return True
                if text in _FALSE:
                    return False
                raise ValueError
            if kind is int:
                if isinstance(value, bool):
                    raise ValueError
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                if isinstance(value, str):
                    text = value.strip()
                    number = float(text)  # accepts "1e3"
                    if not number.is_integer():
                        raise ValueError
                    return int(number)
                return int(value)
            if kind is float:
                if isinstance(value, bool):
                    raise ValueError
                return float(value)
            if kind is list:  # "a,b,c" or a real list
                if isinstance(value, str):
                    return [item.strip() for item in value.split(",") if item.strip()]
                return list(value)
            if kind is str:
                return str(value).strip()
            return kind(value)
        except (TypeError, ValueError):
            raise WorkbenchError(
                f"parameter {name!r} = {value!r} is not a valid {kind.__name__}{self._hint()}") from None


def validate_params(values: dict[str, Any], schema: dict[str, Param]) -> dict[str, Any]:
    """Coerce and check ``values`` against ``schema``. Unknown names and every bad value are reported together."""
    problems = []
    unknown = sorted(set(values) - set(schema))
    if unknown:
        problems.append(f"unknown parameter(s) {unknown}; known: {sorted(schema)}")
    clean = {}
    for name, spec in schema.items():
        if name not in values:
            problems.append(f"parameter {name!r} is missing")
            continue
        try:
            clean[name] = spec.coerce(name, values[name])
        except WorkbenchError as exc:
            problems.append(str(exc))
    if problems:
        raise WorkbenchError("; ".join(problems))
    return clean
