"""Multi-head latent attention (MLA), optionally sparse through the DSA lightning indexer: the attention of GLM-5.

Paper: DeepSeek-V2 (DeepSeek-AI 2024), section 2.1. Keys and values are rebuilt from a small shared latent
c_kv = RMSNorm(kv_a(x)) of ``kv_lora_rank`` channels (what an inference cache would hold), queries from a latent of
``q_lora_rank`` channels. RoPE cannot pass through the low-rank up-projection, so position is carried by separate
"decoupled" channels: ``qk_rope_head_dim`` rotated channels per query head and ONE rotated key head shared by all
heads. Per head: q = [q_nope | q_rope] (192 + 64 in GLM-5), k = [k_nope | k_rope], v of ``v_head_dim``.

With DSA (DeepSeek-V3.2 2025) each query attends only to the keys its layer's indexer picked; a "shared" layer
reuses the previous layer's picks. When the sequence is no longer than ``index_topk`` every causal key is picked,
so the layer skips the indexer's mask and runs plain causal attention (the same numbers, a faster kernel path).
Part of glm5-tiny and glm-5 (notebooks 01_training, 04_profiling).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench import kernels
from workbench.model.config import ModelConfig
from workbench.model.dsa_indexer import LightningIndexer, indexer_kl_loss, sparse_indexer_kl_loss
from workbench.model.layers import RMSNorm


# "auto" gathers once the sequence is this many times index_topk: on the 2-core CPU (fp32, glm5-tiny) the gathered
# path was slower than masked flash attention at S = 8 K and faster from S = 16 K (benchmarks/README.md).
DSA_GATHER_MIN_RATIO = 16


class MLAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, indexer_type: str | None = None):
        super().__init__()
        self.n_heads = cfg.num_heads
        self.nope, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_rank, self.interleaved = cfg.kv_lora_rank, cfg.rope_interleaved
        self.scale = (self.nope + self.rope_dim) ** -0.5
        d, h, bias = cfg.hidden_size, cfg.num_heads, cfg.attention_bias
        if cfg.q_lora_rank > 0:   # low-rank q: x -> latent -> heads
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.latent_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * (self.nope + self.rope_dim), bias=False)
        else:
            self.q_proj = nn.Linear(d, h * (self.nope + self.rope_dim), bias=False)
        # kv_a yields the kv latent and the single shared rotary key head in one matmul ("with MQA")
        self.kv_a_proj_with_mqa = nn.Linear(d, self.kv_rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, cfg.latent_norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_rank, h * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_dim, d, bias=bias)
        # DSA: "full" layers own an indexer, "shared" layers reuse the previous layer's top-k, None = dense MLA
        self.indexer_type = indexer_type
        self.indexer = LightningIndexer(cfg) if indexer_type == "full" else None
        self.indexer_loss_coef = cfg.indexer_loss_coef
        self.dsa_attention, self.index_topk = cfg.dsa_attention, cfg.index_topk
        self.last_indexer_loss: torch.Tensor | None = None  # set by a training forward that ran the indexer

    def forward(self, x_BSD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                prev_topk: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (output [B, S, D], the top-k indices this layer used, or None when attention was dense)."""
        B, S, _ = x_BSD.shape
        if hasattr(self, "q_a_proj"):
            q_latent = self.q_a_layernorm(self.q_a_proj(x_BSD))
            q = self.q_b_proj(q_latent)
        else:
            q_latent, q = None, self.q_proj(x_BSD)
        q = q.view(B, S, self.n_heads, self.nope + self.rope_dim).transpose(1, 2)   # [B, H, S, nope+rope]
        q_nope, q_rope = q.split([self.nope, self.rope_dim], dim=-1)

        kv_latent, k_rope = self.kv_a_proj_with_mqa(x_BSD).split([self.kv_rank, self.rope_dim], dim=-1)
        c_kv = self.kv_a_layernorm(kv_latent)                                        # [B, S, r]
        q_rope = kernels.rope(q_rope, cos, sin, self.interleaved)
        k_rope = kernels.rope(k_rope.view(B, 1, S, self.rope_dim), cos, sin, self.interleaved)  # one head for all
        # DSA layers past index_topk attend sparsely; gathered, they never expand the latent into per-head k and v
        gathered = self.indexer_type is not None and S > self.index_topk and self.gathers(S)
        k_nope = v = None
        if not gathered:
            kv = self.kv_b_proj(c_kv).view(B, S, self.n_heads, self.nope + self.v_dim).transpose(1, 2)
            k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)                    # [B, H, S, nope], [.., v]

        topk, self.last_indexer_loss = None, None
        train_indexer = self.training and self.indexer_loss_coef > 0 and torch.is_grad_enabled()
        index_qkw = None
        # The indexer scores, picks and trains in fp32 even under autocast (as the router does): in bf16 its
        # top-k differed from fp32's in 12% of picks and its logged loss was 12-70% higher at init
        fp32 = torch.autocast(x_BSD.device.type, enabled=False)
        if self.indexer_type == "full" and S > self.indexer.topk:
            with fp32:
                if train_indexer:  # on detached inputs: the indexer's loss must not move the rest of the model
                    index_qkw = self.indexer.project(x_BSD.detach(), q_latent.detach(), cos, sin)
                else:              # only choosing keys: no graph to keep
                    with torch.no_grad():
                        index_qkw = self.indexer.project(x_BSD, q_latent, cos, sin)
                # choosing keys is not differentiable (select_causal runs without grad); the KL loss trains it
                topk = self.indexer.select_causal(*[t.detach() for t in index_qkw])
        elif self.indexer_type == "shared":
            topk = prev_topk
        if gathered:
            out, probs = self._gathered_sparse_attention(q_nope, q_rope, c_kv, k_rope, topk)
            if train_indexer and index_qkw is not None:
                with fp32:
                    selected = self.indexer.selected_scores(*index_qkw, topk)
                    self.last_indexer_loss = sparse_indexer_kl_loss(selected, topk, probs.float())
        else:
            q = torch.cat([q_nope, q_rope], dim=-1)
            k = torch.cat([k_nope, k_rope.expand(B, self.n_heads, S, self.rope_dim)], dim=-1)
            if train_indexer and index_qkw is not None:
                with fp32:
                    self.last_indexer_loss = indexer_kl_loss(self.indexer.dense_scores(*index_qkw), topk,
                                                             q.detach(), k.detach(), self.scale)
            out = kernels.attention(q, k, v, causal=True, scale=self.scale, topk_indices=topk)  # [B, H, S, v]
            out = out.transpose(1, 2)
        return self.o_proj(out.reshape(B, S, self.n_heads * self.v_dim)), topk

    def gathers(self, seq_len: int) -> bool:
        """Whether sparse attention runs gathered (work ~ S*k) rather than as dense attention with a mask (~ S^2)."""
        if self.dsa_attention == "auto":
            return seq_len >= DSA_GATHER_MIN_RATIO * self.index_topk
        return self.dsa_attention == "gather"

    def _gathered_sparse_attention(self, q_nope, q_rope, c_kv, k_rope, topk):
        """DSA as DeepSeek-V3.2 runs it: MLA in its absorbed ("MQA") form, each query reading only its top-k rows.

        kv_b_proj maps the latent c to per-head k_nope = W_uk c and v = W_uv c. Absorb W_uk into the query
        (q_nope . W_uk c = (W_uk^T q_nope) . c) and W_uv after the attention (sum_s p_s W_uv c_s = W_uv sum_s p_s c_s):
        then every head attends over the same single head [c | k_rope] of kv_lora_rank + rope channels, so the
        top-k rows are gathered once per query, not once per head. Returns ([B, S, H, v], head-summed probs)."""
        B, H, S, _ = q_nope.shape
        w = self.kv_b_proj.weight.view(H, self.nope + self.v_dim, self.kv_rank)
        w_uk, w_uv = w[:, :self.nope], w[:, self.nope:]                             # [H, nope, r], [H, v, r]
        q_latent = torch.einsum("bhsn,hnr->bshr", q_nope, w_uk)                    # [B, S, H, r]
        q_abs = torch.cat([q_latent, q_rope.transpose(1, 2)], dim=-1)              # [B, S, H, r + rope]
        kv_abs = torch.cat([c_kv, k_rope.view(B, S, self.rope_dim)], dim=-1)       # [B, S, r + rope]
        out_latent, probs = kernels.sparse_mqa_attention(q_abs, kv_abs, topk, self.scale, self.kv_rank)
        return torch.einsum("bshr,hvr->bshv", out_latent, w_uv), probs            # [B, S, H, v]
