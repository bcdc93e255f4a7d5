"""Validation against published runs: prints the error of every row; the median |error| must stay <= 15%."""

from __future__ import annotations

import statistics

import pytest

from workbench.perfmodel import Efficiency
from workbench.perfmodel.calibration import ASSUMPTIONS, _loss, error_table, fit, load_runs, summary, validate
from workbench.perfmodel.efficiency import calibration_record, default_efficiency


@pytest.fixture(scope="module")
def rows():
    return validate()


def test_every_published_run_is_simulated_and_reported(rows, capsys):
    with capsys.disabled():
        print("\n" + error_table(rows))
        for run_id, extra in ASSUMPTIONS.items():
            print(f"  assumption {run_id}: {extra['why']}")
    assert len(rows) == len(load_runs()) >= 20
    kinds = {r["kind"] for r in rows}
    assert kinds == {"step_s", "mfu", "tok_s_chip"}
    assert all(r["predicted"] > 0 for r in rows)
    # runs that happened must fit; the memory model may be pessimistic for a few (reported, bounded)
    not_fitting = [r["id"] for r in rows if not r["fits"]]
    with capsys.disabled():
        print(f"  predicted not to fit in memory: {not_fitting or 'none'}")
    assert len(not_fitting) <= 2, not_fitting


def test_median_absolute_error_is_at_most_15_percent(rows):
    s = summary(rows)
    assert s["median_abs_error"] <= 0.15, error_table(rows)
    # the stored record agrees with a fresh evaluation (calibration.json is not stale)
    assert calibration_record()["median_abs_error"] == pytest.approx(s["median_abs_error"], abs=1e-3)


def test_every_stored_error_matches_the_code(rows):
    """calibration.json holds each row's error (4 decimals) as of its last fit. The median alone at abs=0.01 (a third
    of the 2.9% it checked) let the pre-fix simulator pass with the re-fitted numbers, though two rows it reproduced
    were 1.5-2.3 points off: any change that moves a row must re-fit (or explain) and rewrite the record."""
    stored = calibration_record()["errors"]
    assert set(stored) == {r["id"] for r in rows}
    moved = {r["id"]: (stored[r["id"]], round(r["error"], 4)) for r in rows
             if r["error"] != pytest.approx(stored[r["id"]], abs=1e-3)}
    assert not moved, f"calibration.json is stale (stored, now): {moved}; re-fit: python -m workbench.perfmodel.calibration --fit"


def test_each_family_is_within_reach(rows):
    """Not only the median: every source family has a median error <= 20% (the power-capped torchtitan runs are
    the documented outlier, see README)."""
    families = {}
    for r in rows:
        families.setdefault(r["id"].split("-")[0], []).append(abs(r["error"]))
    for family, errors in families.items():
        if family == "TT":
            continue
        assert statistics.median(errors) <= 0.20, (family, errors)


def test_fit_recovers_from_a_bad_start():
    """The fitting routine itself works: from a deliberately bad GEMM efficiency it climbs back."""
    start = default_efficiency().replace(gemm_eff_max=0.55)
    cache: dict = {}
    bad = _loss(start, cache)
    fitted, rows = fit(start, sweeps=1, steps=5, params={"gemm_eff_max": (0.5, 1.0)})
    assert _loss(fitted, {}) < bad
    assert fitted.gemm_eff_max > 0.7
    assert summary(rows)["median_abs_error"] <= 0.15


def test_efficiency_rejects_nonsense():
    with pytest.raises(ValueError, match="gemm_eff_max"):
        Efficiency(gemm_eff_max=1.5)
    with pytest.raises(ValueError, match="moe_imbalance"):
        Efficiency(moe_imbalance=0.5)
    with pytest.raises(ValueError, match="unknown efficiency"):
        Efficiency().replace(warp_speed=2)
