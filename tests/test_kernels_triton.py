"""Triton kernels (FlashAttention-2 fwd/bwd, RMSNorm, SwiGLU, RoPE) against the reference, on cpu under the Triton
interpreter (TRITON_INTERPRET=1) at tiny sizes. The same tests compile and run the kernels on a GPU with
WORKBENCH_TEST_DEVICE=cuda (not run by this project's CI, which has no GPU).

Triton decides interpreter-or-compile when a kernel is decorated, so the module fixture sets TRITON_INTERPRET=1
before workbench.kernels.triton_kernels is imported (reloading it if something imported it earlier) and restores
the environment afterwards. Under the interpreter, attention's tl.dot operands are upcast to fp32 (Triton 3.9's
interpreter mis-reads bf16 dot operands), so on cpu the bf16 cases check bf16 loads, stores and the algorithm,
not bf16 tensor-core arithmetic.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import pytest
import torch

from workbench.kernels import reference, registry, triton_ops
from workbench.kernels.correctness import CASES, run_case

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

DEVICE = os.environ.get("WORKBENCH_TEST_DEVICE", "cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    previous = os.environ.get("TRITON_INTERPRET")
    if DEVICE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
        module = sys.modules.get("workbench.kernels.triton_kernels")
        module = importlib.reload(module) if module else importlib.import_module("workbench.kernels.triton_kernels")
        assert type(module._attn_fwd).__name__ == "InterpretedFunction", "kernels were compiled, not interpreted"
    yield
    if previous is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = previous


def test_triton_is_available_on_cpu_only_under_the_interpreter(monkeypatch):
    assert registry.implementations("attention")["triton"].unavailable_reason(DEVICE) is None
    monkeypatch.delenv("TRITON_INTERPRET")
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
