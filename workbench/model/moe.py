"""Mixture of experts with sigmoid routing and aux-loss-free load balancing: the FFN of GLM-4.5 and GLM-5.

Papers: DeepSeek-V3 (DeepSeek-AI 2024) section 2.1.2, and Wang et al. 2024 ("Auxiliary-Loss-Free Load Balancing
Strategy for Mixture-of-Experts"). For each token:

    s_e      = sigmoid(router(x))_e                          affinity of every routed expert (fp32)
    chosen   = top-k of (s_e + b_e)                          b: a bias used ONLY to choose experts
    g_e      = s_e / sum_{chosen} s  (if norm_topk_prob),    then * routed_scaling
    y        = sum_{chosen} g_e * expert_e(x)  +  shared_experts(x)

After each optimizer step the trainer calls ``update_bias``: b_e += rate * sign(mean_load - load_e), so overloaded
experts get chosen less, without a loss term that fights the LM loss. An optional sequence-level balance loss
(DeepSeek-V3 eq. 17-20) is computed when ``aux_loss_coef > 0``. Experts are stacked [E, ...] parameters so an
expert-parallel plan can shard dim 0; the compute goes through ``kernels.moe``.
Part of glm45-tiny, glm5-tiny and the full-size presets (notebooks 01_training, 03_distributed for EP).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench import kernels
from workbench.model.config import ModelConfig
from workbench.model.layers import DenseMLP


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.norm_topk, self.scaling = cfg.num_experts_per_token, cfg.norm_topk_prob, cfg.routed_scaling
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts, dtype=torch.float32))  # selection only

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (indices [T, k], weights [T, k] fp32, scores [T, E] fp32)."""
        with torch.autocast(x_TD.device.type, enabled=False):  # routing decisions in fp32, even under autocast
            scores = torch.sigmoid(x_TD.float() @ self.weight.float().t())
        indices = torch.topk(scores.detach() + self.expert_bias, self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(-1, indices)   # the bias does not enter the weights
        if self.norm_topk:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return indices, weights * self.scaling, scores


class GroupedExperts(nn.Module):
    """E SwiGLU experts as two stacked weights: gate_up_proj [E, 2F, D] (gate rows first), down_proj [E, D, F]."""

    def __init__(self, num_experts: int, dim: int, hidden: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, dim, hidden))

    def forward(self, x_TD: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # Under autocast x arrives in the compute dtype; cast the weights as autocast would for an nn.Linear
        # (a no-op without autocast), since grouped-GEMM kernels are not autocast-aware.
        w_gate_up, w_down = self.gate_up_proj.to(x_TD.dtype), self.down_proj.to(x_TD.dtype)
        return kernels.moe(x_TD, indices, weights, w_gate_up, w_down)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_experts, self.top_k, self.aux_coef = cfg.num_experts, cfg.num_experts_per_token, cfg.aux_loss_coef
        self.router = Router(cfg)
        self.experts = GroupedExperts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_experts = (DenseMLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.num_shared_experts)
                               if cfg.num_shared_experts > 0 else None)
        # token counts per expert [E], summed over *training* forwards since the last update_bias(). A plain tensor
        # attribute, not a buffer, so that DDP's buffer broadcast does not overwrite each rank's own counts.
        self.load_accum = torch.zeros(cfg.num_experts, dtype=torch.float32)
        self.last_load: torch.Tensor | None = None      # counts of the latest forward [E]
        self.last_aux_loss: torch.Tensor | None = None  # sequence-level balance loss of the latest forward

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        B, S, D = x_BSD.shape
        x_TD = x_BSD.reshape(B * S, D)
        indices, weights, scores = self.router(x_TD)
        out = self.experts(x_TD, indices, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x_TD)
        with torch.no_grad():
            load = kernels.count_rows_per_expert(indices.flatten(), self.num_experts).float()
            self.last_load = load
            # Only training forwards steer the balancing bias. An eval or sampling pass in between must not: it
            # would bias the next update by data the model does not train on, and a run resumed from a checkpoint
            # (counters start at zero) would then update differently from the uninterrupted run.
            if self.training:
                if self.load_accum.device != load.device:  # the model moved since the last reset
                    self.load_accum = torch.zeros_like(load)
                self.load_accum = self.load_accum + load
        self.last_aux_loss = self._sequence_aux_loss(indices, scores, B, S) if self.aux_coef > 0 else None
        return out.view(B, S, D)

    def _sequence_aux_loss(self, indices, scores, B, S) -> torch.Tensor:
        """DeepSeek-V3 sequence-wise balance loss: sum_e f_e * P_e, averaged over sequences (unweighted)."""
        E, k = self.num_experts, self.top_k
        counts = torch.zeros(B, E, device=scores.device).scatter_add_(
            1, indices.view(B, S * k), torch.ones(B, S * k, device=scores.device))
        f = counts * E / (k * S)                                                   # [B, E]
        p = (scores / scores.sum(-1, keepdim=True)).view(B, S, E).mean(dim=1)     # [B, E]
        return (f * p).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self, rate: float, reduce_fn=None) -> torch.Tensor:
        """Aux-loss-free balancing step; returns the load [E] it used and resets the accumulator.

        ``reduce_fn(tensor)`` sums the counts in place across data-parallel ranks (e.g. ``dist.all_reduce``),
        so every rank applies the same update. Recomputation (activation checkpointing) counts a layer's tokens
        twice; the update only uses sign(mean - load), which a uniform factor does not change.
        """
        bias = self.router.expert_bias
        load = self.load_accum.to(bias.device)
        if reduce_fn is not None:
            reduce_fn(load)
        bias += rate * torch.sign(load.mean() - load)
        self.load_accum = torch.zeros_like(load)
        return load
