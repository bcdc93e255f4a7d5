"""Layout parsing/validation, launcher argv, Slurm script and comm-bench arithmetic: no processes started."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from workbench.distributed.comm_bench import bus_factor, parse_size, size_sweep
from workbench.distributed.launcher import LaunchConfig, SlurmConfig, slurm_script, torchrun_argv, worker_argv
from workbench.distributed.launcher.launch import LaunchResult, launch, rank_errors, root_cause
from workbench.distributed.layout import ParallelLayout, every_layout, parse_layout
from workbench.errors import ConfigError

DENSE = SimpleNamespace(num_heads=4, num_kv_heads=2, num_layers=2, num_experts=0)
MOE = SimpleNamespace(num_heads=4, num_kv_heads=2, num_layers=2, num_experts=4)


def test_parse_layout_reads_sizes_and_defaults_to_one():
    layout = parse_layout("dp=2,tp=1,pp=1,ep=1")
    assert (layout.dp, layout.tp, layout.pp, layout.ep, layout.fsdp) == (2, 1, 1, 1, 1)
    assert layout.world_size == 2 and layout.data_parallel_size == 2
    assert parse_layout("fsdp=2, tp=2").mesh_shape() == (("fsdp", "tp"), (2, 2))
    assert parse_layout("pp=2,schedule=gpipe").n_microbatches == 2


def test_auto_and_empty_fill_the_world():
    assert parse_layout("", world_size=4).dp == 4
    assert parse_layout("fsdp=auto,tp=2", world_size=4).fsdp == 2
    with pytest.raises(ConfigError, match="does not divide"):
        parse_layout("fsdp=auto,tp=3", world_size=4)


@pytest.mark.parametrize("spec, match", [
    ("fsdp=2,tp=2", "sizes multiply to 4 but the world has 2"),
    ("dp=two", "not a whole number"),
    ("dq=2", "unknown name"),
    ("dp", "not name=value"),
    ("dp=0", ">= 1"),
    ("pp=2,schedule=zigzag", "schedule"),
    ("pp=2,tp=2", "not supported"),
])
def test_bad_layouts_get_clear_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_layout(spec, world_size=2)


def test_layout_is_checked_against_the_model():
    parse_layout("tp=2").check_model(DENSE)
    with pytest.raises(ConfigError, match="tp=4 must divide the 2 key/value heads"):
        parse_layout("tp=4").check_model(DENSE)
    with pytest.raises(ConfigError, match="tp=3 must divide the 4 attention heads"):
        parse_layout("tp=3").check_model(DENSE)
    with pytest.raises(ConfigError, match="pp=4 stages need at least 4 layers"):
        parse_layout("pp=4").check_model(DENSE)
    with pytest.raises(ConfigError, match="needs a mixture-of-experts model"):
        parse_layout("ep=2").check_model(DENSE)
    with pytest.raises(ConfigError, match="ep=3 must divide the 4 experts"):
        parse_layout("ep=3").check_model(MOE)
    parse_layout("ep=2,dp=2").check_model(MOE)
    with pytest.raises(ConfigError, match="tensor parallel covers dense layers only; for MoE models use ep"):
        parse_layout("tp=2").check_model(MOE)


def test_pipeline_layouts_refuse_models_the_stages_cannot_carry():
    """Up front, with the layout's other checks: not later inside the launched processes (pp.build_pipeline)."""
    from workbench.distributed.runner import tiny_config
    from workbench.model import get_preset

    parse_layout("pp=2,schedule=1f1b").check_model(tiny_config(get_preset("glm4-tiny")))
    with pytest.raises(ConfigError, match=r"does not fit the model: pipeline parallel does not support MTP layers "
                                          r"\(set mtp_layers=0\)$"):
        parse_layout("pp=2,schedule=1f1b").check_model(tiny_config(get_preset("glm45-tiny")))
    with pytest.raises(ConfigError, match="MTP layers .*DSA top-k sharing"):
        parse_layout("pp=2").check_model(get_preset("glm5-tiny"))
    with pytest.raises(ConfigError, match="auxiliary balance loss"):
        parse_layout("pp=2").check_model({"num_layers": 4, "aux_loss_coef": 0.01})  # dict configs too
    parse_layout("dp=2").check_model(get_preset("glm45-tiny"))  # other layouts carry MTP fine


def test_every_layout_fits_the_world():
    assert every_layout(1) == ["dp=1"]
    assert every_layout(2) == ["dp=2", "fsdp=2", "tp=2", "pp=2,schedule=1f1b", "pp=2,schedule=gpipe", "ep=2"]
    for n in (1, 2, 4):
        assert all(parse_layout(spec, world_size=n).world_size == n for spec in every_layout(n))


def test_batch_must_split_over_data_ranks_and_microbatches():
    ParallelLayout(dp=2, pp=1).check_batch(4)
    with pytest.raises(ConfigError, match="divisible by dp\\*fsdp\\*ep = 2"):
        ParallelLayout(dp=2).check_batch(3)
    with pytest.raises(ConfigError, match="microbatches=4"):
        ParallelLayout(pp=2, microbatches=4).check_batch(2)
    # sequence parallel: each tp rank keeps an equal slice of the sequence
    ParallelLayout(tp=2).check_batch(4, seq_len=16)
    ParallelLayout(dp=2).check_batch(4, seq_len=15)
    with pytest.raises(ConfigError, match="seq_len 15 must be divisible by tp=2"):
        ParallelLayout(tp=2).check_batch(4, seq_len=15)


def test_worker_argv_forms(tmp_path):
    assert worker_argv(["--", "train", "--steps", "3"]) == ["-m", "workbench", "train", "--steps", "3"]
    assert worker_argv(["-m", "pkg.mod", "x"]) == ["-m", "pkg.mod", "x"]
    script = tmp_path / "s.py"
    script.write_text("")
    assert worker_argv([str(script), "a"]) == [str(script), "a"]
    with pytest.raises(ConfigError, match="cannot launch"):
        worker_argv(["rm", "-rf"])
    with pytest.raises(ConfigError, match="nothing to launch"):
        worker_argv([])


def test_torchrun_argv_single_and_multi_node():
    argv = torchrun_argv(LaunchConfig(nproc=2, max_restarts=1), ["train"])
    assert argv[argv.index("--nproc-per-node") + 1] == "2" and argv[argv.index("--max-restarts") + 1] == "1"
    assert argv[argv.index("--rdzv-endpoint") + 1].startswith("127.0.0.1:")
    assert argv[-3:] == ["--module", "workbench", "train"]
    multi = torchrun_argv(LaunchConfig(nproc=8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500"), ["train"])
    assert multi[multi.index("--node-rank") + 1] == "1" and multi[multi.index("--nnodes") + 1] == "2"
    assert multi[multi.index("--rdzv-endpoint") + 1] == "node0:29500"
    with pytest.raises(ConfigError, match="rdzv-endpoint"):
        LaunchConfig(nproc=2, nnodes=2)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        LaunchConfig(nnodes=2, rdzv_endpoint="node0")
    with pytest.raises(ConfigError, match="node_rank"):
        LaunchConfig(nnodes=2, node_rank=2, rdzv_endpoint="a:1")


def test_slurm_script_is_valid_bash_and_runs_torchrun(tmp_path):
    text = slurm_script(SlurmConfig(nodes=4, nproc_per_node=8, max_restarts=2, partition="gpu"),
                        ["train", "--preset", "glm4-tiny", "--parallel", "fsdp=16,tp=2"])
    assert "#SBATCH --nodes=4" in text and "#SBATCH --gpus-per-node=8" in text and "#SBATCH --partition=gpu" in text
    assert "--nproc-per-node 8" in text and "--max-restarts 2" in text and "--rdzv-endpoint $HEAD_NODE:29500" in text
    assert "--module workbench train --preset glm4-tiny --parallel fsdp=16,tp=2" in text
    assert "--gres=npu:8" in slurm_script(SlurmConfig(device_type="npu"), ["train"])
    path = tmp_path / "job.sbatch"
    path.write_text(text)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_launch_cli_writes_slurm_script(tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "job.sbatch"
    assert main(["launch", "--slurm", str(out), "--nnodes", "2", "--nproc", "4", "--", "train", "--preset",
                 "glm4-tiny"]) == 0
    assert "#SBATCH --nodes=2" in out.read_text()
    assert main(["launch", "--nnodes", "2", "--", "train"]) == 2  # a user error: one line, no traceback
    err = capsys.readouterr().err
    assert "rdzv-endpoint" in err and "Traceback" not in err


def test_comm_bench_arithmetic():
    assert parse_size("1K") == 1024 and parse_size("256MB") == 256 << 20 and parse_size(4096) == 4096
    assert size_sweep("1K", "256M", 4)[-1] == 256 << 20 and size_sweep("1K", "256M", 4)[0] == 1024
    assert len(size_sweep("1K", "256M", 4)) == 10
    assert bus_factor("all_reduce", 8) == pytest.approx(1.75)
    assert bus_factor("all_gather", 4) == bus_factor("reduce_scatter", 4) == bus_factor("all_to_all", 4) == 0.75
    assert bus_factor("broadcast", 8) == 1.0
    with pytest.raises(ConfigError):
        parse_size("lots")
    with pytest.raises(ConfigError):
        bus_factor("gossip", 2)


def _rank_log(log_dir, attempt: int, rank: int, text: str) -> None:
    path = log_dir / f"attempt_{attempt}" / str(rank) / "stderr.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


TRACEBACK = """some warning on stderr
[rank1]: Traceback (most recent call last):
[rank1]:   File "x.py", line 3, in <module>
[rank1]:     raise ValueError("bad\\nsecond line")
[rank1]:     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
[rank1]: ValueError: rank one is unhappy
[rank1]: second line of the message
"""


def test_root_cause_is_the_worker_error_line():
    assert root_cause(TRACEBACK) == "ValueError: rank one is unhappy"
    chained = "Traceback (most recent call last):\n  File 'a'\nKeyError: 'x'\n\nDuring handling of the above " \
              "exception, another exception occurred:\n\nTraceback (most recent call last):\n  File 'b'\n" \
              "workbench.errors.ConfigError: the last one\n"
    assert root_cause(chained) == "workbench.errors.ConfigError: the last one"
    # the workbench CLI reports user errors in one line, without a traceback
    assert root_cause("workbench comm-bench: error: size 'abc' is not a size; write e.g. 1K\n") == \
        "workbench comm-bench: error: size 'abc' is not a size; write e.g. 1K"
    assert root_cause("just output\n") is None and root_cause("") is None


def test_failed_launch_puts_the_ranks_own_errors_first(tmp_path):
    logs = tmp_path / "logs" / "workbench_1_abc"
    _rank_log(logs, 0, 0, "Traceback (most recent call last):\n  File 'a'\nOldError: from the first attempt\n")
    _rank_log(logs, 1, 0, "Traceback (most recent call last):\n  File 'a'\nRuntimeError: peer went away\n")
    _rank_log(logs, 1, 1, TRACEBACK)
    _rank_log(logs, 1, 2, "nothing wrong here\n")
    torchrun_report = ["torch.distributed.elastic.multiprocessing.errors.ChildFailedError:", "Root Cause (first "
                       "observed failure):", "[0]:", "  rank      : 1 (local_rank: 1)", "  exitcode  : 1"]
    errors = rank_errors([logs], torchrun_report)
    assert errors == ["rank 1: ValueError: rank one is unhappy", "rank 0: RuntimeError: peer went away"]
    _rank_log(logs, 1, 2, TRACEBACK.replace("[rank1]", "[rank2]"))
    assert rank_errors([logs], torchrun_report)[0] == "ranks 1, 2: ValueError: rank one is unhappy"  # one line
    result = LaunchResult(1, tmp_path, log=torchrun_report, errors=errors)
    with pytest.raises(RuntimeError) as info:
        result.check()
    lines = str(info.value).splitlines()
    assert lines[:3] == ["distributed run failed (exit 1):", "  rank 1: ValueError: rank one is unhappy",
                         "  rank 0: RuntimeError: peer went away"]
    assert "ChildFailedError" in str(info.value)  # torchrun's report still follows
    assert LaunchResult(0, tmp_path).check().ok


GLOO_LOST_PEER = ("Traceback (most recent call last):\n  File 'a'\nRuntimeError: [pair.cc:553] Connection closed by "
                  "peer [127.0.0.1]:6019. This is typically caused by a remote worker crashing.\n")


def test_a_rank_killed_by_a_signal_is_named_before_the_ranks_that_lost_it(tmp_path):
    """A rank SIGKILLed (the OOM killer) writes no error: the summary blamed rank 0's 'connection closed by peer'
    and never named rank 1."""
    logs = tmp_path / "logs" / "workbench_1_abc"
    _rank_log(logs, 0, 0, GLOO_LOST_PEER)
    _rank_log(logs, 0, 1, "")
    report = ["ChildFailedError:", "Failures:", "[1]:", "  rank      : 0 (local_rank: 0)",
              "  exitcode  : -15 (pid: 11)  (SIGTERM)", "Root Cause (first observed failure):", "[0]:",
              "  rank      : 1 (local_rank: 1)", "  exitcode  : -9 (pid: 12)  (SIGKILL)"]
    errors = rank_errors([logs], report)
    assert errors[0].startswith("rank 1: killed by SIGKILL (out of memory?")
    assert errors[1].startswith("rank 0: RuntimeError: [pair.cc:553] Connection closed by peer")


def test_lost_peer_errors_come_after_the_real_one_and_a_bare_exit_message_is_kept(tmp_path):
    logs = tmp_path / "logs" / "workbench_1_abc"
    _rank_log(logs, 0, 0, GLOO_LOST_PEER)
    _rank_log(logs, 0, 1, "Traceback (most recent call last):\n  File 'a'\nRuntimeError: boom on rank 1\n")
    report = ["Root Cause (first observed failure):", "[0]:", "  rank      : 0 (local_rank: 0)", "  exitcode  : 1"]
    assert [e.split(":")[0] for e in rank_errors([logs], report)] == ["rank 1", "rank 0"]  # torchrun named rank 0
    _rank_log(logs, 0, 0, "starting\n")
    _rank_log(logs, 0, 1, "[rank1]: rank 1: bad config value\n")  # raise SystemExit("..."): no traceback
    report = ["Root Cause (first observed failure):", "[0]:", "  rank      : 1 (local_rank: 1)", "  exitcode  : 1"]
    assert rank_errors([logs], report) == ["rank 1: rank 1: bad config value"]


def test_launch_results_are_indexed_by_rank_on_one_node(tmp_path):
    """Only rank 1 wrote results: they came back as [rank 1's, None], and notebook 03 read results[0] as rank 0."""
    script = tmp_path / "only_rank1.py"
    script.write_text("import json, os\nif os.environ['RANK'] == '1':\n"
                      "    json.dump({'rank': 1}, open(os.path.join(os.environ['WORKBENCH_RESULTS_DIR'], 'rank1.json'),"
                      " 'w'))\n")
    result = launch([str(script)], LaunchConfig(nproc=2), run_dir=tmp_path / "run", on_line=None, timeout_s=120)
    assert result.check().results == [None, {"rank": 1}]
