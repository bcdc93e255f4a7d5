"""Test case for notebooks/00_quickstart.ipynb: tiny sizes, no probes (the device tests cover them)."""

import math

PARAMETERS = {"device": "cpu", "preset": "glm4-tiny", "batch_size": 2, "seq_len": 32, "probe": "false"}
TIMEOUT_S = 300


def check(results):
    assert results["device"]["type"] == "cpu"
    assert {row["type"] for row in results["devices"]} >= {"cpu", "cuda", "npu"}
    assert results["params_total"] == results["params_instantiated"] > 0
    assert 0 < results["params_active"] <= results["params_total"]
    # One AdamW step on the same batch must lower its loss, and the first loss is near ln(V) for a random init.
    assert math.isfinite(results["loss_before"]) and results["loss_after"] < results["loss_before"]
    assert results["tokens_per_s"] > 0
    assert results["figure"].endswith(".html")
