"""Plotly figures for a profile: time per category, top ops, step breakdown, MFU waterfall, memory timeline, and
side-by-side comparisons of two or more profiles. Each function takes the plain dicts of a ``ProfileReport`` and
returns a ``plotly.graph_objects.Figure``; ``workbench.viz.save_figure`` writes it as HTML.
Used by ``workbench profile`` and notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

from workbench.profiling.categories import CATEGORIES

COLORS = {"matmul": "#1f77b4", "attention": "#ff7f0e", "norm": "#2ca02c", "elementwise": "#d62728",
          "moe": "#9467bd", "communication": "#8c564b", "optimizer": "#e377c2", "data": "#7f7f7f",
          "other": "#bcbd22", "forward": "#1f77b4", "backward": "#ff7f0e", "communication (exposed)": "#8c564b"}


def category_figure(categories: Sequence[dict], title: str = "Time per step by op category (self time)") -> go.Figure:
    rows = [r for r in categories if r["ms_per_step"] > 0]
    fig = go.Figure(go.Bar(
        x=[r["ms_per_step"] for r in rows], y=[r["category"] for r in rows], orientation="h",
        marker_color=[COLORS.get(r["category"], "#999") for r in rows],
        text=[f"{r['share']:.0%}" for r in rows], textposition="auto"))
    fig.update_layout(title=title, xaxis_title="ms per step", yaxis={"autorange": "reversed"}, height=380)
    return fig


def top_ops_figure(top: Sequence[dict], title: str = "Top ops by self time") -> go.Figure:
    fig = go.Figure(go.Bar(
        # the table keys rows by (op, category): an aten::mul of a norm and one of an activation are two rows,
        # and plotly draws bars with one label on one line, so the label names both
        x=[r["ms_per_step"] for r in top], y=[f"{r['op'][:60]} [{r['category']}]" for r in top], orientation="h",
        marker_color=[COLORS.get(r["category"], "#999") for r in top],
        hovertext=[f"{r['category']}; {r['count_per_step']:.3g} calls/step"
                   + (f"; {r['achieved_tflops']:.3g} TFLOP/s" if r.get("achieved_tflops") else "") for r in top]))
    fig.update_layout(title=title, xaxis_title="ms per step", yaxis={"autorange": "reversed"},
                      height=max(300, 28 * len(top) + 120))
    return fig


def breakdown_figure(breakdowns: Mapping[str, dict], title: str = "Step time breakdown") -> go.Figure:
    """Stacked bars, one per profile label; overlapped communication is noted in the hover text."""
    fig = go.Figure()
    labels = list(breakdowns)
    phases = [row["phase"] for row in next(iter(breakdowns.values()))["rows"]] if breakdowns else []
    for phase in phases:
        values = [next((r["ms"] for r in breakdowns[k]["rows"] if r["phase"] == phase), 0.0) for k in labels]
        fig.add_trace(go.Bar(name=phase, y=labels, x=values, orientation="h", marker_color=COLORS.get(phase)))
    overlapped = [breakdowns[k]["communication"]["overlapped_ms"] for k in labels]
    if any(overlapped):
        fig.add_trace(go.Scatter(name="communication overlapped (hidden)", y=labels,
                                 x=[breakdowns[k]["step_ms"] for k in labels], mode="markers",
                                 text=[f"{o:.3g} ms overlapped" for o in overlapped], marker_symbol="diamond"))
    fig.update_layout(barmode="stack", title=title, xaxis_title="ms per step", height=200 + 60 * len(labels))
    return fig


def waterfall_figure(waterfall: dict, title: str | None = None) -> go.Figure:
    bars = [b for b in waterfall["bars"] if b["measure"] != "relative" or abs(b["ms"]) > 1e-9]
    mfu = waterfall.get("mfu")
    title = title or ("MFU waterfall: ideal -> measured step" + (f" (MFU {mfu:.1%})" if mfu is not None
                                                               else " (MFU unknown: no peak)"))
    fig = go.Figure(go.Waterfall(
        x=[b["label"] for b in bars], y=[b["ms"] for b in bars], measure=[b["measure"] for b in bars],
        text=[f"{b['ms']:.3g}" for b in bars], textposition="outside"))
    fig.update_layout(title=title, yaxis_title="ms per step", showlegend=False, height=450)
    return fig


def memory_figure(memory: dict, title: str = "Memory during the profiled steps") -> go.Figure:
    fig = go.Figure()
    for name, line in memory.get("timelines", {}).items():
        fig.add_trace(go.Scatter(x=line["t_ms"], y=line["mb"], mode="lines", name=f"{name}: {line['source']}"[:90],
                                 line_shape="hv"))
    fig.update_layout(title=title, xaxis_title="ms since the first active step", yaxis_title="MB", height=380,
                      legend={"orientation": "h", "y": -0.25})
    return fig


def compare_categories_figure(tables: Mapping[str, Sequence[dict]],
                              title: str = "Time per step by category, side by side") -> go.Figure:
    fig = go.Figure()
    for label, rows in tables.items():
        by_cat = {r["category"]: r["ms_per_step"] for r in rows}
        fig.add_trace(go.Bar(name=label, x=list(CATEGORIES), y=[by_cat.get(c, 0.0) for c in CATEGORIES]))
    fig.update_layout(barmode="group", title=title, yaxis_title="ms per step", height=400)
    return fig
