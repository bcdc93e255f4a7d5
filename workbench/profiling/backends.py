"""Which profiler runs on which device: torch.profiler on CPU/CUDA/XPU, torch_npu.profiler on Ascend NPUs.

Both expose the same shape of API (``profile(activities, schedule, on_trace_ready, record_shapes, profile_memory,
with_flops, ...)``, ``schedule(wait, warmup, active, repeat)``, ``prof.step()``); what differs is the module, the
activity list and how the trace reaches disk. torch_npu is reached only through the device layer's guarded import.
The NPU path is tested with a fake ``torch_npu.profiler`` module (tests/test_profiling_session.py); it has not run
on Ascend hardware. Used by ``workbench.profiling.session``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.device.detect import DeviceUnavailableError, _import_torch_npu


@dataclass
class ProfilerBackend:
    """A profiler module plus the activities to record for one device type."""

    name: str  # "torch.profiler" or "torch_npu.profiler"
    module: Any
    activities: list
    writes_trace_dir: bool  # True: trace comes from tensorboard_trace_handler(dir); False: export_chrome_trace


def profiler_backend(device_type: str) -> ProfilerBackend:
    """The profiler for ``device_type`` ("cpu", "cuda", "npu", "xpu", ...); raises if it cannot be had here."""
    if device_type == "npu":
        torch_npu, reason = _import_torch_npu()
        if torch_npu is None:
            raise DeviceUnavailableError(f"cannot profile on npu: {reason}")
        module = torch_npu.profiler
        activity = module.ProfilerActivity
        return ProfilerBackend("torch_npu.profiler", module, [activity.CPU, activity.NPU], writes_trace_dir=True)

    import torch.profiler as module

    activity = module.ProfilerActivity
    activities = [activity.CPU]
    device_activity = {"cuda": "CUDA", "xpu": "XPU"}.get(device_type)
    if device_type not in ("cpu", "mps") and device_activity is None:
        device_activity = "PrivateUse1"  # other torch.accelerator plug-ins register as PrivateUse1
    if device_activity is not None and hasattr(activity, device_activity):
        activities.append(getattr(activity, device_activity))
    return ProfilerBackend("torch.profiler", module, activities, writes_trace_dir=False)
