"""The profiler wrapper: real torch.profiler runs on CPU (toy LM), the device -> profiler dispatch (CUDA activity
chosen by type; the NPU path driven through a FAKE torch_npu.profiler test double, never real Ascend hardware),
the CLI, and the Trainer convenience."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from workbench.device import get_device
from workbench.device.detect import DeviceUnavailableError
from workbench.errors import ConfigError
from workbench.kernels import use_kernels
from workbench.profiling import ProfileConfig, analyze, profile_steps
from workbench.profiling import backends
from workbench.profiling.toy import ToyConfig, toy_training_step

TINY = ToyConfig(vocab=64, dim=32, heads=2, layers=1, seq_len=16, batch=2)


def test_profile_steps_on_cpu_writes_a_trace_with_shapes_flops_steps_and_memory(tmp_path):
    step, model = toy_training_step(TINY, get_device("cpu"))
    run = profile_steps(step, ProfileConfig(wait=1, warmup=1, active=2), device=get_device("cpu"), out_dir=tmp_path)
    raw = json.loads((tmp_path / "trace.json").read_text())
    ops = [e for e in raw["traceEvents"] if e.get("cat") == "cpu_op"]
    mm = [e for e in ops if e["name"] in ("aten::mm", "aten::addmm")]
    assert mm and all(e["args"].get("FLOPs", 0) > 0 for e in mm)  # FLOPs added to the exported trace
    assert all("Input Dims" in e["args"] for e in mm)  # shapes recorded
    assert len(run.trace.steps) == 2 and len(run.step_wall_s) == 4
    assert {"workbench/forward", "workbench/backward", "workbench/optimizer", "workbench/data"} <= {
        e.name for e in run.trace.events}
    report = analyze(run, flops_per_step=model.flops_per_token() * TINY.batch * TINY.seq_len,
                     peak=1e11)  # a stated peak; the probe is exercised by the CLI test
    cats = {r["category"]: r for r in report.categories}
    assert cats["matmul"]["ms_per_step"] > 0 and cats["matmul"]["achieved_tflops"] > 0
    assert cats["attention"]["ms_per_step"] > 0  # torch SDPA, the default attention on CPU
    assert cats["optimizer"]["ms_per_step"] > 0
    rows = report.breakdown["rows"]
    assert sum(r["ms"] for r in rows) == pytest.approx(report.breakdown["step_ms"], rel=1e-6)
    assert 0 < report.waterfall["mfu"] < 1
    memory = report.memory
    assert memory["peak_allocated_mb"] > 0 and memory["device_peak_mb"] > 0
    assert set(memory["timelines"]) == {"allocator", "rss"}


def test_python_frames_attribute_a_reference_attention_to_attention(tmp_path):
    device = get_device("cpu")
    with use_kernels({"attention": "reference"}):
        step, _ = toy_training_step(TINY, device)
        run = profile_steps(step, ProfileConfig(wait=0, warmup=1, active=1, with_stack=True,
                                                memory_timeline="off"), device=device, out_dir=tmp_path)
    report = analyze(run)
    by_cat = {r["category"]: r["ms_per_step"] for r in report.categories}
    assert by_cat["attention"] > 0
    attention_ops = {r["op"] for r in report.ops if r["category"] == "attention"}
    assert "aten::bmm" in attention_ops  # the reference attention's GEMMs (forward and backward)
    assert not any("scaled_dot_product" in op for op in attention_ops)
    assert report.memory["timelines"] == {}


def test_profile_config_rejects_bad_values_with_a_fix():
    with pytest.raises(ConfigError, match="at least 1 step"):
        ProfileConfig(active=0)
    with pytest.raises(ConfigError, match="integer >= 0"):
        ProfileConfig(wait=-1)
    with pytest.raises(ConfigError, match="choose one of"):
        ProfileConfig(memory_timeline="gpu")
    with pytest.raises(TypeError, match="callable"):
        profile_steps("not a function", device=get_device("cpu"))


def test_profiler_activities_follow_the_device_type():
    activity = torch.profiler.ProfilerActivity
    assert backends.profiler_backend("cpu").activities == [activity.CPU]
    cuda = backends.profiler_backend("cuda")
    assert cuda.name == "torch.profiler" and cuda.activities == [activity.CPU, activity.CUDA]
    assert backends.profiler_backend("xpu").activities == [activity.CPU, activity.XPU]


def test_npu_without_torch_npu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backends, "_import_torch_npu", lambda: (None, "torch_npu is not installed"))
    with pytest.raises(DeviceUnavailableError, match="torch_npu is not installed"):
        backends.profiler_backend("npu")


def fake_torch_npu(calls: dict):
    """A TEST DOUBLE of torch_npu.profiler: records how it is driven and writes a trace_view.json the way
    torch_npu's tensorboard_trace_handler lays it out. It runs nothing on an NPU."""

    def schedule(**kwargs):
        calls["schedule"] = kwargs
        return ("schedule", kwargs)

    def tensorboard_trace_handler(path):
        def handler(prof):
            out = Path(path) / "host_1_20261129_ascend_pt" / "ASCEND_PROFILER_OUTPUT"
            out.mkdir(parents=True)
            events = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}}
                      for pid, name in ((1, "Python"), (4, "Ascend Hardware"))]
            origin = 1699529623100000  # absolute microseconds, written as strings

            def task(name, ts, dur, host_ts):  # a device task and the async_npu flow from the op that launched it
                ident = int((origin + ts) * 1000)
                return [{"ph": "X", "name": name, "ts": f"{origin + ts:.3f}", "dur": dur, "pid": 4, "tid": 2,
                         "args": {"Task Type": "AI_CORE"}},
                        {"ph": "s", "cat": "async_npu", "id": ident, "pid": 1, "tid": 1,
                         "ts": f"{origin + host_ts:.3f}"},
                        {"ph": "f", "cat": "async_npu", "id": ident, "pid": 4, "tid": 2, "ts": f"{origin + ts:.3f}"}]

            for i in range(prof.steps):
                base = 1000.0 * i
                events += [
                    {"ph": "X", "cat": "cpu_op", "name": f"ProfilerStep#{i}", "ts": f"{origin + base:.3f}",
                     "dur": 900, "pid": 1, "tid": 1, "args": {}},
                    {"ph": "X", "cat": "cpu_op", "name": "npu_fusion_attention", "ts": f"{origin + base + 100:.3f}",
                     "dur": 30, "pid": 1, "tid": 1, "args": {}},
                    {"ph": "X", "cat": "cpu_op", "name": "aten::matmul", "ts": f"{origin + base + 500:.3f}",
                     "dur": 20, "pid": 1, "tid": 1, "args": {}},
                    *task("FlashAttentionScore", base + 120, 300, base + 100),
                    *task("MatMulV2", base + 520, 200, base + 500),
                ]
            (out / "trace_view.json").write_text(json.dumps(events))  # torch_npu writes a bare event list

        calls["trace_dir"] = path
        return handler

    class profile:
        def __init__(self, **kwargs):
            calls["profile"] = kwargs
            self.steps = 0
            self.kwargs = kwargs

        def __enter__(self):
            return self

        def step(self):
            self.steps += 1

        def __exit__(self, *exc):
            self.steps = calls["schedule"]["active"]
            self.kwargs["on_trace_ready"](self)

    profiler = types.SimpleNamespace(ProfilerActivity=types.SimpleNamespace(CPU="CPU", NPU="NPU"),
                                     schedule=schedule, tensorboard_trace_handler=tensorboard_trace_handler,
                                     profile=profile)
    return types.SimpleNamespace(profiler=profiler)


def test_npu_dispatches_to_torch_npu_profiler_FAKE_module(monkeypatch, tmp_path):
    calls: dict = {}
    monkeypatch.setattr(backends, "_import_torch_npu", lambda: (fake_torch_npu(calls), None))
    fake_npu_device = types.SimpleNamespace(type="npu", synchronize=lambda: None, reset_peak_memory=lambda: None,
                                            memory_stats=lambda: {"peak_bytes": 123e6, "source": "fake"})
    steps_run = []
    run = profile_steps(lambda: steps_run.append(1), ProfileConfig(wait=1, warmup=1, active=3),
                        device=fake_npu_device, out_dir=tmp_path)
    assert run.backend == "torch_npu.profiler" and len(steps_run) == 5
    assert calls["profile"]["activities"] == ["CPU", "NPU"]
    assert calls["schedule"] == {"wait": 1, "warmup": 1, "active": 3, "repeat": 1}
    assert calls["profile"]["with_flops"] and calls["profile"]["record_shapes"]
    assert calls["profile"]["profile_memory"]
    assert Path(calls["trace_dir"]) == tmp_path / "raw"
    assert (tmp_path / "trace.json").exists()
    report = analyze(run)
    assert report.breakdown["n_steps"] == 3 and report.info["time_basis"] == "device"
    by_cat = {r["category"]: r["ms_per_step"] for r in report.categories}
    assert by_cat["attention"] == pytest.approx(0.3) and by_cat["matmul"] == pytest.approx(0.2)
    assert report.memory["device_peak_mb"] == pytest.approx(123.0)


def test_an_npu_profile_that_wrote_no_trace_does_not_reuse_the_last_one_FAKE_module(monkeypatch, tmp_path):
    """The raw/ folder of an earlier run was kept, and its trace_view.json analysed as this run's."""
    fake_npu_device = types.SimpleNamespace(type="npu", synchronize=lambda: None, reset_peak_memory=lambda: None,
                                            memory_stats=lambda: {"peak_bytes": None, "source": "fake"})
    monkeypatch.setattr(backends, "_import_torch_npu", lambda: (fake_torch_npu({}), None))
    profile_steps(lambda: None, ProfileConfig(wait=0, warmup=1, active=3), device=fake_npu_device, out_dir=tmp_path)
    keep = tmp_path / "raw" / "notes.txt"  # not the profiler's: it stays
    keep.write_text("mine")
    silent = fake_torch_npu({})
    silent.profiler.tensorboard_trace_handler = lambda path: (lambda prof: None)  # its analysis wrote nothing
    monkeypatch.setattr(backends, "_import_torch_npu", lambda: (silent, None))
    with pytest.raises(FileNotFoundError, match="wrote no trace_view.json"):
        profile_steps(lambda: None, ProfileConfig(wait=0, warmup=1, active=1), device=fake_npu_device,
                      out_dir=tmp_path)
    assert keep.read_text() == "mine"


def test_cli_profile_toy_writes_trace_tables_and_figures(tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "prof"
    rc = main(["profile", "--preset", "toy", "--steps", "1", "--wait", "0", "--warmup", "1", "--seq-len", "16",
               "--batch-size", "2", "--kernels", "attention=reference", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "MFU" in printed and "matmul" in printed
    # the category shares are of op time, the phase shares of the step: one word "share" said neither
    assert "share of op time" in printed and "share of step" in printed
    for name in ("trace.json", "op_table.csv", "categories.csv", "top_ops.csv", "report.json",
                 "figures/mfu_waterfall.html", "figures/step_breakdown.html", "figures/memory.html"):
        assert (out / name).exists(), name
    assert main(["profile", "--preset", "toy", "--steps", "0", "--out", str(out)]) == 2
    assert "at least 1 step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["profile", "--kernels", "attention", "--out", str(out)])


def test_profiling_two_choices_of_an_op_the_model_never_calls_warns(tmp_path):
    """Notebook 04 with kernel_op="moe" on a dense preset profiled the same code twice and reported a 'speedup'."""
    import warnings

    from workbench.profiling.trainer_profile import profile_kernel_choices
    from workbench.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(preset="glm4-tiny", steps=100, batch_size=2, seq_len=16, device="cpu",
                                  out_dir=str(tmp_path / "run"), progress=False, warmup_steps=0, eval_every=0,
                                  ckpt_every=0, model_overrides={"num_layers": 1, "hidden_size": 32,
                                                                 "intermediate_size": 64}), log=lambda m: None)
    config = ProfileConfig(wait=0, warmup=0, active=1, with_stack=False)
    with pytest.warns(UserWarning, match=r"never called moe in the profiled steps"):
        unused = profile_kernel_choices(trainer, {"reference": {"moe": "reference"}, "torch": {"moe": "torch"}},
                                        config)
    assert [report.info["kernel_calls"] for _, report in unused.values()] == [{"moe": 0}, {"moe": 0}]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*never called")
        used = profile_kernel_choices(trainer, {"reference": {"attention": "reference"}}, config)
    assert used["reference"][1].info["kernel_calls"]["attention"] == 1  # one layer, one step


def test_cli_profile_notes_kernel_choices_the_model_never_used(tmp_path, capsys):
    from workbench.cli import main

    common = ["profile", "--preset", "toy", "--steps", "1", "--wait", "0", "--warmup", "0", "--seq-len", "16",
              "--batch-size", "2", "--out", str(tmp_path / "prof")]
    assert main([*common, "--kernels", "moe=reference"]) == 0
    assert "note: toy never called moe, so --kernels changed nothing" in capsys.readouterr().out
    assert main([*common, "--kernels", "attention=reference"]) == 0
    assert "never called" not in capsys.readouterr().out


def test_the_rss_timeline_covers_the_active_steps_not_the_trace_export(tmp_path, monkeypatch):
    """The sampler stopped after the profiler exited, so the trace export (inside the last prof.step()) was sampled
    too: a 37 ms profile had 572 ms of samples and a higher 'peak'. Here the export is made to take 0.5 s."""
    import time as time_module

    from workbench.profiling import session

    real_handler = session._torch_trace_handler

    def slow_handler(*args, **kwargs):
        handler = real_handler(*args, **kwargs)

        def export(prof):
            time_module.sleep(0.5)
            return handler(prof)
        return export

    monkeypatch.setattr(session, "_torch_trace_handler", slow_handler)
    ends = []

    def step():
        torch.ones(64, 64) @ torch.ones(64, 64)
        ends.append(time_module.perf_counter())

    run = profile_steps(step, ProfileConfig(wait=0, warmup=1, active=2, memory_timeline="rss", rss_interval_ms=1),
                        device=get_device("cpu"), out_dir=tmp_path)
    assert run.rss_samples, "no RSS samples (Linux only)"
    assert run.rss_samples[-1][0] < ends[-1] + 0.25  # nothing sampled while the trace was being written


def test_cli_profile_unknown_preset_names_toy_and_makes_no_folder(tmp_path, capsys):
    from workbench.cli import main

    assert main(["profile", "--preset", "nope", "--out", str(tmp_path / "prof")]) == 2
    assert "choose toy" in capsys.readouterr().err and not (tmp_path / "prof").exists()


def test_cli_profile_refuses_a_kernel_this_device_cannot_run_before_profiling(tmp_path, capsys):
    """`--kernels attention=triton` on a cpu failed only inside the first profiled step, leaving trace.json and a
    train/ folder behind; `kernels check/bench` refused the same choice up front."""
    from workbench.cli import main

    out = tmp_path / "prof"
    assert main(["profile", "--preset", "glm4-tiny", "--device", "cpu", "--kernels", "attention=npu",
                 "--out", str(out)]) == 2
    assert "--kernels attention=npu" in capsys.readouterr().err and not out.exists()


def test_a_trainer_profile_gives_attention_its_share_of_the_ideal(tmp_path):
    """SDPA reports no FLOPs to the profiler: the ideal went 100% to matmul, so 'matmul below peak' went negative
    by attention's share. The split now comes from the model's FLOP accounting."""
    from workbench.model.accounting import flops_per_token
    from workbench.profiling.trainer_profile import profile_trainer
    from workbench.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(preset="glm4-tiny", steps=100, batch_size=1, seq_len=64, device="cpu",
                                  out_dir=str(tmp_path / "run"), progress=False, warmup_steps=0, eval_every=0,
                                  ckpt_every=0, model_overrides={"num_layers": 1, "hidden_size": 32,
                                                                 "intermediate_size": 64}), log=lambda m: None)
    try:
        with use_kernels({"attention": "torch"}):
            _, report = profile_trainer(trainer, ProfileConfig(wait=0, warmup=0, active=1, with_stack=False),
                                        top_n=3)
    finally:
        trainer.close()
    fpt = flops_per_token(trainer.model_config, 64)
    wf = report.waterfall
    assert wf["split_source"].startswith("analytic")
    assert wf["ideal_split"]["attention"] == pytest.approx(fpt.attention / fpt.total)
    assert wf["ideal_split"]["matmul"] == pytest.approx(1 - fpt.attention / fpt.total)


def test_the_toy_profile_splits_its_ideal_by_its_own_flops(tmp_path):
    step, model = toy_training_step(TINY, get_device("cpu"))
    run = profile_steps(step, ProfileConfig(wait=0, warmup=0, active=1), device=get_device("cpu"),
                        out_dir=tmp_path)
    split = model.flops_split()
    assert sum(split.values()) == pytest.approx(model.flops_per_token())
    report = analyze(run, flops_per_step=model.flops_per_token() * TINY.batch * TINY.seq_len, peak=1e12,
                     flops_split=split)
    assert report.waterfall["ideal_split"]["attention"] == pytest.approx(split["attention"] / sum(split.values()))


def test_cli_profile_toy_divides_by_the_peak_of_the_dtype_it_computes_in(tmp_path, capsys, monkeypatch):
    """The toy step has fp32 weights and no autocast, yet its MFU divided by the training dtype's peak (bf16 on any
    GPU or NPU: 989 TF on an H100 against 67 TF fp32), so it came out low by that ratio."""
    import dataclasses

    import workbench.device as device_module
    from workbench.cli import main
    from workbench.device.probes import PeakEstimate

    asked = []

    def peak_flops(dtype=None, allow_probe=True):
        asked.append(dtype)
        dtype = dtype or torch.bfloat16  # a GPU's training dtype
        return PeakEstimate(1e12 if dtype == torch.float32 else 16e12, f"fake {dtype}")

    cpu = dataclasses.replace(get_device("cpu"))
    monkeypatch.setattr(cpu, "peak_flops", peak_flops)
    monkeypatch.setattr(device_module, "get_device", lambda spec="auto", *a, **k: cpu)
    out = tmp_path / "prof"
    assert main(["profile", "--preset", "toy", "--steps", "1", "--wait", "0", "--warmup", "0", "--seq-len", "16",
                 "--batch-size", "2", "--out", str(out), "--memory-timeline", "off"]) == 0
    assert asked == [torch.float32]
    assert "fake torch.float32" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["mfu_waterfall"]["peak_flops"] == 1e12
