"""Reference kernels: plain eager PyTorch, written to be read. Every other implementation is tested against these.

Signatures (shared by every implementation of an op):

- ``rms_norm(x[..., D], weight[D], eps) -> [..., D]``                       (Zhang & Sennrich 2019)
- ``rope(x[..., S, Dh], cos[S', R/2], sin[S', R/2], interleaved=False)``    (Su et al. 2021, RoFormer)
  rotates the first R = 2 * cos.shape[-1] channels of the last axis and passes the rest through (partial RoPE);
  cos/sin broadcast against ``x[..., :R/2]``. "half" style pairs channel i with i + R/2 (GPT-NeoX / Llama);
  interleaved style pairs 2i with 2i+1 (GPT-J, GLM).
- ``swiglu(x[..., 2F]) -> [..., F]``: silu(first half) * second half      (Shazeer 2020)
- ``attention(q[B,Hq,S,Dqk], k[B,Hkv,S,Dqk], v[B,Hkv,S,Dv], causal=True, scale=None, topk_indices=None)
  -> [B,Hq,S,Dv]``. GQA when Hkv divides Hq. ``topk_indices[B,S,K]`` (long, -1 = unused slot) restricts each query
  to those keys, shared over heads: the DeepSeek Sparse Attention pattern.
- ``sparse_mqa_attention(q[B,S,H,D], kv[B,Sk,D], topk_indices[B,S,K], scale, v_dim) -> (out[B,S,H,v_dim],
  probs[B,S,K])``: each query attends only to its K selected keys of ONE key/value head shared by all query heads
  (MLA in its absorbed, MQA form: keys = kv, values = kv[..., :v_dim]); the DSA sparse kernel (DeepSeek-V3.2).
  ``probs`` are the attention weights summed over heads, detached (the indexer's training target).
- ``moe(x[T,D], expert_indices[T,k], expert_weights[T,k], w_gate_up[E,2F,D], w_down[E,D,F]) -> [T,D]``:
  each token's output is sum_j weight_j * expert_{idx_j}(x), expert(x) = down(swiglu(gate_up(x))).
- ``cross_entropy(hidden[N,D], weight[V,D], labels[N], ignore_index=-100) -> scalar mean loss`` over the labels
  that are not ``ignore_index`` (the LM head's matmul is part of the op, so implementations may avoid ever
  holding the full [N, V] logits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workbench.kernels.registry import register


@register("rms_norm", "reference", priority=0)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


@register("rope", "reference", priority=0)
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotary position embedding on the first 2*cos.shape[-1] channels of x (partial RoPE passes the rest)."""
    half = cos.shape[-1]
    rot, rest = x[..., : 2 * half], x[..., 2 * half:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    out1 = x1 * cos - x2 * sin
    out2 = x2 * cos + x1 * sin
    if interleaved:
        rotated = torch.stack((out1, out2), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((out1, out2), dim=-1)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


@register("swiglu", "reference", priority=0)
def swiglu(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, where x = cat(gate, up) on the last axis."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def count_rows_per_expert(flat_experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """[N] expert ids -> [n_experts] int64 counts. ``torch.bincount`` gives the same, but its output length depends
    on the largest id, which breaks a torch.compile graph; this shape is fixed."""
    counts = torch.zeros(n_experts, dtype=torch.int64, device=flat_experts.device)
    return counts.scatter_add_(0, flat_experts, torch.ones_like(flat_experts, dtype=torch.int64))


def check_topk_indices(topk_indices: torch.Tensor, n_keys: int) -> None:
    """Raise ``IndexError`` for a top-k index outside [-1, n_keys) (-1 = unused slot). Out of range, the mask
    wrapped it around to another key and the gathered kernels read the next sequence's keys, silently.

    On an accelerator reading the indices back waits for the device (a host sync per layer), so there the check
    is skipped (the model's own top-k is always in range); on cpu it costs one min/max. Skipped under compile."""
    if topk_indices.device.type != "cpu" or topk_indices.numel() == 0 or torch.compiler.is_compiling():
        return
    low, high = int(topk_indices.min()), int(topk_indices.max())
    if low < -1 or high >= n_keys:
        raise IndexError(f"top-k index {low if low < -1 else high} is outside [-1, {n_keys}) "
                         f"({n_keys} keys; -1 marks an unused slot)")


def topk_to_mask(topk_indices: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[B, S, K] key indices (-1 = unused) -> boolean keep-mask [B, S, S_k]."""
    check_topk_indices(topk_indices, seq_len)
    batch, queries, _ = topk_indices.shape
    mask = torch.zeros(batch, queries, seq_len + 1, dtype=torch.bool, device=topk_indices.device)
    # -1 goes to an extra trash column that is dropped afterwards.
    mask.scatter_(-1, topk_indices.clamp(min=-1) % (seq_len + 1), True)
    return mask[..., :seq_len]


@register("attention", "reference", priority=0)
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None,
              topk_indices: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, written out: the full [S, S] score matrix per head (Vaswani et al. 2017)."""
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    if n_heads != n_kv_heads:  # GQA (Ainslie et al. 2023): each kv head serves n_heads / n_kv_heads query heads
        k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
        v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [B, H, Sq, Sk]
    q_len, k_len = scores.shape[-2:]
    keep = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device)
    if causal:
        keep = torch.tril(keep, diagonal=k_len - q_len)
    keep = keep.expand(q.shape[0], 1, q_len, k_len)
    if topk_indices is not None:
        keep = keep & topk_to_mask(topk_indices, k_len)[:, None]
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a fully masked row gives zeros, not NaN
    return torch.matmul(probs.to(v.dtype), v)


@register("sparse_mqa_attention", "reference", priority=0)
def sparse_mqa_attention(q: torch.Tensor, kv: torch.Tensor, topk_indices: torch.Tensor, scale: float,
                         v_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each query's K selected rows of the shared kv head, then softmax attention over those K only."""
    check_topk_indices(topk_indices, kv.shape[1])
    batch = torch.arange(q.shape[0], device=q.device)[:, None, None]
    picked = kv[batch, topk_indices.clamp(min=0)].float()                        # [B, S, K, D]
    scores = torch.einsum("bshd,bskd->bshk", q.float(), picked) * scale            # [B, S, H, K]
    scores = scores.masked_fill((topk_indices < 0)[:, :, None, :], float("-inf"))  # unused slots
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bshk,bskd->bshd", probs, picked[..., :v_dim])
    return out.to(q.dtype), probs.sum(dim=2).detach()


@register("moe", "reference", priority=0)
def moe(x: torch.Tensor, expert_indices: torch.Tensor, expert_weights: torch.Tensor, w_gate_up: torch.Tensor,
        w_down: torch.Tensor) -> torch.Tensor:
    """Route each token to its top-k experts: a Python loop over experts (readable, slow at many experts)."""
    if x.shape[0] == 0:  # no tokens (an expert-parallel rank nobody routed to): still part of the autograd graph,
        return x * 0     # so its backward runs and the all-to-all collectives in it stay matched across ranks
    out = torch.zeros_like(x)
    for expert in range(w_gate_up.shape[0]):
        token_ids, slot = torch.where(expert_indices == expert)
        if token_ids.numel() == 0:
            continue
        hidden = swiglu(x[token_ids] @ w_gate_up[expert].t())
        expert_out = hidden @ w_down[expert].t()
        out.index_add_(0, token_ids, expert_out * expert_weights[token_ids, slot, None].to(x.dtype))
    return out


@register("cross_entropy", "reference", priority=0)
def cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                  ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy of logits = hidden @ weight^T (the full [N, V] logits, in fp32)."""
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits, labels, ignore_index=ignore_index)
