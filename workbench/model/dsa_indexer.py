"""The DSA lightning indexer: pick, for every query, the top-k keys that sparse attention will read.

Paper: DeepSeek-V3.2-Exp (DeepSeek-AI 2025, "DeepSeek Sparse Attention"); GLM-5 uses it with interleaved RoPE and
lets some layers reuse the previous layer's selection ("shared" indexer layers, transformers ``indexer_types``).

    index_score[t, s] = sum_h  w_h(x_t) * relu(q_{t,h} . k_s * Di^-1/2),      w_h(x_t) = weights_proj(x_t) * H^-1/2

q comes from the attention's q latent (q_a_layernorm(q_a_proj(x))), k is one head shared by all indexer heads, with
its own LayerNorm; the first ``qk_rope_head_dim`` channels of q and k are rotated. Scores are masked causally and
the ``index_topk`` best keys kept. Top-k is not differentiable, so the LM loss cannot train the indexer. As in
DeepSeek-V3.2 (sparse training stage), a separate KL loss does: it pulls softmax(index_score) over the selected
keys towards the main attention's distribution over the same keys (summed over heads), with the indexer's inputs
detached so the loss trains the indexer only (``indexer_kl_loss``; weight ``indexer_loss_coef``). With gathered
sparse attention the loss lives on the [B, S, K] selected slots (``sparse_indexer_kl_loss``): the dense [B, S, S]
scores are computed without grad, only to choose the keys.
Used by attention_mla.py (glm5-tiny, glm-5; notebook 01_training).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench import kernels
from workbench.kernels.reference import topk_to_mask
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

    def project(self, x_BSD: torch.Tensor, q_latent: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q [B, S, Hi, Di], k [B, S, Di], head weights [B, S, Hi]) in fp32, rotated, the scales folded into w.

        Called with autocast off (attention_mla.py), so activations that arrive in bf16 are brought to the
        weights' dtype first: fp32 master weights under autocast give fp32 scores."""
        B, S, _ = x_BSD.shape
        x_BSD, q_latent = x_BSD.to(self.wk.weight.dtype), q_latent.to(self.wq_b.weight.dtype)
        q = self.wq_b(q_latent).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hi, S, Di]
        k = self.k_norm(self.wk(x_BSD)).unsqueeze(1)                                      # [B, 1, S, Di]
        q = kernels.rope(q, cos, sin, self.interleaved)  # first rope_dim channels rotated (cos is [S, rope_dim/2])
        k = kernels.rope(k, cos, sin, self.interleaved)
        weights = self.weights_proj(x_BSD).float() * (self.n_heads ** -0.5 * self.head_dim ** -0.5)  # [B, S, Hi]
        return q.transpose(1, 2).float(), k.squeeze(1).float(), weights

    @staticmethod
    def dense_scores(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, causal_mask: bool = True) -> torch.Tensor:
        """Every query against every key: [B, S, S], -inf for future keys (unless ``causal_mask=False``).

        One [S, Di] x [Di, S] GEMM per indexer head (the single key head serves every head), each relu'd, weighted
        and summed into one [B, S, S] buffer: never the [B, S, Hi, S] stack of all heads, whose weighted sum would be
        B*S tiny [1, Hi] x [Hi, S] matmuls (measured 4x slower at S = 1024). Without grad (choosing the keys, the
        usual case) everything after the GEMM runs in place."""
        in_place = not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad or weights.requires_grad)
        keys_t = k.transpose(1, 2)                                         # [B, Di, S]
        total = None
        for head in range(q.shape[2]):
            scores = torch.bmm(q[:, :, head], keys_t)                      # [B, S, S]
            w = weights[:, :, head, None]
            if in_place:
                scores.relu_().mul_(w)
                total = scores if total is None else total.add_(scores)
            else:  # autograd needs relu's output unmodified
                scores = scores.relu() * w
                total = scores if total is None else total + scores
        if not causal_mask:
            return total
        future = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).triu(1)
        return total.masked_fill_(future, float("-inf")) if in_place else total.masked_fill(future, float("-inf"))

    @staticmethod
    def selected_scores(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor,
                        topk: torch.Tensor) -> torch.Tensor:
        """The index scores of the selected keys only, [B, S, K] (-inf in unused slots): what the KL loss trains.

        Costs S * K instead of S^2, so the dense scores that chose the keys never need a backward."""
        B, S, Hi, Di = q.shape
        K = topk.shape[-1]
        rows = (topk.clamp(min=0) + torch.arange(B, device=q.device).view(B, 1, 1) * S).reshape(-1)
        picked = k.reshape(B * S, Di).index_select(0, rows).view(B * S, K, Di)           # [BS, K, Di]
        per_head = torch.bmm(q.reshape(B * S, Hi, Di), picked.transpose(1, 2)).relu()     # [BS, Hi, K]
        selected = torch.bmm(weights.reshape(B * S, 1, Hi), per_head).view(B, S, K)
        return selected.masked_fill(topk < 0, float("-inf"))

    @torch.no_grad()
    def select_causal(self, q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor,
                      block_rows: int = 256) -> torch.Tensor:
        """``select(dense_scores(q, k, weights))`` without ever holding the [B, S, S] scores.

        Queries go in blocks of ``block_rows``; a block scores only the keys it can see (up to its last row), so the
        masked upper triangle is mostly never computed: at S = 2048 the blocks touch 56% of the S^2 scores, and top-k
        scans rows of that length only. Same picks as the dense version, up to which of exactly tied keys is taken."""
        B, S = q.shape[:2]
        slots = min(self.topk, S)
        block = max(block_rows, slots)  # the first block must see at least `slots` keys for topk
        picks = torch.empty(B, S, slots, dtype=torch.long, device=q.device)
        # only a block's own diagonal square has future keys: one [block, block] mask serves every block
        future = torch.ones(block, block, dtype=torch.bool, device=q.device).triu(1)
        for start in range(0, S, block):
            stop = min(S, start + block)
            scores = self.dense_scores(q[:, start:stop], k[:, :stop], weights[:, start:stop], causal_mask=False)
            scores[:, :, start:stop].masked_fill_(future[:stop - start, :stop - start], float("-inf"))
            picks[:, start:stop] = self.select(scores, slots)
        return picks

    @torch.no_grad()
    def select(self, index_scores: torch.Tensor, slots: int | None = None) -> torch.Tensor:
        """topk_indices [B, S, min(index_topk, S)] (long); -1 marks a slot with no causal key."""
        values, indices = index_scores.topk(slots or min(self.topk, index_scores.shape[-1]), dim=-1)
        return indices.masked_fill_(values == float("-inf"), -1)

    def forward(self, x_BSD, q_latent, cos, sin) -> torch.Tensor:
        with torch.no_grad():
            return self.select_causal(*self.project(x_BSD, q_latent, cos, sin))


def indexer_kl_loss(index_scores: torch.Tensor, topk: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """KL(main attention || indexer) over each query's selected keys, averaged over queries (DeepSeek-V3.2 eq. 3).

    index_scores [B, S, S] (with grad, to the indexer only); topk [B, S, K]; q [B, H, S, Dqk] and k [B, H, S, Dqk]
    detached: the target is the attention distribution over the selected keys, summed over heads, L1-normalised.
    """
    S = index_scores.shape[-1]
    keep = topk_to_mask(topk, S) & torch.ones(S, S, dtype=torch.bool, device=q.device).tril()  # [B, S, S]
    with torch.no_grad():
        # scale folded into q and the mask applied in place: two fewer passes over the [B, H, S, S] logits
        logits = (q.float() * scale) @ k.float().transpose(-1, -2)
        target = torch.softmax(logits.masked_fill_(~keep[:, None], float("-inf")), dim=-1).sum(dim=1)
        target = target / target.sum(dim=-1, keepdim=True)                                 # [B, S, S]
    log_index = torch.log_softmax(index_scores.masked_fill(~keep, float("-inf")), dim=-1).masked_fill(~keep, 0.0)
    kl = target * (target.clamp_min(1e-30).log() - log_index)
    return torch.where(keep, kl, torch.zeros_like(kl)).sum(dim=-1).mean()


def sparse_indexer_kl_loss(selected_scores: torch.Tensor, topk: torch.Tensor,
                           attention_probs: torch.Tensor) -> torch.Tensor:
    """``indexer_kl_loss`` in the selected keys' coordinates: everything is [B, S, K], nothing [B, S, S].

    selected_scores: the indexer's scores of the picked keys (with grad); attention_probs: the main attention's
    weights over the same slots summed over heads (detached; ``kernels.sparse_mqa_attention`` returns them)."""
    valid = topk >= 0
    target = attention_probs / attention_probs.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    log_index = torch.log_softmax(selected_scores, dim=-1).masked_fill(~valid, 0.0)
    kl = target * (target.clamp_min(1e-30).log() - log_index)
    return kl.masked_fill(~valid, 0.0).sum(dim=-1).mean()
