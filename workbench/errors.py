"""User-facing errors. The CLI prints these as one clear line (no traceback) and exits non-zero."""


class WorkbenchError(ValueError):
    """Bad input from a user: a config, a notebook parameter, a CLI flag, a data path. The message says the fix."""


class ConfigError(WorkbenchError):
    """A config dataclass rejected its values (raised from ``__post_init__`` before anything is allocated)."""


def out_of_memory_message(exc: BaseException) -> str | None:
    """One line for an allocation failure (Python's MemoryError, numpy's, torch's "can't allocate memory" on cpu,
    ``torch.OutOfMemoryError`` on cuda/npu); None for any other error. Matched by type and text, not by importing
    torch, so the CLI can call it for every command."""
    text = str(exc).strip()
    is_oom = isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text))
    if not is_oom:
        return None
    first = text.splitlines()[0] if text else type(exc).__name__
    if "DefaultCPUAllocator" in first:  # drop torch's "[enforce fail at alloc_cpu.cpp:117] err == 0. " prefix
        first = first[first.index("DefaultCPUAllocator"):]
    if len(first) > 160:
        first = first[:157] + "..."
    return (f"out of memory ({first}); lower --batch-size or --seq-len (--grad-accum keeps the tokens per step), "
            f"or pick a smaller model")
