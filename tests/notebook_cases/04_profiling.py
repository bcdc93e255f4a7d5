"""Test case for notebooks/04_profiling.ipynb: a 1-layer glm4-tiny, one recorded step per kernel choice."""

import math
import os

PARAMETERS = {"device": "cpu", "preset": "glm4-tiny", "num_layers": 1, "batch_size": 2, "seq_len": 16,
              "wait": 0, "warmup": 1, "active": 1, "kernel_op": "attention", "impl_a": "reference",
              "impl_b": "torch", "with_stack": "true", "top_n": 5}
TIMEOUT_S = 300


def check(results):
    assert results["device"] == "cpu" and results["kernel_op"] == "attention"
    profiles = results["profiles"]
    assert set(profiles) == {"reference", "torch"}
    for label, prof in profiles.items():
        assert prof["kernels"] == {"attention": label}
        assert prof["n_steps"] == 1 and prof["step_ms"] > 0
        assert 0 < prof["mfu"] < 1, prof["mfu"]
        # the waterfall's ideal uses the model's FLOPs (accounting) x tokens per step and the trainer's peak
        assert prof["tokens_per_step"] == 2 * 16
        assert math.isclose(prof["flops_per_step"], results["flops_per_token"] * prof["tokens_per_step"])
        assert prof["peak_flops"] == results["peak"]["value"] and prof["peak_source"] == results["peak"]["source"]
        assert math.isclose(prof["ideal_ms"], prof["flops_per_step"] / prof["peak_flops"] * 1e3)
        assert set(prof["category_ms"]) == set(results["categories"])
        assert prof["category_ms"]["matmul"] > 0 and prof["category_ms"]["attention"] > 0
        assert math.isclose(sum(r["ms"] for r in prof["phases"]), prof["step_ms"], rel_tol=1e-6)
        assert os.path.exists(prof["trace_path"])
        names = {os.path.basename(p) for p in prof["figures"]}
        assert {"mfu_waterfall.html", "step_breakdown.html", "categories.html", "memory.html"} <= names
    compare = results["compare"]
    assert set(compare["step_ms"]) == {"reference", "torch"}
    assert compare["speedup"]["reference"] == 1.0 and compare["speedup"]["torch"] > 0
