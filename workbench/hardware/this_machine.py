""""This machine" as a catalog chip, built from the device layer's measured probes.

``this_machine()`` asks ``workbench.device`` for the peak FLOP/s (a GEMM probe on CPUs and uncatalogued chips) and the
memory bandwidth (a copy probe), and optionally measures a gloo all-reduce between two local processes on loopback
(the "interconnect" of a CPU DDP run). The result is a ``Chip`` the simulator accepts like any catalog chip, with
every probed number's source saying "measured"; figures taken from the catalog (a known accelerator's bf16/fp8
peaks) keep the catalog's source and confidence. Used by ``workbench.perfmodel.local`` (CPU step-time prediction)
and the roofline in notebooks/05_hardware_comparison.ipynb.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

from workbench.errors import ConfigError
from workbench.hardware.catalog import Chip


def _allreduce_worker(rank: int, world: int, port: int, megabytes: float, out_path: str) -> None:
    """One rank: time a large all-reduce (bandwidth) and a 4-byte one (latency) with gloo on loopback."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        big = torch.ones(int(megabytes * 2**20 // 4))
        tiny = torch.ones(1)
        for _ in range(2):  # warm-up: connections, buffers
            dist.all_reduce(big)
            dist.all_reduce(tiny)
        reps = 5
        dist.barrier()
        start = time.perf_counter()
        for _ in range(reps):
            dist.all_reduce(big)
        big_s = (time.perf_counter() - start) / reps
        start = time.perf_counter()
        for _ in range(20):
            dist.all_reduce(tiny)
        tiny_s = (time.perf_counter() - start) / 20
        if rank == 0:
            with open(out_path, "w") as f:
                f.write(f"{big_s} {tiny_s} {big.numel() * 4}")
    finally:
        dist.destroy_process_group()


@functools.lru_cache(maxsize=4)
def measure_gloo_allreduce(world: int = 2, megabytes: float = 16.0) -> dict:
    """Bus bandwidth (bytes/s, nccl-tests convention) and latency (s) of a gloo all-reduce among ``world`` local
    processes on loopback. Takes a few seconds (process start-up dominates); cached per process.

    ``world`` must be at least 2: one process has no all-reduce to time, and its busbw factor 2(p-1)/p and
    per-hop latency are undefined (it divided by zero)."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 2:
        raise ConfigError(f"measure_gloo_allreduce: world = {world!r} must be an integer of at least 2 processes "
                          f"(an all-reduce among fewer has no bandwidth to measure)")
    import torch.multiprocessing as mp

    from workbench.distributed.launcher import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "allreduce.txt")
        mp.start_processes(_allreduce_worker, args=(world, free_port(), megabytes, out), nprocs=world,
                           join=True, start_method="spawn")
        big_s, tiny_s, nbytes = (float(x) for x in open(out).read().split())
    factor = 2 * (world - 1) / world  # ring all-reduce: busbw = algbw * 2(p-1)/p
    # Subtract the latency part so the bandwidth is the beta of the alpha-beta model.
    beta_s = max(big_s - tiny_s, 1e-9)  # a 4-byte all-reduce is all latency
    return {"busbw_bytes_s": nbytes / beta_s * factor, "latency_s": tiny_s / (2 * (world - 1)), "world": world,
            "megabytes": megabytes, "source": f"measured: gloo all-reduce of {megabytes:g} MB, {world} processes"}


# Figures a catalogued accelerator takes from its catalog row rather than from a probe here.
CATALOG_FIELDS = ("bf16_dense_tflops", "fp8_dense_tflops", "measured_gemm_tflops")


def _catalog_notes(entry: Chip | None) -> list[tuple[str, str, str]]:
    """The catalog's own source and confidence for each figure taken from ``entry``.

    Without them those figures fell back to the chip-level "measured" label, and the simulator reads a "measured"
    peak as an achieved GEMM rate: it skipped gemm_eff_max and priced GEMMs at 100% of the datasheet peak."""
    if entry is None:
        return []
    return [(f, entry.field_source(f).source, entry.field_source(f).confidence)
            for f in CATALOG_FIELDS if getattr(entry, f) is not None]


def this_machine(device: str = "cpu", measure_allreduce: bool = False, allreduce_busbw_gb_s: float | None = None,
                 allow_probe: bool = True, quick: bool = False, register: bool = False) -> Chip:
    """This machine's ``device`` as a Chip: measured fp32 peak and memory bandwidth, plus (optionally) the gloo
    all-reduce bus bandwidth of local processes as its "scale-up" link. For an accelerator the catalog's bf16/fp8
    peaks (and measured GEMM rate) are kept when the chip is known, with the catalog's sources. ``quick`` runs the
    device layer's probes at small sizes (~1 s, not cached) instead of asking for the cached full-size ones.
    ``register`` adds it to the catalog lookups (``find_chip("this machine")``, simulator specs) for the rest of the
    process."""
    import torch

    from workbench.device import PeakEstimate, get_device
    from workbench.device.probes import measure_gemm_peak, measure_memory_bandwidth

    dev = get_device(device)
    if quick:
        flops, how = measure_gemm_peak(dev, torch.float32, sizes=(256, 512), min_time_s=0.05)
        fp32 = PeakEstimate(flops, how + " (quick)")
        bytes_s, how = measure_memory_bandwidth(dev, megabytes=64, min_time_s=0.05)
        bw = PeakEstimate(bytes_s, how + " (quick)")
    else:
        fp32 = dev.peak_flops(torch.float32, allow_probe=allow_probe)
        bw = dev.memory_bandwidth(allow_probe=allow_probe)
    entry = dev.catalog_entry()
    total = dev.total_memory_bytes()
    notes = [("fp32_tflops", fp32.source, "measured" if fp32.source.startswith("measured") else "medium"),
             ("hbm_tb_s", bw.source, "measured" if bw.source.startswith("measured") else "medium")]
    notes += _catalog_notes(entry)
    busbw = allreduce_busbw_gb_s
    if busbw is None and measure_allreduce:
        measured = measure_gloo_allreduce()
        busbw = measured["busbw_bytes_s"] / 1e9
        notes.append(("scale_up_busbw_gb_s", measured["source"], "measured"))
    elif busbw is not None:
        notes.append(("scale_up_busbw_gb_s", "user-supplied", "user"))
    chip = Chip(
        chip=f"this machine ({dev.type}: {dev.name})", vendor="local",
        bf16_dense_tflops=entry.bf16_dense_tflops if entry else None,
        fp8_dense_tflops=entry.fp8_dense_tflops if entry else None,
        hbm_gb=(total / 2**30) if total else None,  # GiB, the catalog's unit (vendors' "GB" of HBM)
        hbm_tb_s=(bw.value / 1e12) if bw.value else None,
        scale_up_gb_s=None, scale_up_note="local processes over loopback (gloo)" if dev.type == "cpu" else "",
        scale_out_gb_s_per_chip=None, tdp_w=None, confidence="measured", source="workbench.device probes",
        scale_up_domain=os.cpu_count() if dev.type == "cpu" else None,
        scale_up_busbw_gb_s=busbw, fp32_tflops=(fp32.value / 1e12) if fp32.value else None,
        measured_gemm_tflops=entry.measured_gemm_tflops if entry else None,
        field_sources=tuple(notes),
    )
    if register:
        from workbench.hardware.catalog import register_chip

        register_chip(chip)
    return chip
