"""Triton kernels (FlashAttention-2 fwd/bwd, RMSNorm, SwiGLU, RoPE) against the reference, on cpu under the Triton
interpreter at tiny sizes; with WORKBENCH_TEST_DEVICE=cuda the same tests compile and run them on a GPU (not run
by this project's CI, which has no GPU).

Triton decides interpreter-or-compile when it and the kernels are imported, so on cpu these tests only run in a
process started with TRITON_INTERPRET=1: tests/test_kernels_triton.py starts one. Run directly with
``TRITON_INTERPRET=1 pytest tests/test_kernels_triton_cases.py``. Under the interpreter, attention's tl.dot
operands are upcast to fp32 (Triton 3.9's interpreter mis-reads bf16 dot operands), so on cpu the bf16 cases
check bf16 loads, stores and the algorithm, not bf16 tensor-core arithmetic.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

DEVICE = os.environ.get("WORKBENCH_TEST_DEVICE", "cpu")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("runs in a TRITON_INTERPRET=1 process started by tests/test_kernels_triton.py",
                allow_module_level=True)

from workbench.kernels import reference, registry, triton_ops  # noqa: E402
from workbench.kernels.correctness import CASES, run_case  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def test_kernels_are_interpreted_on_cpu():
    from workbench.kernels import triton_kernels

    interpreted = type(triton_kernels._attn_fwd).__name__ == "InterpretedFunction"
    assert interpreted == (DEVICE == "cpu")


def test_triton_is_available_on_cpu_only_under_the_interpreter(monkeypatch):
    assert registry.implementations("attention")["triton"].unavailable_reason(DEVICE) is None
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in triton_ops.available("cpu")
    assert registry.implementations("attention")["triton"].unavailable_reason("npu").startswith("does not run on")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["rms_norm", "swiglu", "rope", "attention"])
def test_triton_kernel_matches_reference(op, dtype):
    for case in CASES[op]:
        result = run_case(op, "triton", case, DTYPES[dtype], DEVICE)
        assert result.passed, result


def test_flash_attention_ragged_lengths_and_odd_head_dims():
    # Sizes that are not multiples of the 16-wide tiles, Dv != Dqk, GQA 3:1, and Sq > Sk (rows with no key).
    gen = torch.Generator().manual_seed(3)
    for (heads, kv, q_len, k_len, d_qk, d_v, causal) in [(3, 1, 21, 21, 24, 8, True), (2, 2, 9, 30, 16, 16, True),
                                                          (2, 1, 23, 5, 16, 16, True), (2, 2, 17, 17, 8, 40, False)]:
        q = torch.randn(2, heads, q_len, d_qk, generator=gen).to(DEVICE).requires_grad_()
        k = torch.randn(2, kv, k_len, d_qk, generator=gen).to(DEVICE).requires_grad_()
        v = torch.randn(2, kv, k_len, d_v, generator=gen).to(DEVICE).requires_grad_()
        out = triton_ops.attention(q, k, v, causal=causal)
        expected = reference.attention(q, k, v, causal=causal)
        torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)
        grad = torch.randn(out.shape, generator=gen).to(DEVICE)
        got = torch.autograd.grad(out, (q, k, v), grad)
        want = torch.autograd.grad(expected, (q, k, v), grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=2e-3, atol=2e-3)


def test_dsa_topk_calls_go_to_the_sdpa_path():
    case = CASES["attention"][-1]
    assert "DSA" in case.name
    assert run_case("attention", "triton", case, torch.float32, DEVICE).passed


def test_triton_rope_rejects_per_batch_angles_clearly():
    x = torch.randn(2, 1, 4, 8).to(DEVICE)
    cos = torch.randn(2, 1, 4, 4).to(DEVICE)  # different angles per batch element
    with pytest.raises(ValueError, match="use the reference"):
        triton_ops.rope(x, cos, cos)


def test_triton_rms_norm_reads_a_strided_weight_right():
    """The kernel read W + cols: a weight that is a strided view (w[::2]) gave outputs off by ~8."""
    x = torch.randn(3, 40, device=DEVICE)
    w = (torch.randn(80, device=DEVICE) * 0.1 + 1)[::2]
    expected = reference.rms_norm(x, w.contiguous(), 1e-6)
    torch.testing.assert_close(triton_ops.rms_norm(x, w, 1e-6), expected, rtol=1e-4, atol=1e-5)
