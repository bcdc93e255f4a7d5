"""Optimizers: AdamW (fused or foreach, as the device supports) and Muon (GLM-4.5 and GLM-5 trained with Muon).

Muon (Keller Jordan, 2024) updates each 2-D hidden weight matrix with the orthogonalised momentum: a few
Newton-Schulz iterations push the momentum's singular values towards 1, so every direction of the matrix moves at a
similar speed. Embeddings, the output head, norms and biases stay on AdamW, as in every public Muon recipe. Stacked
expert weights (E x out x in) are orthogonalised per expert (batched matmuls).

What this is, exactly, next to the recipes at scale: Keller Jordan's Muon, with its own learning rate (``muon_lr``,
0.02) and his shape factor sqrt(max(1, out/in)). Moonlight (Liu et al. 2025), which GLM-4.5 follows, instead scales
by 0.2 * sqrt(max(out, in)) to match AdamW's update RMS and shares AdamW's learning rate; GLM-5 further
orthogonalises the MLA up-projections per attention head ("Muon Split"). Neither variant is implemented here. Fused
matrices (gate|up of the SwiGLU, the MLA kv projections) are orthogonalised as one block, as in Moonlight's
DeepSeek-V3 layout for kv (Moonlight keeps gate and up apart).
``build_optimizer`` returns one object with ``param_groups``/``step``/``zero_grad``/``state_dict`` either way.
Used by the trainer and notebooks/01_training.ipynb.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


# --------------------------------------------------------------------------------------------------------------
# Muon
# --------------------------------------------------------------------------------------------------------------
def newton_schulz_orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U @ V^T of g = U S V^T (per matrix over leading batch dims), by a quintic Newton-Schulz loop.

    The coefficients (3.4445, -4.7750, 2.0315) are Muon's: they maximise the slope at zero so small singular values
    grow fast; the result has singular values in roughly [0.7, 1.2], which is all Muon needs.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    transposed = x.size(-2) > x.size(-1)
    if transposed:  # iterate on the wide orientation: X @ X^T is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update is orthogonalised by Newton-Schulz. Only for parameters with ndim >= 2."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon only takes matrices (ndim >= 2); got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)  # buf = mu * buf + (1 - mu) * g
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                update = newton_schulz_orthogonalize(update, group["ns_steps"])
                # Keller Jordan's shape factor: tall matrices (out > in) get sqrt(out / in) more. The update's RMS
                # still depends on the shape (~ 1 / sqrt(in)); Moonlight's 0.2 * sqrt(max(out, in)) would not.
                update = update * max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
        return loss


# --------------------------------------------------------------------------------------------------------------
# One object over several torch optimizers (Muon + AdamW)
# --------------------------------------------------------------------------------------------------------------
class OptimizerGroup:
    """Several optimizers stepped together; looks like one to the trainer, the schedule and checkpoints."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, this run has {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


# --------------------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------------------
def _embedding_and_head_params(model: nn.Module) -> set[int]:
    """ids of embedding tables and of the output head (Muon leaves them to AdamW)."""
    ids = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            ids.add(id(module.weight))
        elif isinstance(module, nn.Linear) and name.split(".")[-1] in ("lm_head", "head", "output"):
            ids.add(id(module.weight))
    return ids


def split_params(model: nn.Module, muon: bool) -> dict[str, list[torch.Tensor]]:
    """Parameter lists: "muon" (hidden matrices), "decay" (other matrices), "no_decay" (norms, biases, 1-D)."""
    special = _embedding_and_head_params(model) if muon else set()
    groups: dict[str, list[torch.Tensor]] = {"muon": [], "decay": [], "no_decay": []}
    seen = set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        if p.ndim < 2:
            groups["no_decay"].append(p)
        elif muon and id(p) not in special:
            groups["muon"].append(p)
        else:
            groups["decay"].append(p)
    return groups


def build_optimizer(model: nn.Module, name: str = "adamw", lr: float = 3e-3, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), muon_lr: float = 0.02, device=None) -> OptimizerGroup:
    """AdamW over everything, or Muon over hidden matrices + AdamW over the rest. ``device``: a workbench Device."""
    if name not in ("adamw", "muon"):
        raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'muon'")
    groups = split_params(model, muon=(name == "muon"))
    adam_groups = [{"params": groups["decay"], "weight_decay": weight_decay},
                   {"params": groups["no_decay"], "weight_decay": 0.0}]
    adam_groups = [g for g in adam_groups if g["params"]]
    # fused kernels where the device layer says they exist, else the multi-tensor (foreach) path.
    fused = bool(device is not None and device.supports_fused_adamw())
    impl = {"fused": True} if fused else {"foreach": True}
    optimizers: dict[str, torch.optim.Optimizer] = {
        "adamw": torch.optim.AdamW(adam_groups, lr=lr, betas=betas, eps=1e-8, **impl)}
    if groups["muon"]:
        optimizers["muon"] = Muon(groups["muon"], lr=muon_lr, weight_decay=weight_decay)
    group = OptimizerGroup(optimizers)
    group.implementation = ("fused" if fused else "foreach") + (" + muon" if "muon" in optimizers else "")
    return group
