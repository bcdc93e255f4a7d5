"""MFU waterfall: from the ideal step time (model FLOPs / peak FLOP/s) to the measured one, gap by category.

    ideal        = FLOPs per step / peak FLOP/s          (MFU = ideal / measured, PaLM convention)
    + matmul / attention / moe:  their measured time - their share of the ideal (share by profiler-counted FLOPs)
    + norm, elementwise, optimizer, data, other:  all of their time (no model FLOPs are assigned to them)
    + communication:  exposed communication only (overlapped communication costs no step time)
    + host overhead / idle:  the rest of the measured step, time in no op (Python, launches, waits); negative
      when ops on several threads overlap, which the per-thread self times cannot show
    = measured step time

Category times are the op table's self times per step (device kernel time on accelerators). With an unknown peak
the ideal bar is left out and MFU is reported as unknown, never guessed. Used by notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

from typing import Sequence

from workbench.profiling.categories import CATEGORIES

FLOP_CATEGORIES = ("matmul", "attention", "moe")  # where the model's FLOPs are done


def mfu_waterfall(categories: Sequence[dict], step_ms: float, exposed_comm_ms: float,
                  flops_per_step: float | None, peak_flops: float | None, *,
                  flops_source: str = "", peak_source: str = "") -> dict:
    """Build the waterfall. ``categories``: rows of ``tables.category_table``; times in ms per step."""
    if step_ms <= 0:
        raise ValueError(f"measured step time must be > 0 ms, got {step_ms}; did the profile record any steps?")
    by_cat = {row["category"]: row for row in categories}
    if not flops_per_step:  # fall back on what the profiler counted
        flops_per_step = sum((by_cat.get(c, {}).get("gflop_per_step") or 0.0) for c in CATEGORIES) * 1e9 or None
        flops_source = "profiler-counted FLOPs (ops that report FLOPs only)" if flops_per_step else "unknown"
    known = bool(flops_per_step and peak_flops)
    ideal_ms = flops_per_step / peak_flops * 1e3 if known else 0.0

    # Split the ideal time over the FLOP-doing categories in proportion to the FLOPs the profiler saw in each.
    counted = {c: (by_cat.get(c, {}).get("gflop_per_step") or 0.0) for c in FLOP_CATEGORIES}
    counted_total = sum(counted.values())
    ideal_share = ({c: counted[c] / counted_total for c in FLOP_CATEGORIES} if counted_total
                   else {"matmul": 1.0, "attention": 0.0, "moe": 0.0})

    bars = [{"label": "ideal (FLOPs / peak)" if known else "ideal (unknown peak)", "ms": ideal_ms,
             "measure": "absolute"}]
    for category in CATEGORIES:
        if category == "communication":
            bars.append({"label": "communication (exposed)", "ms": exposed_comm_ms, "measure": "relative"})
            continue
        measured = by_cat.get(category, {}).get("ms_per_step", 0.0)
        ideal_part = ideal_ms * ideal_share.get(category, 0.0)
        label = f"{category} below peak" if category in FLOP_CATEGORIES else category
        bars.append({"label": label, "ms": measured - ideal_part, "measure": "relative"})
    accounted = sum(b["ms"] for b in bars)
    bars.append({"label": "host overhead / idle", "ms": step_ms - accounted, "measure": "relative"})
    bars.append({"label": "measured step", "ms": step_ms, "measure": "total"})
    return {
        "ideal_ms": ideal_ms if known else None,
        "measured_ms": step_ms,
        "mfu": ideal_ms / step_ms if known else None,
        "flops_per_step": flops_per_step,
        "flops_source": flops_source,
        "peak_flops": peak_flops,
        "peak_source": peak_source or ("unknown" if not peak_flops else ""),
        "bars": bars,
    }
