"""notebooks/05_hardware_comparison.ipynb's interactive section, fast and with its widgets on: the parameter,
catalog and slider cells run in this process, in one namespace (as a live kernel runs them), and the test moves the
widgets itself. The suite's papermill run of the notebook (tests/test_notebooks.py) is headless, so it never built
or moved a slider."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_hardware_comparison.ipynb"
# the parameters, their validation, the catalog table, and the interactive cell (the only ones it needs)
CELLS = ("validate_params", "load_catalog", "def one_point")


def _run(tmp_path, **params) -> dict:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    parameters = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    wanted = [next(s for s in code if marker in s and s != parameters) for marker in CELLS]
    namespace: dict = {}
    exec(parameters, namespace)
    namespace.update({"out_dir": str(tmp_path / "out"), "results_path": str(tmp_path / "results.json"),
                      "layout_hint": '{"auto": true, "tp": 1, "ep": 8, "vp": 1}', "count": 1024, **params})
    for source in wanted:
        exec(source, namespace)
    return namespace


def test_the_interactive_point_is_priced_like_the_tables(tmp_path):
    """The default point and the sliders ignored `pue` (energy at the simulator's 1.2 where the claim table used
    the parameter), and a fixed layout that does not fit was shown with numbers the tables refused."""
    ns = _run(tmp_path, pue=2.0, interactive=False)
    one_point = ns["one_point"]
    at_1_2 = _run(tmp_path, pue=1.2, interactive=False)["one_point"]("NVIDIA H100 SXM", 1024, None, "bf16")
    at_2_0 = one_point("NVIDIA H100 SXM", 1024, None, "bf16")
    assert at_2_0["energy_mwh"] == pytest.approx(at_1_2["energy_mwh"] * 2.0 / 1.2, rel=1e-6)
    cramped = _run(tmp_path, interactive=False,
                   layout_hint='{"tp": 1, "pp": 1, "dp": 1024, "ep": 8, "zero": 0, "recompute": "none", '
                               '"micro_batch": 4}')
    assert "more than the usable" in cramped["results"]["interactive_default"]["error"]


def test_a_chip_without_a_catalogued_link_gets_no_invented_one(tmp_path):
    """TPU v4 has no scale-out bandwidth in the catalog: the point was priced with a silent 25 GB/s."""
    ns = _run(tmp_path, chips="TPU v4,H100", interactive=False)
    assert "error" in ns["results"]["interactive_default"]


def test_the_sliders_simulate_once_per_change(tmp_path, monkeypatch):
    """Dragging simulated at every position passed; a chip change simulated twice (the network slider followed it
    and refreshed, then the chip's own observer refreshed again)."""
    pytest.importorskip("ipywidgets")
    ns = _run(tmp_path, chips="H100,TPU v4,Ascend 910C", interactive=True)
    calls = []
    priced = ns["simulate"]
    ns["simulate"] = lambda spec: calls.append(spec["cluster"]) or priced(spec)
    assert ns["count_w"].continuous_update is False and ns["net_w"].continuous_update is False
    ns["chip_w"].value = "Ascend 910C"
    assert len(calls) == 1 and calls[0]["scale_out_gb_s_per_chip"] == ns["net_w"].value
    ns["chip_w"].value = "Google TPU v4"  # no catalogued link: simulated without one, not at the slider's 25
    assert len(calls) == 2 and "scale_out_gb_s_per_chip" not in calls[1]
    ns["net_w"].value = 64.0  # the user sets one: now it is priced
    assert len(calls) == 3 and calls[2]["scale_out_gb_s_per_chip"] == 64.0
