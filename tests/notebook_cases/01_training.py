"""Test case for notebooks/01_training.ipynb: a ~0.1M-parameter glm4-tiny shape, 30 steps on the bundled stories."""

import math

PARAMETERS = {"preset": "glm4-tiny", "steps": 30, "device": "cpu", "batch_size": 4, "seq_len": 32, "lr": 1e-2,
              "model_overrides": "hidden_size=64,num_layers=2,intermediate_size=128,num_heads=2,num_kv_heads=1,"
                                 "head_dim=32",
              "eval_every": 10, "sample_tokens": 16, "live_plot": "true"}
TIMEOUT_S = 120


def check(results):
    assert results["steps"] == 30 and results["device"] == "cpu"
    assert 0 < results["params"] < 200_000  # the overrides reached the model
    assert math.isfinite(results["final_val_loss"])
    assert results["final_train_loss"] < results["first_train_loss"] - 1.0  # it learned
    assert results["tokens_per_s"] > 0 and results["peak_source"]
    assert results["peak_memory_bytes"] > 1_000_000  # the process's peak RSS on cpu
    assert results["metrics_lines"] == 30 + 3  # 30 train steps + evals at 10, 20 and the end
    assert len(results["samples"]) == 2 and all(s.startswith("Once upon a time") for s in results["samples"])
    assert results["figure"].endswith("loss.html")
