"""Chrome/Perfetto trace JSON -> plain events with nesting, self time and category. The analysis reads only this.

Every backend (torch.profiler on CPU/CUDA, torch_npu.profiler on NPU) writes a Chrome trace ("traceEvents" of
complete events ``ph: "X"`` with ``ts``/``dur`` in microseconds). Reading the trace, rather than a backend's
profiler object, keeps the tables, the step breakdown and the waterfall identical across devices, and lets the
tests feed hand-written traces. Self time = an event's duration minus its direct children's on the same thread,
so summing self times never counts a nested op twice. Used by notebooks/04_profiling.ipynb via ``analysis``.

torch_npu's ``trace_view.json`` differs from the CUDA layout in ways that matter here (read against Huawei's
documentation of the format and its tools' test fixtures; no trace from real Ascend hardware has been checked yet):
- it is a bare JSON array, and an interrupted export leaves it without its closing ``]``;
- ``ts`` is a string of absolute microseconds with nanosecond digits ("1699529623106750.380"): as a float it keeps
  only ~0.25 us, too coarse to nest a child that ends with its parent, so times are taken exactly, relative to the
  trace's earliest string timestamp;
- device tasks carry no ``cat``: they are the events of the process named "Ascend Hardware" (``process_name``
  metadata); collectives are the op-level events ("Communication..." threads) of the "Communication" (older:
  "HCCL") process; "Overlap Analysis", "CANN" and counter lanes are summaries or host API calls, not ops;
- a device task links to the op that launched it through an ``async_npu`` flow (start at the op, end at the task);
- FLOPs, with ``with_flops``, are written as ``flops``.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal, InvalidOperation
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from workbench.profiling.categories import categorize, categorize_name

# Event kinds. Host events nest on their thread; device events (kernels, copies) run on streams and do not nest.
HOST_CATS = {"cpu_op", "user_annotation", "python_function", "operator"}
# Host events that count as ops in the tables. Python frames (``with_stack``) only give context (which kernel
# function an op ran in); their own time is interpreter overhead, and the tracer also records unrelated threads.
OP_CATS = {"cpu_op", "user_annotation", "operator"}
DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "mtia_ccp_events"}
# Host-side launch calls (cudaLaunchKernel ...): they nest under the op that launched them, and share a
# ``correlation`` number with the kernel they launched.
RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "xpu_runtime", "privateuse1_runtime"}
DEVICE_ANNOTATION_CATS = {"gpu_user_annotation"}
STEP_PREFIX = "ProfilerStep#"
PHASE_PREFIX = "workbench/"
PHASE_NAMES = {PHASE_PREFIX + p for p in ("data", "forward", "backward", "optimizer")}
FLOPS_ARG = "FLOPs"  # written into each op's args by ``annotate_flops`` (torch's own trace does not carry them)
NPU_FLOPS_ARG = "flops"  # torch_npu's own spelling
# torch_npu's process lanes (``process_name`` metadata): device tasks, collectives, and lanes that hold no op
NPU_DEVICE_LANES = {"Ascend Hardware"}
NPU_COMMUNICATION_LANES = {"Communication", "HCCL"}
NPU_SKIPPED_LANES = {"Overlap Analysis", "CANN", "AI Core Freq", "AI Core Utilization", "NPU MEM", "Python GC",
                     "QoS", "SIO", "Voltage Info", "Memory"}
NPU_FLOW_CAT = "async_npu"  # op -> the device task it launched
COLLECTIVES_BY_NAME = "communication, by name"  # a lane of _npu_lanes: keep only events named like a collective


@dataclass
class TraceEvent:
    """One complete event of the trace. Times are microseconds; ``category`` and ``self_us`` are filled in by
    ``load_events``."""

    name: str
    cat: str
    ts: float
    dur: float
    pid: Any
    tid: Any
    args: dict = field(default_factory=dict)
    parent: "TraceEvent | None" = field(default=None, repr=False)
    self_us: float = 0.0
    category: str = "other"
    linked_op: "TraceEvent | None" = field(default=None, repr=False)  # device kernel -> the host op that launched it
    lane: str = ""  # torch_npu traces: "device" or "communication" for events of those processes

    @property
    def end(self) -> float:
        return self.ts + self.dur

    @property
    def is_device(self) -> bool:
        return self.cat in DEVICE_CATS

    @property
    def flops(self) -> float:
        return float(self.args.get(FLOPS_ARG) or self.args.get(NPU_FLOPS_ARG) or 0.0)

    @property
    def thread(self) -> tuple:
        return (self.pid, self.tid)

    def ancestors(self) -> Iterable["TraceEvent"]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


@dataclass
class MemoryEvent:
    """One allocator event from ``profile_memory``: bytes (+/-) and the running total for that device."""

    ts: float
    bytes: int
    total_allocated: int
    device_type: int


@dataclass
class Trace:
    """Everything the analysis needs from one trace file."""

    events: list[TraceEvent]
    memory: list[MemoryEvent]
    path: str | None = None

    @property
    def steps(self) -> list[TraceEvent]:
        """The ``ProfilerStep#N`` ranges (one per active step), oldest first: the host's ranges only. On CUDA the
        profiler also writes each step as a ``gpu_user_annotation`` on the device timeline; counting those too
        doubled the step count and halved every per-step number."""
        return sorted((e for e in self.events if e.name.startswith(STEP_PREFIX) and not e.is_device
                       and not e.cat.startswith("gpu_")), key=lambda e: e.ts)

    @property
    def has_device_kernels(self) -> bool:
        return any(e.is_device for e in self.events)


def read_trace_json(path: str | os.PathLike) -> dict:
    """The raw JSON of a trace file. Accepts a dict-with-traceEvents or a bare list of events (both are valid), and
    a list whose closing ``]`` is missing (torch_npu writes the array in two passes; an interrupted export leaves
    it open)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trace file {path} does not exist; run a profile first (workbench profile ...)")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        body = text.rstrip().rstrip(",")
        if not body.lstrip().startswith("["):
            raise ValueError(f"trace file {path} is not valid JSON ({exc})") from None
        try:
            data = json.loads(body + "]")
        except json.JSONDecodeError:
            raise ValueError(f"trace file {path} is not valid JSON ({exc}); if torch_npu wrote it, its export may "
                             "have been interrupted: profile again") from None
    return {"traceEvents": data} if isinstance(data, list) else data


def annotate_flops(trace: dict, flops_by_external_id: dict[int, float]) -> int:
    """Write ``FLOPs`` into the args of each op whose ``External id`` has a FLOP count. Returns how many."""
    done = 0
    for event in trace.get("traceEvents", []):
        args = event.get("args")
        if not isinstance(args, dict) or event.get("cat") not in HOST_CATS:
            continue
        flops = flops_by_external_id.get(args.get("External id"))
        if flops:
            args[FLOPS_ARG] = int(flops)
            done += 1
    return done


def load_trace(source: str | os.PathLike | dict | list) -> Trace:
    """Parse a trace (file path, or already-loaded JSON: a dict with ``traceEvents`` or a bare list of events) into
    events with parents, self time and categories."""
    if isinstance(source, list):
        raw = {"traceEvents": source}
    else:
        raw = source if isinstance(source, dict) else read_trace_json(source)
    items = [item for item in raw.get("traceEvents", []) if isinstance(item, dict)]
    lanes = _npu_lanes(items)
    # a collective shown on the hardware lane as well as on its own would count twice: its own lane wins
    collectives_have_a_lane = bool({"communication", COLLECTIVES_BY_NAME} & set(lanes.values()))
    to_us = _clock(items)
    events, memory, flows = [], [], {}
    for item in items:
        ph, name = item.get("ph"), item.get("name", "")
        if ph == "X" and "ts" in item and "dur" in item:
            cat, lane = str(item.get("cat", "")), lanes.get((item.get("pid"), item.get("tid")), "")
            collective = bool(lane) and categorize_name(str(name)) == "communication"
            if lane == "skip" or (lane == "device" and collective and collectives_have_a_lane):
                continue
            if lane == COLLECTIVES_BY_NAME:
                if not collective:
                    continue
                lane = "communication"
            if lane:  # a torch_npu device task or collective: no cat of its own
                cat = "kernel"
            events.append(TraceEvent(name=str(name), cat=cat, ts=to_us(item["ts"]), dur=max(0.0, float(item["dur"])),
                                     pid=item.get("pid"), tid=item.get("tid"), args=dict(item.get("args") or {}),
                                     lane=lane))
        elif ph in ("s", "f") and item.get("cat") == NPU_FLOW_CAT and "ts" in item:
            flows.setdefault(item.get("id"), {})[ph] = (item.get("pid"), item.get("tid"), to_us(item["ts"]))
        elif ph == "i" and name == "[memory]":
            args = item.get("args") or {}
            memory.append(MemoryEvent(ts=to_us(item["ts"]), bytes=int(args.get("Bytes", 0)),
                                      total_allocated=int(args.get("Total Allocated", 0)),
                                      device_type=int(args.get("Device Type", 0))))
    _link_nesting(events)
    _link_kernels(events)
    _link_npu_flows(events, flows)
    forward_of = _forward_ops(events)
    for event in events:
        event.category = _category_of(event, forward_of)
    memory.sort(key=lambda m: m.ts)
    return Trace(events=events, memory=memory, path=None if isinstance(source, (dict, list)) else str(source))


def _npu_lanes(items: list[dict]) -> dict[tuple, str]:
    """(pid, tid) -> "device", "communication" or "skip", for the threads of torch_npu's named processes (see the
    module docstring); threads of other processes are absent. Collectives are kept only from the op-level
    "Communication..." threads of their process (its other threads hold each collective's sub-tasks), or, when the
    process names no threads, from events named like a collective. Empty for CPU and CUDA traces."""
    process = {item.get("pid"): str((item.get("args") or {}).get("name", "")) for item in items
               if item.get("ph") == "M" and item.get("name") == "process_name"}
    if not any(name in NPU_DEVICE_LANES | NPU_COMMUNICATION_LANES for name in process.values()):
        return {}
    thread = {(item.get("pid"), item.get("tid")): str((item.get("args") or {}).get("name", "")) for item in items
              if item.get("ph") == "M" and item.get("name") == "thread_name"}
    named_comm_pids = {pid for (pid, _), name in thread.items()
                       if process.get(pid) in NPU_COMMUNICATION_LANES and name.startswith("Communication")}
    lanes: dict[tuple, str] = {}
    for item in items:
        if item.get("ph") != "X":
            continue
        key = (item.get("pid"), item.get("tid"))
        if key in lanes:
            continue
        kind = process.get(key[0], "")
        if kind in NPU_DEVICE_LANES:
            lanes[key] = "device"
        elif kind in NPU_COMMUNICATION_LANES:
            if key[0] in named_comm_pids:
                lanes[key] = "communication" if thread.get(key, "").startswith("Communication") else "skip"
            else:  # no thread names: sub-tasks (Memcpy, Notify_Wait) share the process; keep collectives by name
                lanes[key] = COLLECTIVES_BY_NAME
        elif kind in NPU_SKIPPED_LANES:
            lanes[key] = "skip"
    return lanes


def _clock(items: list[dict]):
    """ts -> float microseconds. String timestamps (torch_npu: absolute microseconds with nanosecond digits) are
    converted exactly, relative to the earliest one, so a float keeps their precision; numbers pass through."""
    strings = [item["ts"] for item in items if isinstance(item.get("ts"), str)]
    if not strings:
        return float
    try:
        origin = min(Decimal(text) for text in strings)
    except InvalidOperation:
        raise ValueError("trace has a timestamp that is not a number") from None

    def to_us(value) -> float:
        return float(Decimal(value if isinstance(value, str) else repr(value)) - origin)

    return to_us


def _link_nesting(events: list[TraceEvent]) -> None:
    """Set ``parent`` and ``self_us`` for host events, thread by thread, with a stack (events sorted by start)."""
    by_thread: dict[tuple, list[TraceEvent]] = {}
    for event in events:
        event.self_us = event.dur
        if event.cat in HOST_CATS or event.cat in RUNTIME_CATS:
            by_thread.setdefault(event.thread, []).append(event)
    eps = 1e-3  # the trace rounds to nanoseconds; a child may end a hair after its parent
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e.ts, -e.dur))
        stack: list[TraceEvent] = []
        for event in thread_events:
            while stack and stack[-1].end < event.end - eps:
                stack.pop()
            if stack:
                event.parent = stack[-1]
                stack[-1].self_us -= event.dur
            stack.append(event)
    for event in events:
        event.self_us = max(0.0, event.self_us)


def _link_kernels(events: list[TraceEvent]) -> None:
    """Point each device kernel at the host op that launched it: the op with the kernel's ``External id``, or
    failing that the op around the runtime call with the kernel's ``correlation`` number."""
    ops = {e.args.get("External id"): e for e in events if e.cat == "cpu_op" and "External id" in e.args}
    launches = {e.args.get("correlation"): e for e in events if e.cat in RUNTIME_CATS and "correlation" in e.args}
    for event in events:
        if not event.is_device:
            continue
        op = ops.get(event.args.get("External id"))
        if op is None:
            launch = launches.get(event.args.get("correlation"))
            op = launch.parent if launch is not None else None
            while op is not None and op.cat != "cpu_op":
                op = op.parent
        event.linked_op = op


def _link_npu_flows(events: list[TraceEvent], flows: dict) -> None:
    """torch_npu: point each device task at the op that launched it, through its ``async_npu`` flow. The flow
    starts at the op's (pid, tid, ts) and ends at the task's; of the ops starting at that instant on that thread
    (``aten::linear`` and the ``aten::addmm`` inside it), the innermost launched it."""
    if not flows:
        return
    ops_at: dict[tuple, TraceEvent] = {}
    for event in events:
        if event.cat == "cpu_op":
            key = (event.pid, event.tid, event.ts)
            if key not in ops_at or event.dur < ops_at[key].dur:
                ops_at[key] = event
    launcher_of = {ends["f"]: ops_at.get(ends["s"]) for ends in flows.values() if "s" in ends and "f" in ends}
    for event in events:
        if event.lane and event.linked_op is None:
            event.linked_op = launcher_of.get((event.pid, event.tid, event.ts))


# Source files whose every frame is one kind of work, whatever its functions are called: GLM-5's DSA indexer
# (scores, top-k selection) is part of sparse attention.
_FILE_CONTEXTS = {"dsa_indexer.py": "attention (DSA indexer)"}


def _label(event: TraceEvent) -> str:
    """The name to categorise by: a Python frame "path/file.py(12): attention" counts by its function name only,
    so a kernel function named ``attention`` marks its ops but a module file named attention_gqa.py does not
    (except the files of ``_FILE_CONTEXTS``). Module frames ("nn.Module: GQAttention_0") give no context: the
    projections inside an attention block are matmuls, not attention."""
    if event.cat == "python_function":
        if event.name.startswith("nn.Module:"):
            return ""
        where, _, function = event.name.rpartition(": ")
        file_name = where.rsplit("(", 1)[0].replace("\\", "/").rsplit("/", 1)[-1]
        return _FILE_CONTEXTS.get(file_name, function)
    return event.name


def _forward_ops(events: list[TraceEvent]) -> dict[int, list[TraceEvent]]:
    """Sequence number -> the outermost forward ops carrying it, oldest first.

    An op records the autograd counter as it stands, and only an op that creates a node advances it: ops that
    create none (a ``detach``, the data loader's ``lift_fresh``) carry the number of the next node, earlier in time.
    So the op that created node N is the *last* outermost op with number N before its backward ran (taking the first
    one counted the embedding's backward as data loading); ``_forward_op_of`` picks it."""
    forward: dict[int, list[TraceEvent]] = {}
    for event in sorted(events, key=lambda e: e.ts):
        seq = event.args.get("Sequence number")
        if event.cat != "cpu_op" or seq is None or "evaluate_function" in event.name:
            continue
        parent = event.parent
        if parent is not None and parent.args.get("Sequence number") == seq and "evaluate_function" not in parent.name:
            continue  # nested in an op with the same number (aten::addmm inside aten::linear): the outer one counts
        forward.setdefault(seq, []).append(event)
    return forward


def _forward_op_of(backward_node: TraceEvent, forward_of: dict[int, list[TraceEvent]]) -> TraceEvent | None:
    candidates = forward_of.get(backward_node.args.get("Sequence number"), [])
    earlier = [e for e in candidates if e.ts <= backward_node.ts]
    return earlier[-1] if earlier else None


def _context(event: TraceEvent, forward_of: dict[int, list[TraceEvent]]) -> list[str]:
    """Names enclosing ``event``, innermost first. A backward op also gets its forward op's context (linked by the
    autograd sequence number), so the backward of a reference attention is attention time too."""
    names, backward_node = [], None
    for parent in event.ancestors():
        names.append(_label(parent))
        if backward_node is None and "evaluate_function" in parent.name:
            backward_node = parent
    if backward_node is None and "evaluate_function" in event.name:
        backward_node = event
    fwd = _forward_op_of(backward_node, forward_of) if backward_node is not None else None
    if fwd is not None:
        names += [_label(fwd)] + [_label(a) for a in fwd.ancestors()]
    return names


def _category_of(event: TraceEvent, forward_of: dict[int, list[TraceEvent]]) -> str:
    if event.lane == "communication":  # torch_npu's collective lane holds nothing else
        return "communication"
    if event.is_device and event.linked_op is not None:
        op = event.linked_op
        own = categorize(event.name)  # a kernel named nccl... is communication whoever launched it
        if own == "communication":
            return own
        return categorize(_label(op), _context(op, forward_of))
    return categorize(_label(event), _context(event, forward_of))


def is_structural(event: TraceEvent) -> bool:
    """Step and phase ranges (``ProfilerStep#N``, ``workbench/forward`` ...): they frame ops but are not ops."""
    return event.name.startswith(STEP_PREFIX) or event.name in PHASE_NAMES
