"""Small display helpers shared by notebooks and CLIs: HTML tables and saving plotly figures.

Every figure is saved as HTML (always works, offline: plotly.js is embedded once per file) and as PNG where a static
renderer (kaleido with a browser) happens to exist; the notebooks show them inline. Used by every notebook.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from workbench.params import env_flag


def html_table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None, floatfmt: str = "{:,.3g}") -> str:
    """Rows of dicts -> an HTML table string (display with IPython.display.HTML)."""
    rows = list(rows)
    columns = list(columns or (rows[0].keys() if rows else []))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return floatfmt.format(value)
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def text_table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    """Rows of dicts -> a fixed-width text table (for CLIs and logs)."""
    rows = list(rows)
    columns = list(columns or (rows[0].keys() if rows else []))

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.4g}"
        return "" if value is None else str(value)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def save_figure(fig, path: str | os.PathLike, png: bool = False) -> dict[str, str]:
    """Write ``fig`` to ``path`` (.html), and a .png beside it when asked and a static renderer is installed.

    Returns the paths written, e.g. {"html": ".../loss.html"}; PNG export failures are skipped silently by design
    (kaleido needs a browser that offline machines often lack), the HTML is always there.
    """
    path = Path(path).with_suffix(".html")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs="cdn" if env_flag("WORKBENCH_PLOTLY_CDN") else True)
    written = {"html": str(path)}
    if png:
        try:
            fig.write_image(str(path.with_suffix(".png")))
            written["png"] = str(path.with_suffix(".png"))
        except Exception:
            pass
    return written


def in_interactive_kernel() -> bool:
    """True inside a Jupyter kernel (widgets can render); False in scripts and in headless runs.

    Headless notebook runs (the test harness, CI) set ``WORKBENCH_HEADLESS=1``; papermill itself sets nothing we
    can detect, and widgets there are harmless (they simply render nowhere).
    """
    if env_flag("WORKBENCH_HEADLESS"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
