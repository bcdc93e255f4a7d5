"""Profile N training steps on any device with one call: ``profile_steps(step_fn, ProfileConfig(...), out_dir=...)``.

Runs ``step_fn()`` wait + warmup + active times under the device's profiler (see ``backends``) with the usual
schedule: nothing is recorded during *wait*, recording warms up during *warmup* (and is thrown away), and the
*active* steps are kept. Shapes, FLOPs and allocator events are recorded; the trace is written as Chrome/Perfetto
JSON (open it in https://ui.perfetto.dev or chrome://tracing) with each op's FLOPs added to its args.

``step_fn`` is any callable doing one training step. Label its phases with
``torch.profiler.record_function("workbench/forward")`` (also ``workbench/data``, ``workbench/backward``,
``workbench/optimizer``) to get the step breakdown; ``workbench.train.Trainer.train_step`` does.
Used by ``workbench profile`` and notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from workbench.errors import ConfigError
from workbench.profiling.backends import ProfilerBackend, profiler_backend
from workbench.profiling.memory import RssSampler
from workbench.profiling.trace import Trace, annotate_flops, load_trace, read_trace_json

MEMORY_TIMELINES = ("auto", "profiler", "rss", "both", "off")
TRACE_NAME = "trace.json"


@dataclass
class ProfileConfig:
    """How many steps to skip, warm up and record, and what to record.

    ``memory_timeline``: "profiler" (allocator events, ``profile_memory``), "rss" (sample the process RSS; CPU,
    Linux), "both", "off", or "auto" (allocator events everywhere, plus RSS on CPU).
    """

    wait: int = 1
    warmup: int = 1
    active: int = 3
    record_shapes: bool = True
    with_flops: bool = True
    with_stack: bool = False
    memory_timeline: str = "auto"
    rss_interval_ms: float = 2.0

    def __post_init__(self):
        for name in ("wait", "warmup"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"ProfileConfig.{name} = {value!r}: use an integer >= 0")
        if not isinstance(self.active, int) or self.active < 1:
            raise ConfigError(f"ProfileConfig.active = {self.active!r}: record at least 1 step (e.g. active=3)")
        if self.memory_timeline not in MEMORY_TIMELINES:
            raise ConfigError(f"ProfileConfig.memory_timeline = {self.memory_timeline!r}: choose one of "
                              f"{', '.join(MEMORY_TIMELINES)}")
        if self.rss_interval_ms <= 0:
            raise ConfigError(f"ProfileConfig.rss_interval_ms = {self.rss_interval_ms}: use a positive interval, "
                              "e.g. 2.0")

    @property
    def total_steps(self) -> int:
        return self.wait + self.warmup + self.active

    def wants_allocator_events(self) -> bool:
        return self.memory_timeline in ("auto", "profiler", "both")

    def wants_rss(self, device_type: str) -> bool:
        return self.memory_timeline in ("rss", "both") or (self.memory_timeline == "auto" and device_type == "cpu")


@dataclass
class ProfileRun:
    """What one profiling run produced: the trace (on disk and parsed) and the side measurements."""

    trace: Trace
    trace_path: Path
    device_type: str
    backend: str
    config: ProfileConfig
    step_wall_s: list[float]  # every step's wall time (synchronised), wait and warmup included
    memory_stats: dict
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    active_start_s: float | None = None  # perf_counter at the start of the first active step (RSS time zero)

    @property
    def active_wall_s(self) -> list[float]:
        return self.step_wall_s[-self.config.active:]

    def describe(self) -> dict:
        return {"device_type": self.device_type, "backend": self.backend, "trace_path": str(self.trace_path),
                "config": asdict(self.config), "active_steps": self.config.active,
                "active_wall_ms": [s * 1e3 for s in self.active_wall_s]}


def _torch_trace_handler(destination: Path, with_flops: bool) -> Callable:
    """on_trace_ready for torch.profiler: export the Chrome trace, then add each op's FLOPs to its args."""

    def handler(prof) -> None:
        prof.export_chrome_trace(str(destination))
        if not with_flops:
            return
        # FunctionEvent.id is the trace's "External id"; torch's exporter leaves FLOPs out, so put them back.
        flops = {e.id: e.flops for e in prof.events() if getattr(e, "flops", 0)}
        trace = read_trace_json(destination)
        if annotate_flops(trace, flops):
            destination.write_text(json.dumps(trace), encoding="utf-8")

    return handler


def _collect_npu_trace(raw_dir: Path, destination: Path) -> None:
    """torch_npu's tensorboard_trace_handler writes <raw_dir>/<run>/ASCEND_PROFILER_OUTPUT/trace_view.json."""
    found = sorted(glob.glob(str(raw_dir / "**" / "trace_view.json"), recursive=True), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"torch_npu.profiler wrote no trace_view.json under {raw_dir}; check that its "
                                "offline analysis ran (it needs the CANN toolkit's msprof)")
    shutil.copyfile(found[-1], destination)


def profile_steps(step_fn: Callable[[], Any], config: ProfileConfig | None = None, *, device=None,
                  out_dir: str | os.PathLike | None = None) -> ProfileRun:
    """Run ``step_fn`` ``config.total_steps`` times under the profiler and return the parsed result.

    ``device``: a ``workbench.device.Device`` (default: ``get_device()``), used to pick the profiler and to
    synchronise at each step end, so step times are real on asynchronous devices. The trace is written to
    ``out_dir/trace.json`` (default: a new temporary folder).
    """
    if not callable(step_fn):
        raise TypeError(f"step_fn must be a callable doing one training step, got {type(step_fn).__name__}")
    config = config or ProfileConfig()
    if device is None:
        from workbench.device import get_device

        device = get_device()
    backend: ProfilerBackend = profiler_backend(device.type)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="workbench-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    trace_path = out / TRACE_NAME
    if trace_path.exists():
        trace_path.unlink()  # never analyse a stale trace from an earlier run
    prof_mod = backend.module
    with warnings.catch_warnings():  # warmup=0 is the user's informed choice (ProfileConfig documents its cost)
        warnings.filterwarnings("ignore", message="Profiler won't be using warmup")
        schedule = prof_mod.schedule(wait=config.wait, warmup=config.warmup, active=config.active, repeat=1)
    if backend.writes_trace_dir:
        raw_dir = out / "raw"
        # torch_npu's analysis writes into a new dated <worker>_<time>_ascend_pt folder here; an earlier run's
        # would be picked up as this run's trace when this one's analysis wrote none. Only those folders go.
        for earlier in raw_dir.glob("*_ascend_pt"):
            shutil.rmtree(earlier, ignore_errors=True)
        on_trace_ready = prof_mod.tensorboard_trace_handler(str(raw_dir))
    else:
        on_trace_ready = _torch_trace_handler(trace_path, config.with_flops)

    sampler = RssSampler(config.rss_interval_ms) if config.wants_rss(device.type) else None
    step_wall_s: list[float] = []
    active_start = None
    sampling = False
    device.reset_peak_memory()
    try:
        with prof_mod.profile(activities=backend.activities, schedule=schedule, on_trace_ready=on_trace_ready,
                              record_shapes=config.record_shapes, profile_memory=config.wants_allocator_events(),
                              with_stack=config.with_stack, with_flops=config.with_flops) as prof:
            for step in range(config.total_steps):
                if step == config.wait + config.warmup:
                    active_start = time.perf_counter()
                    if sampler is not None:
                        sampler.__enter__()  # sample RSS over the active steps only
                        sampling = True
                start = time.perf_counter()
                step_fn()
                device.synchronize()
                step_wall_s.append(time.perf_counter() - start)
                if step == config.total_steps - 1 and sampling:
                    # before the last prof.step(): it exports the trace (seconds, memory) inside the window
                    sampler.__exit__(None, None, None)
                    sampling = False
                prof.step()
    finally:
        if sampling:
            sampler.__exit__(None, None, None)  # never leave the sampling thread running, even if a step failed
    if backend.writes_trace_dir:
        _collect_npu_trace(out / "raw", trace_path)
    if not trace_path.exists():
        raise RuntimeError(f"{backend.name} produced no trace at {trace_path}")
    return ProfileRun(trace=load_trace(trace_path), trace_path=trace_path, device_type=device.type,
                      backend=backend.name, config=config, step_wall_s=step_wall_s,
                      memory_stats=device.memory_stats(), rss_samples=list(sampler.samples) if sampler else [],
                      active_start_s=active_start)
