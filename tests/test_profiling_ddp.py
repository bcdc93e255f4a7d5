"""Communication overlap from a real trace: two gloo processes train the toy LM with DDP under the profiler; gloo
runs its all-reduces on its own threads, so part of the communication overlaps backward compute (overlapped) and
part is waited for at the end of backward (exposed). Also the Trainer convenience on a real ``Trainer``."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.profiler import record_function

    from workbench.device import get_device
    from workbench.profiling import ProfileConfig, analyze, profile_steps
    from workbench.profiling.toy import ToyConfig, ToyLM

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = ToyConfig(vocab=64, dim=64, heads=2, layers=3, seq_len=16, batch=2)
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

        run = profile_steps(step, ProfileConfig(wait=1, warmup=1, active=2, memory_timeline="off"),
                            device=get_device("cpu"), out_dir=os.path.join(out_dir, f"rank{rank}"))
        report = analyze(run)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"breakdown": report.breakdown, "categories": report.categories}, f)
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_communication_is_split_into_overlapped_and_exposed(tmp_path):
    # fork, not spawn: the children inherit the imported torch instead of paying for the import again (CPU only)
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
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


def test_profile_trainer_uses_model_flops_and_device_peak(tmp_path):
    train = pytest.importorskip("workbench.train")
    pytest.importorskip("workbench.model")
    from workbench.profiling import ProfileConfig
    from workbench.profiling.trainer_profile import profile_trainer, trainer_tokens_per_step

    config = train.TrainConfig(preset="glm4-tiny", model_overrides={"num_layers": 1}, steps=2, batch_size=2,
                               seq_len=16, device="cpu", out_dir=str(tmp_path / "train"), progress=False,
                               warmup_steps=0, eval_every=0, ckpt_every=0)
    trainer = train.Trainer(config, log=lambda message: None)
    run, report = profile_trainer(trainer, ProfileConfig(wait=0, warmup=1, active=1, memory_timeline="off"),
                                  out_dir=tmp_path / "prof")
    assert trainer_tokens_per_step(trainer) == 32
    waterfall = report.waterfall
    assert waterfall["flops_per_step"] == pytest.approx(trainer.flops_per_token * 32)
    assert waterfall["peak_flops"] == trainer.peak.value and waterfall["peak_source"] == trainer.peak.source
    assert 0 < waterfall["mfu"] < 1
    phases = {r["phase"]: r["ms"] for r in report.breakdown["rows"]}
    assert phases["forward"] > 0 and phases["backward"] > 0 and phases["optimizer"] > 0 and phases["data"] > 0
