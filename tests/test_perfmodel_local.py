"""The simulator on this machine: predicted vs measured step time of real `workbench train` steps on the CPU,
one process (1 thread, and all cores) and 2-process DDP (gloo), within 25%; plus the local model's logic with
synthetic probes.

Probes and steps are measured in alternation, so both see the same machine load. The multi-threaded single-process
check skips (saying why) when other jobs keep the machine busy (1-minute load above cores - 0.5 before, or above
the cores after): small multi-threaded ops then stall on descheduled OpenMP threads. Single-threaded runs (1 thread,
and the DDP ranks) always run.
"""

from __future__ import annotations

import os

import pytest

from workbench.perfmodel.local import LocalProbes, count_ops, measure_op_overhead, predict_step_time


def _tiny_config():
    from workbench.model import get_preset

    return get_preset("glm4-tiny").replace(vocab_size=259)


# ---- logic, with synthetic probes ----------------------------------------------------------------------------------
def test_prediction_follows_the_probes():
    cfg = _tiny_config()
    probes = LocalProbes(gemm_flops=1e11, bandwidth=1e10, op_overhead_s=1e-5)
    base = predict_step_time(cfg, 4, 64, probes=probes, ops_per_micro_step=1500)
    faster = predict_step_time(cfg, 4, 64, probes=LocalProbes(2e11, 1e10, 1e-5), ops_per_micro_step=1500)
    assert base["breakdown_compute"]["gemm"] == pytest.approx(2 * faster["breakdown_compute"]["gemm"], rel=0.01)
    more_ops = predict_step_time(cfg, 4, 64, probes=probes, ops_per_micro_step=3000)
    assert more_ops["breakdown_compute"]["kernels"] == pytest.approx(2 * base["breakdown_compute"]["kernels"])
    assert base["breakdown_compute"]["kernels"] == pytest.approx(1500 * 1e-5)  # every counted op pays the overhead
    ddp = predict_step_time(cfg, 4, 64, world=2, ops_per_micro_step=1500,
                            probes=LocalProbes(1e11, 1e10, 1e-5, allreduce_busbw=1e9, allreduce_latency_s=1e-4))
    from workbench.perfmodel import shape_from_config

    grad_bytes = shape_from_config(cfg).param_counts()["total"] * 4  # fp32 gradients, all-reduced once per step
    # ring all-reduce at p = 2: 2(p-1)/p = 1 pass of the bytes, plus 2(p-1) latencies; not overlapped on a CPU
    assert ddp["breakdown"]["dp_comm"] == pytest.approx(grad_bytes / 1e9 + 2e-4, rel=1e-6)
    assert ddp["tokens_per_step"] == 2 * base["tokens_per_step"]


def test_op_counting_and_overhead_probe():
    import torch

    x = torch.ones(3, requires_grad=True)
    assert count_ops(lambda: (x * 2).sum().backward()) >= 3
    per_op = measure_op_overhead(chain=50, repeats=2)
    assert 1e-7 < per_op < 1e-2


# ---- real runs -------------------------------------------------------------------------------------------------------
def _report(result):
    lines = [f"world={result['world']} threads={result['threads']} ops/micro-step={result['ops_per_micro_step']}"]
    for r in result["rounds"]:
        b, pr = r["breakdown"], r["probes"]
        lines.append(f"  predicted {r['predicted_s'] * 1e3:8.1f} ms   measured {r['measured_s'] * 1e3:8.1f} ms   "
                     f"({r['predicted_s'] / r['measured_s'] - 1:+.1%})   compute {b['compute'] * 1e3:.0f} "
                     f"dp_comm {b['dp_comm'] * 1e3:.0f} optimizer {b['optimizer'] * 1e3:.0f} ms | probes "
                     f"{pr['gemm_flops'] / 1e9:.0f} GFLOP/s, {pr['bandwidth'] / 1e9:.1f} GB/s, "
                     f"{pr['op_overhead_s'] * 1e6:.1f} us/op" + (f", all-reduce {pr['allreduce_busbw'] / 1e9:.2f} GB/s"
                                                                if pr.get("allreduce_busbw") else ""))
    lines.append(f"  median error {result['error']:+.1%}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def one_process():
    """One `workbench train` process measured with 1 thread and with all cores (one trainer, two thread counts)."""
    from workbench.perfmodel.local_check import run_check

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    quiet = load <= max(cores - 0.5, 0.75)  # pytest itself is one busy process
    threads = sorted({1, cores}) if quiet else [1]  # all-cores timing is meaningless on a busy machine
    # 5 rounds: the median error then survives two rounds whose probes caught a load spike (a shared machine)
    result = run_check("glm4-tiny", batch_size=4, seq_len=64, rounds=5, steps_per_round=2, warmup=1, threads=threads)
    result["load_at_start"], result["load_at_end"] = load, os.getloadavg()[0]
    return result


def test_one_process_one_thread_within_25_percent(one_process, capsys):
    """Single-threaded: robust to other jobs on the machine (no OpenMP barrier waits) unless the machine is
    oversubscribed (more runnable jobs than cores: then even one thread gets a fraction of a core, measured 1.5x)."""
    cores = os.cpu_count() or 1
    busy = max(one_process["load_at_start"], one_process["load_at_end"])
    if busy > cores + 1:
        pytest.skip(f"machine oversubscribed (load {busy:.1f} on {cores} cores): a step's wall time measures the "
                    f"other jobs")
    single = {**one_process, **one_process["by_threads"][1]}
    with capsys.disabled():
        print("\n" + _report(single))
    assert abs(single["error"]) <= 0.25, _report(single)


def test_one_process_all_cores_within_25_percent(one_process, capsys):
    cores = os.cpu_count() or 1
    if cores == 1:
        pytest.skip("one core: covered by the single-thread test")
    busy = max(one_process["load_at_start"], one_process["load_at_end"])
    if cores not in one_process["by_threads"] or busy > cores:
        pytest.skip(f"machine busy (load {busy:.1f} on {cores} cores): multi-threaded small ops stall on descheduled "
                    "OpenMP threads, so all-core step times say more about the other jobs than about the model")
    full = {**one_process, **one_process["by_threads"][cores]}
    with capsys.disabled():
        print("\n" + _report(full))
    assert abs(full["error"]) <= 0.25, _report(full)


def test_two_process_ddp_step_time_within_25_percent(tmp_path, capsys):
    """2-process DDP over gloo (torchrun via `workbench launch`, one thread per process on 2 cores)."""
    from workbench.distributed.launcher import LaunchConfig, launch

    run = launch(["-m", "workbench.perfmodel.local_check", "--batch-size", "4", "--seq-len", "64", "--rounds", "3",
                  "--steps-per-round", "2", "--warmup", "1"],
                 LaunchConfig(nproc=2), run_dir=tmp_path / "launch", on_line=None, timeout_s=240).check()
    result = run.results[0]
    assert result is not None and result["world"] == 2 and result["threads"] == max(1, (os.cpu_count() or 1) // 2)
    with capsys.disabled():
        print("\n" + _report(result))
    assert result["rounds"][0]["breakdown"]["dp_comm"] > 0
    assert abs(result["error"]) <= 0.25, _report(result)
