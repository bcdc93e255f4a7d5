"""Peak FLOP/s and memory bandwidth: from the hardware catalog when the chip is known, else measured here.

The probes are short (a few seconds): a square GEMM of growing size, best of a few repeats, and a large tensor copy.
Results are cached per machine (CPU/GPU model, thread count, torch version) in ``$WORKBENCH_CACHE_DIR`` or
``~/.cache/workbench/probes.json`` so MFU figures do not pay for them twice. Used by ``workbench info``, the trainer's
MFU, the kernel roofline (notebooks/02_kernels.ipynb) and the hardware comparison (notebooks/05).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workbench.cache_dir import cache_dir

if TYPE_CHECKING:
    from workbench.device.detect import Device


@dataclass(frozen=True)
class PeakEstimate:
    """A peak figure (FLOP/s or bytes/s) with where it came from. ``value`` is None when unknown."""

    value: float | None
    source: str  # e.g. "catalog: NVIDIA H100 SXM (datasheet, dense bf16)" or "measured: fp32 GEMM probe 2048^3"

    def as_dict(self) -> dict:
        return asdict(self)


def cache_path() -> Path:
    return cache_dir() / "probes.json"


def _machine_key(device: "Device", what: str) -> str:
    return f"{what}|{device.type}|{device.name}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def _read_cache() -> dict:
    """The cached probe results; a missing, unreadable or damaged cache (not a JSON object, or entries without a
    positive finite value and a detail) reads as empty or loses those entries: it only costs a re-probe."""
    try:
        entries = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {key: hit for key, hit in entries.items() if _usable(hit)}


def _usable(hit) -> bool:
    if not isinstance(hit, dict) or not isinstance(hit.get("detail"), str):
        return False
    value = hit.get("value")
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def _write_cache(entries: dict) -> None:
    """Atomic write so two processes probing at once never leave a half-written file."""
    from workbench.results import write_json_atomic

    try:
        write_json_atomic(cache_path(), entries)
    except OSError:
        pass  # a read-only home only costs a re-probe next time


def _cached(key: str, measure) -> tuple[float, str]:
    entries = _read_cache()
    if key in entries:
        hit = entries[key]
        return float(hit["value"]), hit["detail"] + f" (cached {hit.get('when', '?')})"
    value, detail = measure()
    with _cache_lock():  # read-modify-write under a lock: concurrent probes (ranks, notebooks) kept only their own
        entries = _read_cache()  # re-read: another process may have written meanwhile
        entries[key] = {"value": value, "detail": detail, "when": time.strftime("%Y-%m-%d")}
        _write_cache(entries)
    return value, detail


@contextlib.contextmanager
def _cache_lock():
    """An flock on ``probes.json.lock`` beside the cache; without fcntl (Windows) or a writable folder, no lock."""
    try:
        import fcntl

        cache_path().parent.mkdir(parents=True, exist_ok=True)
        handle = open(cache_path().with_suffix(".json.lock"), "a")
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing drops the lock


# --------------------------------------------------------------------------------------------------------------
# GEMM probe
# --------------------------------------------------------------------------------------------------------------
def measure_gemm_peak(device: "Device", dtype: torch.dtype = torch.float32, sizes=(512, 1024, 2048),
                      min_time_s: float = 0.25) -> tuple[float, str]:
    """Best achieved FLOP/s of a square ``n x n @ n x n`` matmul over ``sizes``. Returns (flop/s, description)."""
    from workbench.device.detect import dtype_name

    best, best_n = 0.0, 0
    for n in sizes:
        a = torch.randn(n, n, device=device.torch_device, dtype=dtype)
        b = torch.randn(n, n, device=device.torch_device, dtype=dtype)
        out = torch.empty(n, n, device=device.torch_device, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up (allocations, kernel selection)
        device.synchronize()
        reps, elapsed = 0, 0.0
        start = time.perf_counter()
        while elapsed < min_time_s or reps < 3:
            torch.mm(a, b, out=out)
            reps += 1
            device.synchronize()
            elapsed = time.perf_counter() - start
        flops = 2.0 * n**3 * reps / elapsed
        if flops > best:
            best, best_n = flops, n
        # On slow devices larger sizes add seconds and no information.
        if elapsed > 4 * min_time_s and reps <= 3:
            break
    return best, f"measured: {dtype_name(dtype)} GEMM probe, best at n={best_n}"


BF16_PROBE_ROUNDS = 3


def measure_bf16_speedup(device: "Device") -> float:
    """bf16 / fp32 GEMM throughput on this device (n=512), cached per machine: the best of each over
    ``BF16_PROBE_ROUNDS`` alternating rounds (~0.1 s each). One pair of runs on a shared machine gave ratios from
    0.26 to 2.65 here, and a lucky one switched training to bf16, 2x slower than fp32 on this CPU, for good;
    interleaving puts both dtypes under the same load and the best of each drops the disturbed runs."""

    def measure():
        fp32 = bf16 = 0.0
        for _ in range(BF16_PROBE_ROUNDS):
            fp32 = max(fp32, measure_gemm_peak(device, torch.float32, sizes=(512,), min_time_s=0.1)[0])
            bf16 = max(bf16, measure_gemm_peak(device, torch.bfloat16, sizes=(512,), min_time_s=0.1)[0])
        return bf16 / fp32, f"measured: bf16/fp32 GEMM throughput at n=512, best of {BF16_PROBE_ROUNDS} rounds"

    value, _ = _cached(_machine_key(device, "bf16-speedup"), measure)
    return value


def measure_memory_bandwidth(device: "Device", megabytes: int = 256, min_time_s: float = 0.25) -> tuple[float, str]:
    """Achieved copy bandwidth (bytes read + written per second) of a ``megabytes`` fp32 tensor."""
    numel = megabytes * 2**20 // 4
    src = torch.ones(numel, device=device.torch_device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    device.synchronize()
    reps, elapsed = 0, 0.0
    start = time.perf_counter()
    while elapsed < min_time_s or reps < 3:
        dst.copy_(src)
        reps += 1
        device.synchronize()
        elapsed = time.perf_counter() - start
    moved = 2.0 * src.numel() * src.element_size() * reps  # each copy reads and writes the tensor once
    return moved / elapsed, f"measured: {megabytes} MB copy probe"


# --------------------------------------------------------------------------------------------------------------
# catalog first, probe otherwise
# --------------------------------------------------------------------------------------------------------------
def peak_flops_for(device: "Device", dtype: torch.dtype, allow_probe: bool = True) -> PeakEstimate:
    from workbench.device.detect import dtype_name

    entry = device.catalog_entry()
    if entry is not None:
        value = entry.peak_flops(dtype_name(dtype))
        if value is not None:
            return PeakEstimate(value, f"catalog: {entry.chip} ({entry.source}; dense {dtype_name(dtype)})")
    if not allow_probe:
        return PeakEstimate(None, "unknown: chip not in catalog and probing disabled")
    value, detail = _cached(_machine_key(device, f"gemm-{dtype_name(dtype)}"),
                            lambda: measure_gemm_peak(device, dtype))
    return PeakEstimate(value, detail)


def bandwidth_for(device: "Device", allow_probe: bool = True) -> PeakEstimate:
    entry = device.catalog_entry()
    if entry is not None and entry.hbm_tb_s:
        return PeakEstimate(entry.hbm_tb_s * 1e12, f"catalog: {entry.chip} ({entry.source})")
    if not allow_probe:
        return PeakEstimate(None, "unknown: chip not in catalog and probing disabled")
    value, detail = _cached(_machine_key(device, "copy-bandwidth"), lambda: measure_memory_bandwidth(device))
    return PeakEstimate(value, detail)
