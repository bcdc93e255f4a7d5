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
