"""``workbench simulate SPEC.json``: simulate cluster-scale training from a JSON spec and print the result as JSON.

    workbench simulate spec.json                 # the spec schema: workbench/perfmodel/README.md
    workbench simulate spec.json --chips my_chips.json   # custom chips (JSON dict/list or CSV), usable by name
    workbench simulate --validate                # the calibration table: predicted vs published runs
    echo '{...}' | workbench simulate -

Bad specs (unknown chip, a layout that does not divide, negative numbers, impossible memory) end with one line
on stderr and exit status 2; an explicit layout that divides but does not fit in memory is reported in the JSON
(``feasible: false`` with the reason in ``problems``), exit status 0.
"""

from __future__ import annotations

import argparse
import json
import sys

from workbench.errors import WorkbenchError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="path to a JSON spec, or '-' for stdin")
    p.add_argument("--chips", action="append", default=[], metavar="FILE",
                   help="custom chips (JSON dict or list, or CSV with the catalog's columns); repeatable")
    p.add_argument("--validate", action="store_true", help="print predicted vs measured for the published runs")
    p.add_argument("--compact", action="store_true", help="one-line JSON")


def _read_spec(path: str) -> dict:
    text = sys.stdin.read().removeprefix("\ufeff") if path == "-" else _read_file(path)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise WorkbenchError(f"{path}: not valid JSON ({exc})") from None


def _read_file(path: str) -> str:
    """The spec's text. utf-8-sig: a BOM (a Windows editor's default) was rejected as invalid JSON; a file in another
    encoding (UTF-16, Latin-1) printed the bare codec error, naming neither the file nor the encoding it needs."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the spec as UTF-8 "
                             f"JSON") from None


def run(args: argparse.Namespace) -> int:
    from workbench.hardware import load_chip_file, register_chip
    from workbench.perfmodel import simulate

    for path in args.chips:
        for chip in load_chip_file(path):
            register_chip(chip)
    if args.validate:
        if args.spec:  # it printed the calibration table and silently ignored the spec
            raise WorkbenchError("--validate checks the simulator on the published runs and takes no spec; run "
                                 "`workbench simulate SPEC` for a spec")
        from workbench.perfmodel.calibration import error_table, validate

        print(error_table(validate()))
        return 0
    if not args.spec:
        raise WorkbenchError("give a spec file (or '-' for stdin); see workbench/perfmodel/README.md for the schema")
    result = simulate(_read_spec(args.spec))
    print(json.dumps(result, indent=None if args.compact else 2, default=str))
    return 0
