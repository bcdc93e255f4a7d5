"""Validate notebook (and CLI) parameters up front, with one clear message per problem.

papermill's ``-p name value`` arrives as whatever YAML makes of the text (``-p steps 10`` an int, ``-p ops 4`` an int
where a list is wanted, ``-p x None`` the string "None"), ``-r name value`` as a raw string, and JupyterLab users type
anything. Every notebook's second cell calls ``validate_params`` with a small schema; the values come back with
the right types or a ``WorkbenchError`` lists what is wrong and what would be right. Used by every notebook.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from workbench.errors import WorkbenchError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null", ""}


@dataclass(frozen=True)
class Param:
    """What one parameter may be: its type, bounds, allowed choices, and whether None is allowed.

    A ``list`` parameter takes "a,b,c", a real list, or a single value (one item); ``item`` is its items' type,
    ``min``/``max``/``choices`` then apply to each item, and ``min_items`` is the fewest items it may have."""

    type: type = str
    min: float | None = None
    max: float | None = None
    choices: Sequence[Any] | None = None
    allow_none: bool = False
    help: str = ""
    item: type = str
    min_items: int = 0

    def coerce(self, name: str, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _NONE and self.allow_none:
            return None
        if value is None:
            if self.allow_none:
                return None
            raise WorkbenchError(f"parameter {name!r} must not be None{self._hint()}")
        if self.type is list:
            items = [self._check(name, self._to_type(name, item, self.item)) for item in self._to_list(value)]
            if len(items) < self.min_items:
                raise WorkbenchError(f"parameter {name!r} needs at least {self.min_items} item(s), got {value!r}"
                                     f"{self._hint()}")
            return items
        return self._check(name, self._to_type(name, value, self.type))

    def _check(self, name: str, value: Any) -> Any:
        """Bounds and choices of one value (a scalar parameter, or one item of a list)."""
        if self.min is not None and value < self.min:
            raise WorkbenchError(f"parameter {name!r} = {value!r} is below its minimum {self.min}{self._hint()}")
        if self.max is not None and value > self.max:
            raise WorkbenchError(f"parameter {name!r} = {value!r} is above its maximum {self.max}{self._hint()}")
        if self.choices is not None and value not in self.choices:
            raise WorkbenchError(f"parameter {name!r}: {value!r} is not one of {list(self.choices)}")
        return value

    def _hint(self) -> str:
        return f" ({self.help})" if self.help else ""

    @staticmethod
    def _to_list(value: Any) -> list:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value]  # papermill's `-p counts 512` arrives as the int 512: a list of one

    def _to_type(self, name: str, value: Any, kind: type) -> Any:
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
                number = float(value)
                if not math.isfinite(number):  # NaN would slip past min/max (every comparison with it is False)
                    raise ValueError
                return number
            if kind is str:
                text = str(value).strip()
                if not text:  # an empty path or name fails far later (results_path="" after the whole run)
                    raise WorkbenchError(f"parameter {name!r} must not be empty{self._hint()}")
                return text
            return kind(value)
        except WorkbenchError:
            raise
        except (TypeError, ValueError):
            what = "float (a finite number)" if kind is float else kind.__name__
            raise WorkbenchError(f"parameter {name!r} = {value!r} is not a valid {what}{self._hint()}") from None


# What an IPython kernel defines itself; with names starting with "_" these are never a notebook's parameters
_KERNEL_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython"})
_PLAIN_VALUES = (str, int, float, bool, type(None), list, dict, tuple)  # what a parameters cell / papermill assigns
_CHECKED = "_workbench_parameters_checked"  # set in the notebook's namespace once its parameters passed


def _stray_parameters(namespace: dict[str, Any], schema: dict[str, Param]) -> dict[str, str]:
    """Plain values in a notebook's globals that look like a misspelled parameter -> the parameter they resemble.

    papermill's ``-p preest glm45-tiny`` defines ``preest`` next to the parameters and says only "Passed unknown
    parameter" in its log. Only names close to a parameter count (``preest``, ``step``, ``SEQ_LEN``): a kernel's
    startup files and a cell's imported constants define other plain globals that are nobody's typo."""
    found = {}
    for name, value in namespace.items():
        if name in schema or name.startswith("_") or name in _KERNEL_NAMES or not isinstance(value, _PLAIN_VALUES):
            continue
        if name.isupper():  # a constant a cell imported (FULL_SIZE, PRESETS) unless it is a parameter in capitals
            if name.lower() in schema:
                found[name] = name.lower()
            continue
        close = difflib.get_close_matches(name, list(schema), n=1, cutoff=0.75)
        if close:
            found[name] = close[0]
    return found


def validate_params(values: dict[str, Any], schema: dict[str, Param],
                    namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Coerce and check ``values`` against ``schema``. Unknown names and every bad value are reported together.

    ``namespace``: a notebook passes ``globals()``, so a misspelled papermill parameter (a new global beside the
    parameters, close to one of their names) is an error too. Checked on the cell's first successful run only: a
    re-run, after later cells defined their own variables, must not take those for parameters.
    A ``results_path`` must name a file, not a folder (it used to fail in the last cell, after the whole run)."""
    problems = []
    unknown = sorted(set(values) - set(schema))
    if unknown:
        problems.append(f"unknown parameter(s) {unknown}; known: {sorted(schema)}")
    if namespace is not None and not namespace.get(_CHECKED):
        for name, meant in sorted(_stray_parameters(namespace, schema).items()):
            problems.append(f"unknown parameter {name!r} (did you mean {meant!r}?); known: {sorted(schema)} "
                            f"(a leftover variable: `del {name}` or restart the kernel)")
    clean = {}
    for name, spec in schema.items():
        if name not in values:
            problems.append(f"parameter {name!r} is missing")
            continue
        try:
            clean[name] = spec.coerce(name, values[name])
        except WorkbenchError as exc:
            problems.append(str(exc))
    results_path = clean.get("results_path")
    if isinstance(results_path, str) and Path(results_path).expanduser().is_dir():
        problems.append(f"parameter 'results_path' = {results_path!r} is a folder; give a file, e.g. "
                        f"{str(Path(results_path) / 'results.json')!r}")
    if problems:
        raise WorkbenchError("; ".join(problems))
    if namespace is not None:
        namespace[_CHECKED] = True
    return clean


def env_flag(name: str) -> bool:
    """A yes/no environment variable: 1, true, yes, on (any case) mean yes; unset, empty, 0, false, no, off mean no.
    (WORKBENCH_PLOTLY_CDN=0 used to switch the CDN *on*: any non-empty text counted as yes.)"""
    import os

    return os.environ.get(name, "").strip().lower() in _TRUE


def output_folder(text: str) -> str:
    """argparse ``type=`` for an --out folder: not empty (an unset shell variable would write into the working
    directory) and with ``~`` expanded ("--out=~/x" reaches the program unexpanded)."""
    import argparse
    import os

    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return os.path.expanduser(text)

