"""Batches of (x, y) from a packed token array, deterministic given (seed, step, micro-step): resumable for free.

nanoGPT style: each row is a random window of ``seq_len + 1`` tokens; ``x = window[:-1]``, ``y = window[1:]`` (labels
are already shifted: y[t] = x[t+1]). The window offsets of a step come from a generator seeded with
(seed, step, micro_step), never from global RNG state, so a resumed run sees exactly the batches an uninterrupted
run would, and the "data position" a checkpoint stores is just the step number.

Data parallelism (the seam for workbench/distributed): every rank draws the same *global* batch of
``batch_size * world_size`` windows and keeps rows ``rank::world_size``; so the union over ranks is independent of
the world size and no two ranks share a row. Evaluation batches use a fixed seed per eval batch index.
Used by the trainer and notebooks/01_training.ipynb.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.errors import WorkbenchError


class TokenLoader:
    """Random windows of a token array, indexed by step. ``batch(step, micro_step) -> (x_BT, y_BT)`` int64."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device: torch.device | str = "cpu", name: str = "train") -> None:
        if batch_size < 1 or seq_len < 1:
            raise WorkbenchError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if not 0 <= rank < world_size:
            raise WorkbenchError(f"rank {rank} is outside world_size {world_size}")
        if len(tokens) < seq_len + 1:
            raise WorkbenchError(f"the {name} split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1} "
                                 f"(one window); use a shorter --seq-len or a larger corpus")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.name = name

    def offsets(self, step: int, micro_step: int = 0) -> np.ndarray:
        """Start offsets of this rank's rows for (step, micro_step)."""
        rng = np.random.default_rng([self.seed, step, micro_step])
        # a window is seq_len + 1 tokens, so starts run from 0 to len - seq_len - 1 (integers' high is exclusive)
        global_offsets = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size * self.world_size)
        return global_offsets[self.rank::self.world_size]

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([np.asarray(self.tokens[o:o + self.seq_len + 1], dtype=np.int64)
                         for o in self.offsets(step, micro_step)])
        window = torch.from_numpy(rows)
        x, y = window[:, :-1], window[:, 1:]
        if self.device.type != "cpu":
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x.contiguous(), y.contiguous()

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len
