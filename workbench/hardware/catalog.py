"""Load ``accelerators.csv`` (shipped in this package) into ``Chip`` records and look chips up by name.

Two lookups: ``find_chip`` for names people type ("h100", "Ascend 910B"), and ``match_device_name`` for the name
torch reports for a live device ("NVIDIA H100 80GB HBM3", "Ascend910B2"), through the ``device_name_patterns``
column (lower-case substrings; the longest matching pattern wins, so "ascend910b2" beats "ascend910b").
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from importlib import resources


def _float(text: str) -> float | None:
    text = (text or "").strip()
    return float(text) if text else None


@dataclass(frozen=True)
class Chip:
    chip: str
    vendor: str
    bf16_dense_tflops: float | None
    fp8_dense_tflops: float | None
    hbm_gb: float | None
    hbm_tb_s: float | None
    scale_up_gb_s: float | None
    scale_up_note: str
    scale_out_gb_s_per_chip: float | None
    tdp_w: float | None
    confidence: str
    source: str
    device_name_patterns: tuple[str, ...] = ()

    def peak_flops(self, dtype: str = "bf16") -> float | None:
        """Dense peak FLOP/s for 'bf16'/'fp16' or 'fp8'; None where the catalog has no figure (e.g. fp32)."""
        tflops = {"bf16": self.bf16_dense_tflops, "fp16": self.bf16_dense_tflops, "fp8": self.fp8_dense_tflops}.get(dtype)
        return None if tflops is None else tflops * 1e12


@functools.lru_cache(maxsize=1)
def load_catalog() -> tuple[Chip, ...]:
    text = resources.files("workbench.hardware").joinpath("accelerators.csv").read_text()
    chips = []
    for row in csv.DictReader(text.splitlines()):
        chips.append(Chip(
            chip=row["chip"], vendor=row["vendor"],
            bf16_dense_tflops=_float(row["bf16_dense_tflops"]), fp8_dense_tflops=_float(row["fp8_dense_tflops"]),
            hbm_gb=_float(row["hbm_gb"]), hbm_tb_s=_float(row["hbm_tb_s"]),
            scale_up_gb_s=_float(row["scale_up_gb_s"]), scale_up_note=row["scale_up_note"],
            scale_out_gb_s_per_chip=_float(row["scale_out_gb_s_per_chip"]), tdp_w=_float(row["tdp_w"]),
            confidence=row["confidence"], source=row["source"],
            device_name_patterns=tuple(p for p in row["device_name_patterns"].split("|") if p),
        ))
    return tuple(chips)


def _normalise(name: str) -> str:
    """Lower-case, drop vendor words, punctuation and form-factor suffixes: 'NVIDIA H100-SXM' -> 'h100'."""
    name = name.lower()
    name = re.sub(r"\b(nvidia|huawei|amd|intel|google)\b", " ", name)
    name = re.sub(r"\b(sxm\d?|pcie|hbm\d?e?|\d+\s?gb)\b", " ", name)
    return re.sub(r"[^a-z0-9]+", "", name)


def find_chip(name: str) -> Chip:
    """The catalog chip named ``name`` (loosely: case, spaces, vendor and 'SXM' don't matter).

    Raises ``KeyError`` listing close matches when there is no such chip.
    """
    import difflib

    wanted = _normalise(name)
    chips = load_catalog()
    by_key = {_normalise(c.chip): c for c in chips}
    if wanted in by_key:
        return by_key[wanted]
    prefixed = [c for key, c in by_key.items() if key.startswith(wanted) and wanted]
    if len(prefixed) == 1:
        return prefixed[0]
    close = difflib.get_close_matches(wanted, list(by_key), n=4, cutoff=0.5)
    suggestions = [by_key[k].chip for k in close] or [c.chip for c in prefixed]
    hint = f"; did you mean: {', '.join(suggestions)}?" if suggestions else f"; known chips: {', '.join(c.chip for c in chips)}"
    raise KeyError(f"unknown chip {name!r}{hint}")


def match_device_name(device_name: str) -> Chip | None:
    """The catalog chip for a name reported by torch for a live device, or None when the chip is not catalogued."""
    lowered = device_name.lower().replace(" ", "")
    best, best_len = None, 0
    for chip in load_catalog():
        for pattern in chip.device_name_patterns:
            if pattern.replace(" ", "") in lowered and len(pattern) > best_len:
                best, best_len = chip, len(pattern)
    return best
