"""``npu`` implementations: Ascend's fused operators from torch_npu, called with the layouts they document.

torch_npu is reached only through the device layer's guarded import (``workbench.device.detect``), never imported
here, so this module loads on any machine. They are offered only on the chips Huawei documents them for, Atlas
A2/A3 (``workbench.device.ascend``); a first-generation 910 or a 310 runs the torch implementations. What each
wrapper does (see Huawei's torch_npu API reference of each operator):

- rms_norm  -> ``npu_rms_norm(x, gamma, epsilon)``, which returns (y, rstd); we keep y;
- rope      -> ``npu_rotary_mul(x, cos, sin, rotary_mode)`` on a 4-D tensor with full-width cos/sin
              ("half" repeats cos twice, "interleave" repeats each entry); partial RoPE slices the rotary part first;
- swiglu    -> ``npu_swiglu(x, dim=-1)``;
- attention -> ``npu_fusion_attention(q, k, v, head_num, "BNSD", atten_mask=..., scale=..., sparse_mode=...)``:
              causal uses sparse_mode=3 (right-down causal, the reference's alignment) with the documented
              compressed 2048x2048 mask; DSA top-k uses sparse_mode=0 with the full [B,1,Sq,Sk] mask
              (bool, True = masked out); GQA passes kv heads as they are (they must divide query heads);
- moe       -> ``npu_grouped_matmul`` twice (gate_up, down) over tokens sorted by expert, group_type=0 (groups
              split the rows), group_list = cumulative rows per expert, split_item=2 (one output tensor).

NOT RUN ON ASCEND HARDWARE. tests/test_kernels_npu.py checks the arguments and layouts against a fake torch_npu
(a test double implementing the documented semantics in plain torch). Used through the registry on npu devices.
"""

from __future__ import annotations

import math

import torch

from workbench.kernels import torch_autograd_ops, torch_ops
from workbench.kernels.registry import register

PRIORITY = 30  # the fused Ascend operators are the reason to be on an NPU: preferred there
CAUSAL_MASK_SIZE = 2048  # sparse_mode 2/3 take a compressed 2048x2048 upper-triangular mask
MAX_GROUPS = 128  # npu_grouped_matmul handles at most 128 groups


def _torch_npu():
    """The torch_npu module from the device layer's guarded import, or a RuntimeError saying why not."""
    from workbench.device import detect

    module, reason = detect._import_torch_npu()
    if module is None:
        raise RuntimeError(f"npu kernels need torch_npu: {reason}")
    return module


def _available() -> str | None:
    """None where the fused operators can run: torch_npu loads, and the NPU is one Huawei documents them for (Atlas
    A2/A3; an unreadable name gets the benefit of the doubt). Elsewhere the torch implementations serve the NPU."""
    from workbench.device import ascend, detect

    reason = detect._import_torch_npu()[1]
    if reason:
        return reason
    name = detect.npu_device_name()
    return ascend.fused_operators_problem(name) if name else None


@register("rms_norm", "npu", devices=("npu",), priority=PRIORITY, available=_available)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """torch_npu.npu_rms_norm (returns y and rstd; rstd is what its backward reuses). Its gamma must have x's dtype:
    under bf16 autocast x is bf16 while the weight stays an fp32 master weight (MLA's latent norms)."""
    y, _rstd = _torch_npu().npu_rms_norm(x, weight.to(x.dtype), epsilon=eps)
    return y


def full_width(cos: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """[.., R/2] angles -> [.., R] as npu_rotary_mul expects: (c0..c_{h-1}, c0..c_{h-1}) for half style,
    (c0, c0, c1, c1, ...) for interleaved."""
    return cos.repeat_interleave(2, dim=-1) if interleaved else torch.cat((cos, cos), dim=-1)


@register("rope", "npu", devices=("npu",), priority=PRIORITY, available=_available)
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """torch_npu.npu_rotary_mul on the rotary slice, as a 4-D tensor; the rest of the channels pass through.
    Outside the op's documented limits (interleave: B x N < 1000; half: B, N < 1000 and D < 896) the torch rope
    runs instead: GLM-5's 64 interleaved heads pass B x N = 1000 at a batch of 16."""
    rotary = 2 * cos.shape[-1]
    rot, rest = x[..., :rotary], x[..., rotary:]
    shape = rot.shape
    rot4 = rot.reshape((-1,) + shape[-3:]) if rot.dim() >= 4 else rot.reshape((1,) * (4 - rot.dim()) + shape)
    batch, heads, dim = rot4.shape[0], rot4.shape[1], rot4.shape[-1]
    if (batch * heads >= 1000) if interleaved else (batch >= 1000 or heads >= 1000 or dim >= 896):
        return torch_autograd_ops.rope(x, cos, sin, interleaved)
    cos4, sin4 = (full_width(t.to(x.dtype), interleaved) for t in (cos, sin))
    cos4 = cos4.reshape((1,) * (4 - cos4.dim()) + cos4.shape) if cos4.dim() < 4 else cos4
    sin4 = sin4.reshape((1,) * (4 - sin4.dim()) + sin4.shape) if sin4.dim() < 4 else sin4
    mode = "interleave" if interleaved else "half"
    out = _torch_npu().npu_rotary_mul(rot4, cos4, sin4, rotary_mode=mode).reshape(shape)
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


@register("swiglu", "npu", devices=("npu",), priority=PRIORITY, available=_available)
def swiglu(x: torch.Tensor) -> torch.Tensor:
    """torch_npu.npu_swiglu: silu(first half) * second half along the last axis."""
    return _torch_npu().npu_swiglu(x, dim=-1)


@register("attention", "npu", devices=("npu",), priority=PRIORITY, available=_available)
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None,
              topk_indices: torch.Tensor | None = None) -> torch.Tensor:
    """torch_npu.npu_fusion_attention in BNSD layout (our [B, H, S, D] as it is, no transposes)."""
    head_dim = q.shape[-1]
    if head_dim % 16 or head_dim > 512:
        raise ValueError(f"npu_fusion_attention needs a head dim that is a multiple of 16 and at most 512, got "
                         f"{head_dim}; choose the reference with WORKBENCH_KERNELS=attention=reference")
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    kwargs = {"scale": scale}
    if topk_indices is not None:
        keep = torch_ops.attention_keep_mask(q.shape[2], k.shape[2], causal, topk_indices, q.device)
        # [B, 1, Sq, Sk], True = masked out. inner_precise=2: the op's documented handling of rows whose every key
        # is masked (a top-k mask can make them; the op only detects them itself in its own causal modes)
        kwargs.update(atten_mask=~keep, sparse_mode=0, inner_precise=2)
    elif causal:
        mask = torch.ones(CAUSAL_MASK_SIZE, CAUSAL_MASK_SIZE, dtype=torch.bool, device=q.device).triu(diagonal=1)
        kwargs.update(atten_mask=mask, sparse_mode=3)  # right-down causal, compressed mask
    v_dim = v.shape[-1]
    if v_dim != head_dim:
        # MLA: v is narrower (or wider) than q/k. MindSpore documents the same fused op (FlashAttentionScore) with
        # value shaped like key, and torch_npu's reference does not say otherwise, so until this has run on an
        # Ascend host, pad every head to one width with zeros: zero q/k channels add nothing to the scores (the
        # scale was fixed above from the real q/k width) and zero v channels are sliced off the output.
        width = max(head_dim, v_dim)
        if width % 16:
            raise ValueError(f"npu_fusion_attention needs head dims that are multiples of 16, got q/k {head_dim} and "
                             f"v {v_dim}")
        q, k, v = (torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
    out = _torch_npu().npu_fusion_attention(q, k, v, q.shape[1], "BNSD", **kwargs)[0][..., :v_dim]
    if topk_indices is not None:  # rows whose every key is masked: zeros, as the reference defines them
        empty = ~keep.any(dim=-1, keepdim=True)
        out = torch.where(empty, torch.zeros((), dtype=out.dtype, device=out.device), out)
    elif causal and q.shape[2] > k.shape[2]:
        # bottom-right causal with more queries than keys: the first Sq - Sk queries see no key. The reference
        # gives them zeros; what the fused op writes there is not documented, so set them here
        empty = torch.arange(q.shape[2], device=out.device)[:, None] < q.shape[2] - k.shape[2]
        out = torch.where(empty, torch.zeros((), dtype=out.dtype, device=out.device), out)
    return out


@register("moe", "npu", devices=("npu",), priority=PRIORITY, available=_available)
def moe(x: torch.Tensor, expert_indices: torch.Tensor, expert_weights: torch.Tensor, w_gate_up: torch.Tensor,
        w_down: torch.Tensor) -> torch.Tensor:
    """Sort by expert -> npu_grouped_matmul (gate_up) -> npu_swiglu -> npu_grouped_matmul (down) -> unpermute.

    The torch path instead when the fused op cannot serve: more than 128 experts, fp32 (its dtype table allows fp32
    only for single x / weight / output tensors, not a list of expert weights), or no tokens (an expert-parallel rank
    nobody routed to: npu_swiglu rejects empty tensors)."""
    n_experts = w_gate_up.shape[0]
    dtype = torch_ops.compute_dtype(x)  # the fused op is not autocast-aware: cast as autocast would
    if n_experts > MAX_GROUPS or dtype == torch.float32 or x.shape[0] == 0:
        return torch_ops.moe(x, expert_indices, expert_weights, w_gate_up, w_down)
    npu = _torch_npu()
    n_tokens, top_k = expert_indices.shape
    flat_experts = expert_indices.reshape(-1)
    order = torch.argsort(flat_experts, stable=True)
    group_list = torch.bincount(flat_experts, minlength=n_experts).cumsum(0)  # cumulative rows per expert
    x_sorted = x[order // top_k].to(dtype)
    hidden = npu.npu_swiglu(_NpuGroupedMatmul.apply(x_sorted, w_gate_up.to(dtype), group_list), dim=-1)
    y = _NpuGroupedMatmul.apply(hidden, w_down.to(dtype), group_list)[torch.argsort(order)]
    y = y.view(n_tokens, top_k, w_down.shape[1])  # not -1: that fails on 0 rows
    return (y * expert_weights.to(y.dtype)[..., None]).sum(dim=1).to(x.dtype)


class _NpuGroupedMatmul(torch.autograd.Function):
    """rows [M, K] grouped by expert (cumulative ``group_list``) times each expert's weights [E, N, K]^T -> [M, N].

    torch_npu registers no backward for npu_grouped_matmul (op-plugin's derivatives.yaml lists none; Huawei's
    MindSpeed wraps it in an autograd Function too), so training through the bare op would fail or leave the
    experts without gradients. Backward: d rows = the same grouped op against the untransposed weights; d weights
    = one [N, M_e] x [M_e, K] product per expert over its rows."""

    @staticmethod
    def forward(ctx, rows, weights_ENK, group_list):
        ctx.save_for_backward(rows, weights_ENK, group_list)
        return _grouped(rows, [w.t() for w in weights_ENK.unbind(0)], group_list)

    @staticmethod
    def backward(ctx, grad_out):
        rows, weights_ENK, group_list = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_rows = _grouped(grad_out, list(weights_ENK.unbind(0)), group_list)
        counts = torch.diff(group_list, prepend=group_list.new_zeros(1)).tolist()
        grad_weights = torch.stack([g.t() @ r for g, r in zip(grad_out.split(counts), rows.split(counts))])
        return grad_rows, grad_weights, None


def _grouped(rows: torch.Tensor, weights_KN: list[torch.Tensor], group_list: torch.Tensor) -> torch.Tensor:
    return _torch_npu().npu_grouped_matmul([rows], weights_KN, group_list=group_list, split_item=2,
                                           group_type=0)[0]

