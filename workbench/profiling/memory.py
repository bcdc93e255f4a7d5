"""Memory during the profiled steps: the peak allocated, and a timeline where the backend can give one.

Two sources, always labelled:
- the profiler's allocator events (``profile_memory=True``): every allocation and free with the running total
  ("Total Allocated"), on CPU (torch's CPU allocator) and on devices whose profiler records them (CUDA, NPU);
- on CPU, a background thread sampling the process RSS from /proc (``RssSampler``): what the OS sees, including
  memory torch's allocator does not track (Python objects, libraries, the allocator's cache).
The device layer's ``memory_stats()`` gives the peak the backend tracks (the caching allocator's peak on
accelerators; the process's lifetime RSS peak on CPU). Used by notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

import os
import threading
import time

from workbench.profiling.trace import Trace

# torch.profiler's DeviceType numbering for the "Device Type" arg of [memory] events (c10/core/DeviceType.h).
_DEVICE_TYPE_NAMES = {0: "cpu", 1: "cuda", 12: "xpu", 13: "mps", 20: "privateuse1 (npu)"}


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Sample this process's resident set size every ``interval_ms`` in a daemon thread, as a context manager.

    ``samples`` holds (time.perf_counter() seconds, bytes). Linux only (/proc); elsewhere it records nothing.
    """

    def __init__(self, interval_ms: float = 2.0):
        if interval_ms <= 0:
            raise ValueError(f"RssSampler interval_ms must be > 0, got {interval_ms}")
        self.interval_s = interval_ms / 1e3
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None:
                self.samples.append((time.perf_counter(), rss))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="workbench-rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        rss = _rss_bytes()
        if rss is not None:
            self.samples.append((time.perf_counter(), rss))


def allocator_timeline(trace: Trace) -> dict | None:
    """The profiler's running "Total Allocated" for the main device of the trace (an accelerator if it has
    events, else cpu), as milliseconds from the first event and MB; None when the trace has no memory events."""
    if not trace.memory:
        return None
    device_types = {m.device_type for m in trace.memory}
    device = max(device_types) if device_types - {0} else 0  # prefer the accelerator's allocator
    points = [m for m in trace.memory if m.device_type == device]
    t0 = trace.steps[0].ts if trace.steps else points[0].ts
    source = f"profiler allocator events ({_DEVICE_TYPE_NAMES.get(device, f'device type {device}')})"
    if device == 0:  # torch's CPU reporter only sees allocations made while it records
        source += ": net bytes allocated while recording; tensors alive before it (weights, optimizer state) excluded"
    return {
        "source": source,
        "t_ms": [(m.ts - t0) / 1e3 for m in points],
        "mb": [m.total_allocated / 1e6 for m in points],
        "peak_mb": max(m.total_allocated for m in points) / 1e6,
    }


def rss_timeline(samples: list[tuple[float, int]], t0: float | None = None) -> dict | None:
    """RSS samples (perf_counter seconds, bytes) as milliseconds from ``t0`` (default: the first sample) and MB."""
    if not samples:
        return None
    t0 = samples[0][0] if t0 is None else t0
    return {
        "source": "process RSS sampled from /proc/self/statm (cpu)",
        "t_ms": [(t - t0) * 1e3 for t, _ in samples],
        "mb": [b / 1e6 for _, b in samples],
        "peak_mb": max(b for _, b in samples) / 1e6,
    }


def memory_summary(trace: Trace, rss_samples: list[tuple[float, int]] | None, device_stats: dict | None,
                   rss_t0: float | None = None) -> dict:
    """Peak figures with their sources, and the timelines that exist (allocator events, RSS samples)."""
    timelines = {}
    allocator = allocator_timeline(trace)
    if allocator is not None:
        timelines["allocator"] = allocator
    rss = rss_timeline(rss_samples or [], rss_t0)
    if rss is not None:
        timelines["rss"] = rss
    stats = device_stats or {}
    peak_bytes = stats.get("peak_bytes")
    return {
        "peak_allocated_mb": allocator["peak_mb"] if allocator else None,
        "peak_allocated_source": allocator["source"] if allocator else "no allocator events in the trace",
        "device_peak_mb": peak_bytes / 1e6 if peak_bytes else None,
        "device_peak_source": stats.get("source", "not available"),
        "timelines": timelines,
    }
