"""`workbench launch` and `workbench comm-bench` on bad input and on failed runs: one line on stderr, exit 2 for the
user's mistakes, no traceback, and the failing rank's own error. In process; one test starts a real (one-rank) run."""

from __future__ import annotations

import math

import pytest
import torch.distributed as dist

from workbench.cli import main
from workbench.device import available_device_types
from workbench.distributed import comm_bench
from workbench.distributed.launcher import LaunchConfig, LaunchResult, SlurmConfig, check_timeout, launch
from workbench.distributed.launcher.launch import is_worker_line
from workbench.errors import ConfigError


@pytest.fixture(autouse=True)
def _not_under_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything tries to start processes."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"launch() was called: {args}")
    monkeypatch.setattr("workbench.distributed.launcher.launch", refuse)
    monkeypatch.setattr("workbench.distributed.launch_cli.launch", refuse)


def _one_error_line(capsys, prog: str, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"workbench {prog}: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---- bug 1: a failed launched command -------------------------------------------------------------------------
def test_failed_command_reports_the_ranks_error_on_stderr_and_its_exit_code(tmp_path, capsys):
    """`workbench launch --nproc 1 -- models --seq-len 0`: the worker's user error, on stderr, exit 2."""
    run_dir = tmp_path / "run"
    code = main(["launch", "--nproc", "1", "--run-dir", str(run_dir), "--timeout", "120", "--", "models",
                 "--seq-len", "0"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert err.splitlines() == [f"workbench launch: rank 0 failed: workbench models: error: seq_len must be >= 1 "
                                f"(got 0); logs in {run_dir}"]
    assert "Traceback" not in out and "ChildFailedError" not in out  # torchrun's report stays in launch.log
    assert "ChildFailedError" in (run_dir / "launch.log").read_text()


REPORT = ["Traceback (most recent call last):", '  File "run.py"', "torch.distributed.elastic.multiprocessing."
          "errors.ChildFailedError: ", "Failures:", "[1]:", "  rank      : 1 (local_rank: 1)",
          "  exitcode  : -15 (pid: 12)  (SIGTERM)", "Root Cause (first observed failure):", "[0]:",
          "  rank      : 0 (local_rank: 0)", "  exitcode  : {code} (pid: 11) "]


def test_failure_summary_and_exit_status(tmp_path):
    user = LaunchResult(1, tmp_path, log=[line.replace("{code}", "2") for line in REPORT],
                        errors=["ranks 0, 1: workbench train: error: bad preset"])
    assert user.cli_returncode == 2  # rank 1 was only stopped by torchrun (SIGTERM): rank 0's 2 decides
    assert user.failure_summary() == f"ranks 0, 1 failed: workbench train: error: bad preset; logs in {tmp_path}"
    crash = LaunchResult(1, tmp_path, log=[line.replace("{code}", "1") for line in REPORT],
                         errors=["rank 0: ValueError: x", "rank 1: RuntimeError: peer went away"])
    assert crash.cli_returncode == 1
    assert crash.failure_summary() == f"rank 0 failed: ValueError: x; rank 1 failed: RuntimeError: peer went " \
                                      f"away; logs in {tmp_path}"
    torchrun_only = LaunchResult(1, tmp_path, log=["[default0]:hello", "Traceback (most recent call last):",
                                                   "  File 'x'", "RendezvousTimeoutError: no peers"])
    assert torchrun_only.failure_summary() == f"torchrun failed (exit 1): RendezvousTimeoutError: no peers; " \
                                              f"logs in {tmp_path}"
    assert torchrun_only.cli_returncode == 1
    timed_out = LaunchResult(124, tmp_path, wall_s=5.2)
    assert timed_out.cli_returncode == 124 and timed_out.failure_summary().startswith("timed out after 5s")
    assert is_worker_line("[default3]:x") and not is_worker_line("[0]:") and not is_worker_line("Traceback")


# ---- bug 2: the rendezvous port -------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["host:99999999", "host:65536", "host:0"])
def test_rdzv_port_out_of_range_is_one_line(endpoint, capsys, no_launch):
    assert main(["launch", "--nproc", "1", "--rdzv-endpoint", endpoint, "--", "models"]) == 2
    _one_error_line(capsys, "launch", "must be in 1..65535")
    assert LaunchConfig(rdzv_endpoint="host:65535").rdzv_endpoint == "host:65535"


# ---- bug 3: comm-bench checks before it starts workers, and reports their errors --------------------------------
def test_comm_bench_refuses_a_missing_device_before_launching(capsys, no_launch, tmp_path):
    missing = [t for t in ("cuda", "npu") if t not in available_device_types()]
    if not missing:
        pytest.skip("cuda and npu are both available here")
    assert main(["comm-bench", "--nproc", "1", "--device", missing[0], "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, "comm-bench", f"device '{missing[0]}' is not available")


def test_comm_bench_refuses_an_unwritable_out_before_launching(capsys, no_launch, tmp_path):
    (tmp_path / "comm_bench.json").mkdir()
    assert main(["comm-bench", "--nproc", "1", "--device", "cpu", "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, "comm-bench", "comm_bench.json is a folder")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["comm-bench", "--nproc", "1", "--device", "cpu", "--out", str(a_file)]) == 2
    _one_error_line(capsys, "comm-bench", "is a file")


@pytest.mark.parametrize("exitcode, cause, status", [
    (2, "workbench comm-bench: error: out of memory (x)", 2),
    (1, "RuntimeError: Connection closed by peer", 1),
])
def test_comm_bench_reports_the_ranks_errors(monkeypatch, capsys, tmp_path, exitcode, cause, status):
    calls = []

    def fake_launch(command, config, *, run_dir, **kwargs):
        calls.append(command)
        return LaunchResult(1, run_dir, log=[line.replace("{code}", str(exitcode)) for line in REPORT],
                            errors=[f"rank 0: {cause}"])
    monkeypatch.setattr("workbench.distributed.launcher.launch", fake_launch)
    out = tmp_path / "cb"
    assert main(["comm-bench", "--nproc", "2", "--device", "cpu", "--ops", "all_reduce,all-reduce,broadcast",
                 "--out", str(out)]) == status
    _one_error_line(capsys, "comm-bench", f"rank 0 failed: {cause}; logs in {out / 'launch'}")
    command = calls[0]
    assert command[command.index("--ops") + 1] == "all_reduce,broadcast"  # an op named twice runs once


# ---- bug 4: timeouts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "1e300"])
@pytest.mark.parametrize("prog", ["launch", "comm-bench"])
def test_timeout_must_be_finite_and_positive(value, prog, capsys, no_launch, tmp_path):
    argv = ["launch", "--nproc", "1", "--run-dir", str(tmp_path / "run"), "--timeout", value, "--", "models"] \
        if prog == "launch" else ["comm-bench", "--nproc", "1", "--device", "cpu", "--out", str(tmp_path / "cb"),
                                  "--timeout", value]
    assert main(argv) == 2
    _one_error_line(capsys, prog, "--timeout", "must be a number of seconds > 0")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cb").exists()


def test_launch_api_checks_its_timeout_before_starting(tmp_path):
    for bad in (0, -1.0, math.nan, math.inf, 1e300):
        with pytest.raises(ConfigError, match="timeout_s"):
            launch(["models"], LaunchConfig(nproc=1), run_dir=tmp_path / "run", timeout_s=bad)
    assert not (tmp_path / "run").exists()
    assert check_timeout(None) is None and check_timeout(5) == 5.0


# ---- bug 5: --slurm -------------------------------------------------------------------------------------------
def test_empty_slurm_path_is_an_error(capsys, no_launch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["launch", "--slurm", "", "--nproc", "1", "--", "models"]) == 2
    _one_error_line(capsys, "launch", "--slurm needs the path")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags", [["--run-dir", "x"], ["--timeout", "10"], ["--node-rank", "0"],
                                   ["--rdzv-endpoint", "node0:29500"]])
def test_slurm_refuses_options_the_script_ignores(flags, capsys, tmp_path):
    script = tmp_path / "job.sbatch"
    assert main(["launch", "--slurm", str(script), *flags, "--", "models"]) == 2
    _one_error_line(capsys, "launch", f"ignores {flags[0]}")
    assert not script.exists()


@pytest.mark.parametrize("flag", ["--partition", "--time"])
def test_slurm_values_cannot_inject_shell_lines(flag, capsys, tmp_path):
    script = tmp_path / "job.sbatch"
    assert main(["launch", "--slurm", str(script), flag, "gpu\nrm -rf ~", "--", "models"]) == 2
    _one_error_line(capsys, "launch", flag.lstrip("-"))
    assert not script.exists()
    with pytest.raises(ConfigError, match="account"):
        SlurmConfig(account="a b")


@pytest.mark.parametrize("flags", [["--partition", "gpu"], ["--time", "01:00:00"], ["--device-type", "npu"]])
def test_slurm_options_without_slurm_are_refused(flags, capsys, tmp_path):
    """They went into no script and changed nothing: a user who forgot --slurm ran locally without being told."""
    assert main(["launch", "--nproc", "1", "--run-dir", str(tmp_path / "run"), *flags, "--", "models"]) == 2
    _one_error_line(capsys, "launch", f"{flags[0]} only apply with --slurm")
    assert not (tmp_path / "run").exists()


# ---- minor comm-bench: duplicate ops and sizes that round to the same message --------------------------------
def test_comm_bench_runs_each_op_and_message_size_once(tmp_path):
    assert comm_bench.message_bytes(4, 2) == comm_bench.message_bytes(8, 2) == 8
    assert comm_bench._parse_ops("all-reduce, all_reduce,broadcast") == ["all_reduce", "broadcast"]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        rows = comm_bench.bench_collectives(["all_reduce", "all_reduce"], [4, 5, 6, 8], iters=1, warmup=0,
                                            device="cpu")
    finally:
        dist.destroy_process_group()
    assert [(r["op"], r["size_bytes"]) for r in rows] == [("all_reduce", 4), ("all_reduce", 8)]


def _launch_two_sleepers(tmp_path, **popen_kwargs):
    """`workbench launch --nproc 2` of a script whose ranks write their pids into tmp_path/pids, then sleep 120 s.
    Returns the launcher's Popen and the pids folder."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = tmp_path / "sleeper.py"
    worker.write_text("import os, pathlib, time\n"
                      "pathlib.Path(os.environ['PIDS'], os.environ['RANK']).write_text(str(os.getpid()))\n"
                      "time.sleep(120)\n")
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    launcher = subprocess.Popen([sys.executable, "-m", "workbench", "launch", "--nproc", "2", "--run-dir",
                                 str(tmp_path / "run"), "--", str(worker)], env={**env, "PIDS": str(pids)},
                                cwd=Path(__file__).resolve().parents[1], **popen_kwargs)
    return launcher, pids


def test_sigterm_to_the_launcher_stops_torchrun_and_every_worker(tmp_path):
    """torchrun runs in its own session, so a SIGTERM (timeout, CI, a closed terminal) killed only the launcher and
    left torchrun and the workers running; Ctrl-C already stopped them all."""
    import os
    import signal
    import subprocess
    import time

    launcher, pids = _launch_two_sleepers(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in pids.iterdir()]
        assert len(workers) == 2, "the workers never started"
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=30)
    finally:  # on a failure, take torchrun and the workers (in their own session) down too
        from workbench.distributed.launcher.launch import _descendants

        for pid in _descendants(launcher.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    time.sleep(0.5)
    alive = []
    for pid in workers:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert not alive, f"workers still running: {alive}"


def test_a_rendezvous_port_in_use_on_one_node_is_one_line(capsys):
    """torchrun waited silently (90 s in the report) for whoever held the port to let go."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert main(["launch", "--nproc", "2", "--rdzv-endpoint", f"127.0.0.1:{port}", "--", "-c", "pass"]) == 2
    _one_error_line(capsys, "launch", f"rendezvous port {port} on 127.0.0.1 is in use")


def test_comm_bench_refuses_a_max_size_this_machine_cannot_hold(capsys, no_launch, tmp_path, monkeypatch):
    """--max-size 64G started the ranks, ran the small sizes, then a rank was OOM-killed."""
    monkeypatch.setattr(comm_bench, "_available_host_bytes", lambda: 8 * 2**30)
    assert main(["comm-bench", "--device", "cpu", "--max-size", "4G", "--nproc", "2", "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, "comm-bench", "this machine has 8.0 GiB available; use --max-size")


def test_launch_help_says_c10d_ranks_follow_join_order(capsys):
    """--node-rank 1 became global rank 0 (it joined first) while the help promised "this node's rank"."""
    with pytest.raises(SystemExit):
        main(["launch", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "hands out global ranks in join order, not by node rank" in help_text


@pytest.mark.parametrize("user_value, expected", [("1", "1"), (None, None)])
def test_launch_keeps_the_users_omp_num_threads(monkeypatch, tmp_path, user_value, expected):
    """OMP_NUM_THREADS=1 workbench launch --nproc 1 gave the worker cores // nproc threads: a shared host's limit
    was silently dropped. Without one, cores // nproc stays the default."""
    import importlib
    import os

    launch_module = importlib.import_module("workbench.distributed.launcher.launch")  # the module, not launch()
    seen = {}

    def fake_popen(argv, env, **kwargs):
        seen.update(env)
        raise KeyboardInterrupt  # stop before anything starts

    if user_value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", user_value)
    monkeypatch.setattr(launch_module.subprocess, "Popen", fake_popen)
    with pytest.raises(KeyboardInterrupt):
        launch(["models"], LaunchConfig(nproc=1), run_dir=tmp_path / "run", on_line=None)
    assert seen["OMP_NUM_THREADS"] == (expected or str(max(1, os.cpu_count() or 1)))


@pytest.mark.parametrize("cases, named", [
    ("glm4-tiny:tp=2,fsdp=2;glm45-tiny:fsdp=2,pp=2", "pipeline parallel does not support MTP"),  # a later case
    ("glm45-tiny:fsdp=2,ep=2", "combining ep+fsdp is not supported"),
    ("glm4-tiny:dp=2", "the world has 4 process(es)"),
])
def test_runner_checks_every_case_before_any_runs(monkeypatch, capsys, cases, named):
    """A 4-rank runner whose second case could not run trained the first, then died with a traceback per rank."""
    import workbench.distributed.mesh as mesh
    from workbench.distributed import runner

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(mesh, "init_distributed", lambda *a, **k: pytest.fail("started before checking the cases"))
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["--cases", cases, "--tiny"])
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_runner_refuses_an_fp16_case_before_launching(monkeypatch, capsys):
    """parse_cases accepted ':fp16', which parallelize refuses (no loss scaling) only once every rank had started."""
    import workbench.distributed.mesh as mesh
    from workbench.distributed import runner

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(mesh, "init_distributed", lambda *a, **k: pytest.fail("started before checking the cases"))
    with pytest.raises(SystemExit):
        runner.main(["--cases", "glm4-tiny:fsdp=2:fp16", "--tiny"])
    assert "fp16 is refused" in capsys.readouterr().err
    assert runner.parse_cases("glm4-tiny:fsdp=2:bf16") == [("glm4-tiny", "fsdp=2", "bf16")]


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for a reaper that never comes does not)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_sigkill_of_the_launcher_takes_torchrun_and_every_worker_with_it(tmp_path):
    """torchrun runs in its own session, so `kill -9` (or the OOM killer) of the launcher left torchrun and every rank
    training as orphans, still writing checkpoints, and the user's --resume was refused (the run folder in use)."""
    import os
    import signal
    import subprocess
    import time

    from workbench.distributed.launcher.launch import _descendants

    launcher, pids = _launch_two_sleepers(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    below = []
    try:
        deadline = time.monotonic() + 90
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        below = _descendants(launcher.pid)  # torchrun and its workers
        assert len(list(pids.iterdir())) == 2 and len(below) >= 3, "the workers never started"
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_running(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = [pid for pid in below if _running(pid)]
    finally:  # on a failure, take torchrun and the workers (in their own sessions) down too
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.kill()
    assert not alive, f"still running after the launcher was killed: {alive}"


def test_the_parent_death_signal_is_a_no_op_off_linux(monkeypatch):
    import importlib

    launch_module = importlib.import_module("workbench.distributed.launcher.launch")  # the module, not launch()
    monkeypatch.setattr(launch_module.sys, "platform", "darwin")
    assert launch_module._die_with_parent_hook() is None


@pytest.mark.parametrize("value", ["garbage", "4h", "01:00:00:00", "1-", ":30"])
def test_slurm_refuses_a_time_sbatch_would_refuse(value, capsys, tmp_path):
    """'--time garbage' went into '#SBATCH --time=garbage': the mistake showed only when sbatch ran on the cluster."""
    script = tmp_path / "job.sbatch"
    assert main(["launch", "--slurm", str(script), "--time", value, "--", "models"]) == 2
    _one_error_line(capsys, "launch", "is not a Slurm time limit")
    assert not script.exists()


@pytest.mark.parametrize("value", ["90", "30:00", "04:00:00", "2-12", "1-00:30", "1-02:03:04", "UNLIMITED"])
def test_slurm_takes_every_time_form_sbatch_takes(value):
    assert SlurmConfig(time=value).time == value


@pytest.mark.parametrize("results, said", [([None, None], "log in"), ([{"rank": 0}, {"rank": 1}], "2/2 rank results")])
def test_a_command_that_writes_no_rank_results_is_not_reported_as_0_of_n(results, said, monkeypatch, capsys, tmp_path):
    """`launch -- profile` ended with '0/2 rank results', which read as a failure of two ranks that had profiled."""
    from workbench.distributed.launcher.launch import LaunchResult

    monkeypatch.setattr("workbench.distributed.launch_cli.launch", lambda *a, **k: LaunchResult(
        returncode=0, run_dir=tmp_path, results=results, wall_s=1.0))
    assert main(["launch", "--nproc", "2", "--run-dir", str(tmp_path), "--", "models"]) == 0
    out = capsys.readouterr().out
    assert said in out and "0/2" not in out
