"""``triton`` implementations, registered without importing Triton (the kernels live in ``triton_kernels.py``).

Where they run: cuda when triton is installed; cpu only under Triton's interpreter, i.e. with ``TRITON_INTERPRET=1``
set before triton is first imported (that is how tests/test_kernels_triton.py checks them, at tiny sizes).
They are opt-in (``WORKBENCH_KERNELS=triton`` or ``attention=triton,...``): their priority is below ``torch`` and
``reference`` because this project has not yet measured them on a GPU, so SDPA / eager stay the cuda default until
benchmarks/README.md records that Triton wins there.

attention: FlashAttention-2 forward and backward with causal (bottom-right aligned) and GQA; a call with DSA
``topk_indices`` goes to the ``torch`` implementation (SDPA with a boolean mask), since a dense-tile kernel gains
nothing from a gather-shaped mask.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from workbench.kernels.registry import register

PRIORITY = -10  # opt-in until measured on hardware (see the module docstring)
DEVICES = ("cuda", "cpu")


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def available(device_type: str) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; Linux x86_64 with a CUDA GPU)"
    if device_type == "cpu" and not interpreter_on():
        return "runs on cpu only under the Triton interpreter (set TRITON_INTERPRET=1 before importing triton)"
    if device_type == "cpu" and _imported_without_interpreter():
        return ("triton was imported before TRITON_INTERPRET=1 was set (torch.compile imports it), so its own "
                "library functions are compiled ones the interpreter cannot call; set the variable before Python "
                "starts")
    return None


def _imported_without_interpreter() -> bool:
    """True when triton.language is already loaded in compiled mode: its @jit helpers (tl.sum, ...) were made
    when it was imported, and under the interpreter calling them fails inside every kernel."""
    language = sys.modules.get("triton.language")
    return language is not None and type(getattr(language, "sum", None)).__name__ == "JITFunction"


def _kernels():
    from workbench.kernels import triton_kernels  # imported on first use: see the module docstring

    return triton_kernels


@register("rms_norm", "triton", devices=DEVICES, priority=PRIORITY, available=available)
def rms_norm(x, weight, eps: float = 1e-6):
    """Fused RMSNorm: one pass over each row forward, one backward (dw reduced from per-program partials)."""
    return _kernels().RMSNormFunction.apply(x, weight, eps)


@register("swiglu", "triton", devices=DEVICES, priority=PRIORITY, available=available)
def swiglu(x):
    """Fused SwiGLU: reads [.., 2F] once, writes [.., F]; backward recomputes the sigmoid."""
    return _kernels().SwiGLUFunction.apply(x)


@register("rope", "triton", devices=DEVICES, priority=PRIORITY, available=available)
def rope(x, cos, sin, interleaved: bool = False):
    """Fused RoPE (half / interleaved / partial); backward is the rotation by the negative angle."""
    return _kernels().RopeFunction.apply(x, cos, sin, bool(interleaved))


@register("attention", "triton", devices=DEVICES, priority=PRIORITY, available=available)
def attention(q, k, v, causal: bool = True, scale: float | None = None, topk_indices=None):
    """FlashAttention-2 (forward + backward, causal, GQA); DSA top-k calls go to the torch (SDPA) path."""
    if topk_indices is not None:
        from workbench.kernels import torch_ops

        return torch_ops.attention(q, k, v, causal=causal, scale=scale, topk_indices=topk_indices)
    return _kernels().FlashAttentionFunction.apply(q, k, v, causal, scale)
