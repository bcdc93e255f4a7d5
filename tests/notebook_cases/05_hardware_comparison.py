"""notebooks/05_hardware_comparison.ipynb at test size: GLM-5 with a partly fixed layout (fast search), few counts."""

PARAMETERS = {
    "model": "glm-5",
    "count": 1024,
    "layout_hint": '{"auto": true, "tp": 1, "ep": 8, "vp": 1}',
    "scaling_counts": "128,1024,8192",
    "match_unit": 512,
    "measure_this_machine": True,
    "interactive": False,
}
TIMEOUT_S = 300


def check(results: dict) -> None:
    assert results["catalog_chips"] >= 19 and results["catalog_sourced_fields"] > 100
    here = results["roofline"]["this_machine"]
    assert here["fp32_tflops"] > 0 and here["bandwidth_tb_s"] > 0 and "measured" in here["source"]
    assert len(here["points"]) == 2 and all(p["tflops"] > 0 for p in here["points"])
    assert results["calibration"]["median_abs_error"] <= 0.15
    claim = {row["chip"]: row for row in results["claim"]}
    assert set(claim) == {"NVIDIA H100 SXM", "NVIDIA H800 SXM", "Ascend 910B (generic)", "Ascend 910C"}
    h100, b910 = claim["NVIDIA H100 SXM"], claim["Ascend 910B (generic)"]
    for row in claim.values():
        assert 0.05 < row["mfu"] < 0.8 and row["energy_mwh"] > 0 and row["days"] > 0
    # the 910B is slower per chip, so it needs more chips than the H100 reference for the same time
    assert b910["tokens_per_s_per_chip"] < h100["tokens_per_s_per_chip"] / 2
    assert b910["chips_needed"] is None or b910["chips_needed"] > h100["chips_needed"]
    scaling = results["scaling"]["NVIDIA H100 SXM"]
    assert scaling[0]["chips"] == 128 and not scaling[0]["feasible"] and scaling[0]["limit"] == "memory capacity"
    assert results["scaling_breaks"]["NVIDIA H100 SXM"]["out_of_memory_up_to"] == 128
    assert results["interactive_default"]["mfu"] > 0
    assert results["summary"] and results["summary"][0].startswith("Reference: 1024 x NVIDIA H100 SXM")
