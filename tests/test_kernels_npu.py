"""npu kernels (torch_npu fused operators) checked for arguments and layouts against a FAKE torch_npu.

THIS IS A TEST DOUBLE, NOT ASCEND HARDWARE. ``FakeTorchNpu`` implements the documented semantics of
npu_fusion_attention, npu_rms_norm, npu_rotary_mul, npu_swiglu and npu_grouped_matmul in plain torch (see
Huawei's torch_npu API reference), rejects arguments the documentation rules out
(wrong layout, mask dtype, head dims, group lists), and records every call. The device layer's guarded import is
patched to return it, so the npu implementations are reached exactly as on an Ascend host. Passing here means
"we call the documented API with the right layouts", not "it ran on an NPU": it never has, in this project.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

import workbench.kernels as K
from workbench.device import detect
from workbench.kernels import npu_ops, reference, registry
from workbench.kernels.correctness import CASES, run_case

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class FakeTorchNpu(types.ModuleType):
    """Test double: documented torch_npu fused-op semantics in plain torch, with argument checks and a call log."""

    def __init__(self):
        super().__init__("torch_npu")
        self.calls: list[tuple[str, dict]] = []

    # -- npu_rms_norm(x, gamma, epsilon=1e-6) -> (y, rstd) --------------------------------------------------------
    def npu_rms_norm(self, x, gamma, epsilon=1e-6):
        self.calls.append(("npu_rms_norm", {"shape": tuple(x.shape), "epsilon": epsilon}))
        assert gamma.shape == x.shape[-gamma.dim():], "gamma must match the trailing dims of x"
        assert gamma.dtype == x.dtype, "gamma must have the dtype of x (Huawei's npu_rms_norm reference)"
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + epsilon)
        return (x.float() * rstd * gamma.float()).to(x.dtype), rstd

    # -- npu_rotary_mul(x, r1, r2, rotary_mode="half") ------------------------------------------------------------
    def npu_rotary_mul(self, x, r1, r2, rotary_mode="half"):
        self.calls.append(("npu_rotary_mul", {"shape": tuple(x.shape), "cos_shape": tuple(r1.shape),
                                              "rotary_mode": rotary_mode}))
        assert x.dim() == 4, "npu_rotary_mul takes 4-D input"
        assert r1.dim() == 4 and r2.dim() == 4, "cos/sin must be 4-D"
        assert r1.shape[-1] == x.shape[-1], "cos/sin are full width (the rotary dim of x)"
        assert rotary_mode in ("half", "interleave"), rotary_mode
        if rotary_mode == "half":
            x1, x2 = x.chunk(2, dim=-1)
            rotated = torch.cat((-x2, x1), dim=-1)
        else:
            rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
        return x * r1 + rotated * r2

    # -- npu_swiglu(x, dim=-1) ------------------------------------------------------------------------------------
    def npu_swiglu(self, x, dim=-1):
        self.calls.append(("npu_swiglu", {"shape": tuple(x.shape), "dim": dim}))
        assert x.numel() > 0 and x.is_contiguous(), "npu_swiglu rejects empty and non-contiguous tensors"
        a, b = x.chunk(2, dim=dim)
        return F.silu(a) * b

    # -- npu_fusion_attention(query, key, value, head_num, input_layout, ...) -------------------------------------
    def npu_fusion_attention(self, query, key, value, head_num, input_layout, pse=None, padding_mask=None,
                             atten_mask=None, scale=1.0, keep_prob=1.0, pre_tockens=2147483647,
                             next_tockens=2147483647, inner_precise=0, prefix=None, actual_seq_qlen=None,
                             actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False):
        self.calls.append(("npu_fusion_attention", {
            "input_layout": input_layout, "head_num": head_num, "scale": scale, "sparse_mode": sparse_mode,
            "mask_shape": None if atten_mask is None else tuple(atten_mask.shape),
            "mask_dtype": None if atten_mask is None else atten_mask.dtype, "keep_prob": keep_prob}))
        assert input_layout in ("BNSD", "BSND"), f"this fake implements BNSD and BSND, got {input_layout}"
        if input_layout == "BSND":
            query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        assert query.shape[1] == head_num, "head_num must be the number of query heads"
        assert head_num % key.shape[1] == 0, "key/value heads must divide query heads"
        assert query.shape[-1] % 16 == 0 and query.shape[-1] <= 512, "head dim: multiple of 16, at most 512"
        # not stated by torch_npu's reference; MindSpore documents the same op (FlashAttentionScore) so: be strict
        assert value.shape[-1] == key.shape[-1] == query.shape[-1], "query, key and value share one head dim"
        assert keep_prob == 1.0, "the fake has no dropout"
        group = head_num // key.shape[1]
        key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
        scores = (query.float() @ key.float().transpose(-1, -2)) * scale
        q_len, k_len = scores.shape[-2:]
        masked = torch.zeros(q_len, k_len, dtype=torch.bool)
        if sparse_mode in (2, 3):  # compressed causal mask: 2048x2048, True above the diagonal
            assert atten_mask is not None and atten_mask.dtype == torch.bool
            assert tuple(atten_mask.shape) == (2048, 2048), "sparse_mode 2/3 take the 2048x2048 compressed mask"
            offset = 0 if sparse_mode == 2 else k_len - q_len  # left-up vs right-down alignment
            masked = torch.ones(q_len, k_len, dtype=torch.bool).triu(diagonal=1 + offset)
        elif sparse_mode == 0:
            if atten_mask is not None:
                assert atten_mask.dtype == torch.bool, "atten_mask is bool, True = masked out"
                assert atten_mask.shape[-2:] == (q_len, k_len), "full mask must be [.., Sq, Sk]"
                masked = atten_mask
        else:
            raise AssertionError(f"sparse_mode {sparse_mode} is not implemented by the fake")
        # Fused kernels fill masked scores with a large negative number, not -inf (a fully masked row is uniform).
        scores = scores.masked_fill(masked, -1e30)
        out = (torch.softmax(scores, dim=-1).to(value.dtype) @ value).to(query.dtype)
        if input_layout == "BSND":
            out = out.transpose(1, 2)
        return out, None, None, None, 0, 0, 0

    # -- npu_grouped_matmul(x, weight, *, group_list=None, split_item=0, group_type=-1, ...) -> list -------------
    def npu_grouped_matmul(self, x, weight, *, bias=None, group_list=None, split_item=0, group_type=-1, **kw):
        self.calls.append(("npu_grouped_matmul", {"n_x": len(x), "n_weight": len(weight), "split_item": split_item,
                                                  "group_type": group_type,
                                                  "group_list": [int(g) for g in group_list]}))
        assert isinstance(x, list) and isinstance(weight, list), "x and weight are lists of tensors"
        assert len(weight) <= 128, "at most 128 groups"
        # the dtype table allows fp32 only for single x / weight / output tensors
        assert not (len(weight) > 1 and weight[0].dtype == torch.float32), "fp32 needs single tensors"
        return self._grouped_matmul(x, weight, group_list, split_item, group_type)

    @torch.no_grad()  # as the real op: no backward is registered for it (op-plugin's derivatives.yaml)
    def _grouped_matmul(self, x, weight, group_list, split_item, group_type):
        if group_type == 0:  # one x split along M by cumulative group_list
            assert len(x) == 1 and len(group_list) == len(weight)
            bounds = [int(g) for g in group_list]
            assert bounds == sorted(bounds) and bounds[-1] == x[0].shape[0], "group_list is cumulative rows"
            starts = [0] + bounds[:-1]
            outs = [x[0][s:e] @ w for s, e, w in zip(starts, bounds, weight)]
        else:
            assert group_type == -1 and len(x) == len(weight)
            outs = [a @ w for a, w in zip(x, weight)]
        return [torch.cat(outs)] if split_item in (2, 3) else outs


@pytest.fixture
def fake_npu(monkeypatch):
    """Install the fake as what the device layer's guarded torch_npu import returns."""
    fake = FakeTorchNpu()
    monkeypatch.setattr(detect, "_import_torch_npu", lambda: (fake, None))
    registry._RESOLVED.clear()
    yield fake
    registry._RESOLVED.clear()


def test_without_torch_npu_the_npu_kernels_say_why():
    reason = registry.implementations("attention")["npu"].unavailable_reason("npu")
    assert reason and "torch_npu" in reason
    with pytest.raises(RuntimeError, match="npu kernels need torch_npu"):
        npu_ops.swiglu(torch.randn(2, 8))


def test_with_torch_npu_the_fused_ops_are_the_npu_default(fake_npu):
    for op in ("attention", "moe", "rms_norm", "rope", "swiglu"):
        assert K.resolve_impl(op, "npu").name == "npu"
    assert K.resolve_impl("cross_entropy", "npu").name == "torch"  # no fused npu CE: the chunked torch one
    assert K.resolve_impl("attention", "cpu").name == "torch"  # npu ops never leak onto other devices


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["rms_norm", "rope", "swiglu", "attention", "moe"])
def test_npu_wrappers_match_reference_through_the_fake(fake_npu, op, dtype):
    for case in CASES[op]:
        result = run_case(op, "npu", case, DTYPES[dtype], "cpu")
        assert result.passed, result
    # fp32 MoE takes the torch path (the fused op allows fp32 only for single tensors, not a list of experts)
    assert fake_npu.calls or (op, dtype) == ("moe", "fp32"), "the fake torch_npu was never called"


def test_attention_layouts_masks_and_modes(fake_npu):
    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    npu_ops.attention(q, k, v, causal=True)
    npu_ops.attention(q, k, v, causal=False, scale=0.5)
    topk = torch.randint(0, 8, (2, 8, 3))
    npu_ops.attention(q, k, v, causal=True, topk_indices=topk)
    causal, full, sparse = [c[1] for c in fake_npu.calls]
    assert causal["input_layout"] == "BNSD" and causal["head_num"] == 4
    assert causal["sparse_mode"] == 3 and causal["mask_shape"] == (2048, 2048)
    assert causal["scale"] == pytest.approx(1 / math.sqrt(16))
    assert full["mask_shape"] is None and full["sparse_mode"] == 0 and full["scale"] == 0.5
    assert sparse["sparse_mode"] == 0 and sparse["mask_shape"] == (2, 1, 8, 8) and sparse["mask_dtype"] == torch.bool
    with pytest.raises(ValueError, match="multiple of 16"):
        npu_ops.attention(torch.randn(1, 2, 4, 24), torch.randn(1, 2, 4, 24), torch.randn(1, 2, 4, 24))


def test_decode_step_uses_right_down_causal(fake_npu):
    q, k, v = torch.randn(1, 2, 3, 16), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16)

    torch.testing.assert_close(npu_ops.attention(q, k, v), reference.attention(q, k, v))


def test_causal_queries_that_see_no_key_are_zero_like_the_reference(fake_npu):
    """More queries than keys, causal (bottom-right): the first Sq - Sk queries see nothing. The reference gives
    zeros; the wrapper passed on whatever the fused op wrote (the fake: the mean of v)."""
    q = torch.randn(1, 2, 6, 16, requires_grad=True)
    k, v = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16)
    out = npu_ops.attention(q, k, v, causal=True)
    torch.testing.assert_close(out, reference.attention(q, k, v, causal=True), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, :, :2], torch.zeros(1, 2, 2, 16))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_rope_is_4d_full_width_with_the_right_mode(fake_npu):
    x = torch.randn(3, 5, 16)  # 3-D input: reshaped to 4-D for the fused op
    angles = torch.rand(5, 4)  # partial: 8 of 16 channels rotate
    for interleaved, mode in ((False, "half"), (True, "interleave")):
        out = npu_ops.rope(x, angles.cos(), angles.sin(), interleaved)
        call = fake_npu.calls[-1][1]
        assert call["rotary_mode"] == mode and len(call["shape"]) == 4 and call["shape"][-1] == 8
        assert call["cos_shape"][-1] == 8
        assert torch.equal(out[..., 8:], x[..., 8:])


def test_moe_grouped_matmul_arguments(fake_npu):
    x = torch.randn(6, 8, dtype=torch.bfloat16)
    idx = torch.tensor([[0, 2], [2, 0], [0, 2], [2, 3], [3, 0], [0, 2]])
    npu_ops.moe(x, idx, torch.rand(6, 2), torch.randn(4, 10, 8, dtype=torch.bfloat16),
                torch.randn(4, 8, 5, dtype=torch.bfloat16))
    grouped = [c[1] for c in fake_npu.calls if c[0] == "npu_grouped_matmul"]
    assert len(grouped) == 2
    for call in grouped:
        assert call["group_type"] == 0 and call["split_item"] == 2 and call["n_x"] == 1 and call["n_weight"] == 4
        assert call["group_list"] == [5, 5, 10, 12]  # cumulative rows: expert 0 has 5, 1 none, 2 five, 3 two
    assert [c[0] for c in fake_npu.calls].count("npu_swiglu") == 1


def test_moe_with_more_experts_than_the_fused_limit_uses_the_torch_path(fake_npu):
    case_args, _ = CASES["moe"][0].make(torch.Generator().manual_seed(0))
    x, _, weights, _, _ = case_args
    experts = npu_ops.MAX_GROUPS + 2
    idx = torch.randint(0, experts, (x.shape[0], 2))
    npu_ops.moe(x, idx, weights, torch.randn(experts, 16, 16), torch.randn(experts, 16, 8))
    assert not [c for c in fake_npu.calls if c[0] == "npu_grouped_matmul"]


def test_npu_rms_norm_gets_gamma_in_the_input_dtype_and_attention_pads_mla_values(fake_npu):
    """Under bf16 autocast MLA's latent norms get a bf16 x with an fp32 master weight: the fused op wants gamma in
    x's dtype. MLA's v is narrower than q/k: padded to one head width, the output sliced back."""
    x, weight = torch.randn(3, 32, dtype=torch.bfloat16), torch.randn(32) * 0.1 + 1
    expected = K.implementations("rms_norm")["reference"].fn(x, weight, 1e-6)
    torch.testing.assert_close(npu_ops.rms_norm(x, weight, 1e-6), expected, rtol=2e-2, atol=2e-2)
    q, k, v = torch.randn(1, 4, 8, 48), torch.randn(1, 4, 8, 48), torch.randn(1, 4, 8, 32)
    expected = K.implementations("attention")["reference"].fn(q, k, v, causal=True)
    out = npu_ops.attention(q, k, v, causal=True)
    assert out.shape == (1, 4, 8, 32)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_npu_moe_trains_through_its_own_backward_and_avoids_what_the_op_rejects(fake_npu):
    """npu_grouped_matmul has no registered backward (the fake, like the op, is not differentiable): training
    through it gave the experts no gradient. fp32 with a list of expert weights and empty inputs are outside the
    op's documented support: those take the torch path."""
    torch.manual_seed(0)
    x = torch.randn(12, 16, dtype=torch.bfloat16, requires_grad=True)
    idx, wts = torch.randint(0, 4, (12, 2)), torch.rand(12, 2)
    w_gate_up = (torch.randn(4, 32, 16) * 0.2).requires_grad_()
    w_down = (torch.randn(4, 16, 16) * 0.2).requires_grad_()
    npu_ops.moe(x, idx, wts, w_gate_up, w_down).float().sum().backward()
    assert [c[0] for c in fake_npu.calls].count("npu_grouped_matmul") == 4  # 2 forward + 2 for d rows
    ref = [t.detach().clone().requires_grad_() for t in (x, w_gate_up, w_down)]
    K.implementations("moe")["reference"].fn(ref[0], idx, wts, ref[1].to(torch.bfloat16),
                                              ref[2].to(torch.bfloat16)).float().sum().backward()
    for ours, theirs in zip((x, w_gate_up, w_down), ref):
        torch.testing.assert_close(ours.grad.float(), theirs.grad.float(), rtol=5e-2, atol=5e-2)
    fake_npu.calls.clear()
    npu_ops.moe(torch.randn(12, 16), idx, wts, w_gate_up.detach(), w_down.detach())  # fp32
    npu_ops.moe(torch.randn(0, 16, dtype=torch.bfloat16), idx[:0], wts[:0], w_gate_up, w_down)  # no tokens
    assert not fake_npu.calls


def test_npu_rope_beyond_the_documented_limits_uses_the_torch_rope(fake_npu):
    """interleave mode requires B x N < 1000: GLM-5's 64 heads pass it at a batch of 16."""
    x, cos, sin = torch.randn(16, 64, 4, 8), torch.randn(4, 4), torch.randn(4, 4)
    expected = K.implementations("rope")["reference"].fn(x, cos, sin, True)
    torch.testing.assert_close(npu_ops.rope(x, cos, sin, interleaved=True), expected)
    assert not [c for c in fake_npu.calls if c[0] == "npu_rotary_mul"]
    npu_ops.rope(x[:2], cos, sin, interleaved=True)
    assert [c for c in fake_npu.calls if c[0] == "npu_rotary_mul"]


@pytest.mark.parametrize("soc, fused", [
    ("Ascend910B2", True), ("Ascend910B4_1", True), ("Ascend910_9391", True), ("Ascend910C1", True),
    ("Ascend910A", False), ("Ascend910B", False), ("Ascend910PremiumA", False), ("Ascend310P3", False),
    ("Ascend950", False), ("Ascend910_9599", False), ("SomethingNew", False),
])
def test_fused_ops_only_on_the_generations_huawei_documents_them_for(fake_npu, monkeypatch, soc, fused):
    """torch_npu's fused operators are documented for Atlas A2/A3 only: elsewhere (a first-generation 910, whose
    plain 'Ascend910B' is SoC 104, not a 910B; a 310 inference card; an unknown SoC) the torch kernels serve the
    NPU, and `kernels list` says why the npu ones do not."""
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(get_device_name=lambda index: soc,
                                                            current_device=lambda: 0), raising=False)
    for op in ("attention", "moe", "rms_norm", "rope", "swiglu"):
        assert (K.resolve_impl(op, "npu").name == "npu") == fused, op
    reason = registry.implementations("swiglu")["npu"].unavailable_reason("npu")
    assert (reason is None) == fused
    if not fused:
        assert soc in reason and "Atlas A2/A3" in reason


def test_an_unreadable_npu_name_keeps_the_fused_ops(fake_npu, monkeypatch):
    monkeypatch.setattr(torch, "npu", types.SimpleNamespace(), raising=False)  # get_device_name missing
    assert K.resolve_impl("swiglu", "npu").name == "npu"
