"""Load ``accelerators.csv`` (shipped in this package) into ``Chip`` records and look chips up by name.

Two lookups: ``find_chip`` for names people type ("h100", "Ascend 910B", "H100-SXM"; a catalog name's remark in
parentheses may be left out: "Ascend 910" is "Ascend 910 (2019)"; a device name as ``workbench info`` prints it,
"Ascend910_9391", resolves as the device layer reads it, and "Ascend910B", which torch_npu and people read as two
different chips, is refused as ambiguous), and ``match_device_name`` for
the name torch reports for a live device ("NVIDIA H100 80GB HBM3", "Ascend910B2"), through the
``device_name_patterns`` column (lower-case substrings; the longest matching pattern wins, so "ascend910b2" beats
"ascend910b"; a pattern starting with "=" must equal the whole name and wins over every substring: a plain
"Ascend910B" is a first-generation 910, see ``workbench.device.ascend``).

Sources: every row has a ``source`` and a ``confidence``; ``field_sources.csv`` refines them per field (FP8 peaks,
measured bus bandwidths, power), and ``Chip.field_source(name)`` answers for one number. Users add their own chips
with ``chip_from_dict`` / ``load_chip_file`` and ``register_chip``; "this machine" joins through
``workbench.hardware.this_machine``. Used by the device layer, ``workbench.perfmodel`` and
notebooks/05_hardware_comparison.ipynb.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

# Numeric fields of a chip, with their unit (used for validation, tables and custom chips).
NUMERIC_FIELDS: dict[str, str] = {
    "bf16_dense_tflops": "TFLOP/s", "fp8_dense_tflops": "TFLOP/s", "fp32_tflops": "TFLOP/s",
    "hbm_gb": "GiB", "hbm_tb_s": "TB/s",  # hbm_gb: the vendor's "GB" of HBM, which is GiB (2^30 bytes)
    "scale_up_gb_s": "GB/s", "scale_up_domain": "chips", "scale_up_busbw_gb_s": "GB/s",
    "scale_out_gb_s_per_chip": "GB/s", "tdp_w": "W", "system_w_per_chip": "W", "measured_gemm_tflops": "TFLOP/s",
}
CONFIDENCES = ("high", "medium", "low", "measured", "user")


class UnknownChipError(WorkbenchError, KeyError):
    """No chip of that name; the message lists close matches. A KeyError for old callers, a WorkbenchError for CLIs."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class FieldSource:
    source: str
    confidence: str


@dataclass(frozen=True)
class Chip:
    chip: str
    vendor: str
    bf16_dense_tflops: float | None
    fp8_dense_tflops: float | None
    hbm_gb: float | None
    hbm_tb_s: float | None
    scale_up_gb_s: float | None  # vendor aggregate per chip (NVLink figures are bidirectional totals)
    scale_up_note: str
    scale_out_gb_s_per_chip: float | None
    tdp_w: float | None
    confidence: str
    source: str
    device_name_patterns: tuple[str, ...] = ()
    scale_up_domain: int | None = None  # chips per NVLink/HCCS/UB domain
    scale_up_busbw_gb_s: float | None = None  # measured all-reduce bus bandwidth inside the domain
    system_w_per_chip: float | None = None  # all-in server power / accelerators
    measured_gemm_tflops: float | None = None  # measured large bf16 matmul rate
    fp32_tflops: float | None = None  # only for "this machine" (probe) and custom chips
    field_sources: tuple[tuple[str, str, str], ...] = ()  # (field, source, confidence) refinements

    def peak_flops(self, dtype: str = "bf16") -> float | None:
        """Dense peak FLOP/s for 'bf16'/'fp16', 'fp8' or 'fp32'; None where the catalog has no figure."""
        tflops = {"bf16": self.bf16_dense_tflops, "fp16": self.bf16_dense_tflops, "fp8": self.fp8_dense_tflops,
                  "fp32": self.fp32_tflops}.get(dtype)
        return None if tflops is None else tflops * 1e12

    def field_source(self, field: str) -> FieldSource:
        """Where one number comes from: a per-field entry of field_sources.csv, else the row's source."""
        for name, source, confidence in self.field_sources:
            if name == field:
                return FieldSource(source, confidence)
        return FieldSource(self.source, self.confidence)

    def with_overrides(self, **values: Any) -> "Chip":
        """A copy with some numbers replaced (e.g. a slower interconnect); the changed fields say 'user override'."""
        unknown = set(values) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise WorkbenchError(f"unknown chip field(s) {sorted(unknown)}; known: {sorted(NUMERIC_FIELDS)}")
        for name, value in values.items():
            if name in NUMERIC_FIELDS:
                _check_number(name, value)
        notes = tuple((n, "user override", "user") for n in values if n in NUMERIC_FIELDS)
        # checked like a custom chip: a measured rate above a lowered peak (or a raised rate) priced a dead cap
        return _check_consistent(dataclasses.replace(self, field_sources=notes + self.field_sources, **values),
                                 "overridden chip")

    def as_row(self) -> dict[str, Any]:
        """A flat dict with every number and its source (for tables and JSON)."""
        row: dict[str, Any] = {"chip": self.chip, "vendor": self.vendor}
        for name in NUMERIC_FIELDS:
            row[name] = getattr(self, name)
            src = self.field_source(name)
            row[f"{name}_source"] = src.source
            row[f"{name}_confidence"] = src.confidence
        row["scale_up_note"] = self.scale_up_note
        return row


def _float(text: str) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


def _int(text: str) -> int | None:
    value = _float(text)
    return None if value is None else int(value)


# Above any real chip's figure in any unit used here (TFLOP/s, GB, GB/s, W, chips); a 400-digit integer in a chip
# file overflowed float() deep inside the simulator.
MAX_CHIP_FIGURE = 1e12


def _check_number(name: str, value: Any) -> None:
    if value is None:
        return
    number = math.nan
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
    if not (math.isfinite(number) and 0 <= number <= MAX_CHIP_FIGURE):
        raise WorkbenchError(f"chip field {name!r} = {str(value)[:40]!r} must be a non-negative number up to "
                             f"{MAX_CHIP_FIGURE:g} ({NUMERIC_FIELDS[name]})")
    if name == "scale_up_domain" and not number.is_integer():
        raise WorkbenchError(f"chip field 'scale_up_domain' = {value!r} must be a whole number of chips")


def _check_consistent(chip: "Chip", where: str) -> "Chip":
    """Refuse a measured GEMM rate above the chip's own dense peak: no GEMM beats the peak, so such a pair is two
    chips' figures mixed up (the generic 910B row once held a B1/B2 measurement, 102% of its peak). The simulator
    would read it as a dead cap, and any efficiency from the pair would be above 100%."""
    measured, peak = chip.measured_gemm_tflops, chip.bf16_dense_tflops
    if measured is not None and peak is not None and measured > peak:
        raise WorkbenchError(f"{where} {chip.chip!r}: measured_gemm_tflops = {measured:g} is above its bf16 dense peak "
                             f"{peak:g} TFLOP/s; give the peak of the chip that was measured, or leave the rate out "
                             f"(measured_gemm_tflops: null drops one inherited from a catalog chip)")
    return chip


def _read_package_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("workbench.hardware").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@functools.lru_cache(maxsize=1)
def _field_sources() -> dict[str, list[tuple[str, str, str]]]:
    by_chip: dict[str, list[tuple[str, str, str]]] = {}
    for row in _read_package_csv("field_sources.csv"):
        by_chip.setdefault(row["chip"], []).append((row["field"], row["source"], row["confidence"]))
    return by_chip


def _row_to_chip(row: dict[str, str]) -> Chip:
    sources = _field_sources()
    specific = sources.get(row["chip"], [])
    # Generic per-field notes ('*') apply only where the chip has that number and no specific note.
    generic = [s for s in sources.get("*", []) if (row.get(s[0]) or "").strip() and s[0] not in {x[0] for x in specific}]
    return _check_consistent(Chip(
        chip=row["chip"], vendor=row["vendor"],
        bf16_dense_tflops=_float(row["bf16_dense_tflops"]), fp8_dense_tflops=_float(row["fp8_dense_tflops"]),
        hbm_gb=_float(row["hbm_gb"]), hbm_tb_s=_float(row["hbm_tb_s"]),
        scale_up_gb_s=_float(row["scale_up_gb_s"]), scale_up_note=row["scale_up_note"],
        scale_out_gb_s_per_chip=_float(row["scale_out_gb_s_per_chip"]), tdp_w=_float(row["tdp_w"]),
        confidence=row["confidence"], source=row["source"],
        device_name_patterns=tuple(p for p in row["device_name_patterns"].split("|") if p),
        scale_up_domain=_int(row.get("scale_up_domain", "")),
        scale_up_busbw_gb_s=_float(row.get("scale_up_busbw_gb_s", "")),
        system_w_per_chip=_float(row.get("system_w_per_chip", "")),
        measured_gemm_tflops=_float(row.get("measured_gemm_tflops", "")),
        field_sources=tuple(specific + generic),
    ), "catalog row")


@functools.lru_cache(maxsize=1)
def load_catalog() -> tuple[Chip, ...]:
    """The shipped catalog (without user-registered chips)."""
    return tuple(_row_to_chip(row) for row in _read_package_csv("accelerators.csv"))


# --------------------------------------------------------------------------------------------------------------
# custom chips
# --------------------------------------------------------------------------------------------------------------
_REGISTERED: dict[str, Chip] = {}


def chip_from_dict(values: dict[str, Any], base: str | Chip | None = None) -> Chip:
    """A chip from a dict of catalog fields, e.g. ``{"chip": "my-npu", "bf16_dense_tflops": 400, "hbm_gb": 64}``.

    ``base`` (a catalog name or a Chip) fills the fields the dict leaves out, so ``{"chip": "H100 slow net",
    "scale_out_gb_s_per_chip": 12.5}`` with ``base="H100"`` is an H100 with a slower network.
    """
    if not isinstance(values, dict):
        raise WorkbenchError(f"a custom chip must be a dict of fields, got {type(values).__name__}")
    values = dict(values)
    name = values.pop("chip", None) or values.pop("name", None)
    if not name or not isinstance(name, str):
        raise WorkbenchError("a custom chip needs a 'chip' name, e.g. {'chip': 'my-npu', 'bf16_dense_tflops': 400}")
    base = values.pop("base", None) or base
    allowed = set(NUMERIC_FIELDS) | {"vendor", "scale_up_note", "source", "confidence"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise WorkbenchError(f"custom chip {name!r}: unknown field(s) {unknown}; known: {sorted(allowed)}")
    for field, value in values.items():
        if field in NUMERIC_FIELDS:
            _check_number(field, value)
    if "scale_up_domain" in values and values["scale_up_domain"] is not None:
        values["scale_up_domain"] = int(values["scale_up_domain"])
    source = values.pop("source", "user-supplied")
    confidence = values.pop("confidence", "user")
    if base is not None:
        template = base if isinstance(base, Chip) else find_chip(base)
        notes = tuple((f, source, confidence) for f in values if f in NUMERIC_FIELDS)
        chip = dataclasses.replace(template, chip=name, field_sources=notes + template.field_sources, **values)
        return _check_consistent(chip, "custom chip")
    # any one peak will do (an FP8-only chip runs with precision 'fp8'): the simulator's spec check then refuses a
    # precision whose peak is missing, naming the field to give
    if all(values.get(f) is None for f in ("bf16_dense_tflops", "fp8_dense_tflops", "fp32_tflops")):
        raise WorkbenchError(f"custom chip {name!r} needs a peak: 'bf16_dense_tflops' (or 'fp8_dense_tflops' or "
                             f"'fp32_tflops'), or a 'base'")
    fields = {f: values.get(f) for f in NUMERIC_FIELDS}
    chip = Chip(chip=name, vendor=values.get("vendor", "custom"), scale_up_note=values.get("scale_up_note", ""),
                confidence=confidence, source=source, **fields)
    return _check_consistent(chip, "custom chip")


def load_chip_file(path: str | Path) -> list[Chip]:
    """Custom chips from a JSON file (one dict or a list of dicts) or a CSV with the catalog's columns."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"chip file {str(path)!r} does not exist")
    if path.suffix.lower() == ".csv":
        chips = []
        for row in csv.DictReader(path.read_text(encoding="utf-8").splitlines()):
            values: dict[str, Any] = {k: v for k, v in row.items() if k and v not in (None, "")}
            for field in NUMERIC_FIELDS:
                if field in values:
                    try:
                        values[field] = float(values[field])
                    except ValueError:
                        raise WorkbenchError(f"{path}: chip field {field!r} = {values[field]!r} is not a number") from None
            values.pop("device_name_patterns", None)
            chips.append(chip_from_dict(values))
        return chips
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise WorkbenchError(f"{path}: not valid JSON ({exc})") from None
    return [chip_from_dict(d) for d in (data if isinstance(data, list) else [data])]


def _exact_key(name: str) -> str:
    """A chip's own name, case and runs of spaces aside: the key that registering and replacing go by."""
    return " ".join(name.lower().split())


def register_chip(chip: Chip | dict) -> Chip:
    """Make ``chip`` findable by name (``find_chip``, the simulator) for the rest of this process.

    Keyed by its exact name: a custom 'H100 PCIe' sits beside the catalog's 'NVIDIA H100 SXM' (the loose key, 'h100'
    for both, made it replace the SXM part); only a chip of the very same name is replaced."""
    if isinstance(chip, dict):
        chip = chip_from_dict(chip)
    _REGISTERED[_exact_key(chip.chip)] = chip
    return chip


def unregister_chip(name: str) -> None:
    """Forget a registered chip, by its exact name (or a loose one that names a single registered chip)."""
    if _REGISTERED.pop(_exact_key(name), None) is None:
        loose = [k for k, c in _REGISTERED.items() if _normalise(c.chip) == _normalise(name)]
        if len(loose) == 1:
            del _REGISTERED[loose[0]]


def all_chips() -> tuple[Chip, ...]:
    """Catalog chips plus registered ones (a registered chip replaces a catalog chip of the same exact name)."""
    catalog = {_exact_key(c.chip): c for c in load_catalog()}
    catalog.update(_REGISTERED)
    return tuple(catalog.values())


# --------------------------------------------------------------------------------------------------------------
# lookups
# --------------------------------------------------------------------------------------------------------------
def _normalise(name: str) -> str:
    """Lower-case, drop vendor words, punctuation and form-factor suffixes: 'NVIDIA H100-SXM' -> 'h100'."""
    name = name.lower()
    name = re.sub(r"\b(nvidia|huawei|amd|instinct|intel|google)\b", " ", name)  # 'AMD Instinct MI300X'
    name = re.sub(r"(?<=\d)(sxm\d?)\b", " ", name)  # 'H100SXM'
    name = re.sub(r"\b(sxm\d?|pcie|hbm\d?e?|\d+\s?gb|generic)\b", " ", name)
    return re.sub(r"[^a-z0-9]+", "", name)


def _variant_conflict(name: str, chip: Chip) -> str | None:
    """Why ``name`` names another product than ``chip`` although the loose match found it, or None.

    Matching ignores memory sizes and form factors ('H100-SXM' = 'H100'), so 'A100 40GB' found the 80 GB part and
    'H100 PCIe' the SXM one: another memory size, a PCIe / NVL part or a Grace superchip's GPU ('GH200' for the
    H200) is a different chip (other HBM, bandwidth, power). A remark in parentheses ('H100-SXM (96GB 500W)') is a
    note on the same part and is not read."""
    core = re.sub(r"\(.*?\)", " ", name).lower()
    memory = re.search(r"(\d+(?:\.\d+)?)\s?gb", core)
    if memory and chip.hbm_gb and abs(float(memory.group(1)) - chip.hbm_gb) > 0.5:
        return f"{chip.chip} has {chip.hbm_gb:g} GB, not {memory.group(1)} GB"
    form = re.search(r"pcie|nvl(?!ink)", core)
    if form and form.group(0) not in chip.chip.lower():
        return f"{chip.chip} is not the {dict(pcie='PCIe', nvl='NVL')[form.group(0)]} part"
    # The GPU of a Grace superchip (GH200, GB200, GB300) has other memory, power and NVLink domain than the HGX part
    # whose name ends its own: 'NVIDIA GB200' matched the B200 row's 'b200' as a substring.
    grace = re.search(r"(?<![a-z0-9])g[bh]\d{3}", core)
    if grace and grace.group(0) not in chip.chip.lower().replace(" ", ""):
        return f"{chip.chip} is not the {grace.group(0).upper()} (Grace superchip) GPU"
    return None


# a SoC name as torch_npu reports it: "Ascend910B", "Ascend910B3", "Ascend910_9391", "Ascend910ProB" (no space)
_ASCEND_SOC_NAME = re.compile(r"Ascend\d{3}[A-Za-z0-9_\-]*")


def find_chip(name: str | Chip) -> Chip:
    """The chip named ``name`` (loosely: case, spaces, vendor and 'SXM' don't matter), registered chips included.

    A chip's exact name (any case) is that chip. Raises ``UnknownChipError`` (a KeyError and a WorkbenchError)
    listing close matches when there is no such chip.
    """
    if isinstance(name, Chip):
        return name
    if not isinstance(name, str) or not name.strip():
        raise UnknownChipError(f"a chip name must be a non-empty string, got {name!r}")
    exact = {_exact_key(c.chip): c for c in all_chips()}
    if _exact_key(name) in exact:  # its own name: nothing to second-guess
        return exact[_exact_key(name)]
    if _ASCEND_SOC_NAME.fullmatch(name.strip()):
        # torch_npu's own SoC spelling, as `workbench info` prints it, means what the device layer makes of it,
        # except where people write the same letters for another chip: "Ascend910B" is a first-generation 910 to
        # torch_npu and the 2023 chip to most readers, so it is refused rather than guessed either way
        by_device = match_device_name(name.strip())
        typed = _find_loosely(name) if by_device is not None else None
        if by_device is not None and typed is not None and typed is not by_device:
            raise UnknownChipError(f"chip {name!r} is ambiguous: torch_npu reports a first-generation part by that "
                                   f"SoC name ({by_device.chip!r}), and people write it for {typed.chip!r}; name "
                                   f"the one you mean")
        if by_device is not None:
            return by_device
    chip = _find_loosely(name)
    conflict = _variant_conflict(name, chip)
    if conflict:
        raise UnknownChipError(f"chip {name!r} is not in the catalog ({conflict}); describe it as a custom chip "
                               f"(--chips / register_chip, e.g. {{'base': {chip.chip!r}, 'hbm_gb': ...}})")
    return chip


def _variant_marks(name: str) -> set[str]:
    """The words of a name that the loose key drops but that make another product: memory size, PCIe / NVL form
    factor, a Grace superchip ('80gb', 'pcie', 'gb200'); a remark in parentheses is not read."""
    core = re.sub(r"\(.*?\)", " ", name).lower()
    marks = {f"{float(m):g}gb" for m in re.findall(r"(\d+(?:\.\d+)?)\s?gb", core)}
    return marks | set(re.findall(r"pcie|nvl(?!ink)", core)) | set(re.findall(r"(?<![a-z0-9])g[bh]\d{3}", core))


def _pick(name: str, same_key: list[Chip]) -> Chip:
    """One of several chips whose names share a loose key ('NVIDIA H100 SXM' and a custom 'H100 PCIe': 'h100').

    The chips ``name`` is no variant conflict with; of those, the ones whose own variant words ``name`` also has
    ('h100-pcie' -> 'H100 PCIe'; 'h100' -> the SXM part, which has none); a catalog chip before a custom one ('A100'
    stays the catalogued 80 GB part beside a custom 'A100 40GB'). When none fits, the first, so that find_chip
    names the conflict; a tie left after that is an error naming the candidates."""
    fitting = [c for c in same_key if not _variant_conflict(name, c)] or same_key[:1]
    asked, catalogued = _variant_marks(name), {id(c) for c in load_catalog()}
    rank = {id(c): (bool(_variant_marks(c.chip) - asked), id(c) not in catalogued) for c in fitting}
    best = min(rank.values())
    chosen = [c for c in fitting if rank[id(c)] == best]
    if len(chosen) > 1:
        raise UnknownChipError(f"chip {name!r} is ambiguous: {', '.join(c.chip for c in chosen)}; give the full name")
    return chosen[0]


def _find_loosely(name: str) -> Chip:
    wanted = _normalise(name)
    chips = all_chips()
    by_key: dict[str, list[Chip]] = {}  # several chips can share a loose key: 'NVIDIA H100 SXM' and 'H100 PCIe'
    for c in chips:
        by_key.setdefault(_normalise(c.chip), []).append(c)
    # A remark in parentheses is no more part of a catalog name than of a query: 'Ascend 910' is 'Ascend 910 (2019)'.
    # Each chip is also keyed without its remark, unless that key is another chip's name or two chips share it.
    bare: dict[str, list[Chip]] = {}
    for c in chips:
        if "(" in c.chip:
            bare.setdefault(_normalise(re.sub(r"\(.*?\)", " ", c.chip)), []).append(c)
    for key, same in bare.items():
        if key and key not in by_key and len(same) == 1:
            by_key[key] = same
    if wanted in by_key:
        return _pick(name, by_key[wanted])

    def one(keys: list[str]) -> Chip | None:  # the chip those keys name, if they name one product
        found = list({id(c): c for k in keys for c in by_key[k]}.values())  # keyed with and without remark: once
        if len({_normalise(c.chip) for c in found}) == 1:
            return _pick(name, found)
        return None

    # a part of a name must be distinctive: 'X' or '5' alone matched the one chip whose name ended in it (MI300X)
    partial_ok = len(wanted) >= 3
    prefixed = [k for k in by_key if partial_ok and k.startswith(wanted)]
    suffixed = [k for k in by_key if partial_ok and k.endswith(wanted)]  # '910B' -> 'Ascend 910B'
    for keys in (prefixed, suffixed):
        chip = one(keys)
        if chip is not None:
            return chip
    if "(" in name:  # 'H100-SXM (96GB 500W)', 'Ascend 910B (Atlas 900 A2)': retry without the remark
        try:
            return _find_loosely(re.sub(r"\(.*?\)", " ", name))
        except UnknownChipError:
            pass
    as_device = _as_device_name(name)  # 'Ascend910_9391' as `workbench info` prints it; typed names come first
    if as_device is not None:
        return as_device
    close = difflib.get_close_matches(wanted, list(by_key), n=4, cutoff=0.5) or prefixed
    suggestions = list(dict.fromkeys(c.chip for k in close for c in by_key[k]))
    hint = (f"; did you mean: {', '.join(suggestions)}?" if suggestions
            else f"; known chips: {', '.join(c.chip for c in chips)}")
    raise UnknownChipError(f"unknown chip {name!r}{hint}")


def _match_device_pattern(device_name: str) -> tuple[Chip | None, str]:
    """The catalog chip whose ``device_name_patterns`` match ``device_name`` best, and the pattern that matched."""
    lowered = device_name.lower().replace(" ", "")
    best, best_len, best_pattern = None, 0, ""
    for chip in load_catalog():
        for pattern in chip.device_name_patterns:
            pattern = pattern.replace(" ", "")
            if pattern.startswith("="):  # an exact name beats any substring
                if pattern[1:] == lowered:
                    best, best_len, best_pattern = chip, float("inf"), pattern[1:]
            elif pattern in lowered and len(pattern) > best_len:
                best, best_len, best_pattern = chip, len(pattern), pattern
    if best is not None and _variant_conflict(device_name, best):  # 'A100-SXM4-40GB', 'H100 PCIe', 'GH200 480GB'
        return None, ""
    return best, best_pattern


def match_device_name(device_name: str) -> Chip | None:
    """The catalog chip for a name reported by torch for a live device, or None when the chip is not catalogued."""
    return _match_device_pattern(device_name)[0]


def _as_device_name(name: str) -> Chip | None:
    """The chip for ``name`` read as a device name torch reports ('Ascend910_9391', 'Ascend910B4-1'), or None.

    ``workbench info`` prints those names, and users copy them into specs. A device pattern is a substring, so the
    name must be that pattern plus at most a short suffix (a SoC revision: '91' of 'ascend910_93', 'C', '-1')
    once vendor words and memory sizes are dropped: 'H100 slow net' is a custom chip's name, not an H100. A model
    number may not run on ('H1000' is a typo, not an H100) unless the pattern names a SoC series ('_93' = 93xx)."""
    chip, pattern = _match_device_pattern(name)
    if chip is None:
        return None
    lowered = name.lower().replace(" ", "")
    after = lowered[lowered.find(pattern) + len(pattern):]
    if after[:1].isdigit() and pattern[-1:].isdigit() and not re.search(r"_\d+$", pattern):
        return None
    rest = _normalise(name).replace(_normalise(pattern), "", 1)
    return chip if len(rest) <= 2 else None


def catalog_table(chips: tuple[Chip, ...] | list[Chip] | None = None) -> list[dict[str, Any]]:
    """Rows for a spec table: each number with its source and confidence (notebook 05 shows it)."""
    return [c.as_row() for c in (chips if chips is not None else all_chips())]
