"""Op tables: time, count and achieved FLOP/s per op and per category, and the top-N ops, from a parsed trace.

Time is *self* time (an op's duration minus the ops nested inside it), so an ``aten::linear`` that calls
``aten::addmm`` is not counted twice and the column sums to the busy time. On a device with a kernel timeline
(CUDA, NPU) the time is the device kernels' time, grouped under the host op that launched them; on CPU it is the
host ops' self time. FLOPs are what the profiler counted (``with_flops``: matmuls, convolutions and a few pointwise
ops); achieved FLOP/s = FLOPs / time where FLOPs are known, else None. Used by notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from workbench.profiling.categories import CATEGORIES
from workbench.profiling.trace import OP_CATS, Trace, TraceEvent, is_structural


def time_basis(trace: Trace) -> str:
    """"device" when the trace has kernels on a device timeline, else "host"."""
    return "device" if trace.has_device_kernels else "host"


def op_events(trace: Trace, basis: str | None = None) -> list[TraceEvent]:
    """The events the op table sums: device kernels, or host ops and annotations (not step/phase ranges, not
    Python frames: with ``with_stack`` their time is interpreter overhead, left to the waterfall's host row)."""
    basis = basis or time_basis(trace)
    if basis == "device":
        return [e for e in trace.events if e.is_device]
    return [e for e in trace.events if e.cat in OP_CATS and not is_structural(e)]


def op_table(trace: Trace, n_steps: int = 1, basis: str | None = None) -> list[dict]:
    """One row per (op, category), most time first: ms per step, share, count per step, GFLOP per step, FLOP/s."""
    basis = basis or time_basis(trace)
    rows: dict[tuple[str, str], dict] = {}
    for event in op_events(trace, basis):
        op = event.linked_op if (basis == "device" and event.linked_op is not None) else event
        key = (op.name, event.category)
        row = rows.setdefault(key, {"op": op.name, "category": event.category, "us": 0.0, "count": 0,
                                    "flops": 0.0, "_ops": set()})
        row["us"] += event.self_us if basis == "host" else event.dur
        row["count"] += 1
        if id(op) not in row["_ops"]:  # an op launching several kernels has its FLOPs counted once
            row["_ops"].add(id(op))
            row["flops"] += op.flops
    total_us = sum(r["us"] for r in rows.values()) or 1.0
    table = []
    for row in rows.values():
        seconds = row["us"] / 1e6
        table.append({
            "op": row["op"],
            "category": row["category"],
            "ms_per_step": row["us"] / 1e3 / n_steps,
            "share": row["us"] / total_us,
            "count_per_step": row["count"] / n_steps,
            "gflop_per_step": row["flops"] / 1e9 / n_steps if row["flops"] else None,
            "achieved_tflops": row["flops"] / seconds / 1e12 if row["flops"] and seconds > 0 else None,
        })
    table.sort(key=lambda r: -r["ms_per_step"])
    return table


def category_table(ops: Sequence[dict]) -> list[dict]:
    """Sum the op table per category, in ``CATEGORIES`` order (every category present, zeros included)."""
    sums = {c: {"category": c, "ms_per_step": 0.0, "share": 0.0, "count_per_step": 0.0, "gflop_per_step": 0.0,
                "n_ops": 0} for c in CATEGORIES}
    for row in ops:
        agg = sums.setdefault(row["category"], {"category": row["category"], "ms_per_step": 0.0, "share": 0.0,
                                                "count_per_step": 0.0, "gflop_per_step": 0.0, "n_ops": 0})
        agg["ms_per_step"] += row["ms_per_step"]
        agg["share"] += row["share"]
        agg["count_per_step"] += row["count_per_step"]
        agg["gflop_per_step"] += row["gflop_per_step"] or 0.0
        agg["n_ops"] += 1
    table = []
    for agg in sums.values():
        seconds = agg["ms_per_step"] / 1e3
        flops = agg["gflop_per_step"] * 1e9
        agg["achieved_tflops"] = flops / seconds / 1e12 if flops and seconds > 0 else None
        agg["gflop_per_step"] = agg["gflop_per_step"] or None
        table.append(agg)
    return table


def top_ops(ops: Sequence[dict], n: int = 10) -> list[dict]:
    """The ``n`` ops with the most time (the op table is already sorted)."""
    if n < 1:
        raise ValueError(f"top_ops needs n >= 1, got {n}")
    return list(sorted(ops, key=lambda r: -r["ms_per_step"]))[:n]


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write rows of dicts as CSV (the columns of the first row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0].keys()) if rows else []
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
