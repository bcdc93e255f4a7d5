"""Predict the step time of a workbench training run on *this* machine (CPU, fp32, 1 process or DDP over gloo).

This is the simulator's local validation: the same step-time model as for clusters, fed with numbers measured here
instead of datasheets:
- the fp32 GEMM rate and copy bandwidth per process (the device layer's probes, run with the threads each process
  gets: cores // processes);
- the cost of one dispatched op, forward and backward (a chain-of-multiplies probe), times the number of aten ops a
  training step of this model dispatches (counted once with a dispatch mode; structure, not timing);
- a gloo all-reduce between local processes (bus bandwidth and latency) for DDP.
``predict_step_time(model_config, batch_size, seq_len, world=...)`` returns the prediction with its breakdown;
tests/test_perfmodel_local.py compares it with real ``workbench train`` steps (1 process and 2-process DDP).
Used by notebooks/05_hardware_comparison.ipynb ("this machine") as well.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

import torch


# CPU efficiencies that are set, not fitted: the GEMM probe already measures the achieved rate (eff 1); CPU SDPA
# reaches about half of the GEMM rate at these sizes; DDP's gloo all-reduce is not overlapped with backward here
# (one core per process leaves no core to overlap on).
CPU_EFFICIENCY = dict(gemm_eff_max=1.0, gemm_d0=32.0, attn_eff=0.5, mem_eff=1.0, elementwise_factor=1.0,
                      dp_overlap=0.0, grad_reduce_bytes=4.0, moe_imbalance=1.0)


@dataclass(frozen=True)
class LocalProbes:
    gemm_flops: float  # fp32 FLOP/s of one process
    bandwidth: float  # bytes/s of one process
    op_overhead_s: float  # per dispatched aten op (forward or backward)
    allreduce_busbw: float | None = None  # bytes/s (gloo, between `world` local processes)
    allreduce_latency_s: float | None = None
    threads: int = 1
    bandwidth_by_mb: dict | None = None  # copy bandwidth at working sets of SIZE_BUCKETS_MB (bytes/s)


# working-set size classes (MiB) for memory-bound ops: each class is priced at the copy bandwidth measured at that size
# (small tensors stay in cache; large ones stream from DRAM)
SIZE_BUCKETS_MB = (1, 4, 16, 64)

# GEMM-like ops: priced by the simulator from the model's shapes; every other op is priced by the bytes it touches
_GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
             "aten::_scaled_dot_product", "aten::convolution")


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts aten ops dispatched while active (forward, autograd backward, optimizer), and the bytes the
    memory-bound ones read and write (tensor arguments + outputs)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.memory_bound_bytes = 0
        self.memory_bound_ops = 0
        self.bytes_by_size = {mb: 0 for mb in SIZE_BUCKETS_MB}  # op working set <= mb MiB -> bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += 1
        name = str(func.overloadpacket.__qualname__ if hasattr(func, "overloadpacket") else func)
        name = "aten::" + name.split(".")[-1] if not name.startswith("aten::") else name
        if not any(name.startswith(g) for g in _GEMM_OPS) and "view" not in name:
            touched = _tensor_bytes(args) + _tensor_bytes(kwargs or {}) + _tensor_bytes(out)
            self.memory_bound_bytes += touched
            self.memory_bound_ops += 1
            bucket = next((mb for mb in SIZE_BUCKETS_MB if touched <= mb * 2**20), SIZE_BUCKETS_MB[-1])
            self.bytes_by_size[bucket] += touched
        return out


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size() if obj.layout == torch.strided else 0
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o) for o in obj.values())
    return 0


def count_ops(fn) -> int:
    return count_ops_and_bytes(fn)[0]


def count_ops_and_bytes(fn) -> tuple[int, int]:
    """(aten ops dispatched, bytes touched by the memory-bound ones) while running ``fn``."""
    counter = _OpCounter()
    with counter:
        fn()
    count_ops_and_bytes.last_bytes_by_size = dict(counter.bytes_by_size)
    return counter.count, counter.memory_bound_bytes


def measure_op_overhead(chain: int = 200, repeats: int = 5) -> float:
    """Seconds per dispatched aten op: a chain of tiny multiplies, forward + backward, divided by its op count."""
    x = torch.ones(8, requires_grad=True)

    def run():
        y = x
        for _ in range(chain):
            y = y * 1.0001
        y.sum().backward()

    run()
    ops = count_ops(run)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / ops


@functools.lru_cache(maxsize=8)
def measure_probes(world: int = 1, allreduce: bool | None = None) -> LocalProbes:
    """Measure this machine as ``world`` processes would see it (cores // world threads each)."""
    from workbench.device import get_device
    from workbench.device.probes import measure_gemm_peak, measure_memory_bandwidth

    cores = os.cpu_count() or 1
    threads = max(cores // world, 1)
    dev = get_device("cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flops, _ = measure_gemm_peak(dev, torch.float32, sizes=(256, 512), min_time_s=0.1)
        bandwidth, _ = measure_memory_bandwidth(dev, megabytes=64, min_time_s=0.1)
        overhead = measure_op_overhead()
    finally:
        torch.set_num_threads(previous)
    busbw = latency = None
    if (allreduce if allreduce is not None else world > 1):
        from workbench.hardware.this_machine import measure_gloo_allreduce

        measured = measure_gloo_allreduce(world=max(world, 2), megabytes=4.0)
        busbw, latency = measured["busbw_bytes_s"], measured["latency_s"]
    # each process runs with `threads` threads, as probed; the memory bus is shared, as it is in the real run
    return LocalProbes(gemm_flops=flops, bandwidth=bandwidth, op_overhead_s=overhead, allreduce_busbw=busbw,
                       allreduce_latency_s=latency, threads=threads)


def count_training_ops(model: torch.nn.Module, batch_size: int, seq_len: int, vocab_size: int,
                       with_bytes: bool = False):
    """Aten ops of one forward + backward + grad-norm clip of ``model`` on random tokens (gradients are dropped);
    with ``with_bytes`` also the bytes the memory-bound ops touch, by working-set size class: ``(ops, {MiB: bytes})``."""
    x = torch.randint(0, vocab_size, (batch_size, seq_len))
    y = torch.randint(0, vocab_size, (batch_size, seq_len))
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        out = model(x, labels=y)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)

    ops, nbytes = count_ops_and_bytes(step)
    model.zero_grad(set_to_none=True)
    return (ops, count_ops_and_bytes.last_bytes_by_size) if with_bytes else ops


def predict_step_time(model_config: Any, batch_size: int, seq_len: int, grad_accum: int = 1, world: int = 1,
                      probes: LocalProbes | None = None, ops_per_micro_step: int | None = None,
                      memory_bound_bytes: int | dict | None = None, optimizer_ops: int = 30) -> dict[str, Any]:
    """Predicted seconds per optimizer step of ``workbench train`` on this CPU, with the simulator's breakdown.

    ``ops_per_micro_step`` is the aten-op count of one forward + backward (``count_training_ops``); without it the
    simulator's default of ``kernels_per_layer`` ops per layer is used. ``memory_bound_bytes`` (the bytes the
    non-GEMM ops of one micro-step touch, also counted there; a number, or {working-set MiB: bytes}) replaces the
    simulator's analytic elementwise estimate, which is written for fused accelerator kernels, by ``bytes /
    bandwidth`` (per size class with ``probes.bandwidth_by_mb``). The optimizer streams at ``probes.bandwidth``.
    """
    from workbench.perfmodel.shapes import shape_from_config
    from workbench.perfmodel.simulator import evaluate
    from workbench.perfmodel.spec import parse_spec

    probes = probes or measure_probes(world)
    shape = shape_from_config(model_config)
    eff = dict(CPU_EFFICIENCY, kernel_overhead_s=probes.op_overhead_s)
    if ops_per_micro_step:
        eff["kernels_per_layer"] = ops_per_micro_step / (3.0 * shape.layers)  # the simulator counts fwd x 3
    # fixed per-step work outside the micro-steps: optimizer kernels, zero_grad, scheduler, loss.item()
    eff["step_overhead_s"] = optimizer_ops * probes.op_overhead_s
    chip = {"chip": f"this machine ({world} process{'es' if world > 1 else ''})", "fp32_tflops": probes.gemm_flops / 1e12,
            "hbm_tb_s": probes.bandwidth / 1e12, "hbm_gb": 1e6, "confidence": "measured",
            "source": "workbench.perfmodel.local probes"}
    if probes.allreduce_busbw:
        chip["scale_up_busbw_gb_s"] = probes.allreduce_busbw / 1e9
    spec = parse_spec({
        "model": shape, "seq_len": seq_len, "global_batch": batch_size * grad_accum * world, "micro_batch": batch_size,
        "precision": "fp32", "cluster": {"chip": chip, "count": world, "chips_per_node": world},
        "layout": {"tp": 1, "pp": 1, "dp": world, "zero": 0, "recompute": "none"}, "efficiency": eff,
    })
    if probes.allreduce_latency_s is not None:
        spec = spec.__class__(**{**spec.__dict__, "efficiency": spec.efficiency.replace(alpha_up_s=probes.allreduce_latency_s)})
    if memory_bound_bytes is not None:
        spec = spec.__class__(**{**spec.__dict__, "efficiency": spec.efficiency.replace(elementwise_factor=0.0)})
    ev = evaluate(spec, spec.layout, batch_size)
    if memory_bound_bytes is not None:  # counted traffic of the unfused eager ops, at the measured bandwidth
        if isinstance(memory_bound_bytes, dict):  # by size class, each at the bandwidth measured at that size
            curve = probes.bandwidth_by_mb or {}
            extra = grad_accum * sum(b / curve.get(mb, probes.bandwidth) for mb, b in memory_bound_bytes.items())
        else:
            extra = grad_accum * memory_bound_bytes / probes.bandwidth
        ev.breakdown_compute["elementwise"] += extra
        ev.breakdown["compute"] += extra
        ev.step_time_s += extra
    return {"step_time_s": ev.step_time_s, "breakdown": ev.breakdown, "breakdown_compute": ev.breakdown_compute,
            "probes": probes.__dict__, "world": world, "tokens_per_step": batch_size * seq_len * grad_accum * world}
