"""Predicted vs measured step time of real ``workbench train`` steps on this CPU (1 process, or DDP under torchrun).

    python -m workbench.perfmodel.local_check --batch-size 4 --seq-len 64            # one process
    workbench launch --nproc 2 -- -m workbench.perfmodel.local_check --batch-size 4  # 2-process DDP (gloo)

Each round measures the probes (GEMM rate, bandwidth, op overhead; under DDP also a gloo all-reduce on the run's
own process group) right before timing a few trainer steps, so both see the same machine load; the prediction comes
from ``workbench.perfmodel.local.predict_step_time``. The result (rank 0) is printed as JSON and, under a launch,
written as the rank's results file. tests/test_perfmodel_local.py runs both and bounds the error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def _allreduce_probe(megabytes: float = 8.0) -> tuple[float, float]:
    """(bus bandwidth bytes/s, latency s) of gloo all-reduce on the current process group."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    big, tiny = torch.ones(int(megabytes * 2**20 // 4)), torch.ones(1)
    for _ in range(2):
        dist.all_reduce(big)
        dist.all_reduce(tiny)
    start = time.perf_counter()
    for _ in range(10):
        dist.all_reduce(tiny)
    tiny_s = (time.perf_counter() - start) / 10
    start = time.perf_counter()
    for _ in range(3):
        dist.all_reduce(big)
    big_s = (time.perf_counter() - start) / 3
    factor = 2 * (world - 1) / world
    return big.numel() * 4 / max(big_s - tiny_s, 1e-9) * factor, tiny_s / (2 * (world - 1))


def run_check(preset: str = "glm4-tiny", batch_size: int = 4, seq_len: int = 64, rounds: int = 3,
              steps_per_round: int = 2, warmup: int = 2, threads: list[int] | None = None) -> dict:
    """Predicted vs measured step time, per torch thread count in ``threads`` (default: the current one).

    Returns {"world", "threads", "rounds", "error", ..., "by_threads": {n: {...}}}; the top level is the first
    thread count's result."""
    import torch
    import torch.distributed as dist

    from workbench.perfmodel.local import LocalProbes, count_training_ops, measure_op_overhead, predict_step_time
    from workbench.train import TrainConfig
    from workbench.train.trainer import Trainer

    threads = threads or [torch.get_num_threads()]
    kwargs: dict = {}
    total_steps = len(threads) * (warmup + rounds * steps_per_round) + 1
    config = TrainConfig(preset=preset, batch_size=batch_size, seq_len=seq_len, steps=total_steps, device="cpu",
                         out_dir=tempfile.mkdtemp(prefix="local_check_"), progress=False, eval_every=0,
                         ckpt_every=0, sample_tokens=0, warmup_steps=1, parallel="dp=1")
    from workbench.distributed.mesh import is_launched

    if is_launched():
        from workbench.distributed.train_hooks import distributed_train_kwargs

        kwargs = distributed_train_kwargs(config)
    world = dist.get_world_size() if dist.is_initialized() else 1
    trainer = Trainer(config, log=lambda message: None, **kwargs)
    ops, bytes_by_size = count_training_ops(trainer.raw_model, batch_size, seq_len, trainer.model_config.vocab_size,
                                            with_bytes=True)
    nbytes = sum(bytes_by_size.values())
    from workbench.device import get_device
    from workbench.device.probes import measure_gemm_peak, measure_memory_bandwidth

    dev = get_device("cpu")
    previous = torch.get_num_threads()
    by_threads = {}
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for _ in range(warmup):
                trainer.train_step()

            def probe() -> LocalProbes:
                flops, _ = measure_gemm_peak(dev, torch.float32, sizes=(256, 512), min_time_s=0.05)
                # copy bandwidth at the working-set sizes of the counted ops (cache vs DRAM, and the same thread
                # synchronisation costs small multi-threaded ops pay); the largest also prices the optimizer
                curve = {mb: measure_memory_bandwidth(dev, megabytes=mb, min_time_s=0.03)[0]
                         for mb, b in bytes_by_size.items() if b or mb == max(bytes_by_size)}
                overhead = measure_op_overhead(repeats=3)
                busbw, latency = _allreduce_probe() if world > 1 else (None, None)
                return LocalProbes(flops, curve[max(bytes_by_size)], overhead, busbw, latency, n_threads, curve)

            def mean(a: LocalProbes, b: LocalProbes) -> LocalProbes:
                avg = lambda x, y: None if x is None else (x + y) / 2  # noqa: E731
                return LocalProbes(*(avg(getattr(a, f), getattr(b, f)) for f in
                                     ("gemm_flops", "bandwidth", "op_overhead_s", "allreduce_busbw",
                                      "allreduce_latency_s")), threads=n_threads,
                                   bandwidth_by_mb={mb: (a.bandwidth_by_mb[mb] + b.bandwidth_by_mb[mb]) / 2
                                                    for mb in a.bandwidth_by_mb})

            rounds_out = []
            for _ in range(rounds):
                # probes right before and right after the timed steps: both see the same machine load
                before = probe()
                measured = [trainer.train_step()["step_time_s"] for _ in range(steps_per_round)]
                probes = mean(before, probe())
                predicted = predict_step_time(trainer.model_config, batch_size, seq_len, world=world, probes=probes,
                                              ops_per_micro_step=ops, memory_bound_bytes=bytes_by_size)
                rounds_out.append({"predicted_s": predicted["step_time_s"], "measured_s": statistics.median(measured),
                                   "breakdown": predicted["breakdown"], "probes": probes.__dict__})
            ratio = statistics.median(r["predicted_s"] / r["measured_s"] for r in rounds_out)
            by_threads[n_threads] = {"threads": n_threads, "rounds": rounds_out, "ratio_median": ratio,
                                     "error": ratio - 1}
    finally:
        torch.set_num_threads(previous)
    first = by_threads[threads[0]]
    return {"world": world, "preset": preset, "batch_size": batch_size, "seq_len": seq_len,
            "ops_per_micro_step": ops, "memory_bound_bytes": nbytes, "memory_bound_bytes_by_mb": bytes_by_size,
            **first, "by_threads": by_threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="glm4-tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="steps before measuring (per thread count)")
    parser.add_argument("--threads", type=int, action="append", default=None,
                        help="torch threads to measure with (repeatable; default: the current count)")
    args = parser.parse_args(argv)
    result = run_check(args.preset, args.batch_size, args.seq_len, args.rounds, args.steps_per_round,
                       warmup=args.warmup, threads=args.threads)
    from workbench.distributed.mesh import is_launched

    if is_launched():
        import torch.distributed as dist

        from workbench.distributed.launcher import write_rank_results

        rank = dist.get_rank() if dist.is_initialized() else 0
        write_rank_results({"rank": rank, **result})
        from workbench.distributed.mesh import destroy_distributed

        destroy_distributed()
        if rank != 0:
            return 0
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
