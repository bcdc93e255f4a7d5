"""The DSA lightning indexer: pick, for every query, the top-k keys that sparse attention will read.

Paper: DeepSeek-V3.2-Exp (DeepSeek-AI 2025, "DeepSeek Sparse Attention"); GLM-5 uses it with interleaved RoPE and
lets some layers reuse the previous layer's selection ("shared" indexer layers, transformers ``indexer_types``).

    index_score[t, s] = sum_h  w_h(x_t) * relu(q_{t,h} . k_s * Di^-1/2),      w_h(x_t) = weights_proj(x_t) * H^-1/2

q comes from the attention's q latent (q_a_layernorm(q_a_proj(x))), k is one head shared by all indexer heads, with
its own LayerNorm; the first ``qk_rope_head_dim`` channels of q and k are rotated. Scores are masked causally and
the ``index_topk`` best keys kept. The indexer is cheap (few heads, one key head, fp32 scores) and not
differentiable through top-k: as in transformers it runs under ``no_grad``, so the LM loss does not train it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench import kernels
from workbench.model.config import ModelConfig


class LightningIndexer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.rope_dim, self.interleaved = cfg.qk_rope_head_dim, cfg.rope_interleaved
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False)

    @torch.no_grad()
    def forward(self, x_BSD: torch.Tensor, q_latent: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        """Returns topk_indices [B, S, min(index_topk, S)] (long); -1 marks a slot with no causal key."""
        B, S, _ = x_BSD.shape
        q = self.wq_b(q_latent).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hi, S, Di]
        k = self.k_norm(self.wk(x_BSD)).unsqueeze(1)                                      # [B, 1, S, Di]
        q = kernels.rope(q, cos, sin, self.interleaved)  # first rope_dim channels rotated (cos is [S, rope_dim/2])
        k = kernels.rope(k, cos, sin, self.interleaved)
        scores = F.relu(q.float() @ k.float().transpose(-1, -2) * self.head_dim ** -0.5)  # [B, Hi, S, S]
        weights = self.weights_proj(x_BSD).float() * self.n_heads ** -0.5                 # [B, S, Hi]
        index_scores = torch.einsum("bhst,bsh->bst", scores, weights)                     # [B, S, S]
        future = torch.ones(S, S, dtype=torch.bool, device=x_BSD.device).triu(1)
        index_scores = index_scores.masked_fill(future, float("-inf"))
        values, indices = index_scores.topk(min(self.topk, S), dim=-1)
        return indices.masked_fill(values == float("-inf"), -1)
