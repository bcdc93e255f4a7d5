"""Results JSON (atomic, JSON-safe) and the small display helpers."""

import json
import math

import numpy as np
import plotly.graph_objects as go
import torch

from workbench.results import to_jsonable, write_results
from workbench.viz import html_table, save_figure, text_table


def test_results_are_json_safe_and_atomic(tmp_path):
    path = write_results({"loss": torch.tensor(2.5), "n": np.int64(3), "bad": math.nan, "xs": torch.arange(3),
                          "dtype": torch.float32}, tmp_path / "sub" / "r.json")
    data = json.loads(path.read_text())
    assert data == {"loss": 2.5, "n": 3, "bad": None, "xs": [0, 1, 2], "dtype": "torch.float32"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_to_jsonable_nested():
    assert to_jsonable({"a": (1, np.float32(0.5)), 2: [None, "x"]}) == {"a": [1, 0.5], "2": [None, "x"]}


def test_tables_and_figures(tmp_path):
    rows = [{"op": "mm", "ms": 1.23456}, {"op": "<b>", "ms": None}]
    assert "<td>&lt;b&gt;</td>" in html_table(rows) and "1.23" in html_table(rows)
    text = text_table(rows).splitlines()
    assert text[0].split() == ["op", "ms"] and len(text) == 4
    written = save_figure(go.Figure(go.Bar(x=[1], y=[2])), tmp_path / "fig.png")
    assert written["html"].endswith("fig.html") and (tmp_path / "fig.html").stat().st_size > 1000


def _feed(plot):
    for step, loss in enumerate([5.0, 4.0, 3.0], start=1):
        plot({"kind": "train", "step": step, "loss": loss + 1, "lm_loss": loss})
    plot({"kind": "eval", "step": 3, "val_loss": 3.5})


def test_live_loss_plot_grows_a_figure_widget():
    """The notebook's live curve (JupyterLab): a FigureWidget whose train and val traces follow the records."""
    from workbench.train.plots import LiveLossPlot

    plot = LiveLossPlot(live=True)
    assert isinstance(plot.widget, go.FigureWidget)  # plotly >= 6 needs anywidget for this: a dependency
    _feed(plot)
    train, val = plot.widget.data
    assert list(train.y) == [5.0, 4.0, 3.0] and list(val.x) == [3] and list(val.y) == [3.5]


def test_live_loss_plot_without_widgets_trains_on_and_saves(tmp_path, monkeypatch, capsys):
    from workbench.train import plots

    def no_widgets(*args, **kwargs):
        raise ImportError("Please install anywidget to use the FigureWidget class")

    monkeypatch.setattr(plots.go, "FigureWidget", no_widgets)
    plot = plots.LiveLossPlot(live=True)
    assert plot.widget is None and "live loss plot off" in capsys.readouterr().err
    _feed(plot)
    assert [r["step"] for r in plot.history if r["kind"] == "train"] == [1, 2, 3]
    written = plot.save(tmp_path / "loss.html")
    assert all(str(path).startswith(str(tmp_path)) for path in written.values())
