"""Test case for notebooks/03_distributed.ipynb: 2 gloo processes, tiny models, three layouts, tiny comm-bench
(the teaching-DDP cell is switched off: tests/test_distributed_teaching.py covers it)."""

import os

PARAMETERS = {"nproc": 2, "layouts": "dp=2 tp=2 ep=2", "steps": 3, "global_batch": 4, "seq_len": 16,
              "device": "cpu", "teaching": "false", "comm_min_size": "1K", "comm_max_size": "4K", "comm_iters": 1,
              "timeout_s": 240}
TIMEOUT_S = 300


def check(results):
    assert results["nproc"] == 2 and results["backend"] == "gloo"
    cases = [c["case"] for c in results["layouts"]]
    assert cases == ["glm4-tiny:dp=2", "glm4-tiny:tp=2", "glm45-tiny:ep=2"]
    for c in results["layouts"]:
        assert len(c["losses"]) == 3 and c["step_s"] > 0
        assert c["max_loss_diff"] < 1e-4, c  # each layout reproduces the single-process losses
    assert set(results["reference"]) == {"glm4-tiny", "glm45-tiny"}
    assert results["teaching"] == []  # off here: tests/test_distributed_teaching.py runs the same launch
    ops = {r["op"] for r in results["comm_bench"]}
    assert ops == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"}
    assert all(r["busbw_GBps"] > 0 for r in results["comm_bench"])
    names = {os.path.basename(p) for p in results["figures"]}
    assert {"loss_by_layout.html", "step_time_by_layout.html", "comm_bench.html"} <= names
