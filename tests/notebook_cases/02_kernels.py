"""Test case for notebooks/02_kernels.ipynb: tiny benchmark sizes, one round, the full correctness table on cpu."""

PARAMETERS = {"device": "cpu", "sizes": "tiny", "ops": "all", "check_dtypes": "fp32,bf16", "bench_dtype": "fp32",
              "repeats": 1, "moe_experts": "8", "memory_seq_len": 256, "probe": "true"}
TIMEOUT_S = 300


def check(results):
    assert results["device"]["type"] == "cpu"
    assert results["selected"]["attention"] == "torch" and results["selected"]["moe"] == "torch"
    # every available implementation of every op, fp32 and bf16, forward and backward, within tolerance
    assert results["checks"] and results["checks_failed"] == 0
    assert {c["op"] for c in results["checks"]} == {"attention", "cross_entropy", "moe", "rms_norm", "rope",
                                                    "sparse_mqa_attention", "swiglu"}
    assert {c["dtype"] for c in results["checks"]} == {"fp32", "bf16"}
    assert results["tiled_attention_max_error"] < 1e-4
    memory = results["memory"]
    assert memory["tiled_peak_bytes"] < memory["naive_peak_bytes"] / 2
    rows = results["benchmark"]["rows"]
    assert {(r["op"], r["impl"]) for r in rows} >= {("attention", "reference"), ("attention", "torch"),
                                                   ("moe", "reference"), ("moe", "torch"),
                                                   ("sparse_mqa_attention", "torch")}
    assert all(r["time_ms"] > 0 and r["pct_of_roofline"] is not None for r in rows)  # peaks were probed
    assert results["benchmark"]["peaks"]["flops_source"].startswith("measured")
    assert [c["experts"] for c in results["benchmark"]["comparisons"] if "experts" in c] == [8]
    ridges = {e["chip"]: e["ridge"] for e in results["fusion_estimates"]}
    assert round(ridges["Ascend 910B (generic)"]) == 200 and round(ridges["NVIDIA H100 SXM"]) == 295
    assert results["figure"].endswith(".html")
