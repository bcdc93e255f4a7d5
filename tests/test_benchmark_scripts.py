"""The benchmark scripts run end to end and report what they claim (a smoke test at toy sizes: no speed is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_throughput_reports_both_models_targets_and_context_rows(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    bench = _load("train_throughput")
    # toy shapes: the per-case shapes of the long-sequence cases are shrunk so the smoke test stays quick
    for name in ("glm5-tiny-s1024", "glm5-tiny-s2048"):
        monkeypatch.setitem(bench.CASES, name, {**bench.CASES[name], "batch_size": 1, "seq_len": 48})
    out = tmp_path / "tt.json"
    report = bench.main(["--cases", "glm4-dense,glm45-tiny,glm5-tiny-s2048", "--batch-size", "1", "--seq-len", "40",
                         "--steps", "1", "--warmup", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["cpu_allocator"] in ("jemalloc", "tcmalloc", "mimalloc", "system malloc", "unknown")
    rows = {r["case"]: r for r in report["cases"]}
    assert set(rows) == {"glm4-dense", "glm45-tiny", "glm5-tiny-s2048"}
    for row in rows.values():
        assert row["workbench_tokens_per_s"] > 0 and row["hf_tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["workbench_tokens_per_s"] / row["hf_tokens_per_s"])
        assert 0 < row["workbench_mfu"] and row["params"] == row["hf_params"]  # the same model on both sides
        # MFU against the GEMM probes taken between the steps; the strict reading against the run's best probe
        low, high = row["gemm_peak_in_rounds_range"]
        assert 0 < low <= row["gemm_peak_in_rounds_flops"] <= high <= report["gemm_peak_flops"]
        achieved = row["workbench_tokens_per_s"] * row["flops_per_token"]
        assert row["workbench_mfu"] == pytest.approx(achieved / row["gemm_peak_in_rounds_flops"])
        assert row["workbench_mfu_vs_best_peak"] == pytest.approx(achieved / report["gemm_peak_flops"])
    assert rows["glm4-dense"]["target"] is None and rows["glm4-dense"]["target_met"] is None  # a context row
    assert rows["glm45-tiny"]["target"] == "tokens/s ratio >= 1.5"
    assert rows["glm45-tiny"]["target_met"] == (rows["glm45-tiny"]["ratio"] >= 1.5)
    assert (rows["glm5-tiny-s2048"]["batch_size"], rows["glm5-tiny-s2048"]["seq_len"]) == (1, 48)  # per-case shape


def test_train_throughput_compile_option_times_both_libraries_compiled(tmp_path, monkeypatch):
    """--compile adds compiled timings of *both* models and their own ratio; the target stays on the eager ratio.
    (torch.compile is replaced by the identity here: the plumbing is under test, not inductor.)"""
    pytest.importorskip("transformers")
    import torch

    bench = _load("train_throughput")
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(type(model).__name__) or model)
    report = bench.main(["--cases", "glm45-tiny", "--batch-size", "1", "--seq-len", "24", "--steps", "1",
                         "--warmup", "0", "--compile", "--out", str(tmp_path / "tt.json")])
    (row,) = report["cases"]
    assert sorted(compiled) == ["GLMForCausalLM", "Glm4MoeForCausalLM"]
    for kind in ("workbench", "hf", "workbench_compiled", "hf_compiled"):
        assert row[f"{kind}_tokens_per_s"] > 0
    assert row["ratio_compiled"] == pytest.approx(row["workbench_compiled_tokens_per_s"] /
                                                  row["hf_compiled_tokens_per_s"])
    assert row["target_met"] == (row["ratio"] >= 1.5)


def test_train_throughput_rejects_unknown_cases():
    pytest.importorskip("transformers")
    with pytest.raises(SystemExit, match="unknown case"):
        _load("train_throughput").main(["--cases", "glm9-huge"])
