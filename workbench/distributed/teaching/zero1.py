"""ZeRO stage 1 (Rajbhandari et al. 2020): shard the optimizer state over the data-parallel ranks.

Adam keeps two fp32 moments per parameter: 8 bytes/param on every rank under plain DDP. Here each rank *owns* a
shard of the parameters (whole tensors, assigned greedily so the shards are about equal in size), keeps Adam state
only for those, and updates only those; then every rank broadcasts its updated parameters to the others. The
optimizer state per rank drops by the world size; gradients are still all-reduced in full (stage 2 would
reduce-scatter them instead, stage 3 = FSDP shards the parameters too).

    model = NaiveDDP(model)        # or any gradient averaging
    opt = ZeRO1Optimizer(model.parameters(), torch.optim.AdamW, lr=1e-3)
    loss.backward(); model.sync_gradients(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn


def partition_parameters(params: list[nn.Parameter], world: int) -> list[list[nn.Parameter]]:
    """Largest first, each to the currently lightest rank: shards of nearly equal element counts."""
    shards: list[list[nn.Parameter]] = [[] for _ in range(world)]
    loads = [0] * world
    for param in sorted(params, key=lambda p: p.numel(), reverse=True):
        rank = loads.index(min(loads))
        shards[rank].append(param)
        loads[rank] += param.numel()
    return shards


class ZeRO1Optimizer:
    def __init__(self, params: Iterable[nn.Parameter], optimizer_class: Callable[..., torch.optim.Optimizer],
                 process_group=None, **optimizer_kwargs):
        self.group = process_group
        self.params = [p for p in params if p.requires_grad]
        self.world, self.rank = dist.get_world_size(process_group), dist.get_rank(process_group)
        self.shards = partition_parameters(self.params, self.world)
        self.owner = {param: rank for rank, shard in enumerate(self.shards) for param in shard}
        # The inner optimizer sees only this rank's shard, so only that shard gets optimizer state.
        self.local = optimizer_class(self.shards[self.rank], **optimizer_kwargs) if self.shards[self.rank] else None

    @property
    def param_groups(self):  # lets a learning-rate schedule set lr as on a torch optimizer
        return self.local.param_groups if self.local else []

    @torch.no_grad()
    def step(self) -> None:
        if self.local is not None:
            self.local.step()
        # Everyone learns the new values of the parameters it does not own.
        for param in self.params:
            owner = self.owner[param]
            src = dist.get_global_rank(self.group, owner) if self.group is not None else owner
            dist.broadcast(param.data, src=src, group=self.group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank (the saving ZeRO-1 is about)."""
        if self.local is None:
            return 0
        return sum(t.numel() * t.element_size() for s in self.local.state.values() for t in s.values()
                   if torch.is_tensor(t))
