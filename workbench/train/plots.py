"""Loss curves: a static plotly figure from a run's metrics, and a live one (FigureWidget) for notebooks.

``LiveLossPlot`` is a trainer callback: in an interactive Jupyter kernel it shows a ``FigureWidget`` that grows as
steps finish; headless (papermill, scripts) it only collects points. Either way ``save(path)`` writes the static
HTML. Used by the trainer (run_dir/figures/loss.html) and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable

import plotly.graph_objects as go


def _layout(fig) -> None:
    fig.update_layout(title="loss", xaxis_title="step", yaxis_title="cross-entropy (nats/token)",
                      template="plotly_white", height=380, legend=dict(x=0.75, y=0.98))


def loss_figure(history: Iterable[dict[str, Any]]) -> go.Figure:
    history = list(history)
    train = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval"]
    fig = go.Figure()
    fig.add_scatter(x=[r["step"] for r in train], y=[r.get("lm_loss", r["loss"]) for r in train], name="train",
                    mode="lines")
    fig.add_scatter(x=[r["step"] for r in evals], y=[r["val_loss"] for r in evals], name="val",
                    mode="lines+markers")
    _layout(fig)
    return fig


class LiveLossPlot:
    """Callback for ``Trainer(callbacks=[plot])``; ``plot.widget`` is the FigureWidget when ``live`` is True."""

    def __init__(self, live: bool = True, update_every: int = 1) -> None:
        self.history: list[dict[str, Any]] = []
        self.update_every = max(1, update_every)
        self.widget = None
        if live:
            try:
                self.widget = go.FigureWidget(loss_figure([]))
            except ImportError as exc:  # e.g. plotly >= 6 without anywidget: train on, draw the curve at the end
                print(f"live loss plot off ({exc}); the static figure is drawn when training ends", file=sys.stderr)

    def __call__(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "train":
            self.history.append(record)
            if "val_loss" in record:
                self.history.append({"kind": "eval", "step": record["step"], "val_loss": record["val_loss"]})
        elif record.get("kind") == "eval":
            self.history.append(record)
        if self.widget is not None and (record.get("step", 0) % self.update_every == 0 or record.get("kind") == "eval"):
            fresh = loss_figure(self.history)
            with self.widget.batch_update():
                for trace, new in zip(self.widget.data, fresh.data):
                    trace.x, trace.y = new.x, new.y

    def figure(self) -> go.Figure:
        return loss_figure(self.history)

    def save(self, path) -> dict[str, str]:
        from workbench.viz import save_figure

        return save_figure(self.figure(), path)
