"""Real multi-process runs (gloo): the launcher (Python API, CLI, timeouts, two-node rendezvous), the hand-written
DDP/ZeRO-1, and `workbench comm-bench`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from workbench.distributed.launcher import LaunchConfig, launch

TOL = 1e-5  # fp32, identical math up to summation order


def test_teaching_ddp_and_zero1_match_single_process(tmp_path):
    lines = []
    result = launch(["-m", "workbench.distributed.teaching.compare", "--steps", "4", "--dim", "32", "--depth", "2"],
                    LaunchConfig(nproc=2), run_dir=tmp_path, on_line=lines.append, timeout_s=120).check()
    assert lines, "the launcher streamed no log lines"
    assert [r["rank"] for r in result.results] == [0, 1]
    ref = result.results[0]["reference_losses"]
    assert ref[-1] < ref[0] - 1e-3, "the reference run did not learn; the comparison would prove nothing"
    for rank_result in result.results:
        rows = {row["strategy"]: row for row in rank_result["rows"]}
        assert set(rows) == {"torch_ddp", "naive", "bucketed", "overlapped", "zero1"}
        for name, row in rows.items():
            assert row["max_loss_diff"] < TOL, (name, row)
            assert row["max_param_diff"] < TOL, (name, row)
        # ZeRO-1 keeps about half of the momentum state per rank on 2 ranks.
        full = rows["naive"]["optimizer_state_bytes"]
        assert 0.3 * full < rows["zero1"]["optimizer_state_bytes"] < 0.7 * full


def test_overlapped_ddp_refuses_accumulation_clearly_and_recovers(tmp_path):
    """Two backward passes, then one sync_gradients(): the error said some parameters got no gradient (each got
    two), and the leftover counts broke every later step. World of one: the same hooks and bucket collectives."""
    import copy

    import torch
    import torch.distributed as dist
    from torch import nn

    from workbench.distributed.teaching import OverlappedDDP
    from workbench.distributed.teaching.compare import make_batch, make_mlp

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        base = make_mlp(16, 2)
        x, y = make_batch(4, 16)
        ddp = OverlappedDDP(copy.deepcopy(base), bucket_cap_mb=0.001)
        assert len(ddp.buckets) > 1
        for half in (slice(0, 2), slice(2, 4)):
            nn.functional.mse_loss(ddp(x[half]), y[half]).backward()
        with pytest.raises(RuntimeError, match="several backward passes before sync_gradients.*no_sync"):
            ddp.sync_gradients()
        ddp.module.zero_grad(set_to_none=True)
        nn.functional.mse_loss(ddp(x), y).backward()  # the next step works: the state was reset
        ddp.sync_gradients()
        nn.functional.mse_loss(base(x), y).backward()
        for mine, ref in zip(ddp.module.parameters(), base.parameters()):
            assert torch.allclose(mine.grad, ref.grad, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_compare_refuses_a_global_batch_the_ranks_do_not_share_evenly(monkeypatch, capsys):
    """--global-batch 5 on 2 ranks trained 2 rows per rank against a 5-row reference: every strategy looked wrong."""
    from workbench.distributed import mesh
    from workbench.distributed.teaching import compare

    def two_ranks(device):
        return mesh.DistInfo(0, 2, 0, None, "gloo")
    monkeypatch.setattr(mesh, "init_distributed", two_ranks)
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--steps", "1", "--global-batch", "5", "--dim", "8", "--depth", "1"])
    assert exit_info.value.code == 2
    assert "--global-batch 5 must be divisible by the 2 ranks; use a multiple of 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--steps", "0"])
    assert "--steps must be >= 1 (got 0)" in capsys.readouterr().err


def test_comm_bench_cli_launches_itself_and_writes_json_and_chart(tmp_path):
    out = tmp_path / "cb"
    proc = subprocess.run([sys.executable, "-m", "workbench", "comm-bench", "--nproc", "2", "--min-size", "1K",
                           "--max-size", "16K", "--iters", "2", "--warmup", "1", "--out", str(out), "--timeout", "120"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "comm_bench.json").read_text())["rows"]
    assert {r["op"] for r in rows} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"}
    assert sorted({r["size_bytes"] for r in rows}) == [1024, 4096, 16384]
    for r in rows:
        assert r["world_size"] == 2 and r["backend"] == "gloo" and r["time_us"] > 0
        assert abs(r["algbw_GBps"] - r["size_bytes"] / (r["time_us"] * 1e-6) / 1e9) < 1e-9 * max(1, r["algbw_GBps"])
        factor = {"all_reduce": 1.0, "broadcast": 1.0}.get(r["op"], 0.5)  # 2(n-1)/n, 1, (n-1)/n at n=2
        assert abs(r["busbw_GBps"] - factor * r["algbw_GBps"]) < 1e-12 + 1e-9 * r["algbw_GBps"]
    assert (out / "comm_bench.html").stat().st_size > 1000


def test_launch_reports_a_failing_rank_and_timeout(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, time\nif os.environ['RANK'] == '1':\n    raise ValueError('rank 1 gives up')\n"
                      "time.sleep(60)\n")
    earlier = tmp_path / "fail" / "logs" / "workbench_0_earlier" / "attempt_0" / "1"  # an earlier launch's logs
    earlier.mkdir(parents=True)
    (earlier / "stderr.log").write_text("Traceback (most recent call last):\nOldError: from an earlier launch\n")
    result = launch([str(script)], LaunchConfig(nproc=2), run_dir=tmp_path / "fail", on_line=None, timeout_s=60)
    assert result.returncode != 0 and result.wall_s < 50
    # the rank's own error leads the message, before torchrun's ChildFailedError report (rank 0 was only stopped)
    assert result.errors == ["rank 1: ValueError: rank 1 gives up"]
    with pytest.raises(RuntimeError, match=r"^distributed run failed \(exit \d+\):\n  rank 1: ValueError: rank 1"):
        result.check()
    slow = tmp_path / "slow.py"
    pid_file = tmp_path / "worker.pid"
    slow.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    result = launch([str(slow)], LaunchConfig(nproc=1), run_dir=tmp_path / "slow", on_line=None, timeout_s=5)
    assert result.returncode == 124 and result.wall_s < 30
    # torchrun's workers live in their own sessions: the timeout must end them too, not only torchrun
    worker = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(worker):
            break
        time.sleep(0.1)
    assert not _alive(worker), f"worker {worker} outlived the launch timeout"


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited and only waits to be reaped


def test_two_nodes_rendezvous_through_the_endpoint(tmp_path):
    """--nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT, emulated by two torchrun agents on this machine."""
    import threading

    from workbench.distributed.launcher import free_port

    worker = tmp_path / "worker.py"
    worker.write_text(
        "import torch, torch.distributed as dist\n"
        "from workbench.distributed.mesh import init_distributed\n"
        "from workbench.distributed.launcher import write_rank_results\n"
        "info = init_distributed('cpu')\n"
        "t = torch.ones(1) * (info.rank + 1)\n"
        "dist.all_reduce(t)\n"
        "write_rank_results({'rank': info.rank, 'world': info.world_size, 'sum': t.item()})\n"
        "dist.destroy_process_group()\n")
    endpoint, out = f"127.0.0.1:{free_port()}", {}

    def node(rank: int) -> None:
        out[rank] = launch([str(worker)], LaunchConfig(nproc=1, nnodes=2, node_rank=rank, rdzv_endpoint=endpoint),
                           run_dir=tmp_path / f"node{rank}", on_line=None, timeout_s=90)

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for node_rank in (0, 1):
        assert out[node_rank].returncode == 0, "\n".join(out[node_rank].log[-20:])
    # The c10d rendezvous hands out global ranks in join order, so either node may hold rank 0.
    results = sorted((r for node_rank in (0, 1) for r in out[node_rank].results), key=lambda r: r["rank"])
    assert results == [{"rank": 0, "world": 2, "sum": 3.0}, {"rank": 1, "world": 2, "sum": 3.0}]  # 1 + 2 summed
