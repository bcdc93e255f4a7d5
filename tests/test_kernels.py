"""Kernel registry, reference semantics, the torch implementations against the reference (forward and backward,
fp32 and bf16, tolerances in workbench/kernels/correctness.py), the FlashAttention teaching version, the
chunked cross-entropy's memory, the benchmark and the `workbench kernels` CLI. Triton: test_kernels_triton.py;
npu: test_kernels_npu.py. Runs on cpu; pass WORKBENCH_TEST_DEVICE=cuda to run the correctness part on a GPU.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import workbench.kernels as K
from workbench.kernels import flash_teaching, reference, registry, torch_ops
from workbench.kernels.correctness import CASES, run_case

DEVICE = os.environ.get("WORKBENCH_TEST_DEVICE", "cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------------------
# registry: selection order and overrides
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clean_overrides(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    registry.set_overrides(None)
    yield
    registry.set_overrides(None)


def test_every_op_has_a_reference_and_cases():
    assert set(K.ops()) == {"attention", "cross_entropy", "moe", "rms_norm", "rope", "sparse_mqa_attention",
                            "swiglu"}
    for op in K.ops():
        assert "reference" in K.implementations(op)
        assert CASES[op], op


def test_cpu_defaults_are_the_measured_fastest_correct_paths():
    chosen = {op: K.resolve_impl(op, "cpu").name for op in K.ops()}
    assert chosen == {"attention": "torch", "cross_entropy": "torch", "moe": "torch", "rms_norm": "autograd",
                      "rope": "torch", "sparse_mqa_attention": "csr", "swiglu": "autograd"}
    assert K.resolve_impl("rms_norm", "cuda").name == "torch"  # ranked per device: F.rms_norm is fused there
    assert K.resolve_impl("rms_norm", "cpu", impl="torch").name == "torch"  # and still selectable on cpu


def test_triton_is_opt_in_on_cuda_and_npu_ops_need_torch_npu():
    for op in ("attention", "rms_norm", "swiglu", "rope"):
        assert K.resolve_impl(op, "cuda").name != "triton"
    rows = {(r["op"], r["impl"]): r for r in K.availability_table("npu")}
    assert not rows[("attention", "npu")]["available"]
    assert "torch_npu" in rows[("attention", "npu")]["reason"]


def test_selection_order_explicit_then_env_then_overrides(monkeypatch):
    K.set_overrides({"attention": "reference"})
    assert K.resolve_impl("attention", "cpu").name == "reference"
    monkeypatch.setenv(registry.ENV_VAR, "attention=torch")
    assert K.resolve_impl("attention", "cpu").name == "torch"  # env beats code overrides
    assert K.resolve_impl("attention", "cpu", impl="reference").name == "reference"  # explicit beats env
    monkeypatch.setenv(registry.ENV_VAR, "reference")  # one name for every op that has it
    assert {K.resolve_impl(op, "cpu").name for op in K.ops()} == {"reference"}


def test_overrides_from_a_config_string():
    assert K.parse_overrides("attention=reference, moe=torch") == {"attention": "reference", "moe": "torch"}
    K.set_overrides("attention=reference")
    assert K.resolve_impl("attention", "cpu").name == "reference"
    with pytest.raises(ValueError, match="op=impl"):
        K.parse_overrides("attention=reference,torch")


def test_bad_overrides_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown implementation"):
        K.set_overrides({"attention": "cudnn"})
    monkeypatch.setenv(registry.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="no op has an implementation"):
        K.resolve_impl("attention", "cpu")
    monkeypatch.setenv(registry.ENV_VAR, "attention=npu")
    with pytest.raises(RuntimeError, match="cannot run on cpu"):
        K.resolve_impl("attention", "cpu")
    # typos in the variable were ignored: the default kernel ran and nothing said so
    for typo, message in (("atention=reference", "unknown op 'atention'"), ("attention=", "op=impl"),
                          ("=reference", "op=impl"), ("attention=refrence", "has no implementation 'refrence'")):
        monkeypatch.setenv(registry.ENV_VAR, typo)
        with pytest.raises(registry.KernelChoiceError, match=message):
            K.resolve_impl("attention", "cpu")
    # a lone comma chose nothing but was read as an implementation named ','; two bare names were "op=impl" typos
    assert K.parse_overrides(",") == {} and K.parse_overrides(" , ,") == {}
    assert K.parse_overrides("reference,") == K.parse_overrides("reference") != {}
    with pytest.raises(registry.KernelChoiceError, match="either one implementation name"):
        K.parse_overrides("reference,torch")
    monkeypatch.setenv(registry.ENV_VAR, "nonsense")
    with pytest.raises(registry.KernelChoiceError, match=r"^WORKBENCH_KERNELS='nonsense': no op"):
        K.resolve_impl("attention", "cpu")


def test_use_kernels_routes_the_public_functions():
    calls = []
    q = k = v = torch.randn(1, 1, 4, 8)

    @registry.register("attention", "spy", devices=("cpu",), priority=-100)
    def spy(q, k, v, causal=True, scale=None, topk_indices=None):
        calls.append(causal)
        return reference.attention(q, k, v, causal, scale, topk_indices)

    try:
        K.attention(q, k, v)
        assert calls == []
        with K.use_kernels({"attention": "spy"}):
            K.attention(q, k, v, causal=False)
        assert calls == [False]
        K.attention(q, k, v)
        assert calls == [False]
    finally:
        registry._REGISTRY["attention"].pop("spy")
        registry._RESOLVED.clear()


# ---------------------------------------------------------------------------------------------------------------
# reference semantics (hand-checkable facts)
# ---------------------------------------------------------------------------------------------------------------
def test_rope_partial_passes_channels_through_and_preserves_norms():
    x = torch.randn(2, 3, 5, 16)
    angles = torch.rand(5, 4)
    for interleaved in (False, True):
        out = reference.rope(x, angles.cos(), angles.sin(), interleaved)
        assert torch.equal(out[..., 8:], x[..., 8:])
        # a rotation keeps the length of each rotated pair, so of the rotated block
        torch.testing.assert_close(out[..., :8].norm(dim=-1), x[..., :8].norm(dim=-1))
    assert not torch.allclose(reference.rope(x, angles.cos(), angles.sin(), False),
                              reference.rope(x, angles.cos(), angles.sin(), True))


def test_topk_mask_and_sparse_attention_sees_only_chosen_keys():
    idx = torch.tensor([[[0, -1], [1, 0], [2, -1]]])  # [B=1, S=3, K=2]
    mask = reference.topk_to_mask(idx, 3)
    assert mask.tolist() == [[[True, False, False], [True, True, False], [False, False, True]]]
    q, k = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    v = torch.eye(3)[None, None]  # output row = attention weights
    out = reference.attention(q, k, v, causal=True, topk_indices=idx)
    assert out[0, 0, 2].tolist() == [0.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# correctness: every torch implementation against the reference
# ---------------------------------------------------------------------------------------------------------------
TORCH_OPS = ["attention", "cross_entropy", "moe", "rms_norm", "rope", "sparse_mqa_attention"]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", TORCH_OPS)
def test_torch_implementation_matches_reference(op, dtype):
    for case in CASES[op]:
        result = run_case(op, "torch", case, DTYPES[dtype], DEVICE)
        assert result.passed, result


@pytest.mark.parametrize("impl", ["reference", "torch", "csr"])
def test_sparse_mqa_attention_is_dense_attention_under_the_topk_mask(impl):
    """Gathering K rows per query must give exactly what masked dense attention over one shared kv head gives
    (distinct indices, as the indexer's top-k yields; -1 slots unused), outputs, gradients and the probabilities."""
    gen = torch.Generator().manual_seed(3)
    B, S, H, D, Dv, slots = 2, 24, 4, 20, 12, 6
    scores = torch.randn(B, S, S, generator=gen).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), -math.inf)
    values, topk = scores.topk(slots, dim=-1)
    topk = topk.masked_fill(values == -math.inf, -1)  # the first K-1 queries see fewer than K keys
    q = torch.randn(B, S, H, D, generator=gen, requires_grad=True)
    kv = torch.randn(B, S, D, generator=gen, requires_grad=True)
    out, probs = K.implementations("sparse_mqa_attention")[impl].fn(q, kv, topk, 0.3, Dv)
    dense = reference.attention(q.transpose(1, 2), kv[:, None], kv[:, None, :, :Dv], causal=True, scale=0.3,
                                topk_indices=topk).transpose(1, 2)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)
    grad = torch.randn(out.shape, generator=gen)
    torch.testing.assert_close(torch.autograd.grad(out, (q, kv), grad), torch.autograd.grad(dense, (q, kv), grad),
                               rtol=1e-5, atol=1e-5)
    assert probs.shape == (B, S, slots) and not probs.requires_grad
    torch.testing.assert_close(probs.sum(-1), torch.full((B, S), float(H)))  # each head's weights sum to 1
    assert (probs[topk < 0] == 0).all()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_csr_sparse_mqa_attention_matches_reference(dtype):
    """The SDDMM/SpMM formulation, forward and backward; bf16 goes to the gathered kernel, which must hold too."""
    for case in CASES["sparse_mqa_attention"]:
        result = run_case("sparse_mqa_attention", "csr", case, DTYPES[dtype], "cpu")
        assert result.passed, result


def test_csr_sparse_mqa_attention_gives_way_without_mkl(monkeypatch):
    """Without MKL torch's sparse products are generic loops: the registry then picks the gathered kernel."""
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    registry.set_overrides(None)  # clears the resolution cache
    assert "MKL" in K.implementations("sparse_mqa_attention")["csr"].unavailable_reason("cpu")
    assert K.resolve_impl("sparse_mqa_attention", "cpu").name == "torch"
    assert K.resolve_impl("sparse_mqa_attention", "cuda").name == "torch"  # cpu-only in any case


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_hand_written_rms_norm_backward_matches_reference(dtype):
    for case in CASES["rms_norm"]:
        result = run_case("rms_norm", "autograd", case, DTYPES[dtype], DEVICE)
        assert result.passed, result


def test_torch_rope_backward_is_the_inverse_rotation_on_strided_input():
    # q arrives as a transposed view of the projection: gradients must match the reference exactly there too
    x = torch.randn(2, 5, 3, 16).transpose(1, 2)
    angles = torch.randn(5, 6)
    for interleaved in (False, True):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        g = torch.randn(2, 3, 5, 16)
        reference.rope(a, angles.cos(), angles.sin(), interleaved).backward(g)
        out = K.implementations("rope")["torch"].fn(b, angles.cos(), angles.sin(), interleaved)
        out.backward(g)
        assert torch.allclose(out, reference.rope(x, angles.cos(), angles.sin(), interleaved), atol=1e-6)
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_reference_in_low_precision_is_within_the_stated_tolerance(dtype):
    for op, cases in CASES.items():
        for case in cases:
            result = run_case(op, "reference", case, DTYPES[dtype], DEVICE)
            assert result.passed, result


def test_attention_rows_with_no_visible_key_are_zero_with_finite_gradients():
    q, k, v = (torch.randn(1, 2, 4, 16, requires_grad=True) for _ in range(3))
    topk = torch.tensor([[[-1, -1], [0, 1], [-1, -1], [2, 3]]])  # queries 0 and 2 choose no key at all
    for impl in ("reference", "torch"):
        out = K.implementations("attention")[impl].fn(q, k, v, causal=True, topk_indices=topk)
        assert out[0, :, [0, 2]].abs().max() == 0
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)


def test_the_harness_catches_wrong_kernels():
    def no_causal_mask(q, k, v, causal=True, scale=None, topk_indices=None):
        return reference.attention(q, k, v, causal=False, scale=scale, topk_indices=topk_indices)

    def wrong_rope_style(x, cos, sin, interleaved=False):
        return reference.rope(x, cos, sin, not interleaved)

    def forward_only_norm(x, weight, eps=1e-6):  # right forward, gradient blocked for weight
        return reference.rms_norm(x, weight.detach(), eps) + 0 * weight.sum()

    assert not run_case("attention", "bad", CASES["attention"][0], torch.float32, fn=no_causal_mask).passed
    assert not run_case("rope", "bad", CASES["rope"][0], torch.float32, fn=wrong_rope_style).passed
    result = run_case("rms_norm", "bad", CASES["rms_norm"][0], torch.float32, fn=forward_only_norm)
    assert result.forward_error < 1e-6 and not result.passed
    from workbench.kernels.correctness import _relative_error

    nan, inf = float("nan"), float("inf")  # a nan in the golden output let any values elsewhere pass
    assert _relative_error(torch.tensor([nan, 100.0, -5.0]), torch.tensor([nan, 1.0, 2.0])) > 1
    assert _relative_error(torch.tensor([-inf, 7.0]), torch.tensor([inf, 1.0])) == inf
    assert _relative_error(torch.tensor([nan, 1.0, inf]), torch.tensor([nan, 1.0, inf])) == 0.0


def test_the_harness_catches_router_gradients_chunked_cross_entropy_and_failing_backwards():
    """Three kernels that passed `kernels check`: an MoE that cuts the routing weights' gradient (the router would
    stop training), a cross_entropy wrong only in its chunked path (the one GLM's 151k vocabulary takes; the checks
    were all below the logits budget) or only for another ignore_index; and a kernel whose backward raises crashed
    the whole table instead of failing its row."""
    def detached_routing(x, indices, weights, w_gate_up, w_down):
        return reference.moe(x, indices, weights.detach(), w_gate_up, w_down)

    def chunked_wrong(hidden, weight, labels, ignore_index=-100):
        loss = torch_ops.cross_entropy(hidden, weight, labels, ignore_index=ignore_index)
        return loss * 2 if torch_ops.LOGITS_BUDGET_BYTES == 0 else loss  # wrong only when chunking

    def fixed_ignore_index(hidden, weight, labels, ignore_index=-100):
        return reference.cross_entropy(hidden, weight, labels)

    def no_backward(x, weight, eps=1e-6):
        return reference.rms_norm(x, weight, eps).detach()

    assert not any(run_case("moe", "bad", case, torch.float32, fn=detached_routing).passed for case in CASES["moe"])
    assert not all(run_case("cross_entropy", "bad", case, torch.float32, fn=chunked_wrong).passed
                   for case in CASES["cross_entropy"])
    assert not all(run_case("cross_entropy", "bad", case, torch.float32, fn=fixed_ignore_index).passed
                   for case in CASES["cross_entropy"])
    assert torch_ops.LOGITS_BUDGET_BYTES == 256 * 2**20  # the chunked case puts the budget back
    result = run_case("rms_norm", "bad", CASES["rms_norm"][0], torch.float32, fn=no_backward)
    assert not result.passed and "does not require grad" in result.note


def test_moe_grouped_mm_and_split_fallback_agree(monkeypatch):
    assert torch_ops.grouped_mm_works("cpu", torch.float32)  # torch 2.13 has a cpu kernel; the probe must see it
    for case in CASES["moe"]:
        assert run_case("moe", "torch", case, torch.float32).passed
    monkeypatch.setattr(torch_ops, "grouped_mm_works", lambda *args: False)  # the per-expert split fallback
    for case in CASES["moe"]:
        assert run_case("moe", "torch", case, torch.float32).passed
        assert run_case("moe", "torch", case, torch.bfloat16).passed


def test_grouped_mm_probe_works_inside_no_grad(monkeypatch):
    monkeypatch.setattr(torch_ops, "_GROUPED_MM_WORKS", {})  # a cold start
    with torch.no_grad():
        assert torch_ops.grouped_mm_works("cpu", torch.float32)


def test_moe_and_cross_entropy_follow_autocast_like_the_reference():
    gen = torch.Generator().manual_seed(0)
    (x, idx, w, w_gate_up, w_down), _ = CASES["moe"][0].make(gen)
    hidden, weight = torch.randn(8, 16, generator=gen), torch.randn(300, 16, generator=gen) * 0.25
    labels = torch.randint(0, 300, (8,), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x_in in (x, x.bfloat16()):  # fp32 residual stream, or an activation autocast already cast
            ours, ref = torch_ops.moe(x_in, idx, w, w_gate_up, w_down), reference.moe(x_in, idx, w, w_gate_up, w_down)
            assert ours.dtype == ref.dtype == x_in.dtype
            torch.testing.assert_close(ours.float(), ref.float(), rtol=0.03, atol=0.03)
        chunked = torch_ops.cross_entropy(hidden, weight.requires_grad_(), labels, chunk_size=64)
        plain = reference.cross_entropy(hidden, weight, labels)
    torch.testing.assert_close(chunked, plain, rtol=1e-3, atol=1e-3)  # both from bf16 logits
    (g_chunked,) = torch.autograd.grad(chunked, weight)
    (g_plain,) = torch.autograd.grad(plain, weight)
    torch.testing.assert_close(g_chunked, g_plain, rtol=0.03, atol=2e-3)


def test_moe_handles_experts_with_no_tokens():
    x = torch.randn(6, 8)
    idx = torch.tensor([[0], [0], [3], [3], [3], [0]])  # experts 1, 2 unused
    w = torch.ones(6, 1)
    w_gate_up, w_down = torch.randn(4, 12, 8), torch.randn(4, 8, 6)
    torch.testing.assert_close(torch_ops.moe(x, idx, w, w_gate_up, w_down),
                               reference.moe(x, idx, w, w_gate_up, w_down))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_chunked_cross_entropy_matches_reference(dtype):
    import functools

    def fifths(hidden, weight, labels, ignore_index=-100):  # 5-6 ragged chunks whatever the vocabulary
        return torch_ops.cross_entropy(hidden, weight, labels, ignore_index, chunk_size=weight.shape[0] // 5 + 1)

    for chunked in (fifths, functools.partial(torch_ops.cross_entropy, chunk_size=8192)):
        for case in CASES["cross_entropy"]:
            result = run_case("cross_entropy", "torch-chunked", case, DTYPES[dtype], DEVICE, fn=chunked)
            assert result.passed, result


def test_cross_entropy_chooses_chunking_by_size(monkeypatch):
    calls = []
    monkeypatch.setattr(torch_ops.ChunkedCrossEntropy, "apply", lambda *a: calls.append(a[-1]) or torch.tensor(0.0))
    hidden, weight, labels = torch.randn(4, 8), torch.randn(100, 8), torch.randint(0, 100, (4,))
    torch_ops.cross_entropy(hidden, weight, labels)
    assert calls == []  # 4 x 100 logits: the plain formula
    monkeypatch.setattr(torch_ops, "LOGITS_BUDGET_BYTES", 100)
    torch_ops.cross_entropy(hidden, weight, labels)
    assert calls == [100]  # over budget: chunked (one chunk of at most V)


def test_chunked_cross_entropy_never_holds_the_full_logits():
    rows, dim, vocab, chunk = 64, 32, 4096, 512
    hidden = torch.randn(rows, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    labels = torch.randint(0, vocab, (rows,))
    full_logits_bytes = rows * vocab * 4

    def chunked():
        loss = torch_ops.cross_entropy(hidden, weight, labels, chunk_size=chunk)
        loss.backward()
        return loss

    def plain():
        loss = reference.cross_entropy(hidden, weight, labels)
        loss.backward()
        return loss

    chunked_peak = flash_teaching.peak_memory_bytes(chunked)
    plain_peak = flash_teaching.peak_memory_bytes(plain)
    # the gradients (hidden + weight, fp32) are allocated either way; the logits are what differ
    grads = (rows * dim + vocab * dim) * 4
    assert plain_peak >= full_logits_bytes
    assert chunked_peak < grads + full_logits_bytes / 2, (chunked_peak, plain_peak)
    torch.testing.assert_close(torch_ops.cross_entropy(hidden, weight, labels, chunk_size=chunk),
                               reference.cross_entropy(hidden, weight, labels))
    with pytest.raises(ValueError, match="chunk_size"):
        torch_ops.cross_entropy(hidden, weight, labels, chunk_size=0)


def test_chunked_cross_entropy_all_ignored_is_nan_like_torch():
    hidden, weight = torch.randn(3, 4), torch.randn(10000, 4)
    labels = torch.full((3,), -100)
    assert math.isnan(torch_ops.cross_entropy(hidden, weight, labels, chunk_size=4096).item())
    assert math.isnan(reference.cross_entropy(hidden, weight, labels).item())
    # ... but its gradient is zero, as F's is (it was 0/0 = nan in every weight: one padded micro-batch, all nan)
    for loss_fn in (lambda h, w: torch_ops.cross_entropy(h, w, labels, chunk_size=4096),
                    lambda h, w: reference.cross_entropy(h, w, labels)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss_fn(h, w).nan_to_num(0.0).backward()
        assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("bad_label", [11, 50, -1])
def test_chunked_cross_entropy_refuses_labels_outside_the_vocabulary(bad_label):
    """The chunked path returned a finite, wrong loss where F.cross_entropy raises."""
    hidden, weight, labels = torch.randn(4, 8), torch.randn(11, 8), torch.tensor([0, 3, bad_label, 10])
    with pytest.raises(IndexError):
        reference.cross_entropy(hidden, weight, labels)
    with pytest.raises(IndexError, match=r"outside \[0, 11\)"):
        torch_ops.cross_entropy(hidden, weight, labels, chunk_size=3)


@pytest.mark.parametrize("width, dtype", [(5, torch.float32), (7, torch.float32), (6, torch.bfloat16)])
def test_moe_with_an_expert_width_off_the_16_byte_grid_trains(width, dtype):
    """_grouped_mm's backward needs the [M, 2F] output rows 16-byte aligned: F=5 fp32 / F=6 bf16 crashed in
    backward ("strides should be multiple of 16 bytes"); such sizes take the per-expert GEMMs instead."""
    torch.manual_seed(0)
    x = torch.randn(10, 8, dtype=dtype, requires_grad=True)
    idx, wts = torch.randint(0, 4, (10, 2)), torch.rand(10, 2)
    w_gate_up = (torch.randn(4, 2 * width, 8) * 0.1).to(dtype).requires_grad_()
    w_down = (torch.randn(4, 8, width) * 0.1).to(dtype).requires_grad_()
    out = torch_ops.moe(x, idx, wts, w_gate_up, w_down)
    out.float().sum().backward()
    expected = reference.moe(x.detach(), idx, wts, w_gate_up.detach(), w_down.detach())
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    assert x.grad is not None and w_gate_up.grad is not None and w_down.grad is not None


@pytest.mark.parametrize("impl", ["reference", "torch", "csr"])
def test_top_k_indices_beyond_the_keys_are_refused(impl):
    """Out of range, the mask wrapped an index around to another key, and the gathered kernels read the next
    sequence's keys: a silent wrong answer."""
    q, kv = torch.randn(2, 3, 2, 16), torch.randn(2, 5, 16)
    topk = torch.tensor([[[0, 1], [1, 2], [2, 5]]]).expand(2, 3, 2).contiguous()  # 5 = one past the last key
    fn = registry.implementations("sparse_mqa_attention")[impl].fn
    with pytest.raises(IndexError, match=r"top-k index 5 is outside \[-1, 5\)"):
        fn(q, kv, topk, 0.25, 8)
    with pytest.raises(IndexError, match="outside"):
        reference.topk_to_mask(topk - 3, 5)  # -3 is neither a key nor the unused marker -1
    fn(q, kv, topk.clamp(max=4), 0.25, 8)  # in range: fine


# ---------------------------------------------------------------------------------------------------------------
# FlashAttention teaching version
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 2, 37, 37, 16), (1, 2, 2, 5, 19, 16), (1, 2, 1, 19, 5, 8)])
def test_tiled_attention_equals_reference(shape, causal):
    batch, heads, kv_heads, q_len, k_len, dim = shape
    q = torch.randn(batch, heads, q_len, dim, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, k_len, dim, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, k_len, dim, dtype=torch.float64)
    out = flash_teaching.tiled_attention(q, k, v, causal=causal, block_q=8, block_k=6)
    torch.testing.assert_close(out.float(), reference.attention(q, k, v, causal=causal).float(),
                               rtol=1e-5, atol=1e-5)


def test_tiled_attention_peak_memory_is_far_below_naive():
    report = flash_teaching.memory_comparison(batch=1, heads=2, seq_len=512, head_dim=32, block=64)
    # naive holds at least the [B, H, S, S] fp32 scores; tiled only tiles and the output
    assert report["naive_peak_bytes"] >= report["naive_score_matrix_bytes"]
    assert report["tiled_peak_bytes"] < report["naive_score_matrix_bytes"] / 4
    assert report["ratio"] > 4


# ---------------------------------------------------------------------------------------------------------------
# benchmark and CLI
# ---------------------------------------------------------------------------------------------------------------
def test_benchmark_rows_roofline_and_outputs(tmp_path):
    from workbench.kernels import bench

    peaks = bench.Peaks(1e11, "test: 100 GFLOP/s", 1e10, "test: 10 GB/s")
    result = bench.run_benchmark("cpu", torch.float32, "tiny", repeats=1, peaks=peaks, moe_experts=(8,))
    ops = {(r["op"], r["impl"]) for r in result["rows"]}
    assert ("attention", "torch") in ops and ("moe", "reference") in ops and ("cross_entropy", "torch") in ops
    for row in result["rows"]:
        assert row["time_ms"] > 0
        assert row["gflops"] == pytest.approx(row["flops"] / row["time_ms"] / 1e6)
        bound = max(row["flops"] / 1e11, row["bytes"] / 1e10)
        assert row["pct_of_roofline"] == pytest.approx(100 * bound / (row["time_ms"] / 1e3))
        assert row["bound_by"] == ("memory" if row["intensity"] < 10 else "compute")
    assert {c["what"].split()[0] for c in result["comparisons"]} == {"moe", "attention"}
    paths = bench.write_outputs(result, tmp_path)
    assert json.loads(open(paths["json"]).read())["peaks"]["flops_source"] == "test: 100 GFLOP/s"
    assert "plotly" in open(paths["html"]).read().lower()
    with pytest.raises(ValueError, match="kv_heads"):
        bench.BenchSizes(heads=6, kv_heads=4)
    with pytest.raises(ValueError, match="preset"):
        bench.run_benchmark("cpu", sizes="huge", peaks=peaks)


def test_benchmark_train_mode_runs_every_op_and_implementation():
    """--mode train differentiates only what a model would (rope's cos/sin are constants: the torch rope refuses)."""
    from workbench.kernels import bench

    peaks = bench.Peaks(1e11, "test", 1e10, "test")
    result = bench.run_benchmark("cpu", torch.float32, "tiny", mode="train", repeats=1, peaks=peaks, moe_experts=(8,))
    timed = {(r["op"], r["impl"]) for r in result["rows"] if r["time_ms"] > 0}
    expected = {(row["op"], row["impl"]) for row in K.availability_table("cpu") if row["available"]}
    assert timed == expected


def test_attention_flops_count_only_visible_pairs():
    from workbench.kernels.bench import _visible_pairs

    assert _visible_pairs(4, 4, True) == 10
    assert _visible_pairs(4, 4, False) == 16
    assert _visible_pairs(2, 5, True) == 4 + 5  # decode: bottom-right aligned


def test_dsa_benchmark_counts_the_pairs_its_inputs_attend():
    """The DSA rows counted K keys per query, but their inputs (the correctness cases' random picks, with repeats
    and random -1s) attended 2-2.5x fewer: GFLOP/s and % of roofline came out inflated by that much."""
    from workbench.kernels.bench import PRESETS, problems

    sizes = PRESETS["tiny"]
    dsa = [p for p in problems(sizes, torch.device("cpu"), torch.float32, ops=["attention", "sparse_mqa_attention"])
           if "DSA" in p.label]
    assert len(dsa) == 2
    for problem in dsa:
        args, kwargs = problem.make()
        topk = kwargs.get("topk_indices", args[2] if len(args) > 2 else None)
        kept = sum(len(set(row.tolist()) - {-1}) for row in topk.reshape(-1, topk.shape[-1]))
        assert (topk >= 0).sum().item() == kept  # distinct keys, no repeats
        head_dim = args[0].shape[-1]
        assert problem.flops == 2.0 * sizes.heads * kept * 2 * head_dim


def test_cli_check_and_bench_fail_when_nothing_they_were_asked_for_runs_here(tmp_path, capsys):
    """`kernels check --impls npu` printed "0/0 checks passed" and exited 0; bench wrote an empty table."""
    from workbench.cli import main

    assert main(["kernels", "check", "--ops", "attention", "--impls", "npu", "--device", "cpu"]) == 2
    assert "nothing to check on cpu" in capsys.readouterr().err
    assert main(["kernels", "bench", "--ops", "attention", "--impls", "npu", "--device", "cpu", "--sizes", "tiny",
                 "--no-probe", "--out", str(tmp_path)]) == 2
    assert "nothing to benchmark on cpu" in capsys.readouterr().err
    assert not (tmp_path / "kernels_bench.json").exists()


def test_cli_list_and_check(capsys):
    from workbench.cli import main

    assert main(["kernels", "list", "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    selected = {r["op"]: r["impl"] for r in rows if r["selected"]}
    assert selected["attention"] == "torch"
    assert main(["kernels", "list", "--device", "npu"]) == 0  # lists why npu kernels are missing here
    assert "torch_npu" in capsys.readouterr().out
    assert main(["kernels", "check", "--device", "cpu", "--ops", "swiglu", "--dtypes", "fp32"]) == 0
    assert "checks passed" in capsys.readouterr().out
    # --json: stdout is one JSON document (the summary line after the array made json.load fail: "Extra data")
    assert main(["kernels", "check", "--device", "cpu", "--ops", "swiglu", "--dtypes", "fp32", "--json"]) == 0
    captured = capsys.readouterr()
    assert all(row["passed"] for row in json.loads(captured.out)) and "checks passed" in captured.err
    assert main(["kernels", "bench", "--device", "cpu", "--repeats", "0"]) == 2


def test_cli_bench_writes_json_and_chart(tmp_path, capsys):
    from workbench.cli import main

    code = main(["kernels", "bench", "--device", "cpu", "--dtype", "fp32", "--sizes", "tiny", "--ops", "rms_norm,moe",
                 "--repeats", "1", "--moe-experts", "8", "--no-probe", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "kernels_bench.json").read_text())
    assert {r["op"] for r in result["rows"]} == {"rms_norm", "moe"}
    assert (tmp_path / "kernels_bench_roofline.html").exists()
    assert "rms_norm" in capsys.readouterr().out


def test_torch_attention_mla_shapes_with_dsa_topk_match_reference():
    # MLA: v narrower than q/k (the cpu path zero-pads v for flash attention), DSA top-k mask, causal; some
    # query rows keep a single key and slots are -1: forward and every gradient must match the written-out math.
    torch.manual_seed(0)
    B, H, S, D, Dv, slots = 2, 3, 12, 24, 8, 4
    q, k, v = torch.randn(B, H, S, D), torch.randn(B, H, S, D), torch.randn(B, H, S, Dv)
    scores = torch.randn(B, S, S).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    values, topk = scores.topk(slots, dim=-1)
    topk = topk.masked_fill(values == float("-inf"), -1)
    g = torch.randn(B, H, S, Dv)
    results = []
    for impl in ("reference", "torch"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = K.implementations("attention")[impl].fn(*leaves, causal=True, scale=0.3, topk_indices=topk)
        assert out.shape == (B, H, S, Dv)
        out.backward(g)
        results.append([out.detach()] + [t.grad for t in leaves])
    for ref, got in zip(*results):
        assert torch.allclose(ref, got, atol=1e-5), (ref - got).abs().max()


@pytest.mark.parametrize("F_, empty_expert", [(8, False), (8, True), (7, False), (7, True)])
def test_grouped_moe_compiles_into_one_graph_with_the_eager_numbers(caplog, F_, empty_expert):
    """The trainer's --compile path on an MoE model: the whole kernel is one graph (fullgraph=True fails on any
    break). The fp32 grouped GEMMs used to run eagerly behind a graph break, so routing, permutation and SwiGLU
    around them were compiled in pieces; now they are one opaque custom op with its own backward. No error logged
    while tracing (torch's fake-tensor rule for _grouped_mm rejects fp32), same numbers as eager, also with an
    expert that gets no rows and with an odd expert width (2F x 4 bytes not 16-byte aligned: per-expert GEMMs)."""
    torch._dynamo.reset()
    registry.resolve_all("cpu")  # what the trainer does before compiling: probes included
    gen = torch.Generator().manual_seed(0)
    T, D, E = 24, 16, 4
    x = torch.randn(T, D, generator=gen, requires_grad=True)
    indices = torch.stack([torch.randperm(E - empty_expert, generator=gen)[:2] for _ in range(T)])
    weights = torch.rand(T, 2, generator=gen)
    w_gate_up = (torch.randn(E, 2 * F_, D, generator=gen) * D ** -0.5).requires_grad_()
    w_down = (torch.randn(E, D, F_, generator=gen) * F_ ** -0.5).requires_grad_()
    moe = K.implementations("moe")["torch"].fn
    with caplog.at_level("ERROR"):
        out = torch.compile(moe, fullgraph=True)(x, indices, weights, w_gate_up, w_down)
        grads = torch.autograd.grad(out.square().sum(), (x, w_gate_up, w_down))
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text[:500]
    expected = moe(x, indices, weights, w_gate_up, w_down)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)  # inductor may reorder fused fp32 math
    torch.testing.assert_close(grads, torch.autograd.grad(expected.square().sum(), (x, w_gate_up, w_down)),
                               rtol=1e-4, atol=1e-5)


def test_csr_sparse_mqa_attention_runs_under_torch_compile():
    """The trainer's --compile path on glm5 at long sequences: the csr kernel runs eagerly behind a graph break
    (dynamo crashed tracing views of sparse tensors) and gives the eager numbers."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    B, S, H, D, Dv, slots = 1, 24, 2, 12, 8, 4
    scores = torch.randn(B, S, S, generator=gen).masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), -math.inf)
    values, topk = scores.topk(slots, dim=-1)
    topk = topk.masked_fill(values == -math.inf, -1)
    q = torch.randn(B, S, H, D, generator=gen, requires_grad=True)
    kv = torch.randn(B, S, D, generator=gen, requires_grad=True)
    csr = K.implementations("sparse_mqa_attention")["csr"].fn

    def attend(q, kv):
        out, _ = csr(q * 1.0, kv, topk, 0.3, Dv)
        return out.square().sum()

    compiled = torch.compile(attend)(q, kv)
    grads = torch.autograd.grad(compiled, (q, kv))
    eager = attend(q, kv)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grads, torch.autograd.grad(eager, (q, kv)))


def test_torch_rope_and_autograd_rms_norm_work_under_torch_compile():
    # the trainer's --compile path: the rope kernel must fall back to math inductor can fuse (it rejects mul(out=))
    rope_fn = K.implementations("rope")["torch"].fn
    norm_fn = K.implementations("rms_norm")["autograd"].fn

    def block(x, w, cos, sin):
        return rope_fn(norm_fn(x, w), cos, sin, True)

    x, w, angles = torch.randn(2, 3, 5, 16, requires_grad=True), torch.randn(16), torch.randn(5, 4)
    out = torch.compile(block)(x, w, angles.cos(), angles.sin())
    out.sum().backward()
    expected = reference.rope(reference.rms_norm(x, w), angles.cos(), angles.sin(), True)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_moe_on_no_tokens_is_empty_and_still_in_the_graph(impl):
    """An expert-parallel rank may receive no rows: the torch path crashed on a -1 view of 0 elements, and the
    reference returned a tensor outside the graph (its backward, with the all-to-all in it, would never run)."""
    x = torch.randn(0, 8, requires_grad=True)
    w_gate_up, w_down = torch.randn(4, 8, 8, requires_grad=True), torch.randn(4, 8, 4, requires_grad=True)
    y = registry.implementations("moe")[impl].fn(x, torch.zeros(0, 2, dtype=torch.long), torch.rand(0, 2),
                                                 w_gate_up, w_down)
    assert y.shape == (0, 8) and y.requires_grad
    y.sum().backward()
    assert x.grad.shape == (0, 8)


def test_kernels_resolve_ahead_of_compile_and_are_not_counted_while_compiling(monkeypatch):
    """Under torch.compile the dispatch counter made dynamo guard on it and recompile up to its limit, and a first
    lookup traced into the availability checks and broke the graph inside the layer loop."""
    registry._RESOLVED.clear()
    registry.resolve_all("cpu")
    assert {key[0] for key in registry._RESOLVED} == set(K.ops())
    before = K.call_counts()
    monkeypatch.setattr(registry, "_compiling", lambda: True)
    K.rms_norm(torch.randn(2, 4), torch.ones(4))
    assert K.call_counts() == before


def test_kernel_choices_do_not_break_a_compiled_graph(monkeypatch):
    """With WORKBENCH_KERNELS set (even to the defaults) every kernel call skipped the resolve cache and traced into
    the registry: 32 graph breaks in a 6-layer model. A choice made after compiling (use_kernels, as notebook 04's
    profile_kernel_choices does) cleared the cache, with the same effect on the next trace."""
    torch._dynamo.reset()
    q, k, v = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)

    def attend(q, k, v):
        return K.attention(q, k, v, causal=True) * 2

    monkeypatch.setenv("WORKBENCH_KERNELS", "attention=torch")
    registry.resolve_all("cpu")
    torch.compile(attend, fullgraph=True)(q, k, v)  # fullgraph: any break raises
    monkeypatch.delenv("WORKBENCH_KERNELS")
    registry.resolve_all("cpu")
    compiled = torch.compile(attend, fullgraph=True)
    compiled(q, k, v)
    with K.use_kernels({"attention": "reference"}):
        torch.testing.assert_close(compiled(q, k, v), reference.attention(q, k, v, causal=True) * 2)
    torch.testing.assert_close(compiled(q, k, v), attend(q, k, v))


def test_grouped_mm_custom_op_passes_opcheck_also_without_rows():
    """The custom op behind torch.compile: its shape rule, autograd and schema agree with what it computes (torch's
    opcheck), also for an expert-parallel rank that received no rows, where _grouped_mm's output had strides the
    shape rule did not promise."""
    w = torch.randn(3, 8, 12, requires_grad=True)
    for rows, counts in ((torch.randn(10, 8, requires_grad=True), torch.tensor([4, 0, 6])),
                         (torch.randn(0, 8, requires_grad=True), torch.tensor([0, 0, 0]))):
        for fused in (True, False):
            torch.library.opcheck(torch_ops._grouped_mm_op, (rows, w, counts, fused))


def test_cli_bench_without_plotly_says_why_there_is_no_chart(tmp_path, monkeypatch, capsys):
    """With plotly missing the bench wrote its JSON and then printed 'wrote ... and None'."""
    import sys

    from workbench.cli import main

    for name in ("plotly", "plotly.graph_objects"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["kernels", "bench", "--device", "cpu", "--ops", "rms_norm", "--sizes", "tiny", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "plotly is not installed" in out and "None" not in out
