"""workbench.perfmodel.compare, the library behind notebooks/05_hardware_comparison.ipynb: its up-front parameter
checks, the claim study's reference handling, the summary sentences and the scaling curve's labels. Fast: tiny
presets, fixed layouts, or errors raised before any search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.perfmodel import LayoutError, MemoryCapacityError, preset_names, simulate
from workbench.perfmodel.compare import (check_inputs, claim_study, claim_summary, parse_layout_hint,
                                         scaling_breaks, scaling_curve)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_hardware_comparison.ipynb"
GOOD = dict(model="glm-5", chips=["Ascend 910B", "H100"], reference_chip="H100", layout_hint="auto")


def _check(**changes):
    return check_inputs(**{**GOOD, **changes})


def _notebook_checks(tmp_path, **overrides) -> dict:
    """Notebook 05's parameters cell, then ``overrides`` (as papermill injects them), then its checking cell."""
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    namespace: dict = {}
    exec("".join(cells[0]["source"]), namespace)
    namespace.update(overrides, out_dir=str(tmp_path / "out"), results_path=str(tmp_path / "results.json"))
    exec("".join(cells[1]["source"]), namespace)
    return namespace


def test_check_inputs_accepts_the_notebook_defaults(tmp_path):
    assert _check() == "auto"
    assert _check(layout_hint=' {"auto": true, "tp": 1, "ep": 8} ') == {"auto": True, "tp": 1, "ep": 8}
    ns = _notebook_checks(tmp_path, layout_hint='{"auto": true, "tp": 1}', scaling_counts="1024,128, 128")
    assert ns["layout"] == {"auto": True, "tp": 1} and ns["counts"] == [128, 1024]
    assert _notebook_checks(tmp_path, scaling_counts=512)["counts"] == [512]  # `-p scaling_counts 512`: an int


@pytest.mark.parametrize("hint, message", [
    ('{"auto": true, tp: 1}', "parameter 'layout_hint' = '{\"auto\": true, tp: 1}' is not valid JSON"),
    ("[1, 2]", "parameter 'layout_hint' = '[1, 2]' is not a JSON object"),
    ('{"auto": true, "tq": 1}', "parameter 'layout_hint': layout: unknown key(s) ['tq']"),
    ('{"auto": true, "tp": 0}', "parameter 'layout_hint': layout.tp = 0 must be positive"),
])
def test_bad_layout_hint_is_one_clear_error_naming_the_parameter(hint, message):
    with pytest.raises(WorkbenchError) as exc:
        _check(layout_hint=hint)
    assert message in str(exc.value)
    with pytest.raises(WorkbenchError, match="layout_hint"):
        parse_layout_hint(hint)


def test_model_must_be_a_known_preset_up_front():
    assert "glm-5" in preset_names()
    with pytest.raises(WorkbenchError, match=r"parameter 'model' = 'glm5' is not a model preset.*did you mean 'glm-5'"):
        _check(model="glm5")


@pytest.mark.parametrize("changes, message", [
    (dict(chips=["H100", "Z999"]), "parameter 'chips': unknown chip 'Z999'"),
    (dict(reference_chip="Z999"), "parameter 'reference_chip': unknown chip 'Z999'"),
])
def test_chips_must_be_in_the_catalog(changes, message):
    with pytest.raises(WorkbenchError) as exc:
        _check(**changes)
    assert message in str(exc.value)


def test_every_problem_is_reported_together():
    with pytest.raises(WorkbenchError) as exc:
        _check(model="glm5", chips=["Z999"], layout_hint="{")
    text = str(exc.value)
    assert "'model'" in text and "'chips'" in text and "'layout_hint'" in text


# what the notebook's first cells reject, with the values papermill injects for `-p name value` / `-r name value`
@pytest.mark.parametrize("overrides, message", [
    (dict(layout_hint='{"auto": true, tp: 1}'), "parameter 'layout_hint' = '{\"auto\": true, tp: 1}' is not valid JSON"),
    (dict(model="glm5"), "parameter 'model' = 'glm5' is not a model preset the perfmodel knows; did you mean 'glm-5'?"),
    (dict(chips=""), "parameter 'chips' needs at least 1 item(s)"),
    (dict(scaling_counts=""), "parameter 'scaling_counts' needs at least 1 item(s)"),
    (dict(scaling_counts="512,abc"), "parameter 'scaling_counts' = 'abc' is not a valid int"),
    (dict(scaling_counts="512,0"), "parameter 'scaling_counts' = 0 is below its minimum 1"),
    (dict(train_tokens=float("inf")), "parameter 'train_tokens' = inf is not a valid float"),
])
def test_notebook_rejects_bad_parameters_up_front(tmp_path, overrides, message):
    with pytest.raises(WorkbenchError) as exc:
        _notebook_checks(tmp_path, **overrides)
    assert message in str(exc.value)


def test_infeasible_errors_say_their_limit():
    with pytest.raises(MemoryCapacityError):  # still a WorkbenchError / ValueError for old callers
        simulate({"model": {"preset": "glm-5"}, "seq_len": 4096, "global_batch": 4096,
                  "cluster": {"chip": "H100", "count": 128}})
    with pytest.raises(LayoutError):
        simulate({"model": {"preset": "glm4-tiny"}, "seq_len": 1024, "global_batch": 64,
                  "cluster": {"chip": "H100", "count": 8}, "layout": {"tp": 3, "dp": 1}})
    assert issubclass(MemoryCapacityError, WorkbenchError) and issubclass(LayoutError, ValueError)


@pytest.mark.parametrize("model, chip, precision, layout, limit, why", [
    ("glm-5", "H100", "bf16", "auto", "memory capacity", "impossible memory"),
    ("glm4-tiny", "H100", "bf16", {"tp": 3}, "layout / global batch", "does not divide"),
    ("glm5", "H100", "bf16", "auto", "invalid spec", "unknown model preset 'glm5'"),
    ("glm-5", "Ascend 910B", "fp8", "auto", "invalid spec", "has no FP8 peak"),
])
def test_scaling_curve_labels_infeasible_counts_by_their_cause(model, chip, precision, layout, limit, why):
    (row,) = scaling_curve(model, chip, [128], 1024, 128, precision, layout)
    assert not row["feasible"] and row["limit"] == limit and why in row["why"]


def test_scaling_curve_reports_a_fixed_layout_that_does_not_fit_as_infeasible():
    layout = {"tp": 8, "pp": 1, "dp": 4, "ep": 8, "zero": 1, "recompute": "none"}
    (row,) = scaling_curve("glm-4.5-air", "H100", [32], 4096, 64, "bf16", layout)
    assert not row["feasible"] and row["limit"] == "memory capacity" and "GB per chip" in row["why"]


def test_scaling_curve_needs_counts():
    with pytest.raises(WorkbenchError, match="at least one chip count"):
        scaling_curve("glm4-tiny", "H100", [], 1024, 64)


def test_claim_study_never_promotes_another_chip_to_reference():
    # glm-4.5-air's weights and optimizer state do not fit in 16 x 80 GB H100s but do in 16 x 141 GB H200s
    layout = {"tp": 8, "pp": 1, "dp": 2, "ep": 16, "zero": 3, "recompute": "full"}
    rows = claim_study(["H200", "H100"], "glm-4.5-air", 16, 4096, 64, 1e12, "H100", layout=layout)
    ref, h200 = rows
    assert ref["chip"] == "NVIDIA H100 SXM" and ref["reference"] and "impossible memory" in ref["error"]
    assert h200["chip"] == "NVIDIA H200 SXM" and not h200["reference"] and h200["mfu"] > 0
    assert h200["chips_needed"] is None and h200["reached"] is None and "not compared" in h200["why_not"]
    assert h200["energy_mwh_at_chips_needed"] is None  # every comparison key is present, so tables do not KeyError
    lines = claim_summary(rows, "glm-4.5-air", 16, 1e12)
    assert lines[0].startswith("Reference: 16 x NVIDIA H100 SXM cannot train glm-4.5-air")
    assert "impossible memory" in lines[0] and "(not compared)" in lines[1]


def test_claim_study_reference_row_has_the_comparison_keys():
    rows = claim_study(["H800", "H100"], "glm4-tiny", 8, 1024, 64, 1e9, "H100", unit=8)
    assert [r["chip"] for r in rows] == ["NVIDIA H100 SXM", "NVIDIA H800 SXM"]
    assert rows[0]["reference"] and rows[0]["chips_needed"] == 8 and rows[0]["energy_mwh_at_chips_needed"] > 0
    lines = claim_summary(rows, "glm4-tiny", 8, 1e9)
    assert lines[0].startswith("Reference: 8 x NVIDIA H100 SXM train glm4-tiny")
    assert lines[1].startswith("NVIDIA H800 SXM:") and "match the reference time" in lines[1]
    assert lines[-1].startswith("Predicted MFU across chips")


def test_claim_summary_when_no_chip_runs_lists_each_error():
    rows = claim_study(["Ascend 910B"], "glm5", 128, 4096, 4096, 1e12, "H100")
    assert all("unknown model preset 'glm5'" in r["error"] for r in rows)
    lines = claim_summary(rows, "glm5", 128, 1e12)  # was a bare StopIteration
    assert lines[0].startswith("No chip can train glm5 on 128 chips")
    assert [line.split(":")[0] for line in lines[1:]] == ["NVIDIA H100 SXM", "Ascend 910B (generic)"]


def test_scaling_breaks_names_the_count_that_does_not_fit():
    rows = [{"chips": 128, "feasible": False, "limit": "memory capacity"},
            {"chips": 256, "feasible": False, "limit": "memory capacity"},
            {"chips": 1024, "feasible": True, "scaling_efficiency": 1.0, "dominant_overhead": "bubble"},
            {"chips": 8192, "feasible": True, "scaling_efficiency": 0.5, "dominant_overhead": "dp comm"}]
    breaks = scaling_breaks(rows)
    assert breaks["out_of_memory_up_to"] == 256 and breaks["first_feasible"] == 1024
    assert breaks["efficiency_below_80pct_at"] == 8192 and breaks["cause"] == "dp comm"
    assert "memory_limited_below" not in breaks  # its old name, which read as "a count below which it is limited"
    assert scaling_breaks(rows[2:])["out_of_memory_up_to"] is None
