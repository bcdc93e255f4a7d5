"""Small building blocks shared by every GLM variant: RMSNorm, rotary tables (RoPE) and the dense FFN.

The math lives in ``workbench.kernels`` (so faster implementations can be swapped in); these modules own the
parameters and shapes. Used by ``glm.py`` (notebook 01_training and everything that builds a model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench import kernels


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / rms(x) * weight; no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RotaryTable(nn.Module):
    """RoPE frequencies (Su et al. 2021, RoFormer) for ``rotary_dim`` channels.

    ``forward(seq_len)`` returns cos, sin of shape [S, R/2]; the model computes them once per forward and hands
    them to every layer. ``kernels.rope`` rotates the first R channels of a head and passes the rest (partial RoPE).
    """

    def __init__(self, rotary_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.to(device))  # [S, R/2]
        return freqs.cos(), freqs.sin()


class DenseMLP(nn.Module):
    """The feed-forward block. SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x)), with gate|up fused into one
    [2F, D] matmul; or a plain GELU MLP down(gelu(up(x))) for GPT-style comparisons."""

    def __init__(self, dim: int, hidden: int, act: str = "swiglu"):
        super().__init__()
        self.act = act
        if act == "swiglu":
            self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)  # rows [0, F) = gate, [F, 2F) = up
        else:
            self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "swiglu":
            return self.down_proj(kernels.swiglu(self.gate_up_proj(x)))
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))
