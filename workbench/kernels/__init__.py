"""Kernels with per-device implementations, chosen through a registry (see ``registry.py``).

The model calls the functions below; each one looks up the implementation for its input's device type and runs it.
Implementations: ``reference`` (eager, readable, everywhere), and where they exist ``torch`` (SDPA / fused /
compiled), ``autograd`` (hand-written backward), ``csr`` (sparse-matrix products, cpu), ``triton`` (CUDA, or the
interpreter with TRITON_INTERPRET=1) and ``npu`` (torch_npu fused ops).
Signatures and layouts: ``reference.py``'s docstring. Choosing: ``WORKBENCH_KERNELS="attention=reference"``, or
``set_overrides({...} or "op=impl,...")`` from a config, or ``with use_kernels({...}):``; ``workbench kernels list``
shows the result. Correctness: ``correctness.py``; benchmark: ``bench.py``; FlashAttention by hand:
``flash_teaching.py``. Notebook: notebooks/02_kernels.ipynb.
"""

from __future__ import annotations

from workbench.kernels.registry import (
    availability_table,
    call_counts,
    get_overrides,
    implementations,
    ops,
    parse_overrides,
    register,
    resolve,
    resolve_impl,
    set_overrides,
    use_kernels,
)


def count_rows_per_expert(flat_experts, n_experts: int):
    from workbench.kernels.reference import count_rows_per_expert as count  # lazily: this package imports no torch

    return count(flat_experts, n_experts)


def rms_norm(x, weight, eps: float = 1e-6):
    return resolve("rms_norm", x.device.type)(x, weight, eps)


def rope(x, cos, sin, interleaved: bool = False):
    return resolve("rope", x.device.type)(x, cos, sin, interleaved)


def swiglu(x):
    return resolve("swiglu", x.device.type)(x)


def attention(q, k, v, causal: bool = True, scale: float | None = None, topk_indices=None):
    return resolve("attention", q.device.type)(q, k, v, causal=causal, scale=scale, topk_indices=topk_indices)


def sparse_mqa_attention(q, kv, topk_indices, scale: float, v_dim: int):
    return resolve("sparse_mqa_attention", q.device.type)(q, kv, topk_indices, scale, v_dim)


def moe(x, expert_indices, expert_weights, w_gate_up, w_down):
    return resolve("moe", x.device.type)(x, expert_indices, expert_weights, w_gate_up, w_down)


def cross_entropy(hidden, weight, labels, ignore_index: int = -100):
    return resolve("cross_entropy", hidden.device.type)(hidden, weight, labels, ignore_index=ignore_index)


__all__ = [
    "attention", "availability_table", "call_counts", "count_rows_per_expert", "cross_entropy", "get_overrides",
    "implementations", "moe", "ops",
    "parse_overrides",
    "register", "resolve", "resolve_impl", "rms_norm", "rope", "set_overrides", "sparse_mqa_attention", "swiglu",
    "use_kernels",
]
