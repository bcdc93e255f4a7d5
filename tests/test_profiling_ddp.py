"""Communication overlap from a real trace: two gloo processes train the toy LM with DDP under the profiler; gloo
runs its all-reduces on its own threads, so part of the communication overlaps backward compute (overlapped) and
part is waited for at the end of backward (exposed). (``profile_trainer`` on a real Trainer runs in the
notebook test, tests/notebook_cases/04_profiling.py.)"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workbench.distributed.launcher import free_port


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.profiler import record_function

    from workbench.device import get_device
    from workbench.profiling import ProfileConfig, analyze, profile_steps
    from workbench.profiling.toy import ToyConfig, ToyLM

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = ToyConfig(vocab=64, dim=64, heads=2, layers=2, seq_len=16, batch=2)
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(ToyLM(cfg), bucket_cap_mb=0.02)  # several buckets
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        tokens = torch.randint(cfg.vocab, (cfg.batch, cfg.seq_len + 1), generator=torch.Generator().manual_seed(rank))

        def step():
            with record_function("workbench/forward"):
                loss = model(tokens[:, :-1], tokens[:, 1:])
            with record_function("workbench/backward"):
                loss.backward()
            with record_function("workbench/optimizer"):
                opt.step()
                opt.zero_grad()

        run = profile_steps(step, ProfileConfig(wait=0, warmup=1, active=2, memory_timeline="off"),
                            device=get_device("cpu"), out_dir=os.path.join(out_dir, f"rank{rank}"))
        report = analyze(run)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"breakdown": report.breakdown, "categories": report.categories}, f)
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_communication_is_split_into_overlapped_and_exposed(tmp_path):
    # fork, not spawn: the children inherit the imported torch instead of paying for the import again (CPU only)
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    result = json.loads((tmp_path / "rank0.json").read_text())
    comm = result["breakdown"]["communication"]
    assert comm["total_ms"] > 0
    assert comm["overlapped_ms"] > 0  # gloo threads all-reduce early buckets while backward still computes
    assert comm["overlapped_ms"] + comm["exposed_ms"] == pytest.approx(comm["total_ms"])
    rows = {r["phase"]: r["ms"] for r in result["breakdown"]["rows"]}
    assert rows["communication (exposed)"] == pytest.approx(comm["exposed_ms"])
    assert sum(rows.values()) == pytest.approx(result["breakdown"]["step_ms"], rel=1e-6)
    cats = {r["category"]: r["ms_per_step"] for r in result["categories"]}
    assert cats["communication"] > 0


def test_workbench_launch_profiles_every_rank_into_its_own_folder(tmp_path):
    """`workbench launch -- profile` (which notebook 04 points to) never joined the process group: every rank
    thought it ran alone, and rank 1 died on rank 0's run-folder lock (a toy run: both wrote one trace.json)."""
    from workbench.cli import main

    out = tmp_path / "profile"
    code = main(["launch", "--nproc", "2", "--run-dir", str(tmp_path / "launch"), "--timeout", "240", "--",
                 "profile", "--preset", "glm4-tiny", "--seq-len", "16", "--batch-size", "1", "--steps", "1",
                 "--wait", "0", "--warmup", "1", "--memory-timeline", "off", "--out", str(out)])
    assert code == 0
    pids = []
    for folder in (out, out / "rank1"):
        trace = json.loads((folder / "trace.json").read_text())
        pids.append({e["pid"] for e in trace["traceEvents"] if e.get("cat") == "cpu_op"})
        report = json.loads((folder / "report.json").read_text())
        assert report["step_breakdown"]["communication"]["total_ms"] > 0  # the data-parallel all-reduces
        assert report["summary"]["world_size"] == 2
    assert pids[0].isdisjoint(pids[1])  # two processes' traces, not one trace twice


def test_profile_toy_under_launch_and_bad_values_are_one_line_and_leave_no_folder(tmp_path, monkeypatch, capsys):
    from workbench.cli import main

    out = tmp_path / "never"
    assert main(["profile", "--preset", "toy", "--device", "bogus", "--out", str(out)]) == 2
    assert main(["profile", "--preset", "toy", "--kernels", "attention=bogus", "--out", str(out)]) == 2
    assert not out.exists()  # the folder was made before the device and kernel checks
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["profile", "--preset", "toy", "--out", str(out)]) == 2
    assert "profile a model preset" in capsys.readouterr().err and not out.exists()
