"""Device detection and the ``Device`` object every other module talks to.

Detection for ``device="auto"``: what ``torch.accelerator`` reports when that device type works here, otherwise
the first available of npu, cuda, xpu, mps, cpu (NPU first, as HF accelerate does, so that
``torch_npu.contrib.transfer_to_npu`` cannot make an NPU host look like a CUDA one). ``torch.accelerator`` answers
where it applies; backend-specific calls (``torch.cuda.*``, ``torch.npu.*``) live only in this package.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

SUPPORTED_DEVICE_TYPES = ("cpu", "cuda", "npu", "xpu", "mps")
AUTO_ORDER = ("npu", "cuda", "xpu", "mps", "cpu")

# Distributed backend per device type (torch_npu registers "hccl" for npu; "xccl" is Intel's).
DIST_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl", "xpu": "xccl", "mps": "gloo"}

# The variable that chooses which devices a process sees, named when a launch asks for more than are visible.
VISIBLE_DEVICES_ENV = {"cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES", "xpu": "ZE_AFFINITY_MASK"}

# How to get a missing device, said in the error when one is asked for and is not there.
HOW_TO_GET = {
    "cuda": "install a CUDA build of torch==2.13.0 on a host with an NVIDIA GPU and driver",
    "npu": "install the `npu` extra (pip install -e '.[npu]', torch-npu==2.13.0) on an Ascend host with CANN installed",
    "xpu": "install an XPU build of torch==2.13.0 on a host with an Intel GPU",
    "mps": "run on Apple silicon with macOS 12.3+ and an arm64 build of torch",
}


class DeviceUnavailableError(RuntimeError):
    """A device was asked for that this machine cannot provide. The message says what is missing and how to fix it."""


# --------------------------------------------------------------------------------------------------------------
# torch_npu is optional and cannot be imported without Huawei's CANN toolkit; guard it and remember why it failed.
# --------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _import_torch_npu() -> tuple[Any | None, str | None]:
    """Import torch_npu if it is installed and loadable. Returns (module or None, reason it is not usable)."""
    if importlib.util.find_spec("torch_npu") is None:
        return None, "torch_npu is not installed"
    try:
        module = importlib.import_module("torch_npu")
    except Exception as exc:  # ImportError, OSError for missing CANN libraries, ...
        return None, f"torch_npu is installed but failed to import ({type(exc).__name__}: {exc}); is CANN installed?"
    return module, None


def _backend_module(device_type: str) -> Any | None:
    """torch.cuda / torch.npu / torch.xpu / torch.mps, or None when this torch build lacks it."""
    if device_type == "npu":
        module, _ = _import_torch_npu()
        if module is None:
            return None
    return getattr(torch, device_type, None)


def npu_device_name() -> str | None:
    """The SoC name torch_npu reports for the current NPU ('Ascend910B2'; see ``workbench.device.ascend``), or None
    without torch_npu or a visible NPU."""
    backend = _backend_module("npu")
    try:
        return str(backend.get_device_name(backend.current_device()))
    except Exception:  # no torch_npu (backend None), no device, a driver error: the name is unknown
        return None


def _availability(device_type: str) -> str | None:
    """None when ``device_type`` is usable here, otherwise the reason it is not."""
    if device_type == "cpu":
        return None
    if device_type not in SUPPORTED_DEVICE_TYPES:
        return f"unknown device type {device_type!r}"
    if device_type == "npu":
        module, reason = _import_torch_npu()
        if module is None:
            return reason
    backend = _backend_module(device_type)
    try:
        if backend is None or not backend.is_available():
            return f"no {device_type} device visible to torch {torch.__version__}"
    except Exception as exc:  # a broken driver should read as "not available", with the reason
        return f"{device_type} check failed: {exc}"
    return None


def available_device_types() -> list[str]:
    """Device types usable on this machine, best first (cpu is always last)."""
    return [t for t in AUTO_ORDER if _availability(t) is None]


def _torch_accelerator_type() -> str | None:
    """The accelerator type ``torch.accelerator`` reports (cuda, xpu, mps, or a PrivateUse1 backend such as npu once
    torch_npu is loaded), or None. This is torch's own device-generic answer; we prefer it where it applies."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None:
        return None
    try:
        if not accelerator.is_available():
            return None
        current = accelerator.current_accelerator()
    except Exception:
        return None
    return None if current is None else current.type


def auto_device_type() -> str:
    """What ``device="auto"`` means here: torch.accelerator's choice when it names a device type we support and
    that works, otherwise the first available in the order npu, cuda, xpu, mps, cpu."""
    _import_torch_npu()  # loading torch_npu (when present) registers "npu" with torch.accelerator
    kind = _torch_accelerator_type()
    if kind in SUPPORTED_DEVICE_TYPES and _availability(kind) is None:
        return kind
    return available_device_types()[0]


def parse_device_spec(spec: "str | torch.device | Device") -> tuple[str, int | None]:
    """(type, index) of a device spec without resolving or binding it: 'cuda:1' -> ('cuda', 1), 'auto' -> ('auto',
    None). Raises ValueError for an index that is not a number."""
    if isinstance(spec, (Device, torch.device)):
        return spec.type, spec.index
    return _parse_device_string(spec)


def _parse_device_string(spec: str) -> tuple[str, int | None]:
    spec = str(spec).strip().lower()
    if ":" in spec:
        kind, _, index = spec.partition(":")
        if not index.isdigit():
            raise ValueError(f"bad device {spec!r}: the index after ':' must be a number, e.g. 'cuda:0'")
        return kind, int(index)
    return spec, None


def get_device(spec: str | torch.device | "Device" = "auto") -> "Device":
    """Return the ``Device`` for ``spec``: "auto", a type ("cpu", "cuda", "npu", "xpu", "mps") or "type:index".

    Raises ``DeviceUnavailableError`` naming what is missing and how to get it, and ``ValueError`` for a string that
    is not a device at all.
    """
    if isinstance(spec, Device):
        return spec
    kind, index = parse_device_spec(spec)
    if kind == "auto":
        kind = auto_device_type()
    if kind not in SUPPORTED_DEVICE_TYPES:
        raise ValueError(
            f"unknown device {spec!r}; choose one of: auto, {', '.join(SUPPORTED_DEVICE_TYPES)} (optionally ':index')"
        )
    reason = _availability(kind)
    if reason is not None:
        raise DeviceUnavailableError(f"device {kind!r} is not available: {reason}. To use it, {HOW_TO_GET[kind]}.")
    device = Device(kind, index)
    if index is not None and index >= device.count:
        raise DeviceUnavailableError(f"device {kind}:{index} asked for, but only {device.count} {kind} device(s) exist")
    # An index is a choice: make it the current device, or torch's device=None calls, streams and Triton's launches
    # stay on device 0 while the tensors live on device `index`.
    return device.set_current() if index is not None else device


# --------------------------------------------------------------------------------------------------------------
# The Device object
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _CpuTimer:
    start_s: float = 0.0
    elapsed_s: float = 0.0


@dataclass
class Device:
    """One device type (and optionally index) on this machine, with every question about it answered here."""

    type: str
    index: int | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- identity ---------------------------------------------------------------------------------------------
    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.type if self.index is None else f"{self.type}:{self.index}")

    @property
    def is_accelerator(self) -> bool:
        return self.type != "cpu"

    @property
    def backend(self) -> Any | None:
        """The torch backend module (torch.cuda, torch.npu, ...) or None for cpu."""
        return None if self.type == "cpu" else _backend_module(self.type)

    @property
    def dist_backend(self) -> str:
        """torch.distributed backend for this device: gloo (cpu), nccl (cuda), hccl (npu), xccl (xpu)."""
        return DIST_BACKENDS[self.type]

    @property
    def count(self) -> int:
        """Number of devices of this type (cpu: 1 device; see ``cpu_threads`` for its cores)."""
        if self.type == "cpu":
            return 1
        backend = self.backend
        if self.type == "mps":
            return 1
        return int(backend.device_count())

    @property
    def name(self) -> str:
        """A human name of the chip: 'NVIDIA H200', 'Ascend910B2', or the CPU model."""
        if "name" not in self._cache:
            self._cache["name"] = self._read_name()
        return self._cache["name"]

    def _read_name(self) -> str:
        if self.type == "cpu":
            return cpu_model_name()
        if self.type == "mps":
            return "Apple MPS"
        try:
            return str(self.backend.get_device_name(self.index or 0))
        except Exception:
            return self.type

    @property
    def cpu_threads(self) -> int:
        return torch.get_num_threads()

    def set_current(self, local_rank: int | None = None) -> "Device":
        """Make device ``local_rank`` (default: this Device's own index) the process's current device and return it,
        indexed. Distributed workers bind to their LOCAL_RANK; ``get_device("cuda:1")`` binds to 1. Without either
        index nothing is chosen and this Device comes back unchanged."""
        index = self.index if local_rank is None else local_rank
        if self.type == "cpu" or index is None:
            return self
        if index >= self.count:  # torch would fail later with "invalid device ordinal" and no hint
            raise DeviceUnavailableError(self._too_few_devices(index, local_rank is not None))
        self._make_current(index)
        return Device(self.type, index)

    def _too_few_devices(self, index: int, from_local_rank: bool) -> str:
        visible = VISIBLE_DEVICES_ENV.get(self.type)
        if not from_local_rank:
            return f"device {self.type}:{index} asked for, but only {self.count} {self.type} device(s) exist"
        return (f"LOCAL_RANK {index} needs {self.type}:{index}, but only {self.count} {self.type} device(s) are "
                f"visible here; launch at most {self.count} process(es) per node (--nproc {self.count})"
                + (f" or make more devices visible ({visible})" if visible else ""))

    def _make_current(self, index: int) -> None:
        """The backend's set_device where it has one, else torch.accelerator's device-generic call. mps is one
        device with nothing to choose, and torch.mps has no set_device."""
        if self.type == "mps":
            return
        setter = getattr(self.backend, "set_device", None)
        if setter is not None:
            setter(index)
        elif _torch_accelerator_type() == self.type:
            torch.accelerator.set_device_index(index)

    # ---- synchronisation and timing ---------------------------------------------------------------------------
    def synchronize(self) -> None:
        if self.type == "cpu":
            return
        if _torch_accelerator_type() == self.type:
            torch.accelerator.synchronize(self.index)  # the device-generic call where torch has one
        else:
            self.backend.synchronize()

    @contextlib.contextmanager
    def timer(self) -> Iterator[_CpuTimer]:
        """Time a block: ``with dev.timer() as t: ...; t.elapsed_s``. Device events where the backend has them,
        otherwise a synchronised wall clock."""
        result = _CpuTimer()
        event_cls = getattr(self.backend, "Event", None) if self.type in ("cuda", "npu", "xpu") else None
        if event_cls is not None:
            start, end = event_cls(enable_timing=True), event_cls(enable_timing=True)
            stream = self._current_stream()
            start.record(stream)
            yield result
            end.record(stream)
            end.synchronize()
            result.elapsed_s = start.elapsed_time(end) / 1e3
            return
        self.synchronize()
        result.start_s = time.perf_counter()
        yield result
        self.synchronize()
        result.elapsed_s = time.perf_counter() - result.start_s

    # ---- memory -----------------------------------------------------------------------------------------------
    def memory_stats(self) -> dict[str, Any]:
        """Allocated and peak allocated bytes where the backend tracks them; on cpu the process RSS and its peak."""
        if self.type == "cpu":
            current, peak = _process_rss_bytes()
            return {"allocated_bytes": current, "peak_bytes": peak, "source": "process RSS (cpu)"}
        backend = self.backend
        if not hasattr(backend, "memory_allocated"):
            return self._memory_stats_without_memory_allocated()
        args = self._index_args()
        return {
            "allocated_bytes": int(backend.memory_allocated(*args)),
            "peak_bytes": int(backend.max_memory_allocated(*args)) if hasattr(backend, "max_memory_allocated") else None,
            "source": f"torch.{self.type} caching allocator",
        }

    def _memory_stats_without_memory_allocated(self) -> dict[str, Any]:
        """torch.mps has no memory_allocated: torch.accelerator's allocator stats where they work here (they keep a
        peak), else torch.mps.current_allocated_memory (no peak)."""
        if _torch_accelerator_type() == self.type:
            try:
                return {"allocated_bytes": int(torch.accelerator.memory_allocated(self.index)),
                        "peak_bytes": int(torch.accelerator.max_memory_allocated(self.index)),
                        "source": f"torch.accelerator allocator stats ({self.type})"}
            except Exception:  # an allocator that keeps no device stats
                pass
        current = getattr(self.backend, "current_allocated_memory", None)
        if current is not None:
            return {"allocated_bytes": int(current()), "peak_bytes": None,
                    "source": f"torch.{self.type}.current_allocated_memory (no peak kept)"}
        return {"allocated_bytes": None, "peak_bytes": None, "source": f"not tracked by torch.{self.type}"}

    def total_memory_bytes(self) -> int | None:
        if self.type == "cpu":
            try:
                return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            except (ValueError, OSError, AttributeError):
                return None
        try:
            return int(self.backend.get_device_properties(self.index or 0).total_memory)
        except Exception:
            return None

    def reset_peak_memory(self) -> None:
        """Start a new peak: the allocator's on accelerators; on cpu the process's RSS high-water mark (Linux:
        writing 5 to /proc/self/clear_refs resets VmHWM), which otherwise carried one run's peak into the next."""
        backend = self.backend
        if backend is not None and hasattr(backend, "reset_peak_memory_stats"):
            backend.reset_peak_memory_stats(*self._index_args())
        elif backend is not None and _torch_accelerator_type() == self.type:  # mps: the device-generic peak
            with contextlib.suppress(Exception):
                torch.accelerator.reset_peak_memory_stats(self.index)
        elif self.type == "cpu":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass  # not Linux, or not allowed: the peak stays the process's

    def empty_cache(self) -> None:
        backend = self.backend
        if backend is not None and hasattr(backend, "empty_cache"):
            backend.empty_cache()

    # ---- random state (checkpoints save and restore it) --------------------------------------------------------
    def get_rng_state(self) -> torch.Tensor | None:
        if self.type == "cpu" or not hasattr(self.backend, "get_rng_state"):
            return None
        return self.backend.get_rng_state(*self._device_args())

    def set_rng_state(self, state: torch.Tensor | None) -> None:
        if state is not None and self.type != "cpu" and hasattr(self.backend, "set_rng_state"):
            self.backend.set_rng_state(state, *self._device_args())

    # torch's memory and RNG calls default to the *current* device ("cuda" = current for get_rng_state): name ours
    # when this Device has an index, and keep torch's default when it has none.
    def _index_args(self) -> tuple:
        return () if self.index is None else (self.index,)

    def _device_args(self) -> tuple:
        return () if self.index is None else (self.torch_device,)

    def _current_stream(self) -> Any:
        """This device's current stream for event timing (None = the current device's, when unindexed)."""
        current_stream = getattr(self.backend, "current_stream", None)
        return None if self.index is None or current_stream is None else current_stream(self.index)

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)  # seeds every device type torch knows, cpu included

    # ---- precision --------------------------------------------------------------------------------------------
    def fast_bf16(self) -> tuple[bool, str]:
        """Whether bf16 matmuls run fast here, and how we know."""
        if "fast_bf16" not in self._cache:
            self._cache["fast_bf16"] = _fast_bf16(self)
        return self._cache["fast_bf16"]

    @property
    def training_dtype(self) -> torch.dtype:
        """bf16 (autocast) where bf16 is fast; fp32 otherwise. ``WORKBENCH_DTYPE=fp32|bf16|fp16`` overrides. The
        trainer and ``parallelize`` refuse fp16 (``check_training_dtype``: no loss scaling); what only reads the
        dtype (``workbench info``, kernel benchmarks, autocast for inference) takes it."""
        forced = os.environ.get("WORKBENCH_DTYPE", "").strip().lower()
        if forced:
            return parse_dtype(forced)
        return torch.bfloat16 if self.fast_bf16()[0] else torch.float32

    def autocast(self, dtype: torch.dtype | None = None) -> contextlib.AbstractContextManager:
        """Autocast to ``dtype`` (default: the training dtype); a no-op context for fp32."""
        dtype = dtype or self.training_dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.type, dtype=dtype)

    def supports_fused_adamw(self) -> bool:
        """torch's fused AdamW kernels exist for cuda, xpu, mps and cpu. On npu they depend on the torch_npu build
        (torchtune turns fused off for Ascend: "not supported on Ascend NPU"), so npu uses foreach until a run on
        hardware shows otherwise."""
        return self.type in ("cuda", "xpu", "mps", "cpu")

    # ---- peaks ------------------------------------------------------------------------------------------------
    def peak_flops(self, dtype: torch.dtype | None = None, allow_probe: bool = True):
        """Peak dense FLOP/s for ``dtype`` (default: training dtype) with its source.

        The hardware catalog when this chip is known (datasheet figure), otherwise a short GEMM probe on this
        machine, cached per machine. Returns a ``PeakEstimate`` (value may be None if probing is disallowed).
        """
        from workbench.device.probes import peak_flops_for

        return peak_flops_for(self, dtype or self.training_dtype, allow_probe=allow_probe)

    def memory_bandwidth(self, allow_probe: bool = True):
        """Memory bandwidth (bytes/s) with its source: catalog for known chips, otherwise a copy probe."""
        from workbench.device.probes import bandwidth_for

        return bandwidth_for(self, allow_probe=allow_probe)

    def catalog_entry(self):
        """The hardware catalog's row for this chip, or None (cpus and unknown chips)."""
        if self.type == "cpu":
            return None
        from workbench.hardware.catalog import match_device_name

        return match_device_name(self.name)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (used by ``workbench info`` and notebooks)."""
        fast, how = self.fast_bf16()
        return {
            "type": self.type,
            "torch_device": str(self.torch_device),
            "name": self.name,
            "count": self.count,
            "dist_backend": self.dist_backend,
            "fast_bf16": fast,
            "fast_bf16_source": how,
            "training_dtype": dtype_name(self.training_dtype),
            "training_dtype_source": (f"WORKBENCH_DTYPE={os.environ['WORKBENCH_DTYPE'].strip()} (your setting)"
                                      if os.environ.get("WORKBENCH_DTYPE", "").strip() else how),
            "total_memory_gb": _gb(self.total_memory_bytes()),
            "cpu_threads": self.cpu_threads if self.type == "cpu" else None,
        }


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of: fp32, bf16, fp16")
    return _DTYPES[key]


def check_training_dtype(dtype: torch.dtype, setting: str) -> torch.dtype:
    """Refuse fp16 as a training dtype. fp16's 5-bit exponent underflows small gradients to zero unless the loss is
    scaled (a GradScaler), and nothing here scales it: measured on a glm4-small-sized batch, 1.6% of the hidden
    gradients were zero (12.6% with 8-step accumulation). bf16 has fp32's range and needs no scaling."""
    if dtype == torch.float16:
        from workbench.errors import ConfigError

        raise ConfigError(f"{setting}=fp16 is refused: fp16 training needs loss scaling, which the workbench does "
                          f"not do, and without it small gradients underflow to zero; use bf16 or fp32 (a chip "
                          f"without fast bf16, e.g. V100 or Ascend 910A, trains in fp32)")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def _gb(value: int | None) -> float | None:
    return None if value is None else round(value / 1e9, 2)


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo: x86 names the line 'flags', arm64 'Features' (bf16 on Graviton3,
    Grace, Neoverse V1/V2)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() in ("flags", "Features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _fast_bf16(device: Device) -> tuple[bool, str]:
    if device.type == "cuda":
        major, _ = device.backend.get_device_capability(device.index or 0)
        fast = major >= 8  # Ampere and newer have bf16 tensor cores
        return fast, f"known: compute capability {major}.x {'>=' if fast else '<'} 8.0"
    if device.type == "npu":
        # torch_npu's own rule (Ascend910B1 and newer: A2/A3); a 910A runs fp16 only, and autocast to bf16 there
        # is switched off with a warning, so a fixed True trained in fp32 while reporting bf16
        check = getattr(device.backend, "is_bf16_supported", None)
        if check is None:
            return True, "assumed: torch_npu has no is_bf16_supported (Ascend 910B and newer run bf16)"
        fast = bool(check())
        return fast, f"torch.npu.is_bf16_supported() = {fast} (bf16 needs Ascend 910B or newer)"
    if device.type in ("xpu", "mps"):
        return True, f"assumed for {device.type}"
    # CPU: without AMX / AVX512-BF16 (or ARM BF16) bf16 matmuls are emulated, ~100x slower than fp32. With them
    # they may still lose to fp32 (seen: AVX512-BF16 Xeon, bf16 0.6x fp32), so measure and cache the verdict.
    flags = cpu_flags()
    has_bf16_isa = bool({"amx_bf16", "avx512_bf16"} & flags) or (
        platform.machine() in ("arm64", "aarch64") and "bf16" in flags)
    if not has_bf16_isa:
        return False, "known: CPU lacks AMX/AVX512-BF16 (bf16 matmul is emulated, far slower than fp32)"
    from workbench.device.probes import measure_bf16_speedup

    speedup = measure_bf16_speedup(device)
    fast = speedup >= CPU_BF16_MIN_SPEEDUP
    return fast, (f"measured: bf16 GEMM runs {speedup:.2f}x fp32 on this CPU "
                  f"({'>=' if fast else '<'} {CPU_BF16_MIN_SPEEDUP}x needed to train in bf16)")


# bf16 autocast on CPU adds casts around every matmul; it only pays off when bf16 GEMMs are clearly faster.
CPU_BF16_MIN_SPEEDUP = 1.25


def _process_rss_bytes() -> tuple[int | None, int | None]:
    """Current and peak resident set size of this process (Linux /proc; peak via getrusage elsewhere)."""
    current = peak = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except Exception:
            pass
    return current, peak


def device_table() -> list[dict[str, Any]]:
    """One row per device type torch could use, with whether it is available here and why not."""
    rows = []
    for kind in AUTO_ORDER:
        reason = _availability(kind)
        row: dict[str, Any] = {"type": kind, "available": reason is None, "reason": reason or ""}
        if reason is None:
            dev = Device(kind)
            row.update(name=dev.name, count=dev.count, dist_backend=dev.dist_backend,
                       training_dtype=dtype_name(dev.training_dtype))
        else:
            row.update(name="", count=0, dist_backend=DIST_BACKENDS[kind], training_dtype="")
        rows.append(row)
    return rows
