"""The kernel registry: every op has named implementations, and the model asks the registry, never a backend.

An implementation is registered with the device types it runs on, a priority, and an availability check that
returns None (usable) or the reason it is not (e.g. "triton is not installed"); the check may take the device type
(``available(device_type)``) when the answer differs per device (Triton runs on cpu only under its interpreter).
Which one runs is decided, in order:

1. an explicit ``impl=`` argument to ``resolve``;
2. the environment variable ``WORKBENCH_KERNELS``, e.g. ``WORKBENCH_KERNELS="attention=reference,rms_norm=torch"``
   (or ``WORKBENCH_KERNELS=reference`` for every op);
3. overrides set in code or config through ``set_overrides({"attention": "torch"})`` / ``use_kernels(...)``;
4. the available implementation with the highest priority for the tensor's device type (``device_priority``
   can rank an implementation differently per device, after measuring it there).

``reference`` (plain eager PyTorch, written to be read) is always present and always runs everywhere.
Used by ``workbench.model`` and by notebooks/02_kernels.ipynb and 04_profiling.ipynb.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

from workbench.errors import WorkbenchError

ENV_VAR = "WORKBENCH_KERNELS"
ALL_DEVICES = ("cpu", "cuda", "npu", "xpu", "mps")


@dataclass
class KernelImpl:
    op: str
    name: str  # "reference" | "torch" | "triton" | "npu" | ...
    fn: Callable
    devices: tuple[str, ...]
    priority: int
    available: Callable[..., str | None] = field(default=lambda: None)
    description: str = ""
    device_priority: dict[str, int] = field(default_factory=dict)  # per-device-type overrides of ``priority``

    def priority_on(self, device_type: str) -> int:
        return self.device_priority.get(device_type, self.priority)

    def unavailable_reason(self, device_type: str) -> str | None:
        if device_type not in self.devices:
            return f"does not run on {device_type} (runs on: {', '.join(self.devices)})"
        if inspect.signature(self.available).parameters:  # the check wants to know the device type
            return self.available(device_type)
        return self.available()


_REGISTRY: dict[str, dict[str, KernelImpl]] = {}
_OVERRIDES: dict[str, str] = {}
_RESOLVED: dict[tuple[str, str], Callable] = {}  # cache; cleared whenever overrides or registrations change
_CALLS: dict[str, int] = {}  # op -> times the model asked for it (``call_counts``: "did this model use the op?")


def register(op: str, name: str, *, devices: tuple[str, ...] = ALL_DEVICES, priority: int = 0,
             available: Callable[..., str | None] | None = None, description: str = "",
             device_priority: dict[str, int] | None = None):
    """Decorator: ``@register("rms_norm", "torch", devices=("cpu", "cuda"), priority=10)``.

    ``available`` is ``() -> reason | None`` or ``(device_type) -> reason | None``. ``device_priority`` overrides
    ``priority`` per device type, e.g. ``{"cpu": -5}`` for a kernel that runs on cpu but measured slower there.
    """

    def decorate(fn: Callable) -> Callable:
        impl = KernelImpl(op, name, fn, tuple(devices), priority, available or (lambda: None),
                          description or (fn.__doc__ or "").strip().split("\n")[0], dict(device_priority or {}))
        _REGISTRY.setdefault(op, {})[name] = impl
        _RESOLVED.clear()
        return fn

    return decorate


def ops() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def implementations(op: str) -> dict[str, KernelImpl]:
    _ensure_loaded()
    if op not in _REGISTRY:
        raise KeyError(f"unknown kernel op {op!r}; known ops: {', '.join(sorted(_REGISTRY))}")
    return dict(_REGISTRY[op])


def parse_overrides(text: str, source: str = "kernel overrides") -> dict[str, str]:
    """``"attention=reference,moe=torch"`` -> dict; a bare name (``"reference"``) applies to every op that has it.

    The format of the ``WORKBENCH_KERNELS`` variable, and of a config field or CLI flag that chooses kernels."""
    _ensure_loaded()
    label = f"{source}{text!r}" if source.endswith("=") else f"{source} {text!r}"
    items = [item.strip() for item in text.split(",") if item.strip()]  # "," or " , " choose nothing, like ""
    if not items:
        return {}
    bare = [item for item in items if "=" not in item]
    if bare and len(items) > 1:  # "reference,torch" or "reference,attention=torch": which one was meant is unclear
        raise KernelChoiceError(f"{label}: give either one implementation name for every op (e.g. 'reference') or "
                                f"'op=impl' items separated by commas, not both; got {bare[0]!r} among {len(items)} "
                                "items")
    if bare:  # one implementation name for every op that has it (the rest keep their default)
        name = bare[0]
        chosen = {op: name for op, impls in _REGISTRY.items() if name in impls}
        if not chosen:
            names = ", ".join(sorted({n for impls in _REGISTRY.values() for n in impls}))
            raise KernelChoiceError(f"{label}: no op has an implementation of that name; names: {names}")
        return chosen
    pairs = {}
    for item in items:
        op, _, name = (part.strip() for part in item.partition("="))
        if not op or not name:
            raise KernelChoiceError(f"{label}: expected 'op=impl' items separated by commas, got {item!r}")
        # checked here, not at use: a typo ("atention=reference") silently left the default kernel running
        if op not in _REGISTRY:
            raise KernelChoiceError(f"{label}: unknown op {op!r}; ops: {', '.join(sorted(_REGISTRY))}")
        if name not in _REGISTRY[op]:
            raise KernelChoiceError(f"{label}: op {op!r} has no implementation {name!r}; it has: "
                                    f"{', '.join(_REGISTRY[op])}")
        pairs[op] = name
    return pairs


def _env_overrides() -> dict[str, str]:
    return parse_overrides(os.environ.get(ENV_VAR, ""), source=f"{ENV_VAR}=")


def set_overrides(choices: dict[str, str] | str | None) -> None:
    """Choose implementations per op for this process (``None`` or {} clears). Validated against the registry.

    A config can pass a dict or the ``WORKBENCH_KERNELS`` string format (``"attention=reference,moe=torch"``)."""
    _ensure_loaded()
    choices = parse_overrides(choices) if isinstance(choices, str) else dict(choices or {})
    for op, name in choices.items():
        if name not in implementations(op):
            raise ValueError(f"unknown implementation {name!r} for op {op!r}; "
                             f"registered: {', '.join(implementations(op))}")
    _OVERRIDES.clear()
    _OVERRIDES.update(choices)
    device_types = {key[1] for key in _RESOLVED}
    _RESOLVED.clear()
    # Resolved again now, eagerly, for the device types in use: a choice made while a compiled model exists (notebook
    # 04 switches kernels between profiles) would otherwise be looked up while tracing, breaking the graph
    for device_type in device_types:
        for op in ops():
            try:
                _resolve_cached(op, device_type)  # not counted: the model did not call anything
            except (RuntimeError, ValueError):  # a choice that cannot run there says so where it is used
                pass


def get_overrides() -> dict[str, str]:
    return dict(_OVERRIDES)


@contextlib.contextmanager
def use_kernels(choices: dict[str, str]) -> Iterator[None]:
    """Temporarily choose implementations: ``with use_kernels({"attention": "reference"}): ...``."""
    previous = get_overrides()
    set_overrides({**previous, **choices})
    try:
        yield
    finally:
        set_overrides(previous)


class KernelChoiceError(WorkbenchError, ValueError):
    """A kernel choice names an op or implementation that is not registered (one line in the CLI; a ValueError as
    it was before)."""


class KernelUnavailableError(WorkbenchError, RuntimeError):
    """A kernel implementation was asked for (``impl=``, ``WORKBENCH_KERNELS``, overrides) where it cannot run.
    A user's choice, so a ``WorkbenchError`` (one line in the CLI); also a RuntimeError, as it was before."""


def check_choice(op_names: list[str] | None, impl_names: list[str] | None) -> None:
    """Raise ``WorkbenchError`` for op names that are not registered, or implementation names that none of the
    chosen ops has (the benchmark and the correctness check silently did nothing for them). None means all."""
    registered = ops()
    unknown = [op for op in op_names or [] if op not in registered]
    if unknown:
        raise WorkbenchError(f"unknown op(s) {unknown}; known: {', '.join(registered)}")
    names = sorted({name for op in (op_names or registered) for name in implementations(op)})
    missing = [name for name in impl_names or [] if name not in names]
    if missing:
        raise WorkbenchError(f"unknown implementation(s) {missing} for {', '.join(op_names or ['any op'])}; "
                             f"registered: {', '.join(names)}")


def resolve_impl(op: str, device_type: str, impl: str | None = None) -> KernelImpl:
    """The implementation that runs ``op`` on ``device_type`` (see the module docstring for the order)."""
    impls = implementations(op)
    requested = impl or _env_overrides().get(op) or _OVERRIDES.get(op)
    if requested is not None:
        if requested not in impls:
            raise ValueError(f"unknown implementation {requested!r} for op {op!r}; registered: {', '.join(impls)}")
        reason = impls[requested].unavailable_reason(device_type)
        if reason is not None:
            raise KernelUnavailableError(f"kernel {op}/{requested} was requested but cannot run on {device_type}: "
                                         f"{reason}")
        return impls[requested]
    usable = [i for i in impls.values() if i.unavailable_reason(device_type) is None]
    return max(usable, key=lambda i: i.priority_on(device_type))


def resolve(op: str, device_type: str, impl: str | None = None) -> Callable:
    """The function that runs ``op`` on ``device_type``; cached until registrations or overrides change."""
    if not _compiling():  # counted in eager runs: under torch.compile dynamo guarded on the count and recompiled
        _CALLS[op] = _CALLS.get(op, 0) + 1
    if impl is None:
        return _resolve_cached(op, device_type)
    return resolve_impl(op, device_type, impl).fn


def _resolve_cached(op: str, device_type: str) -> Callable:
    """``resolve`` without counting the call: cached per WORKBENCH_KERNELS value, because a lookup that misses the
    cache inside a torch.compile region traces into the availability checks and breaks the graph."""
    key = (op, device_type, os.environ.get(ENV_VAR, "").strip())
    fn = _RESOLVED.get(key)
    if fn is None:
        fn = _RESOLVED[key] = resolve_impl(op, device_type).fn
    return fn


def _compiling() -> bool:
    import torch  # lazily: the registry itself stays importable without touching torch

    return torch.compiler.is_compiling()


# functions(device_type) that implementations register to run their one-time probes before torch.compile traces
_COMPILE_PROBES: list = []


def register_compile_probe(probe) -> None:
    """Have ``resolve_all`` call ``probe(device_type)``: a probe traced by dynamo would break the graph."""
    _COMPILE_PROBES.append(probe)


def resolve_all(device_type: str) -> None:
    """Resolve every op for ``device_type`` now, and run the implementations' probes (the trainer calls this
    before torch.compile): a first resolution inside a compiled region traced into the availability checks
    (``inspect.signature``) and broke the graph in the middle of the model's layer loop, which then ran eagerly."""
    for op in ops():
        _resolve_cached(op, device_type)
    for probe in _COMPILE_PROBES:
        probe(device_type)


def call_counts() -> dict[str, int]:
    """How many times each op was dispatched through ``resolve`` in this process (under torch.compile: while
    tracing). Comparing two snapshots tells whether some code used an op at all, e.g. before profiling two
    implementations of an op the model never calls."""
    return dict(_CALLS)


def availability_table(device_type: str) -> list[dict]:
    """Rows of (op, implementation, available, reason, selected) for ``workbench kernels list``."""
    rows = []
    for op in ops():
        try:
            chosen, problem = resolve_impl(op, device_type).name, ""
        except (RuntimeError, ValueError) as exc:  # an override that cannot run here: show it, don't crash
            chosen, problem = None, str(exc)
        for name, impl in sorted(implementations(op).items(), key=lambda kv: -kv[1].priority_on(device_type)):
            reason = impl.unavailable_reason(device_type)
            rows.append({"op": op, "impl": name, "available": reason is None, "reason": reason or "",
                         "selected": name == chosen, "priority": impl.priority_on(device_type),
                         "description": impl.description,
                         "selection_error": problem})
    return rows


_LOADED = False


def _ensure_loaded() -> None:
    """Import the implementation modules once, so their ``@register`` decorators run."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from workbench.kernels import _implementations  # noqa: F401
