"""A tiny transformer LM and its training step, for profiling tests and workshops where the full model is not needed.

Pre-norm blocks (RMSNorm -> causal self-attention -> RMSNorm -> SwiGLU MLP) that call the kernel registry
(``workbench.kernels``) for attention, RMSNorm, SwiGLU and the fused LM-head cross-entropy, so a profile shows the
difference between kernel choices (``use_kernels({"attention": "reference"})``). The step function labels its
phases with the same ``record_function`` names as ``workbench.train.Trainer.train_step``.
Used by tests/test_profiling*.py and, when asked for, notebooks/04_profiling.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.profiler import record_function

from workbench import kernels
from workbench.errors import ConfigError


@dataclass
class ToyConfig:
    vocab: int = 256
    dim: int = 64
    heads: int = 4
    layers: int = 2
    seq_len: int = 64
    batch: int = 4

    def __post_init__(self):
        for name in ("vocab", "dim", "heads", "layers", "seq_len", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ToyConfig.{name} = {getattr(self, name)}: must be >= 1")
        if self.dim % self.heads:
            raise ConfigError(f"ToyConfig.dim = {self.dim} must be divisible by heads = {self.heads}")


class _Block(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.Parameter(torch.ones(cfg.dim))
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.norm2 = nn.Parameter(torch.ones(cfg.dim))
        self.up = nn.Linear(cfg.dim, 2 * 4 * cfg.dim, bias=False)
        self.down = nn.Linear(4 * cfg.dim, cfg.dim, bias=False)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        B, S, D = x_BSD.shape
        h = kernels.rms_norm(x_BSD, self.norm1)
        q, k, v = self.qkv(h).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B,H,S,Dh]
        attn = kernels.attention(q, k, v, causal=True).transpose(1, 2).reshape(B, S, D)
        x_BSD = x_BSD + self.proj(attn)
        return x_BSD + self.down(kernels.swiglu(self.up(kernels.rms_norm(x_BSD, self.norm2))))


class ToyLM(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.Parameter(torch.ones(cfg.dim))
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)

    def forward(self, tokens_BS: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens_BS)
        for block in self.blocks:
            x = block(x)
        h = kernels.rms_norm(x, self.norm)
        return kernels.cross_entropy(h.flatten(0, 1), self.head.weight, labels_BS.flatten())

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype its matmuls run in: its weights' (the step runs no autocast), which MFU's peak must match."""
        return self.head.weight.dtype

    def flops_per_token(self) -> float:
        """6 x matmul parameters + 12 x layers x seq x dim for attention scores and values (PaLM convention)."""
        return sum(self.flops_split().values())

    def flops_split(self) -> dict[str, float]:
        """``flops_per_token`` by kernel kind, for the MFU waterfall (``waterfall.mfu_waterfall``'s flops_split):
        the attention kernel's share is not counted by the profiler, so it has to come from here."""
        cfg = self.cfg
        matmul_params = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and not n.startswith("embed"))
        return {"matmul": 6.0 * matmul_params, "attention": 12.0 * cfg.layers * cfg.seq_len * cfg.dim}


def toy_training_step(cfg: ToyConfig | None = None, device=None, seed: int = 0) -> tuple[Callable[[], float], ToyLM]:
    """A model and a step function ``step() -> loss`` doing data / forward / backward / optimizer, each labelled."""
    cfg = cfg or ToyConfig()
    if device is None:
        from workbench.device import get_device

        device = get_device()
    torch.manual_seed(seed)
    model = ToyLM(cfg).to(device.torch_device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    generator = torch.Generator().manual_seed(seed)

    def step() -> float:
        with record_function("workbench/data"):
            tokens = torch.randint(cfg.vocab, (cfg.batch, cfg.seq_len + 1), generator=generator)
            tokens = tokens.to(device.torch_device)
            x, y = tokens[:, :-1], tokens[:, 1:]
        with record_function("workbench/forward"):
            loss = model(x, y)
        with record_function("workbench/backward"):
            loss.backward()
        with record_function("workbench/optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, model
