"""``torch`` rope and sparse_mqa_attention, ``autograd`` rms_norm and swiglu: the reference math, hand-written backward.

Eager autograd of the written-out reference pays for its readability in the backward: RoPE's slices and
``stack``/``cat`` each allocate a zero tensor the size of the whole head and copy into it, and RMSNorm saves and
differentiates five elementwise steps. Both ops have short closed-form gradients, so these versions compute the
forward into one preallocated output and write the backward by hand:

- rope: a rotation by angle ``theta`` is orthogonal, so its backward is the rotation by ``-theta`` (the same
  kernel with ``-sin``); nothing but cos/sin is saved.
- rms_norm: with r = rsqrt(mean(x^2) + eps) and xhat = x r, y = xhat w gives
  dx = r (g w - xhat mean(g w xhat)) = r g w - r^3 mean(g w x) x and dw = sum over rows of r g x; saves x and r
  only, and takes both row/column sums of the one temporary g x as matrix-vector products: 1.3-1.9x the previous
  version fwd + bwd ([2048, 128..1024]).
- swiglu: d up = g silu(gate) and d gate = (g up) silu'(gate) (aten's fused ``silu_backward``), written straight
  into the two halves of one [..., 2F] gradient; saves x and silu(gate), as autograd of the reference does. Autograd of ``chunk`` + ``silu`` + ``mul`` instead ends in a ``cat`` of
  the halves' gradients, which measured 18 ms for [2048, 2 x 2816] alone and up to ~110 ms inside a glm4-small step
  (fresh large buffers on a loaded allocator): 14% of that step.
- sparse_mqa_attention (DSA): gather the K selected rows of the shared kv head once per query (one
  ``index_select``), then per query a [H, D] x [D, K] score matmul and a [H, K] x [K, Dv] value matmul as batched
  GEMMs; backward = three batched GEMMs and one ``index_add_`` that returns the gathered rows' gradients to the kv
  sequence (autograd of the reference's fancy indexing would run an ``index_put`` with accumulation instead).
  Its cost grows with S * K, not S^2: on the 2-core CPU it beats masked dense flash attention once S >= ~16 K.

Measured on the 2-core CPU (benchmarks/README.md, "Training throughput"). Used through the registry by
``workbench.model``; compared in notebooks/02_kernels.ipynb.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.kernels import reference
from workbench.kernels.registry import register
from workbench.kernels.torch_ops import compute_dtype

DEVICES = ("cpu", "cuda", "xpu", "mps", "npu")


# --------------------------------------------------------------------------------------------------------------
# rope
# --------------------------------------------------------------------------------------------------------------
def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> None:
    """out[..., :2h] = x rotated by (cos, sin) [S, h] (half-split or interleaved pairs); out[..., 2h:] = x's rest."""
    half = cos.shape[-1]
    if interleaved:  # pairs (0, 1), (2, 3), ...: strided views instead of stack + flatten
        x1, x2, o1, o2 = x[..., 0:2 * half:2], x[..., 1:2 * half:2], out[..., 0:2 * half:2], out[..., 1:2 * half:2]
    else:
        x1, x2, o1, o2 = x[..., :half], x[..., half:2 * half], out[..., :half], out[..., half:2 * half]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1.0)   # out1 = x1 cos - x2 sin
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)               # out2 = x2 cos + x1 sin
    if x.shape[-1] > 2 * half:         # partial RoPE: the remaining channels pass through
        out[..., 2 * half:].copy_(x[..., 2 * half:])


class _Rope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, interleaved):
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, like the reference's cat
        _rotate_into(out, x, cos, sin, interleaved)
        ctx.save_for_backward(cos, sin)
        ctx.interleaved = interleaved
        return out

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        grad_x = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        _rotate_into(grad_x, grad, cos, -sin, ctx.interleaved)  # the transpose of a rotation is the inverse one
        return grad_x, None, None, None


@register("rope", "torch", devices=DEVICES, priority=20)
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """RoPE into one preallocated output, backward = the inverse rotation (no slice/cat zero-fills)."""
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("torch rope: cos/sin must not require grad (they come from the rotary table); "
                         "use the reference rope to differentiate through the angles")
    if torch.compiler.is_compiling():  # inductor fuses the written-out math itself (and rejects mul(out=) here)
        return reference.rope(x, cos, sin, interleaved)
    return _Rope.apply(x, cos, sin, interleaved)


# --------------------------------------------------------------------------------------------------------------
# rms_norm
# --------------------------------------------------------------------------------------------------------------
class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        x32 = x.float()
        # r = rsqrt(mean(x^2) + eps) from one read of x (vector_norm), instead of square() + mean() over a temporary
        rstd = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        out = torch.mul(x32, rstd).mul_(weight.float())
        ctx.save_for_backward(x, weight, rstd)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        dim = x.shape[-1]
        x2, g, r, w = x.float().reshape(-1, dim), grad.float().reshape(-1, dim), rstd.reshape(-1, 1), weight.float()
        gx = g * x2                                                    # the one [N, D] temporary
        # both reductions of gx as matrix-vector products (one read each): dw = sum_n r_n g_n x_n, dot_n = (g x)_n . w
        grad_weight = (r.t() @ gx).view(dim) if ctx.needs_input_grad[1] else None
        coef = (r.view(-1) ** 3 * (gx @ w) / dim).unsqueeze(1)        # r^3 mean(g w x) = r xhat-coefficient
        grad_x = torch.mul(g, w).mul_(r).addcmul_(x2, coef, value=-1.0)  # r g w - r^3 mean(g w x) x
        return grad_x.view(x.shape).to(x.dtype), None if grad_weight is None else grad_weight.to(weight.dtype), None


@register("rms_norm", "autograd", devices=DEVICES, priority=10)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The reference RMSNorm (fp32 math, cast back) with a closed-form backward that saves x and rstd only."""
    return _RMSNorm.apply(x, weight, eps)


# --------------------------------------------------------------------------------------------------------------
# swiglu
# --------------------------------------------------------------------------------------------------------------
class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        gate, up = x.chunk(2, dim=-1)
        silu = F.silu(gate)
        ctx.save_for_backward(x, silu)  # what autograd of the reference keeps too (mul saves both factors)
        return silu * up

    @staticmethod
    def backward(ctx, grad):
        x, silu = ctx.saved_tensors
        gate, up = x.chunk(2, dim=-1)
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        grad_gate, grad_up = grad_x.chunk(2, dim=-1)  # views: the halves are written in place, nothing concatenated
        torch.mul(silu, grad, out=grad_up)            # d up = g silu(gate)
        # d gate = (g up) silu'(gate): aten's fused silu_backward, written into the gate half
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_x


@register("swiglu", "autograd", devices=DEVICES, priority=10)
def swiglu(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up with a closed-form backward into one gradient buffer (no ``cat`` of the halves)."""
    if torch.compiler.is_compiling():  # inductor fuses the written-out math itself
        return reference.swiglu(x)
    return _SwiGLU.apply(x)


# --------------------------------------------------------------------------------------------------------------
# sparse_mqa_attention (DSA over MLA's shared latent head)
# --------------------------------------------------------------------------------------------------------------
def slot_softmax(scores: torch.Tensor, topk_indices: torch.Tensor) -> torch.Tensor:
    """Softmax over each query's K picked slots, [B*S, H, K]; unused slots (index -1) get probability 0."""
    n_queries, K = scores.shape[0], scores.shape[-1]
    scores = scores.masked_fill_((topk_indices < 0).view(n_queries, 1, K), float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a query with no key at all: zeros, not NaN


def slot_softmax_backward(probs: torch.Tensor, grad_probs: torch.Tensor, scale: float) -> torch.Tensor:
    """d scores from d probs: p (dp - sum_k p dp), times the scale applied to the scores before the softmax."""
    return (probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))).mul_(scale)


class _SparseMQA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, kv, topk_indices, scale, v_dim):
        B, S, H, D = q.shape
        K = topk_indices.shape[-1]
        # rows of the flattened [B * Sk, D] kv: query (b, s) slot j reads row b * Sk + topk[b, s, j]
        offsets = torch.arange(B, device=q.device).view(B, 1, 1) * kv.shape[1]
        rows = (topk_indices.clamp(min=0) + offsets).reshape(-1)
        picked = kv.reshape(-1, D).index_select(0, rows).view(B * S, K, D)      # [BS, K, D]
        q_rows = q.reshape(B * S, H, D)
        scores = torch.bmm(q_rows, picked.transpose(1, 2)).float().mul_(scale)  # [BS, H, K]
        probs = slot_softmax(scores, topk_indices)
        out = torch.bmm(probs.to(q.dtype), picked[..., :v_dim])                 # [BS, H, Dv]
        ctx.save_for_backward(q_rows, picked, probs, rows)
        ctx.scale, ctx.v_dim, ctx.q_shape, ctx.kv_shape = scale, v_dim, q.shape, kv.shape
        head_summed = probs.sum(dim=1).view(B, S, K)
        ctx.mark_non_differentiable(head_summed)  # a training target for the indexer, never differentiated
        return out.view(B, S, H, v_dim), head_summed

    @staticmethod
    def backward(ctx, grad_out, _grad_probs):
        q_rows, picked, probs, rows = ctx.saved_tensors
        BS, H, D = q_rows.shape
        dtype, v_dim = q_rows.dtype, ctx.v_dim
        grad_out = grad_out.reshape(BS, H, v_dim).to(dtype)
        grad_probs = torch.bmm(grad_out, picked[..., :v_dim].transpose(1, 2)).float()  # [BS, H, K]
        grad_scores = slot_softmax_backward(probs, grad_probs, ctx.scale).to(dtype)
        grad_q = torch.bmm(grad_scores, picked) if ctx.needs_input_grad[0] else None  # [BS, H, D]
        if not ctx.needs_input_grad[1]:
            return grad_q.view(ctx.q_shape), None, None, None, None
        # both uses of a picked row (key: ds^T q, value: p^T dout) in ONE batched GEMM over the 2H axis
        lhs = torch.cat([grad_scores, probs.to(dtype)], dim=1).transpose(1, 2)        # [BS, K, 2H]
        rhs = torch.cat([q_rows, torch.nn.functional.pad(grad_out, (0, D - v_dim))], dim=1)  # [BS, 2H, D]
        grad_picked = torch.bmm(lhs, rhs)                                             # [BS, K, D]
        grad_kv = torch.zeros(ctx.kv_shape[0] * ctx.kv_shape[1], D, dtype=dtype, device=q_rows.device)
        grad_kv.index_add_(0, rows, grad_picked.view(-1, D))  # unused slots (-1 -> row 0) carry p = 0: add 0
        return (None if grad_q is None else grad_q.view(ctx.q_shape)), grad_kv.view(ctx.kv_shape), None, None, None


@register("sparse_mqa_attention", "torch", devices=DEVICES, priority=20)
def sparse_mqa_attention(q: torch.Tensor, kv: torch.Tensor, topk_indices: torch.Tensor, scale: float,
                         v_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather once + batched GEMMs, hand-written backward (index_add_ instead of index_put accumulation)."""
    reference.check_topk_indices(topk_indices, kv.shape[1])
    dtype = compute_dtype(q)  # autocast's dtype when it is on: the rule every torch kernel follows
    return _SparseMQA.apply(q.to(dtype), kv.to(dtype), topk_indices, scale, v_dim)


__all__ = ["rms_norm", "rope", "slot_softmax", "slot_softmax_backward", "sparse_mqa_attention", "swiglu"]
