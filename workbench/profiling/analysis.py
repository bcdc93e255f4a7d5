"""One call from a profiling run to every table and chart: ``analyze(run, flops_per_step=..., peak=...)``.

A ``ProfileReport`` holds the op table, the category table, the top-N ops, the step breakdown, the MFU waterfall
and the memory summary as plain dicts/lists (JSON-ready), and ``save(out_dir)`` writes them as JSON and CSV with
plotly HTML figures beside them. ``compare({"reference": a, "torch": b})`` lines up two or more reports.
Used by ``workbench profile`` and notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from workbench.profiling import figures
from workbench.profiling.breakdown import step_breakdown
from workbench.profiling.memory import memory_summary
from workbench.profiling.session import ProfileRun
from workbench.profiling.tables import category_table, op_table, time_basis, top_ops, write_csv
from workbench.profiling.trace import Trace, load_trace
from workbench.profiling.waterfall import mfu_waterfall
from workbench.results import write_json_atomic


@dataclass
class ProfileReport:
    """Everything a profile says, as JSON-ready data. Times are milliseconds per step."""

    ops: list[dict]
    categories: list[dict]
    top: list[dict]
    breakdown: dict
    waterfall: dict
    memory: dict
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The headline numbers (what a notebook records and the CLI prints)."""
        by_cat = {r["category"]: r["ms_per_step"] for r in self.categories}
        return {
            "step_ms": self.breakdown["step_ms"],
            "n_steps": self.breakdown["n_steps"],
            "mfu": self.waterfall["mfu"],
            "ideal_ms": self.waterfall["ideal_ms"],
            "flops_per_step": self.waterfall["flops_per_step"],
            "flops_source": self.waterfall["flops_source"],
            "peak_flops": self.waterfall["peak_flops"],
            "peak_source": self.waterfall["peak_source"],
            "category_ms": by_cat,
            "phase_ms": {r["phase"]: r["ms"] for r in self.breakdown["rows"]},
            "communication": self.breakdown["communication"],
            "top_op": self.top[0]["op"] if self.top else None,
            "peak_allocated_mb": self.memory["peak_allocated_mb"],
            "device_peak_mb": self.memory["device_peak_mb"],
            **self.info,
        }

    def figures(self) -> dict[str, Any]:
        return {
            "categories": figures.category_figure(self.categories),
            "top_ops": figures.top_ops_figure(self.top),
            "step_breakdown": figures.breakdown_figure({"this run": self.breakdown}),
            "mfu_waterfall": figures.waterfall_figure(self.waterfall),
            "memory": figures.memory_figure(self.memory),
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, str]:
        """Write tables (JSON + CSV) and figures (HTML) under ``out_dir``; returns {name: path}."""
        from workbench.viz import save_figure

        out = Path(out_dir)
        written = {
            "op_table_csv": write_csv(self.ops, out / "op_table.csv"),
            "categories_csv": write_csv(self.categories, out / "categories.csv"),
            "top_ops_csv": write_csv(self.top, out / "top_ops.csv"),
            "report_json": write_json_atomic(out / "report.json", {
                "summary": self.summary(), "categories": self.categories, "top_ops": self.top,
                "ops": self.ops, "step_breakdown": self.breakdown, "mfu_waterfall": self.waterfall,
                "memory": self.memory}),
        }
        for name, fig in self.figures().items():
            written[f"{name}_html"] = save_figure(fig, out / "figures" / f"{name}.html")["html"]
        return {k: str(v) for k, v in written.items()}


def analyze(source: ProfileRun | Trace | str | os.PathLike, *, flops_per_step: float | None = None,
            flops_source: str = "", peak=None, top_n: int = 10, flops_split=None) -> ProfileReport:
    """Analyze a profiling run (or a trace, or a trace file).

    ``flops_per_step``: model FLOPs of one training step (e.g. ``flops_per_token * tokens per step``); without it the
    waterfall uses the FLOPs the profiler counted. ``peak``: a ``PeakEstimate`` (``dev.peak_flops(dtype)``) or a
    number in FLOP/s; without it MFU is unknown. ``flops_split``: the model's FLOPs by kernel kind, which share the
    ideal time among the waterfall's categories (``waterfall.model_flops_split``); without it, profiler counts.
    """
    run = source if isinstance(source, ProfileRun) else None
    trace = run.trace if run else (source if isinstance(source, Trace) else load_trace(source))
    breakdown = step_breakdown(trace)
    n_steps = breakdown["n_steps"]
    ops = op_table(trace, n_steps=n_steps)
    categories = category_table(ops)
    peak_value, peak_source = _peak(peak)
    waterfall = mfu_waterfall(categories, breakdown["step_ms"], breakdown["communication"]["exposed_ms"],
                              flops_per_step, peak_value, flops_source=flops_source, peak_source=peak_source,
                              flops_split=flops_split, ops=ops)
    memory = memory_summary(trace, run.rss_samples if run else None, run.memory_stats if run else None,
                            run.active_start_s if run else None)
    info = {"time_basis": time_basis(trace), "trace_path": str(run.trace_path if run else trace.path)}
    if run:
        info.update(device_type=run.device_type, profiler=run.backend)
    return ProfileReport(ops=ops, categories=categories, top=top_ops(ops, top_n) if ops else [],
                         breakdown=breakdown, waterfall=waterfall, memory=memory, info=info)


def _peak(peak) -> tuple[float | None, str]:
    if peak is None:
        return None, "unknown"
    if isinstance(peak, (int, float)):
        return float(peak), "given"
    return getattr(peak, "value", None), getattr(peak, "source", "")


def compare(reports: Mapping[str, ProfileReport]) -> dict:
    """Two or more reports side by side: rows per category and per phase, step time and MFU, plus figures."""
    if len(reports) < 2:
        raise ValueError(f"compare needs at least two reports, got {len(reports)}")
    labels = list(reports)
    rows = []
    for category in [r["category"] for r in next(iter(reports.values())).categories]:
        row = {"category": category}
        for label in labels:
            row[f"{label} ms"] = next(r["ms_per_step"] for r in reports[label].categories if r["category"] == category)
        rows.append(row)
    steps = {label: reports[label].breakdown["step_ms"] for label in labels}
    base = labels[0]
    return {
        "categories": rows,
        "step_ms": steps,
        "speedup_vs_" + base: {label: steps[base] / steps[label] for label in labels if steps[label]},
        "mfu": {label: reports[label].waterfall["mfu"] for label in labels},
        "figures": {
            "categories": figures.compare_categories_figure({k: v.categories for k, v in reports.items()}),
            "step_breakdown": figures.breakdown_figure({k: v.breakdown for k, v in reports.items()}),
        },
    }
