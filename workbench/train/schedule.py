"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio * lr``.

A pure function of the step (no hidden state), so a resumed run gets exactly the same learning rates; the
checkpoint still records the schedule's settings and step. Used by the trainer (notebooks/01_training.ipynb plots it).
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Factor in [min_lr_ratio, 1] applied to each param group's base lr at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Sets ``group["lr"] = group["base_lr"] * lr_multiplier(step)`` on every param group of an optimizer."""

    def __init__(self, optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> None:
        self.optimizer = optimizer
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup_steps, min_lr_ratio
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])

    def multiplier(self, step: int) -> float:
        return lr_multiplier(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)

    def apply(self, step: int) -> float:
        """Set the lrs for ``step``; returns the first group's lr (the one metrics report)."""
        m = self.multiplier(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * m
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"kind": "warmup_cosine", "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps = int(state["total_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.min_lr_ratio = float(state["min_lr_ratio"])
