"""Grouped-query attention with partial RoPE, optional QK-norm and QKV bias: the attention of GLM-4 and GLM-4.5.

Papers: GQA, Ainslie et al. 2023 ("GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints"); RoPE, Su et al. 2021 (RoFormer). GLM rotates only a fraction of each head's channels
(``partial_rotary_factor`` 0.5) and GLM-4.5 RMS-normalises each q and k head before RoPE (QK-norm).
Part of every GQA model (glm4-tiny, glm45-tiny, glm-4.5): notebooks 01_training, 04_profiling, 02_kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench import kernels
from workbench.model.config import ModelConfig
from workbench.model.layers import RMSNorm


class GQAttention(nn.Module):
    """q: ``num_heads`` heads; k, v: ``num_kv_heads`` heads, each serving num_heads / num_kv_heads query heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.attn_head_dim
        self.interleaved = cfg.rope_interleaved
        d, hd = cfg.hidden_size, cfg.attn_head_dim
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)
        if cfg.use_qk_norm:  # normalise each head's q and k (stabilises attention logits at scale)
            self.q_norm = RMSNorm(hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x_BSD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                prev_topk: None = None) -> tuple[torch.Tensor, None]:
        """x [B, S, D], cos/sin [S, R/2] -> (output [B, S, D], None: GQA selects no top-k keys)."""
        B, S, _ = x_BSD.shape
        q = self.q_proj(x_BSD).view(B, S, self.n_heads, self.head_dim)
        k = self.k_proj(x_BSD).view(B, S, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x_BSD).view(B, S, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, S, Dh]
        q = kernels.rope(q, cos, sin, self.interleaved)  # rotates the first R channels only (partial RoPE)
        k = kernels.rope(k, cos, sin, self.interleaved)
        out = kernels.attention(q, k, v, causal=True)  # [B, H, S, Dh]; scale 1/sqrt(Dh)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim)), None
