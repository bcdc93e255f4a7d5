"""FlashAttention, block by block, in plain PyTorch: the algorithm without the GPU programming.

The reference attention builds the whole [S, S] score matrix per head. FlashAttention (Dao et al. 2022; FA-2,
Dao 2023) never does: it walks over blocks of queries, and for each one over blocks of keys, keeping three running
quantities per query row:

- ``m``   the largest score seen so far (for a numerically safe exp),
- ``l``   the sum of exp(score - m) seen so far (the softmax denominator),
- ``acc`` the sum of exp(score - m) * v seen so far (the unnormalised output).

When a new key block raises the maximum from m to m', everything accumulated so far is rescaled by exp(m - m')
("online softmax", Milakov & Gimelshein 2018). At the end, out = acc / l. Only a [block_q, block_k] tile of scores
exists at any time, so memory grows with S, not S^2; on a GPU the tile lives in on-chip SRAM, which is the point.
Causal attention also skips key blocks that lie entirely in the future.

``peak_memory_bytes`` measures what a call allocates at its peak with torch.profiler(profile_memory=True): the
live bytes of every tensor allocated inside the call (inputs excluded), summed over the allocator's events.
Used by notebooks/02_kernels.ipynb and tests/test_kernels.py.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None, block_q: int = 64, block_k: int = 64) -> torch.Tensor:
    """Same contract as ``reference.attention`` (without top-k): q[B,Hq,Sq,D], k[B,Hkv,Sk,D], v[B,Hkv,Sk,Dv]."""
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be >= 1, got block_q={block_q}, block_k={block_k}")
    batch, n_heads, q_len, _ = q.shape
    n_kv_heads, k_len = k.shape[1], k.shape[2]
    if n_heads % n_kv_heads:
        raise ValueError(f"GQA needs kv heads ({n_kv_heads}) to divide query heads ({n_heads})")
    group = n_heads // n_kv_heads
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    offset = k_len - q_len  # bottom-right causal alignment: query i sees keys j <= i + offset
    out = torch.empty(batch, n_heads, q_len, v.shape[-1], dtype=v.dtype, device=q.device)

    for q0 in range(0, q_len, block_q):
        q_blk = q[:, :, q0:q0 + block_q].float()                        # [B, Hq, bq, D]
        rows = q_blk.shape[2]
        m = torch.full((batch, n_heads, rows, 1), float("-inf"), device=q.device)
        l = torch.zeros(batch, n_heads, rows, 1, device=q.device)
        acc = torch.zeros(batch, n_heads, rows, v.shape[-1], device=q.device)
        # Causal: the last query of this block sees keys up to q0 + rows - 1 + offset; later blocks are skipped.
        k_end = min(k_len, q0 + rows + offset) if causal else k_len
        for k0 in range(0, max(k_end, 0), block_k):
            # GQA: each kv head serves `group` query heads (only this block is repeated, never the whole K/V).
            k_blk = k[:, :, k0:k0 + block_k].float().repeat_interleave(group, dim=1)  # [B, Hq, bk, D]
            v_blk = v[:, :, k0:k0 + block_k].float().repeat_interleave(group, dim=1)
            scores = q_blk @ k_blk.transpose(-1, -2) * scale                 # [B, Hq, bq, bk]: the only tile
            if causal:
                qi = torch.arange(q0, q0 + rows, device=q.device)[:, None]
                kj = torch.arange(k0, k0 + k_blk.shape[2], device=q.device)[None, :]
                scores = scores.masked_fill(kj > qi + offset, float("-inf"))
            m_new = torch.maximum(m, scores.amax(dim=-1, keepdim=True))
            # A row that has seen only masked keys keeps m = -inf; use 0 there so exp() gives 0, not NaN.
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(scores - m_safe)                                   # [B, Hq, bq, bk]
            rescale = torch.exp(m - m_safe)                                  # shrink what was accumulated
            l = l * rescale + p.sum(dim=-1, keepdim=True)
            acc = acc * rescale + p @ v_blk
            m = m_new
        # Rows with no visible key (l = 0) output zeros, as the reference does.
        out[:, :, q0:q0 + rows] = (acc / l.clamp(min=1e-30)).to(v.dtype)
    return out


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None) -> torch.Tensor:
    """The textbook version, for the memory comparison: the whole [B, H, S, S] score matrix in fp32."""
    from workbench.kernels.reference import attention

    return attention(q, k, v, causal=causal, scale=scale)


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak live bytes allocated while ``fn()`` runs (inputs excluded), from torch.profiler's memory events.

    Every allocation and free is an event with a signed byte count; the running sum's maximum is the peak.
    The result of ``fn`` is kept alive until the end, so it counts.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    with profile(activities=activities, profile_memory=True) as prof:
        result = fn()
    del result
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return int(peak)


def memory_comparison(batch: int = 1, heads: int = 4, seq_len: int = 1024, head_dim: int = 64,
                      block: int = 64, causal: bool = True, dtype: torch.dtype = torch.float32) -> dict:
    """Peak bytes of the naive and the tiled attention on the same cpu inputs, with the byte count of the score
    matrix each one holds (naive: B*H*S*S fp32; tiled: B*H*block*block fp32) for comparison."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, generator=generator, dtype=dtype) for _ in range(3))
    naive = peak_memory_bytes(lambda: naive_attention(q, k, v, causal=causal))
    tiled = peak_memory_bytes(lambda: tiled_attention(q, k, v, causal=causal, block_q=block, block_k=block))
    return {
        "shape": [batch, heads, seq_len, head_dim], "block": block, "dtype": str(dtype).replace("torch.", ""),
        "naive_peak_bytes": naive, "tiled_peak_bytes": tiled, "ratio": naive / max(tiled, 1),
        "naive_score_matrix_bytes": 4 * batch * heads * seq_len * seq_len,
        "tiled_score_tile_bytes": 4 * batch * heads * block * block,
        "source": "torch.profiler(profile_memory=True): peak of live bytes allocated inside the call",
    }
