"""``csr`` sparse_mqa_attention: DeepSeek Sparse Attention as sparse-matrix products, the CPU default.

The ``torch`` implementation (torch_autograd_ops.py) gathers each query's K selected rows of the shared kv head
into a [B*S, K, D] tensor and multiplies per query, [H, D] x [D, K]. On a CPU both halves of that are poor fits:
the gather writes K*D floats per query (21 MB per layer for glm5-tiny at 1 x 2048) only to read them back, its
gradient is scattered back the same way, and MKL runs thousands of 4 x 80 x 32 GEMMs far below its peak.

Seen as linear algebra, the selection is a sparsity pattern: a matrix with one row per (query, head), one column
per key, and K non-zeros per row at the picked keys. Attention over it is the textbook sparse pair:

    scores = SDDMM(pattern, Q, KV^T)        only the K picked dot products  (torch.sparse.sampled_addmm)
    P      = softmax over each row's K values
    out    = P @ V                          sparse x dense (SpMM; MKL's sparse BLAS on cpu)
    dP     = SDDMM(pattern, dOut, V^T)
    dS     = P * (dP - rowsum(P * dP)) * scale
    dQ     = dS @ KV
    dKV    = dS^T @ Q  +  P^T @ dOut        the transposed pattern, built in backward from one argsort of the picks

No [B*S, K, D] tensor exists in either direction. Measured on the 2-core CPU in fp32: forward + backward 1.2-1.9x
faster than ``torch`` in isolation at glm5-tiny's shape (S=2048, H=4, K=32, 80 channels), a tie at the kernel
benchmark's S=512, H=8, K=64, and 2-9% off a whole glm5-tiny training step at 1 x 2048 (benchmarks/README.md). Registered for cpu only, and only where torch has MKL: without MKL
torch's sparse products fall back to slow generic loops, and on GPUs/NPUs the gather + batched GEMMs are the
better fit. Unused slots (topk index -1) point at the batch's key 0 with probability exactly 0, so they add
nothing; rows are not sorted (the SDDMM and SpMM kernels do not need it).
Used through the registry by ``workbench.model.attention_mla``; compared in notebooks/02_kernels.ipynb.
"""

from __future__ import annotations

import warnings

import torch

from workbench.kernels.reference import check_topk_indices
from workbench.kernels.registry import register
from workbench.kernels.torch_autograd_ops import slot_softmax, slot_softmax_backward
from workbench.kernels.torch_autograd_ops import sparse_mqa_attention as gathered_sparse_mqa_attention
from workbench.kernels.torch_ops import compute_dtype

SPARSE_DTYPES = (torch.float32, torch.float64)  # torch's cpu SDDMM/SpMM; anything else runs the gathered kernel


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and the tests pin the results
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size)


class _CsrSparseMQA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, kv, topk_indices, scale, v_dim):
        B, S, H, D = q.shape
        Sk, K = kv.shape[1], topk_indices.shape[-1]
        n_queries, n_keys = B * S, B * Sk
        # the column (row of the flattened [B * Sk, D] kv) of each pick; unused slots (-1) -> the batch's key 0
        offsets = torch.arange(B, device=q.device).view(B, 1, 1) * Sk
        key_of_pick = (topk_indices.clamp(min=0) + offsets).reshape(n_queries, K)
        cols = key_of_pick[:, None, :].expand(n_queries, H, K).reshape(-1)       # every head shares its query's picks
        crow = torch.arange(0, n_queries * H * K + 1, K, device=q.device)        # exactly K non-zeros per row
        q_rows, kv_rows = q.reshape(n_queries * H, D), kv.reshape(n_keys, D)
        # zeros, not empty: sampled_addmm still reads the pattern's values at beta=0 (0 * NaN garbage = NaN)
        pattern = _csr(crow, cols, q.new_zeros(cols.numel()), (n_queries * H, n_keys))
        scores = torch.sparse.sampled_addmm(pattern, q_rows, kv_rows.t(), beta=0.0, alpha=scale).values()
        probs = slot_softmax(scores.view(n_queries, H, K), topk_indices)        # [B*S, H, K]
        out = _csr(crow, cols, probs.reshape(-1), pattern.shape) @ kv_rows[:, :v_dim]
        ctx.save_for_backward(q_rows, kv_rows, probs, key_of_pick, crow, cols)
        ctx.scale, ctx.v_dim, ctx.q_shape, ctx.kv_shape = scale, v_dim, q.shape, kv.shape
        head_summed = probs.sum(dim=1).view(B, S, K)
        ctx.mark_non_differentiable(head_summed)  # a training target for the indexer, never differentiated
        return out.view(B, S, H, v_dim), head_summed

    @staticmethod
    def backward(ctx, grad_out, _grad_probs):
        q_rows, kv_rows, probs, key_of_pick, crow, cols = ctx.saved_tensors
        n_queries, H, K = probs.shape
        v_dim, shape = ctx.v_dim, (n_queries * H, kv_rows.shape[0])
        grad_out = grad_out.reshape(n_queries * H, v_dim).to(q_rows.dtype)
        pattern = _csr(crow, cols, probs.new_zeros(cols.numel()), shape)
        grad_probs = torch.sparse.sampled_addmm(pattern, grad_out, kv_rows[:, :v_dim].t(), beta=0.0).values()
        grad_scores = slot_softmax_backward(probs, grad_probs.view(n_queries, H, K), ctx.scale)
        grad_q = None
        if ctx.needs_input_grad[0]:
            grad_q = (_csr(crow, cols, grad_scores.reshape(-1), shape) @ kv_rows).view(ctx.q_shape)
        if not ctx.needs_input_grad[1]:
            return grad_q, None, None, None, None
        # The transposed pattern: rows = keys, columns = (query, head). One argsort of the B*S*K picks (not of the
        # H times larger pattern) orders them by key; each pick then stands for H consecutive columns.
        picks = key_of_pick.reshape(-1)
        by_key = torch.argsort(picks, stable=True)  # stable: each key sums its queries in one fixed order
        t_crow = torch.zeros(shape[1] + 1, dtype=crow.dtype, device=crow.device)
        t_crow[1:] = (torch.bincount(picks, minlength=shape[1]) * H).cumsum(0)
        t_cols = ((by_key // K) * H)[:, None] + torch.arange(H, device=crow.device)      # [B*S*K, H]

        def transposed(values_NHK: torch.Tensor) -> torch.Tensor:  # [B*S, H, K] values -> the [keys, B*S*H] CSR
            per_pick = values_NHK.transpose(1, 2).reshape(-1, H)[by_key]                  # [B*S*K, H], key order
            return _csr(t_crow, t_cols.reshape(-1), per_pick.reshape(-1), (shape[1], shape[0]))

        grad_kv = transposed(grad_scores) @ q_rows                                        # keys' role
        grad_kv[:, :v_dim] += transposed(probs) @ grad_out                                # values' role
        return grad_q, grad_kv.view(ctx.kv_shape), None, None, None


def _needs_mkl() -> str | None:
    return None if torch.backends.mkl.is_available() else "torch was built without MKL (slow sparse products)"


# Sparse CSR tensors are opaque to torch.compile (dynamo crashed tracing a view of one), so under --compile this
# kernel runs eagerly behind one graph break. torch._disable_dynamo, the lazy twin of torch.compiler.disable,
# imports dynamo only when first called, not when this module is imported.
@register("sparse_mqa_attention", "csr", devices=("cpu",), priority=30, available=_needs_mkl)
@torch._disable_dynamo
def sparse_mqa_attention(q: torch.Tensor, kv: torch.Tensor, topk_indices: torch.Tensor, scale: float,
                         v_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SDDMM scores + SpMM values over the top-k pattern (CSR); no gathered [B*S, K, D] copy of the keys."""
    dtype = compute_dtype(q)
    if dtype not in SPARSE_DTYPES:  # e.g. bf16 autocast on a cpu with fast bf16: the gathered kernel handles it
        return gathered_sparse_mqa_attention(q, kv, topk_indices, scale, v_dim)
    check_topk_indices(topk_indices, kv.shape[1])
    return _CsrSparseMQA.apply(q.to(dtype).contiguous(), kv.to(dtype).contiguous(), topk_indices, scale, v_dim)


__all__ = ["sparse_mqa_attention"]
