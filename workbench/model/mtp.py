"""Multi-token prediction (MTP): extra layers that predict the token after next, sharing embedding and LM head.

Papers: Gloeckle et al. 2024 ("Better & Faster Large Language Models via Multi-token Prediction"); the sequential
form used here is DeepSeek-V3's (section 2.2), which GLM-4.5 and GLM-5 ship as one extra layer.

Depth d (1-based) at position t combines the previous depth's hidden state h_t (the trunk's output for d = 1) with
the embedding of token t + d, then runs one full transformer block:

    h'_t = block( eh_proj( [enorm(embed(x_{t+d})) ; hnorm(h_t)] ) ),     logits = lm_head(shared_head_norm(h'_t))

and is trained to predict x_{t+d+1}, i.e. ``labels[t + d]`` under the workbench's (x, y = x shifted) convention.
The last d positions have no such target and are ignored. Used by glm.py when ``mtp_layers > 0`` (01_training).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.model.config import ModelConfig
from workbench.model.layers import RMSNorm


class MTPLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, block: nn.Module):
        super().__init__()
        self.enorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.block = block
        self.shared_head_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)

    def forward(self, h_BSD: torch.Tensor, next_embeds_BSD: torch.Tensor, cos, sin) -> torch.Tensor:
        """Returns the new hidden state (before the head norm), to feed the next depth."""
        x = self.eh_proj(torch.cat([self.enorm(next_embeds_BSD), self.hnorm(h_BSD)], dim=-1))
        x, _ = self.block(x, cos, sin, None)
        return x
