"""Step-time breakdown: data / forward / backward / optimizer / communication / other, per training step.

The phases come from ``record_function`` ranges the trainer (or any step function) opens: ``workbench/data``,
``workbench/forward``, ``workbench/backward``, ``workbench/optimizer``; the step is the profiler's ``ProfilerStep#N``.
On a device with a kernel timeline (CUDA, NPU) the device-side copies of those ranges are used when present.

Communication is split in two, from the trace alone:
- *overlapped*: time when a communication event runs while compute runs on another thread or stream (DDP on CPU
  runs gloo collectives on gloo's own threads; NCCL/HCCL run on their own streams);
- *exposed*: the rest, time the step waits on communication.
Exposed communication is taken out of the phase it happens in, so the rows data + forward + backward + optimizer +
communication (exposed) + other add up to the step time; overlapped communication is reported beside them, since it
costs no step time. Used by ``workbench.profiling.analysis`` and notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

from workbench.profiling import intervals as iv
from workbench.profiling.trace import DEVICE_ANNOTATION_CATS, OP_CATS, PHASE_PREFIX, Trace, TraceEvent, is_structural

PHASES = ("data", "forward", "backward", "optimizer")


def step_window(trace: Trace) -> tuple[tuple[float, float], int, float]:
    """(window covering the active steps, number of steps, mean step time in us). Without ``ProfilerStep`` ranges the
    whole trace counts as one step."""
    steps = trace.steps
    if steps:
        return (steps[0].ts, steps[-1].end), len(steps), sum(s.dur for s in steps) / len(steps)
    if not trace.events:
        return (0.0, 0.0), 1, 0.0
    start = min(e.ts for e in trace.events)
    end = max(e.end for e in trace.events)
    return (start, end), 1, end - start


def phase_intervals(trace: Trace, phase: str) -> list[iv.Interval]:
    """Where ``workbench/<phase>`` ran: its device-side ranges if the trace has them, else the host ranges."""
    name = PHASE_PREFIX + phase
    ranges = [e for e in trace.events if e.name == name]
    device = [e for e in ranges if e.cat in DEVICE_ANNOTATION_CATS]
    chosen = device or [e for e in ranges if e.cat not in DEVICE_ANNOTATION_CATS]
    return iv.union((e.ts, e.end) for e in chosen)


def _compute_events(trace: Trace) -> list[TraceEvent]:
    """Outermost compute work per thread/stream: device kernels when there are any, else top-level host ops."""
    if trace.has_device_kernels:
        return [e for e in trace.events if e.is_device and e.category != "communication"]
    return [e for e in trace.events
            if e.cat == "cpu_op" and e.category != "communication" and not is_structural(e)
            and (e.parent is None or e.parent.cat != "cpu_op")]


def _comm_events(trace: Trace) -> list[TraceEvent]:
    """Communication as it runs: device comm kernels when there are any, else every host comm event (gloo's
    worker-thread ranges and the c10d ops that enqueue them)."""
    if trace.has_device_kernels:
        device = [e for e in trace.events if e.is_device and e.category == "communication"]
        if device:
            return device
    return [e for e in trace.events if e.cat in OP_CATS and e.category == "communication"]


def communication_split(trace: Trace, window: iv.Interval | None = None) -> dict:
    """Communication time in ``window`` (default: the active steps), split into overlapped and exposed, in us."""
    window = window or step_window(trace)[0]
    comm, compute = _comm_events(trace), _compute_events(trace)
    comm_all = iv.clip([(e.ts, e.end) for e in comm], window)
    overlapped: list[iv.Interval] = []
    for thread in {e.thread for e in comm}:
        mine = [(e.ts, e.end) for e in comm if e.thread == thread]
        others = [(e.ts, e.end) for e in compute if e.thread != thread]
        overlapped += iv.intersect(mine, others)
    overlapped = iv.clip(overlapped, window)
    return {
        "total_us": iv.total(comm_all),
        "overlapped_us": iv.total(overlapped),
        "exposed_intervals": _subtract(comm_all, overlapped),
    }


def _subtract(a: list[iv.Interval], b: list[iv.Interval]) -> list[iv.Interval]:
    """Parts of ``a`` not covered by ``b``."""
    out = []
    b = iv.union(b)
    for start, end in iv.union(a):
        cursor = start
        for bs, be in b:
            if be <= cursor or bs >= end:
                continue
            if bs > cursor:
                out.append((cursor, bs))
            cursor = max(cursor, be)
        if cursor < end:
            out.append((cursor, end))
    return out


def step_breakdown(trace: Trace) -> dict:
    """Per-step milliseconds of each phase, exposed and overlapped communication, and what is left ("other").

    Returns {"step_ms", "n_steps", "rows": [{"phase", "ms", "share"}], "communication": {...}, "source"}. The rows
    add up to ``step_ms``.
    """
    window, n_steps, step_us = step_window(trace)
    comm = communication_split(trace, window)
    exposed = comm["exposed_intervals"]
    rows, accounted_us = [], 0.0
    for phase in PHASES:
        ranges = iv.clip(phase_intervals(trace, phase), window)
        phase_us = iv.total(ranges) - iv.total(iv.intersect(ranges, exposed))
        rows.append({"phase": phase, "us": phase_us})
        accounted_us += phase_us
    exposed_us = iv.total(exposed)
    rows.append({"phase": "communication (exposed)", "us": exposed_us})
    accounted_us += exposed_us
    total_us = step_us * n_steps
    rows.append({"phase": "other", "us": max(0.0, total_us - accounted_us)})
    for row in rows:
        row["ms"] = row.pop("us") / n_steps / 1e3
        row["share"] = row["ms"] / (step_us / 1e3) if step_us else 0.0
    device_ranges = any(e.cat in DEVICE_ANNOTATION_CATS for e in trace.events)
    return {
        "step_ms": step_us / 1e3,
        "n_steps": n_steps,
        "rows": rows,
        "communication": {
            "total_ms": comm["total_us"] / n_steps / 1e3,
            "overlapped_ms": comm["overlapped_us"] / n_steps / 1e3,
            "exposed_ms": exposed_us / n_steps / 1e3,
        },
        "source": ("device-side workbench/* ranges" if device_ranges else "host workbench/* ranges")
        + "; step = ProfilerStep#N; communication overlap from the trace's threads/streams",
    }
