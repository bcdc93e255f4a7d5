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
    monkeypatch.setattr(bench, "measure_gemm_peak", _fake_gemm_peak)  # seconds of GEMM probes: not under test here
    # toy shapes: the per-case shapes of the long-sequence cases are shrunk so the smoke test stays quick
    for name in ("glm5-tiny-s1024", "glm5-tiny-s2048"):
        monkeypatch.setitem(bench.CASES, name, {**bench.CASES[name], "batch_size": 1, "seq_len": 48})
    out = tmp_path / "tt.json"
    report = bench.main(["--cases", "glm4-dense,glm45-tiny,glm5-tiny-s2048", "--batch-size", "1", "--seq-len", "40",
                         "--steps", "1", "--warmup", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["complete"] is True
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
    monkeypatch.setattr(bench, "measure_gemm_peak", _fake_gemm_peak)
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


# ---------------------------------------------------------------------------------------------------------------
# fakes: the plumbing of the scripts is under test here, not the speed of this machine
# ---------------------------------------------------------------------------------------------------------------
def _fake_gemm_peak(device, dtype=None, sizes=(512, 1024, 2048), min_time_s=0.25):
    """measure_gemm_peak without the seconds of GEMMs: the in-round probe (one size) below the whole-run probes."""
    return (1.0e11, "fake probe at n=2048") if tuple(sizes) == (2048,) else (1.2e11, "fake probe, best at n=1024")


def _fake_row(name: str, spec: dict, *args, **kwargs) -> dict:
    """What run_case returns for a case, without building or timing a model."""
    return {"case": name, "preset": spec["preset"], "flops_per_token": 1.0e6, "batch_size": 1, "seq_len": 8,
            "workbench_tokens_per_s": 2.0e4, "hf_tokens_per_s": 1.0e4, "ratio": 2.0,
            "gemm_peak_in_rounds_flops": 1.0e11, "gemm_peak_in_rounds_range": [0.9e11, 1.1e11]}


def _no_work(*args, **kwargs):
    raise AssertionError("the benchmark started working before its arguments were validated")


def test_train_throughput_keeps_finished_cases_when_cut_off(tmp_path, monkeypatch, capsys):
    """A run killed during a later case (on_device.sh wraps it in `timeout`) keeps every case that finished: the
    JSON is rewritten after each case and each case's row is printed as it finishes."""
    bench = _load("train_throughput")
    monkeypatch.setattr(bench, "measure_gemm_peak", _fake_gemm_peak)

    def run_case(name, spec, *args, **kwargs):
        if name == "glm45-tiny":
            raise KeyboardInterrupt  # what `timeout`'s SIGTERM amounts to: nothing after this line runs
        return _fake_row(name, spec)

    monkeypatch.setattr(bench, "run_case", run_case)
    out = tmp_path / "tt.json"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--cases", "glm4-dense,glm45-tiny", "--out", str(out)])
    partial = json.loads(out.read_text())
    assert partial["complete"] is False
    (row,) = partial["cases"]
    assert row["case"] == "glm4-dense" and row["workbench_mfu"] == pytest.approx(2.0e4 * 1.0e6 / 1.0e11)
    assert row["workbench_mfu_vs_best_peak"] is None  # needs the probe after every case: filled at the end
    assert '"glm4-dense"' in capsys.readouterr().out  # the row reached stdout (on_device.sh's log) too
    assert not list(tmp_path.glob(".tt.json.*"))  # written atomically: no temp file left behind

    monkeypatch.setattr(bench, "run_case", _fake_row)
    report = bench.main(["--cases", "glm4-dense,glm45-tiny", "--out", str(out)])
    assert report["complete"] is True and json.loads(out.read_text()) == report
    assert [r["workbench_mfu_vs_best_peak"] for r in report["cases"]] == [pytest.approx(2.0e10 / 1.2e11)] * 2


def _run_on_device(tmp_path, mode="cpu", has_pytest=True, budget=None):
    """Run benchmarks/on_device.sh with a stand-in python that only records how it was called (the script's
    wiring is under test, not the benchmarks): returns (the calls, one per line; log.txt)."""
    import os
    import subprocess

    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text("#!/usr/bin/env bash\n"
                    f'echo "$*" >> {calls}\n'
                    + ("" if has_pytest else 'case "$*" in *"import pytest"*) exit 1;; esac\n')
                    + "exit 0\n")
    stub.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": str(stub)}
    if budget is not None:
        env["BUDGET"] = str(budget)
    subprocess.run(["bash", "benchmarks/on_device.sh", mode], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=60)
    return calls.read_text().splitlines(), (out / "log.txt").read_text()


def test_on_device_runs_train_throughput_before_the_kernel_steps(tmp_path):
    """The training numbers are the most valuable result of a few lent device minutes: they come first."""
    calls, _ = _run_on_device(tmp_path, "cuda")
    first = {key: next(i for i, c in enumerate(calls) if key in c)
             for key in ("train_throughput.py", "kernels check", "benchmarks/kernels.py")}
    assert first["train_throughput.py"] < first["kernels check"] < first["benchmarks/kernels.py"]


def test_train_throughput_times_the_workbench_alone_without_transformers(tmp_path, monkeypatch, capsys):
    """A device python with torch only still gets the workbench's tokens/s and MFU; the HF side is null, and the
    JSON and stderr say why."""
    import sys

    bench = _load("train_throughput")
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    monkeypatch.setattr(bench, "measure_gemm_peak", _fake_gemm_peak)
    out = tmp_path / "tt.json"
    report = bench.main(["--cases", "glm45-tiny", "--batch-size", "1", "--seq-len", "16", "--steps", "1",
                         "--warmup", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["transformers"] is None
    assert "transformers is not installed" in report["note"]
    (row,) = report["cases"]
    assert row["workbench_tokens_per_s"] > 0 and row["workbench_mfu"] > 0
    for key in ("hf_class", "hf_params", "hf_step_s", "hf_tokens_per_s", "hf_mfu", "ratio", "target_met"):
        assert row[key] is None, key
    assert row["target"] == "tokens/s ratio >= 1.5"  # the target exists; it just cannot be judged here
    assert "transformers is not installed" in capsys.readouterr().err


def test_train_throughput_imports_the_workbench_of_its_own_checkout(tmp_path):
    """Run from another checkout or worktree, the script must time that checkout's code, not whichever workbench
    is installed: with site-packages reachable but the editable install's .pth not processed (python -S), only
    the script's own sys.path entry can find workbench. (kernels.py and teaching_ddp.py insert it the same way;
    one subprocess importing torch is enough for the suite.)"""
    script = "train_throughput"
    import os
    import subprocess
    import sys
    import sysconfig

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]  # torch and friends, without the .pth of -e installs
    code = (f"import runpy, sys; sys.argv = [{str(ROOT / 'benchmarks' / f'{script}.py')!r}, '--help']\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('WORKBENCH', sys.modules['workbench'].__file__)")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"WORKBENCH {ROOT / 'workbench' / '__init__.py'}" in done.stdout


def _fast_kernel_peaks(monkeypatch):
    from workbench.kernels import bench as kbench

    monkeypatch.setattr(kbench, "device_peaks", lambda *a, **k: kbench.Peaks(1e11, "fake", 1e10, "fake"))


def test_kernels_script_fails_and_flags_kernels_that_fail_their_check(tmp_path, monkeypatch, capsys):
    """The benchmark is "preceded by `workbench kernels check`": a failed check exits 1 (as the CLI does), is
    recorded in the JSON, and the failing kernel's timings are not presented as valid speed-ups. --ops narrows the
    correctness suite too."""
    import dataclasses

    from workbench.kernels import registry

    _fast_kernel_peaks(monkeypatch)
    good = registry.implementations("rms_norm")["torch"]
    broken = dataclasses.replace(good, fn=lambda *a, **k: good.fn(*a, **k) * 1.1)
    monkeypatch.setitem(registry._REGISTRY["rms_norm"], "torch", broken)
    rc = _load("kernels").main(["--ops", "rms_norm", "--sizes", "tiny", "--repeats", "1", "--moe-experts", "",
                                "--out", str(tmp_path)])
    assert rc == 1
    result = json.loads((tmp_path / "kernels_bench.json").read_text())
    check = result["correctness"]
    assert check["failed"] and {f["op"] for f in check["failed"]} == {"rms_norm"}
    assert {f["impl"] for f in check["failed"]} == {"torch"}
    assert check["total"] == check["passed"] + len(check["failed"]) < 40  # rms_norm's checks only, not all 92
    rows = {r["impl"]: r for r in result["rows"]}
    assert rows["torch"]["check_failed"] is True and rows["torch"]["speedup_vs_reference"] is None
    assert rows["reference"]["check_failed"] is False
    assert "FAILED rms_norm/torch" in capsys.readouterr().out


def test_kernels_script_records_a_passing_check_and_exits_0(tmp_path, monkeypatch):
    _fast_kernel_peaks(monkeypatch)
    rc = _load("kernels").main(["--ops", "rms_norm", "--sizes", "tiny", "--repeats", "1", "--moe-experts", "",
                                "--out", str(tmp_path)])
    result = json.loads((tmp_path / "kernels_bench.json").read_text())
    assert rc == 0 and result["correctness"]["failed"] == [] and result["correctness"]["total"] > 0
    assert all(r["check_failed"] is False for r in result["rows"])


def test_kernels_script_moves_comparisons_of_failed_kernels_aside():
    kernels = _load("kernels")
    rows = [{"op": "attention", "impl": impl, "speedup_vs_reference": 1.0} for impl in ("reference", "torch")]
    comparisons = [{"what": "attention torch (SDPA) vs reference", "speedup": 3.0},
                   {"what": "moe torch (grouped) vs reference (per-expert loop)", "speedup": 2.0}]
    result = {"rows": rows, "comparisons": list(comparisons)}
    failed = {"op": "attention", "impl": "reference"}  # a broken reference invalidates every speed-up against it
    kernels.flag_failed(result, {"passed": 1, "total": 2, "failed": [failed]})
    assert [r["speedup_vs_reference"] for r in result["rows"]] == [None, None]
    assert result["comparisons"] == comparisons[1:] and result["comparisons_of_failed_kernels"] == comparisons[:1]


def test_kernel_bench_writes_its_json_without_plotly(tmp_path, monkeypatch, capsys):
    """A device python with torch only: the JSON is the result, the chart is optional (no traceback, exit 0)."""
    import sys

    for name in ("plotly", "plotly.graph_objects"):
        monkeypatch.setitem(sys.modules, name, None)
    _fast_kernel_peaks(monkeypatch)
    rc = _load("kernels").main(["--ops", "rms_norm", "--sizes", "tiny", "--repeats", "1", "--moe-experts", "",
                                "--skip-check", "--out", str(tmp_path)])
    assert rc == 0 and json.loads((tmp_path / "kernels_bench.json").read_text())["rows"]
    assert not list(tmp_path.glob("*.html"))
    assert "plotly is not installed" in capsys.readouterr().out


def test_on_device_says_when_the_kernel_tests_are_skipped_for_want_of_pytest(tmp_path):
    calls, log = _run_on_device(tmp_path, "cpu", has_pytest=False)
    assert "kernel tests skipped: pytest is not installed" in log
    assert not any("-m pytest" in c for c in calls)


@pytest.mark.parametrize("args, says", [
    (["--steps", "0"], "--steps"), (["--warmup", "-1"], "--warmup"), (["--batch-size", "0"], "--batch-size"),
    (["--seq-len", "0"], "--seq-len"), (["--threads", "0"], "--threads"), (["--threads", "-1"], "--threads"),
    (["--cases", "glm9-huge"], "unknown case"), (["--cases", ","], "--cases"),
    (["--cases", "glm4-dense", "--seq-len", "4096"], "max_position_embeddings"),
])
def test_train_throughput_rejects_bad_arguments_before_any_work(monkeypatch, capsys, args, says):
    bench = _load("train_throughput")
    monkeypatch.setattr(bench, "run_case", _no_work)
    monkeypatch.setattr(bench, "measure_gemm_peak", _no_work)
    with pytest.raises(SystemExit) as exit_:
        bench.main(args)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err.strip().splitlines()[-1]


def test_train_throughput_help_says_which_cases_have_fixed_shapes(capsys):
    with pytest.raises(SystemExit):
        _load("train_throughput").main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "glm5-tiny-s1024 (2 x 1024) and glm5-tiny-s2048 (1 x 2048) ignore --batch-size and --seq-len" in text


@pytest.mark.parametrize("args, says", [
    (["--repeats", "0"], "--repeats"), (["--threads", "0"], "--threads"), (["--moe-experts", "x"], "--moe-experts"),
    (["--moe-experts", "0"], "--moe-experts"), (["--sizes", "huge"], "--sizes"), (["--ops", "nope"], "--ops"),
    (["--dtype", "fp64"], "--dtype"),
])
def test_kernels_script_rejects_bad_arguments_before_any_work(monkeypatch, capsys, args, says):
    from workbench.kernels import bench as kbench
    from workbench.kernels import correctness

    monkeypatch.setattr(correctness, "check_all", _no_work)
    monkeypatch.setattr(kbench, "run_benchmark", _no_work)
    with pytest.raises(SystemExit) as exit_:
        _load("kernels").main(args)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err.strip().splitlines()[-1]


def test_on_device_cpu_dry_run_uses_tiny_training_shapes(tmp_path):
    """`on_device.sh cpu` is a dry run of the script: the training benchmark at a toy shape, not 8 x 256."""
    calls, _ = _run_on_device(tmp_path, "cpu")
    (train,) = [c.split() for c in calls if "train_throughput.py" in c]
    for flag, value in (("--batch-size", "1"), ("--seq-len", "32"), ("--steps", "1"), ("--warmup", "1")):
        assert train[train.index(flag) + 1] == value, flag
